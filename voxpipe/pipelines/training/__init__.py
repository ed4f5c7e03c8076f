"""Training: trainer assembly (MONAI SupervisedTrainer + Ignite handlers), handlers, distributed set-up, classification, nodule detection.
May import voxpipe.pipelines.data, building blocks (transforms, networks, metrics) and errors/runtime.
"""

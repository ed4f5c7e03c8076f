"""nnU-Net model folders run as nnU-Net 2.8 runs them: folder, readers, preprocessing, model, case loop, bundle import.
May import voxpipe.pipelines.inference (the one predictor, the case loop), building blocks and errors/runtime.
"""

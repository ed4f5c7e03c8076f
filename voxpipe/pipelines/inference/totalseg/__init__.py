"""TotalSegmentator's tasks, run as TotalSegmentator 2.18.0 runs them, from the user's own weights folder.
May import voxpipe.pipelines.inference (the nnU-Net path, the case loop), building blocks and errors/runtime.

- :mod:`.tasks`: TotalSegmentator's task table, model folders and label names (its own tables).
- :mod:`.weights`: where its weights already are on this machine.
- :mod:`.steps`: its image steps with its rounding (resampling, crop, orientation, post-processing,
  the label-table header, statistics).
- :mod:`.pipeline`: a task on one image, nnU-Net's part run by voxpipe's one predictor.
- :mod:`.run`: ``voxpipe infer TASK``: many images, TotalSegmentator's output files.
"""

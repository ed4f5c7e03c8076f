"""MONAI bundles, ours and the Model Zoo's: reading configs and overrides, run, validate, safe mode, zip export.
May import voxpipe.transforms, voxpipe.networks and errors; it is the lowest pipelines layer (no other subpackage).
"""

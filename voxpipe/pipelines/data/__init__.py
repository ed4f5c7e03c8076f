"""Datasets before training: datalists (MSD, LiTS, folders, CSV), splits, integrity check, fingerprint, download, caching.
May import voxpipe.transforms, voxpipe.errors and MONAI's data module; no other pipelines subpackage.
"""

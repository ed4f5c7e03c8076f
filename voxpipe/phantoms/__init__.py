"""Synthetic data the project makes itself: CT phantoms with labels (liver, lung), DICOM series, nodule patches.
A building block: may import voxpipe.transforms and errors, never voxpipe.pipelines or voxpipe.cli.
"""

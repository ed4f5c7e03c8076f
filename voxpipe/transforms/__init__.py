"""Everything that touches voxels before or after the network: loading, DICOM, SEG, intensity, presets, inversion.
A building block: may import voxpipe.errors and MONAI/ITK/nibabel/pydicom, never voxpipe.pipelines or voxpipe.cli.
"""

"""The DICOM node (``voxpipe serve``): receive series from a PACS, segment them, send DICOM-SEG and SR back.
May import: inference, bundles; nothing in voxpipe imports deploy (only the CLI does)."""

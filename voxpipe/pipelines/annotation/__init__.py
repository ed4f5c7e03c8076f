"""Assisted annotation (``voxpipe annotate``): pre-label, rank by uncertainty, ingest corrections, measure the edit, fine-tune.
May import: bundles, data, inference, training; nothing in voxpipe imports annotation (only the CLI does)."""

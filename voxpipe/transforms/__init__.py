"""Everything that touches voxels before or after the network."""

"""Input/output at the edges: checkpoints, weights manifest, rasters."""

"""Co-registration: the target grid and window-by-window reads of every modality on it."""

from __future__ import annotations

from mfaf_cli.coreg.align import AlignedScene, convert_units, db_to_linear, linear_to_db
from mfaf_cli.coreg.grid import Grid, check_overlap, grid_from_reference
from mfaf_cli.io.inputs import open_raster

__all__ = [
    "AlignedScene",
    "Grid",
    "check_overlap",
    "convert_units",
    "db_to_linear",
    "grid_from_reference",
    "linear_to_db",
    "open_raster",
]

"""Label raster → polygons (GPKG / GeoJSON / GeoParquet / Shapefile)."""

from __future__ import annotations

from mfaf_cli.vectorize.polygons import (
    VECTOR_FORMATS,
    VectorizeResult,
    parse_class_names,
    vector_format,
    vectorize_raster,
)

__all__ = [
    "VECTOR_FORMATS",
    "VectorizeResult",
    "parse_class_names",
    "vector_format",
    "vectorize_raster",
]

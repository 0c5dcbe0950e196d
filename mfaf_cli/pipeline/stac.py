"""A STAC Item beside a map (``predict --stac-item``): catalogues index it like any scene.

Made from the written label map alone (its grid, class tags, colour table and provenance
record), so it says exactly what the file holds: footprint in WGS 84 (cut at 180° per
RFC 7946), the projection extension's grid, and the classification extension's classes on
the label asset; the provenance record goes in the properties as ``mfaf:provenance``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mfaf_cli.io.atomic import atomic_path
from mfaf_cli.io.inputs import open_raster
from mfaf_cli.pipeline.provenance import read_provenance

STAC_VERSION = "1.0.0"
CLASSIFICATION = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"
PROJECTION = "https://stac-extensions.github.io/projection/v1.1.0/schema.json"
GEOTIFF = "image/tiff; application=geotiff"
ROLES = {"label": ["data"], "probabilities": ["data"], "confidence": ["data"], "vector": ["data"]}


def stac_item_path(label: str | os.PathLike[str]) -> Path:
    """``map.tif`` → ``map.stac-item.json``, beside it."""
    p = Path(label)
    return p.with_name(p.stem + ".stac-item.json")


def write_stac_item(label: str | os.PathLike[str], outputs: Mapping[str, str]) -> Path:
    """Write the item for the label map ``label`` (``outputs``: kind → path of every file of
    the run, each an asset) beside it, atomically; returns its path."""
    item = stac_item(label, outputs)
    out = stac_item_path(label)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(item, indent=1, sort_keys=True), encoding="utf-8")
    return out


def stac_item(label: str | os.PathLike[str], outputs: Mapping[str, str]) -> dict[str, Any]:
    with open_raster(label, "label map") as ds:
        tags, crs, transform, shape = dict(ds.tags()), ds.crs, ds.transform, ds.shape
        bounds = tuple(ds.bounds)
        classes = _classes(tags, ds)
    record = read_provenance(tags) or {}
    geometry, bbox = _footprint(bounds, crs)
    props: dict[str, Any] = {"created": record.get("time"), "mfaf:provenance": record}
    props.update(_datetimes(record))
    epsg = crs.to_epsg()
    props["proj:epsg"] = epsg
    if epsg is None:
        props["proj:wkt2"] = crs.to_wkt()
    props["proj:shape"] = list(shape)
    props["proj:transform"] = list(transform)[:6]
    assets = {}
    for kind, path in outputs.items():
        asset: dict[str, Any] = {"href": _href(path, label), "roles": ROLES.get(kind, ["data"])}
        if str(path).lower().endswith((".tif", ".tiff")):
            asset["type"] = GEOTIFF
        if kind == "label":
            asset["classification:classes"] = classes
            asset["nodata"] = 255
        assets[kind] = asset
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [CLASSIFICATION, PROJECTION],
        "id": Path(label).stem,
        "geometry": geometry,
        "bbox": bbox,
        "properties": props,
        "assets": assets,
        "links": [],
    }


def _classes(tags: Mapping[str, str], ds: Any) -> list[dict[str, Any]]:
    ids = json.loads(tags.get("CLASS_IDS", "[]"))
    names = json.loads(tags.get("CLASS_NAMES", "[]"))
    try:
        cmap = ds.colormap(1)
    except ValueError:
        cmap = {}
    out = []
    for i, name in zip(ids, names, strict=True):
        entry: dict[str, Any] = {"value": int(i), "name": str(name)}
        if i in cmap:
            entry["color_hint"] = "".join(f"{v:02X}" for v in cmap[i][:3])
        out.append(entry)
    return out


def _footprint(bounds: tuple[float, ...], crs: Any) -> tuple[dict[str, Any], list[float]]:
    """The map's outline in WGS 84 (RFC 7946: cut at 180°) and its bbox (west > east when
    it crosses 180°, as RFC 7946 §5.2 says)."""
    from shapely.geometry import box, mapping

    from mfaf_cli.vectorize.rfc7946 import to_rfc7946

    outline = box(*bounds).segmentize(max(bounds[2] - bounds[0], bounds[3] - bounds[1]) / 32)
    geom = to_rfc7946(np.array([outline], dtype=object), crs)[0]
    parts = list(getattr(geom, "geoms", [geom]))
    b = np.array([p.bounds for p in parts])
    west, south, east, north = b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()
    if len(parts) > 1 and east >= 180.0 and west <= -180.0 and north < 90 and south > -90:
        west = float(b[b[:, 0] > -180.0, 0].min())  # the piece east of the cut starts here
        east = float(b[b[:, 2] < 180.0, 2].max())
    return mapping(geom), [float(west), float(south), float(east), float(north)]


def _datetimes(record: Mapping[str, Any]) -> dict[str, Any]:
    """STAC wants a datetime: the inputs' acquisition date(s) where known, else the run's."""
    dates = sorted(
        str(v["acquired"]["date"])
        for v in (record.get("inputs") or {}).values()
        if v.get("acquired")
    )
    if not dates:
        return {"datetime": record.get("time")}
    full = [d if "T" in d else f"{d}T00:00:00Z" for d in dates]
    if full[0] == full[-1]:
        return {"datetime": full[0]}
    return {"datetime": None, "start_datetime": full[0], "end_datetime": full[-1]}


def _href(path: str, label: str | os.PathLike[str]) -> str:
    """Relative to the item where the file is beside or below it, else absolute."""
    try:
        return "./" + Path(path).absolute().relative_to(Path(label).absolute().parent).as_posix()
    except ValueError:
        return str(Path(path).absolute())

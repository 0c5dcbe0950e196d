"""``mfaf info``: what a set of rasters are and how they overlap, or which models exist.

The overlap report answers the question a user has before ``mfaf predict``: do these inputs
cover the same ground, and how much of each would be used? Footprints are compared in the
first file's CRS (as the reference grid would be), with areas in m² (geodesic for a
geographic CRS).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import click

from mfaf_cli.cli.options import json_opt
from mfaf_cli.errors import UsageError

EPILOG = """\b
Examples:
  mfaf info S2.tif S1.tif
  mfaf info S2.tif --json
  mfaf info --models
  mfaf info mfaf_cli/weights/unet-ombria-water.safetensors   # a model file's record
  mfaf info unet-ombria-water                                # a shipped model, by name

A .safetensors / .onnx argument or a shipped model's name is described from the record inside
it (modalities, bands, normalisation, training range, applicability rules, classes, training
data, metrics); other arguments are rasters.
"""


# ---- rasters ----------------------------------------------------------------------------------
def _units(crs: Any) -> str:
    if crs is None:
        return "pixels"
    if crs.is_geographic:
        return "degree"
    from rasterio.errors import CRSError

    try:
        return str(crs.linear_units)
    except CRSError:
        return "unknown"


def describe_raster(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Facts about one raster as plain JSON-able values."""
    from mfaf_cli.io.inputs import open_raster
    from mfaf_cli.vectorize.polygons import crs_label, crs_name

    # require_crs=False: a file without CRS is described ("none"), not refused
    with open_raster(path, require_crs=False) as src:
        crs = src.crs
        name = crs_name(crs) if crs is not None else None
        dtypes = sorted(set(src.dtypes))
        # dedupe by text: NaN != NaN
        nodatas = list({str(v): v for v in src.nodatavals if v is not None}.values())
        nodata: Any = None
        if len(nodatas) == 1:
            nodata = _json_num(nodatas[0])
        elif nodatas:
            nodata = [_json_num(v) for v in src.nodatavals]
        return {
            "path": str(path),
            "driver": src.driver,
            "crs": crs_label(crs),
            "crs_name": name,
            "units": _units(crs),
            "width": src.width,
            "height": src.height,
            "count": src.count,
            "resolution": [abs(src.res[0]), abs(src.res[1])],
            "bounds": list(src.bounds),
            "rotated": bool(src.transform.b or src.transform.d),
            "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
            "nodata": nodata,
            "band_descriptions": [d or "" for d in src.descriptions],
            "_crs": crs,
            **_georeferencing(src),
        }


def _georeferencing(src: Any) -> dict[str, Any]:
    """How the file is located; for GCPs / RPCs also their CRS and the footprint in it, so the
    overlap report can place the file (``_crs``, ``bounds``, ``resolution``)."""
    from mfaf_cli.coreg.georef import Ground, describe

    out: dict[str, Any] = {"georeferencing": describe(src)}
    ground = Ground.of(src) if src.crs is None else None
    if ground is not None:
        b = ground.footprint(ground.crs)
        out.update(
            _crs=ground.crs,
            bounds=list(b),
            resolution=[(b[2] - b[0]) / src.width, (b[3] - b[1]) / src.height],
            units=_units(ground.crs) + f" (approximate, from the {ground.kind[:-1].upper()}s)",
        )
    return out


def _json_num(v: float) -> float | int | str:
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def bbox_intersection(
    boxes: list[tuple[float, float, float, float]],
) -> tuple[float, float, float, float] | None:
    """Intersection of (left, bottom, right, top) boxes, or None when it is empty."""
    left = max(b[0] for b in boxes)
    bottom = max(b[1] for b in boxes)
    right = min(b[2] for b in boxes)
    top = min(b[3] for b in boxes)
    if right <= left or top <= bottom:
        return None
    return left, bottom, right, top


def box_area_m2(box: tuple[float, float, float, float], crs: Any) -> float:
    """Area of a CRS-aligned box in m²: geodesic for geographic CRSs, planar otherwise."""
    left, bottom, right, top = box
    if crs.is_geographic:
        import numpy as np
        from pyproj import CRS

        geod = CRS.from_user_input(crs.to_wkt()).get_geod()
        assert geod is not None, "a geographic CRS always has an ellipsoid"
        n = 64  # densify edges: a lon/lat box's sides are not geodesics
        xs = np.concatenate(
            [
                np.linspace(left, right, n),
                np.full(n, right),
                np.linspace(right, left, n),
                np.full(n, left),
            ]
        )
        ys = np.concatenate(
            [
                np.full(n, bottom),
                np.linspace(bottom, top, n),
                np.full(n, top),
                np.linspace(top, bottom, n),
            ]
        )
        area, _ = geod.polygon_area_perimeter(xs, ys)
        return abs(float(area))
    from mfaf_cli.vectorize.polygons import linear_unit_factor

    return (right - left) * (top - bottom) * linear_unit_factor(crs) ** 2


def overlap_report(descs: list[dict[str, Any]]) -> dict[str, Any]:
    """How the footprints of 2+ rasters overlap, in the first raster's CRS."""
    from mfaf_cli.coreg.edges import bounds_in, centre_lon, shift_near

    ref = descs[0]
    ref_crs = ref["_crs"]
    if any(d["_crs"] is None for d in descs):
        missing = ", ".join(d["path"] for d in descs if d["_crs"] is None)
        return {"crs": None, "note": f"cannot compare footprints: no CRS in {missing}"}
    boxes: list[tuple[float, float, float, float]] = []
    centre = centre_lon(ref_crs, tuple(ref["bounds"]))  # geographic: unwrap around the first
    for d in descs:
        box = tuple(d["bounds"]) if d["_crs"] == ref_crs else None
        if box is None:
            box = bounds_in(d["_crs"], ref_crs, tuple(d["bounds"]), centre)
        boxes.append(box if centre is None else shift_near(box, centre))  # type: ignore[arg-type]
    inter = bbox_intersection(boxes)
    inter_area = box_area_m2(inter, ref_crs) if inter else 0.0
    per_file = []
    for d, box in zip(descs, boxes, strict=True):
        area = box_area_m2(box, ref_crs)
        per_file.append(
            {"path": d["path"], "percent": round(100.0 * inter_area / area, 3) if area else 0.0}
        )
    rx, ry = ref["resolution"]
    pixels = (
        [round((inter[2] - inter[0]) / rx, 2), round((inter[3] - inter[1]) / ry, 2)]
        if inter
        else [0.0, 0.0]
    )
    return {
        "crs": ref["crs"] or ref_crs.to_string(),  # a GCP / RPC file: their CRS
        "same_crs": all(d["_crs"] == ref_crs for d in descs),
        "intersection": list(inter) if inter else None,
        "area_m2": inter_area,
        "size_in_first_pixels": pixels,
        "per_file": per_file,
    }


def _fmt_num(v: float) -> str:
    return f"{v:.10g}"


def _fmt_area(m2: float) -> str:
    return f"{m2 / 1e6:.4g} km²" if m2 >= 1e5 else f"{m2:.4g} m²"


def format_raster(d: dict[str, Any]) -> str:
    georef = d.get("georeferencing", "none")
    crs = d["crs"] or ("none (no georeferencing)" if georef == "none" else "none")
    if d["crs_name"] and d["crs"] and d["crs_name"] != d["crs"]:
        crs = f"{crs} ({d['crs_name']})"
    bands = ", ".join(f"{i}: {desc or '-'}" for i, desc in enumerate(d["band_descriptions"], 1))
    res = ", ".join(_fmt_num(v) for v in d["resolution"])
    lines = [
        f"{d['path']}",
        f"  driver:      {d['driver']}",
        f"  crs:         {crs}",
        f"  located by:  {georef}",
        f"  size:        {d['width']} x {d['height']} px, {d['count']} band(s)",
        f"  resolution:  {res} {d['units']}" + (" (rotated grid)" if d["rotated"] else ""),
        "  bounds:      " + ", ".join(_fmt_num(v) for v in d["bounds"]) + " (l, b, r, t)",
        f"  dtype:       {d['dtype']}",
        f"  nodata:      {'none' if d['nodata'] is None else d['nodata']}",
        f"  bands:       {bands}",
    ]
    return "\n".join(lines)


def format_overlap(o: dict[str, Any]) -> str:
    if o.get("crs") is None:
        return f"overlap: {o['note']}"
    lines = [f"overlap (footprints in {o['crs']}, the first file's CRS):"]
    if not o["intersection"]:
        lines.append("  none: the inputs do not overlap")
    else:
        px = o["size_in_first_pixels"]
        lines.append(
            "  intersection: "
            + ", ".join(_fmt_num(v) for v in o["intersection"])
            + f" (l, b, r, t), {_fmt_area(o['area_m2'])}, {px[0]:g} x {px[1]:g} px of the first"
        )
    for f in o["per_file"]:
        lines.append(f"  {f['percent']:7.2f} % of {f['path']}")
    if not o["same_crs"]:
        lines.append("  note: CRSs differ; predict/coregister warp the others onto the first")
    return "\n".join(lines)


# ---- models -----------------------------------------------------------------------------------
def models_report() -> dict[str, Any]:
    """Registry architectures and shipped weights (from weights/manifest.json)."""
    from mfaf_cli.io import weights as wio
    from mfaf_cli.registry import list_models

    archs = [
        {
            "name": e.name,
            "modalities": list(e.modalities),
            "in_channels": dict(e.default_in_channels),
            "divisor": e.divisor,
            "description": e.description,
        }
        for e in list_models()
    ]
    weights: list[dict[str, Any]] = []
    for e in wio.read_manifest():
        path = wio.entry_path(e)
        weights.append(
            {
                "name": e["name"],
                "arch": e.get("arch"),
                "modalities": e.get("modalities", []),
                "classes": e.get("classes", []),
                "trained": e.get("trained"),
                "default": bool(e.get("default", False)),
                "file": str(path),
                "present": Path(path).is_file(),
                "metrics": e.get("metrics", {}),
                "description": e.get("description", ""),
            }
        )
    return {"architectures": archs, "weights": weights}


def format_models(r: dict[str, Any]) -> str:
    lines = ["architectures (registry; untrained unless weights are listed below):"]
    for a in r["architectures"]:
        chans = ",".join(f"{m}:{c}" for m, c in a["in_channels"].items())
        lines.append(f"  {a['name']:<16} {chans:<22} /{a['divisor']:<3} {a['description']}")
    lines.append("shipped weights (mfaf_cli/weights/manifest.json):")
    if not r["weights"]:
        lines.append("  none; predict needs --model (a file, or an architecture: UNTRAINED)")
    for w in r["weights"]:
        flags = []
        if w["default"]:
            flags.append("default")
        if not w["trained"]:
            flags.append("untrained")
        if not w["present"]:
            flags.append("FILE MISSING")
        mods = "+".join(w["modalities"])
        extra = f" [{', '.join(flags)}]" if flags else ""
        arch = w["arch"] or "?"
        lines.append(f"  {w['name']:<20} {arch:<12} {mods:<12} {w['description']}{extra}")
    return "\n".join(lines)


# ---- command ----------------------------------------------------------------------------------
@click.command("info", epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("rasters", nargs=-1, type=click.Path(path_type=str))
@click.option("--models", "show_models", is_flag=True, help="List available models instead.")
@json_opt
def command(rasters: tuple[str, ...], show_models: bool, as_json: bool) -> None:
    """Describe rasters (CRS, resolution, size, bands, dtype, nodata) and how they overlap."""
    if show_models:
        if rasters:
            raise UsageError("give either raster files or --models, not both")
        report = models_report()
        click.echo(json.dumps(report) if as_json else format_models(report))
        return
    if not rasters:
        raise UsageError("give one or more raster files (or --models); see mfaf info --help")
    from mfaf_cli.cli.model_record import (
        format_record,
        is_model_file,
        model_record,
        shipped_model_path,
    )

    shipped = {p: shipped_model_path(p) for p in rasters}
    records = [model_record(shipped[p] or p) for p in rasters if is_model_file(p) or shipped[p]]
    rasters = tuple(p for p in rasters if not is_model_file(p) and not shipped[p])
    if records and not rasters:
        if as_json:
            click.echo("\n".join(json.dumps(r) for r in records))
        else:
            click.echo("\n\n".join(format_record(r) for r in records))
        return
    if records:
        raise UsageError("give either model files or rasters to mfaf info, not both")
    descs = [describe_raster(p) for p in rasters]
    overlap = overlap_report(descs) if len(descs) > 1 else None
    if as_json:
        files = [{k: v for k, v in d.items() if not k.startswith("_")} for d in descs]
        click.echo(json.dumps({"command": "info", "files": files, "overlap": overlap}))
        return
    blocks = [format_raster(d) for d in descs]
    if overlap is not None:
        blocks.append(format_overlap(overlap))
    click.echo("\n".join(blocks))

"""``predict --preview PNG``: a quick-look of a label map for the eye, not for analysis.

The map's class colours (its own colour table) are blended over a greyscale of the reference
input, with a legend of the class names. Both rasters are read decimated to at most
``max_side`` pixels on the long side (the reference warped onto the map's grid on the fly),
so a preview of any scene costs a few megabytes; a small map is shown magnified by a whole
factor (:func:`display_zoom`) so that it can be seen.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mfaf_cli.errors import OutputExistsError, OutputPathError, UsageError
from mfaf_cli.io.atomic import atomic_path
from mfaf_cli.metadata import NODATA_LABEL

#: Opacity of the class colours over the greyscale.
ALPHA = 0.55
#: A map smaller than this (long side, pixels) is shown magnified by a whole factor.
MIN_DISPLAY = 512


def check_preview_path(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Fail before the inference if the preview cannot be written."""
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise UsageError(f"--preview {p}: give a .png file name")
    if not (p.parent if str(p.parent) else Path(".")).is_dir():
        raise OutputPathError(f"folder of --preview {p} does not exist; create it first")
    if p.exists() and not overwrite:
        raise OutputExistsError(f"--preview {p} already exists; pass --overwrite to replace it")
    return p


def decimated_shape(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(rows, cols) of a read with the long side at most ``max_side`` (never upsampled)."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def display_zoom(height: int, width: int, target: int = MIN_DISPLAY) -> int:
    """Whole-number magnification of a small map, so its long side shows at about ``target``
    pixels (a 120 px BigEarthNet patch is a speck at 1:1); 1 for maps that large or larger."""
    return max(1, target // max(height, width, 1))


def stretch_grey(bands: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Mean of the bands, 2-98 % stretched to [0, 1] over valid pixels (0.5 if flat)."""
    grey = np.nanmean(bands.astype(np.float64), axis=0) if bands.ndim == 3 else bands
    vals = grey[valid & np.isfinite(grey)]
    if vals.size == 0:
        return np.full(grey.shape, 0.5)
    lo, hi = np.percentile(vals, [2.0, 98.0])
    if hi <= lo:
        return np.full(grey.shape, 0.5)
    return np.clip((np.nan_to_num(grey, nan=lo) - lo) / (hi - lo), 0.0, 1.0)


def blend(grey: np.ndarray, labels: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """RGB float image: class colour ``lut[label]`` over ``grey`` where labelled."""
    rgb = np.repeat(grey[..., None], 3, axis=2)
    has = labels != NODATA_LABEL
    colour = lut[labels] / 255.0
    rgb[has] = (1 - ALPHA) * rgb[has] + ALPHA * colour[has]
    return rgb


def _read_label(path: Path, max_side: int) -> tuple[np.ndarray, Any, dict[int, str], np.ndarray]:
    import rasterio
    from rasterio.enums import Resampling

    with rasterio.open(path) as ds:
        shape = decimated_shape(ds.height, ds.width, max_side)
        labels = ds.read(1, out_shape=shape, resampling=Resampling.nearest)
        lut = np.zeros((256, 3), dtype=np.float64)
        try:
            for k, c in ds.colormap(1).items():
                lut[k] = c[:3]
        except ValueError:  # no colour table: a grey ramp
            lut[:] = np.linspace(0, 255, 256)[:, None]
        names = json.loads(ds.tags().get("CLASS_NAMES", "[]"))
        ids = json.loads(ds.tags().get("CLASS_IDS", "null")) or list(range(len(names)))
        profile = {"crs": ds.crs, "transform": ds.transform, "width": ds.width,
                   "height": ds.height}  # fmt: skip
    return labels, profile, dict(zip(ids, names, strict=False)), lut


def _read_reference(path: str, profile: dict[str, Any], shape: tuple[int, int]) -> np.ndarray:
    """Up to three bands of the reference input on the map's grid, decimated."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    with (
        rasterio.open(path) as src,
        WarpedVRT(src, resampling=Resampling.bilinear, src_nodata=src.nodata, nodata=np.nan,
                  dtype="float32", **profile) as vrt,
    ):  # fmt: skip
        indexes = list(range(1, min(3, vrt.count) + 1))
        return vrt.read(indexes, out_shape=(len(indexes), *shape), resampling=Resampling.average)


def write_preview(
    label: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    max_side: int = 1024,
    title: str = "",
) -> Path:
    """Write the quick-look PNG (atomically: temp file in the folder, then renamed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    labels, profile, names, lut = _read_label(Path(label), max_side)
    ref = _read_reference(os.fspath(reference), profile, labels.shape)
    grey = stretch_grey(ref, np.isfinite(ref).all(axis=0))
    rgb = blend(grey, labels, lut)
    zoom = display_zoom(*labels.shape)  # whole pixels, drawn nearest: crisp, not blurred
    h, w = labels.shape[0] * zoom, labels.shape[1] * zoom
    fig_w, fig_h = w / 100 + 2.2, max(3.0, h / 100)  # the map, the legend beside it
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=100)
    ax = fig.add_axes((0.0, 1 - h / 100 / fig_h, w / 100 / fig_w, h / 100 / fig_h))
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    handles = [
        Patch(facecolor=lut[k] / 255.0, edgecolor="black", label=names[k]) for k in sorted(names)
    ]
    fig.legend(handles=handles, loc="upper right", title=title or None, fontsize=9, frameon=True)
    target = Path(out)
    try:
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return target


def write_run_preview(
    label: str | os.PathLike[str], inputs: Mapping[str, Any], out: str | os.PathLike[str],
    title: str = "",
) -> Path:
    """The quick-look of a run's label map over its reference input (optical, else HSI, else
    the first): the first file of a stack, a mosaic or the assets of STAC items, as the run
    reports its ``inputs``."""
    from mfaf_cli.metadata import REFERENCE_MODALITIES

    first = {k: v[0] if isinstance(v, list | tuple) else _first_file(str(v))
             for k, v in inputs.items()}  # fmt: skip
    ref = next((m for m in REFERENCE_MODALITIES if m in first), next(iter(first)))
    return write_preview(label, first[ref], out, title=title)


def _first_file(text: str) -> str:
    """The first file of a reported input: ``a.tif;b.tif`` (a stack), ``B12=url|url;...``
    (the assets of STAC items) or ``a.tif|b.tif`` (a mosaic)."""
    head = text.split(";")[0]
    if "=" in head.split("/")[0]:
        head = head.split("=", 1)[1]
    return head.split("|")[0]

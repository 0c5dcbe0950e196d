"""Resampling between two north-up grids of one CRS, in numpy (no GDAL warp).

The common case of a multimodal scene is a SAR file in the optical file's CRS at a coarser
pixel size (Sentinel-1 at 20 m under Sentinel-2 at 10 m). There the map from a grid pixel to
the source pixel is a scale and an offset per axis, so bilinear and nearest resampling are
separable: a pass along the columns, then along the rows. That costs a few array operations
per output pixel, where GDAL's general warper (a coordinate transform per pixel, a lock
around rasterio's in-memory warp) cost ~70 % of a null-engine predict run.

The rules are GDAL's, so results equal :func:`rasterio.warp.reproject` up to float rounding
(tested side by side): a grid pixel takes the source pixel under its centre (nearest) or the
2×2 source pixels around its centre, weighted by distance, over the *valid* ones only
(bilinear); a centre outside the source block is nodata. Bilinear is used only when the grid
is as fine as the source or finer (GDAL widens its kernel when downsampling).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from rasterio.transform import Affine

from mfaf_cli.scratch import scratch

#: A pixel whose valid bilinear weight is below this is nodata (as GDAL's warper).
MIN_WEIGHT = 1e-5
#: A centre this close (in source pixels) to a source pixel edge is a tie, which GDAL breaks by
#: its own float rounding: such blocks are left to GDAL.
TIE = 1e-6


class Taps(NamedTuple):
    """Two source indexes and their weights per output pixel along one axis."""

    i0: np.ndarray
    i1: np.ndarray
    w0: np.ndarray
    w1: np.ndarray
    inside: np.ndarray  # the output pixel's centre lies in the source block


def axis_aligned(src: Affine, dst: Affine) -> bool:
    """Whether ``dst`` maps onto ``src`` by a scale and offset per axis, same orientation."""
    return (
        src.b == 0 and src.d == 0 and dst.b == 0 and dst.d == 0
        and src.a > 0 and dst.a > 0 and src.e < 0 and dst.e < 0
    )  # fmt: skip


def source_coords(
    dst_origin: float, dst_step: float, first: int, n: int, src_origin: float, src_step: float
) -> np.ndarray:
    """Source pixel coordinate (0 = the file's first edge) of the centres of output pixels
    ``first .. first + n - 1`` (0 = the grid's first pixel).

    Whole-grid and whole-file indices, not the block's: a pixel's taps and weights are then the
    same floats however the grid is cut into blocks, so blocks (row chunks, column panels,
    crops) are bit-identical to one whole read.
    """
    centres = dst_origin + (np.arange(first, first + n, dtype=np.float64) + 0.5) * dst_step
    return (centres - src_origin) / src_step


def on_edges(u: np.ndarray) -> bool:
    """Whether any coordinate lies on a source pixel edge (within :data:`TIE`)."""
    return bool(np.any(np.abs(u - np.round(u)) < TIE))


def nearest_taps(u: np.ndarray, start: int, n_src: int) -> tuple[np.ndarray, np.ndarray]:
    """Index in the block (file pixels ``start .. start + n_src - 1``) of the source pixel
    under each centre (clipped), and whether it is inside the block."""
    idx = np.floor(u).astype(np.int64) - start
    inside = (idx >= 0) & (idx < n_src)
    return np.clip(idx, 0, n_src - 1), inside


def bilinear_taps(u: np.ndarray, start: int, n_src: int) -> Taps:
    """The two source pixels whose centres bracket each output centre, weighted by distance
    and normalised to sum 1; a neighbour past the block's edge gets weight 0 (its twin then
    carries the value, as GDAL renormalises there)."""
    _, inside = nearest_taps(u, start, n_src)
    v = u - 0.5
    g0 = np.floor(v)
    frac = (v - g0).astype(np.float32)
    i0 = g0.astype(np.int64) - start
    i1 = i0 + 1
    w0 = np.where((i0 >= 0) & (i0 < n_src), np.float32(1) - frac, np.float32(0))
    w1 = np.where((i1 >= 0) & (i1 < n_src), frac, np.float32(0))
    total = w0 + w1
    np.divide(w0, total, out=w0, where=total > 0)
    np.divide(w1, total, out=w1, where=total > 0)
    return Taps(np.clip(i0, 0, n_src - 1), np.clip(i1, 0, n_src - 1), w0, w1, inside)


def _pass(a: np.ndarray, taps: Taps, axis: int, out: np.ndarray | None = None) -> np.ndarray:
    """Weighted sum of the two taps along ``axis`` (the weights broadcast along it), into
    ``out`` (a fresh array if None).

    Where the taps repeat with a short period (an integer scale: 2x from 20 m SAR to a 10 m
    grid) each phase of the period is two strided slices of ``a``, no gather
    (:func:`_periodic_pass`); elsewhere the taps are gathered (:func:`_gathered_pass`). Both do
    the same float32 operations on the same elements, so they give the same bits.
    """
    shape = list(a.shape)
    shape[axis] = len(taps.i0)
    if out is None:
        out = np.empty(shape, dtype=a.dtype)
    run = periodic_run(taps)
    lo, hi = (0, 0) if run is None else (run.start, run.stop)
    if run is not None:
        _periodic_pass(a, taps, axis, run, out)
    for a0, a1 in ((0, lo), (hi, len(taps.i0))):  # the ends, or everything without a period
        if a1 > a0:
            _gathered_pass(a, _cut(taps, a0, a1), axis, _along(out, axis, slice(a0, a1)))
    return out


class Run(NamedTuple):
    """Outputs ``start .. stop - 1`` whose taps repeat every ``period`` outputs, each tap
    ``step`` source pixels further on."""

    start: int
    stop: int
    period: int
    step: int


#: Longest period looked for (scale factors up to 8 between source and grid).
MAX_PERIOD = 8


def periodic_run(taps: Taps) -> Run | None:
    """The longest run of outputs whose taps repeat with a short period (equal weights, both
    indexes ``step`` further on), or None (a non-integer scale, or a run too short to pay)."""
    n = len(taps.i0)
    for p in range(1, min(MAX_PERIOD, n // 4) + 1):
        d0, d1 = taps.i0[p:] - taps.i0[:-p], taps.i1[p:] - taps.i1[:-p]
        mid = (n - p) // 2
        q = int(d0[mid])
        if q < 1:
            continue
        same = (d0 == q) & (d1 == q) & (taps.w0[p:] == taps.w0[:-p])
        same &= taps.w1[p:] == taps.w1[:-p]
        if not same[mid]:
            continue
        breaks = np.flatnonzero(~same)
        s = int(breaks[breaks < mid].max()) + 1 if (breaks < mid).any() else 0
        e = int(breaks[breaks > mid].min()) if (breaks > mid).any() else len(same)
        if e - s >= 2 * p:  # outputs s .. e - 1 + p chain up period by period
            return Run(s, e + p, p, q)
    return None


def _periodic_pass(a: np.ndarray, taps: Taps, axis: int, run: Run, out: np.ndarray) -> None:
    """:func:`_gathered_pass` over ``run``: per phase, ``out = a[i0...] * w0 + a[i1...] * w1``
    with strided slices for the gathers."""
    for r in range(run.period):
        j = run.start + r
        m = (run.stop - 1 - j) // run.period + 1
        dst = _along(out, axis, slice(j, j + run.period * (m - 1) + 1, run.period))
        s0, s1 = int(taps.i0[j]), int(taps.i1[j])
        span = run.step * (m - 1) + 1
        np.multiply(_along(a, axis, slice(s0, s0 + span, run.step)), taps.w0[j], out=dst)
        other = scratch("resample.other", dst.shape, out.dtype)
        np.multiply(_along(a, axis, slice(s1, s1 + span, run.step)), taps.w1[j], out=other)
        dst += other


def _gathered_pass(a: np.ndarray, taps: Taps, axis: int, out: np.ndarray) -> None:
    """Gather both taps along ``axis`` and sum them weighted, into ``out``.

    Along the last axis the taps are gathered from the transposed block: taking whole rows
    is a copy per row, taking single elements a copy per element (4x slower, measured).
    """
    if axis == a.ndim - 1 and a.ndim > 1:
        flipped = np.ascontiguousarray(np.swapaxes(a, -1, -2))
        out[...] = np.swapaxes(_pass(flipped, taps, axis - 1), -1, -2)
        return
    shape = [1] * a.ndim
    shape[axis] = -1
    np.take(a, taps.i0, axis=axis, out=out, mode="clip")  # indexes are in range already
    out *= taps.w0.reshape(shape)
    other = scratch("resample.other", out.shape, out.dtype)
    np.take(a, taps.i1, axis=axis, out=other, mode="clip")
    other *= taps.w1.reshape(shape)
    out += other


def _along(a: np.ndarray, axis: int, part: slice) -> np.ndarray:
    """``a[..., part, ...]`` with ``part`` on ``axis``."""
    index: list[slice] = [slice(None)] * a.ndim
    index[axis] = part
    return a[tuple(index)]


def _cut(taps: Taps, a0: int, a1: int) -> Taps:
    """The taps of outputs ``a0 .. a1 - 1``."""
    return Taps(*(t[a0:a1] for t in taps))


def _touches(bad: np.ndarray, taps: Taps, axis: int) -> np.ndarray:
    """Whether either tap with a non-zero weight along ``axis`` is ``bad``."""
    shape = [1] * bad.ndim
    shape[axis] = -1
    out = np.take(bad, taps.i0, axis=axis) & (taps.w0 > 0).reshape(shape)
    out |= np.take(bad, taps.i1, axis=axis) & (taps.w1 > 0).reshape(shape)
    return out


def bilinear(
    vals: np.ndarray, valid: np.ndarray, rows: Taps, cols: Taps, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear over valid source pixels only: (C,h,w) values, NaN where no weight is valid
    (into ``out`` if given, an array of ``vals``'s dtype).

    The weights are separable: a column pass, then a row pass. A pixel whose four taps are
    valid is just that weighted sum; one that touches an invalid pixel is divided by the
    weight of its valid taps (GDAL's renormalisation). The choice is per pixel, so a pixel's
    value never depends on the block it was read in.
    """
    all_valid = bool(valid.all())
    zeroed = vals
    if not all_valid:  # np.where(valid, vals, 0), in a reused array
        zeroed = scratch("resample.zeroed", vals.shape, vals.dtype)
        zeroed.fill(0)
        np.copyto(zeroed, vals, where=valid)
    mid = scratch("resample.cols", (vals.shape[0], vals.shape[1], len(cols.i0)), vals.dtype)
    num = _pass(_pass(zeroed, cols, 2, mid), rows, 1, out)
    ok = rows.inside[:, None] & cols.inside[None, :]
    if not all_valid:
        touched = _touches(_touches(~valid, cols, 1), rows, 0)
        den = _pass(_pass(valid.astype(np.float32)[None], cols, 2), rows, 1)[0]
        with np.errstate(invalid="ignore", divide="ignore"):
            np.divide(num, den, out=num, where=touched)
        ok &= den >= MIN_WEIGHT
    return num, ok


def nearest_mask(valid: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``valid`` sampled at the given (clipped) source rows and columns."""
    return valid[rows[:, None], cols[None, :]]


def resample_block(
    vals: np.ndarray,
    valid: np.ndarray,
    src: tuple[Affine, int, int],
    dst: tuple[Affine, int, int],
    shape: tuple[int, int],
    method: str,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Resample a source block (C,hs,ws) with its valid mask onto ``shape`` output pixels
    (bilinear: into ``out``, (C, h, w) of ``vals``'s dtype, where given).

    ``src = (file transform, block's first row, first col)`` and ``dst = (grid transform,
    first row, first col)`` place both blocks in their whole rasters. ``method`` is
    ``"bilinear"`` or ``"nearest"``. Returns ``(data, ok)``: float32 values (NaN where
    invalid) and the output's valid mask — the nearest source pixel is valid and the value is
    finite, as the GDAL path reports it; or None when GDAL must do it: a pixel centre on a
    source pixel edge (a tie), or bilinear downsampling (GDAL widens its kernel).
    """
    (st, sr, sc), (dt, dr, dc) = src, dst
    h, w = shape
    if method == "bilinear" and (st.a < dt.a * (1 - 1e-9) or -st.e < -dt.e * (1 - 1e-9)):
        return None
    u = source_coords(dt.c, dt.a, dc, w, st.c, st.a)
    v = source_coords(dt.f, dt.e, dr, h, st.f, st.e)
    if on_edges(u) or on_edges(v):
        return None
    hs, ws = valid.shape
    valid = valid & np.isfinite(vals).all(axis=0)
    all_valid = bool(valid.all())
    ri, r_in = nearest_taps(v, sr, hs)
    ci, c_in = nearest_taps(u, sc, ws)
    if method == "nearest":
        near_ok = r_in[:, None] & c_in[None, :]
        if not all_valid:
            near_ok &= nearest_mask(valid, ri, ci)
        data = vals[:, ri[:, None], ci[None, :]].astype(np.float32, copy=True)
        data[:, ~near_ok] = np.nan
        return data, near_ok
    if method != "bilinear":
        raise ValueError(f"numpy resampling does {method!r}? only bilinear and nearest")
    if out is not None and (out.shape != (vals.shape[0], h, w) or out.dtype != vals.dtype):
        out = None
    data, ok = bilinear(vals, valid, bilinear_taps(v, sr, hs), bilinear_taps(u, sc, ws), out)
    if not all_valid:  # all valid: bilinear's ok (centres inside the block) is the nearest's
        ok &= r_in[:, None] & c_in[None, :]
        ok &= nearest_mask(valid, ri, ci)
    if not ok.all():
        data[:, ~ok] = np.nan
    return data, ok

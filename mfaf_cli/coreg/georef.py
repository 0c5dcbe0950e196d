"""Files georeferenced by ground control points or RPCs instead of a CRS + geotransform.

Raw Sentinel-1 GRD products carry GCPs, and much very-high-resolution optical imagery carries
RPCs (rational polynomial coefficients): both locate every pixel without a geotransform, and
GDAL warps them (``gdalwarp -tps`` / ``-rpc``). Here such a file is warped onto the grid one
block at a time like any other: the source pixels under a grid block are found by the inverse
transform (rasterio's ``GCPTransformer`` / ``RPCTransformer``), and the GCPs or RPCs are shifted
(and scaled, for decimated reads) to that source block, so every block uses the same model of
the whole file. GCPs: a thin-plate spline from :data:`TPS_MIN_GCPS` points on (exact at each
GCP, as ``gdalwarp -tps``), GDAL's polynomial below that. RPCs: heights from the DEM in
``$MFAF_RPC_DEM`` when set, else the constant ``HEIGHT_OFF`` of the RPCs (the scene's mean).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from rasterio.crs import CRS
from rasterio.warp import transform as transform_points

#: From this many GCPs on, warp with a thin-plate spline (else GDAL's polynomial).
TPS_MIN_GCPS = 10
#: Points per side sampled on a block's outline and inside it when finding its source pixels.
SAMPLES = 9
#: The CRS RPCs are defined in.
RPC_CRS = CRS.from_epsg(4326)

Kind = str  # "crs" | "gcps" | "rpcs" | "none"


def georeferencing(ds: Any) -> Kind:
    """How ``ds`` is georeferenced: ``crs`` (CRS + geotransform), ``gcps``, ``rpcs`` or ``none``."""
    if ds.crs is not None and ds.crs.to_wkt():
        return "crs"
    gcps, gcp_crs = ds.gcps
    if gcps and gcp_crs is not None:
        return "gcps"
    if ds.rpcs is not None:
        return "rpcs"
    return "none"


def describe(ds: Any) -> str:
    """One phrase for ``mfaf info``: ``CRS + geotransform``, ``212 GCPs (EPSG:4326), …``."""
    kind = georeferencing(ds)
    if kind == "gcps":
        gcps, crs = ds.gcps
        method = "thin-plate spline" if len(gcps) >= TPS_MIN_GCPS else "polynomial"
        return f"{len(gcps)} GCPs ({crs.to_string()}), warped by {method}"
    if kind == "rpcs":
        dem = os.environ.get("MFAF_RPC_DEM")
        return f"RPCs, warped with heights from {dem}" if dem else "RPCs, warped at constant height"
    return "CRS + geotransform" if kind == "crs" else "none"


@dataclass(frozen=True)
class Ground:
    """A GCP- or RPC-georeferenced file's model of where its pixels are."""

    kind: Kind
    crs: CRS  # the CRS the GCPs are in (EPSG:4326 for RPCs)
    gcps: tuple[Any, ...] = ()
    rpcs: Any = None
    width: int = 0
    height: int = 0

    @classmethod
    def of(cls, ds: Any) -> Ground | None:
        kind = georeferencing(ds)
        if kind == "gcps":
            gcps, crs = ds.gcps
            return cls("gcps", crs, tuple(gcps), None, ds.width, ds.height)
        if kind == "rpcs":
            return cls("rpcs", RPC_CRS, (), ds.rpcs, ds.width, ds.height)
        return None

    @property
    def tps(self) -> bool:
        return self.kind == "gcps" and len(self.gcps) >= TPS_MIN_GCPS

    def _options(self) -> dict[str, Any]:
        if self.kind == "rpcs":
            dem = os.environ.get("MFAF_RPC_DEM")
            return {"RPC_DEM": dem} if dem else {"RPC_HEIGHT": float(self.rpcs.height_off)}
        return {"SRC_METHOD": "GCP_TPS"} if self.tps else {}

    def transformer(self) -> Any:
        from rasterio.transform import GCPTransformer, RPCTransformer

        if self.kind == "rpcs":
            return RPCTransformer(self.rpcs, **self._options())
        return GCPTransformer(list(self.gcps), tps=self.tps)

    def footprint(self, crs: CRS) -> tuple[float, float, float, float]:
        """The file's bounds in ``crs`` (its outline's pixels located, then transformed)."""
        n = 33
        edge = np.linspace(0.0, 1.0, n)
        cols = np.concatenate([edge, np.ones(n), edge[::-1], np.zeros(n)]) * self.width
        rows = np.concatenate([np.zeros(n), edge, np.ones(n), edge[::-1]]) * self.height
        with self.transformer() as t:
            xs, ys = t.xy(rows, cols, offset="ul")
        xs, ys = transform_points(self.crs, crs, list(np.ravel(xs)), list(np.ravel(ys)))
        return (min(xs), min(ys), max(xs), max(ys))

    def source_window(
        self, grid_crs: CRS, block: tuple[float, float, float, float], pad: int
    ) -> tuple[int, int, int, int]:
        """(row0, col0, row1, col1) of the file's pixels under a grid block (padded, clipped)."""
        left, bottom, right, top = block
        gx, gy = np.meshgrid(np.linspace(left, right, SAMPLES), np.linspace(bottom, top, SAMPLES))
        xs, ys = transform_points(grid_crs, self.crs, gx.ravel().tolist(), gy.ravel().tolist())
        with self.transformer() as t:
            rows, cols = t.rowcol(xs, ys, op=float)
        rows, cols = np.asarray(rows, dtype=float), np.asarray(cols, dtype=float)
        ok = np.isfinite(rows) & np.isfinite(cols)
        if not ok.any():
            return (0, 0, 0, 0)
        r0 = max(0, math.floor(rows[ok].min()) - pad)
        c0 = max(0, math.floor(cols[ok].min()) - pad)
        r1 = min(self.height, math.ceil(rows[ok].max()) + pad)
        c1 = min(self.width, math.ceil(cols[ok].max()) + pad)
        return (r0, c0, r1, c1)

    def suggested_grid(self, dst_crs: CRS, resolution: Any = None) -> tuple[Any, int, int]:
        """GDAL's suggested warp output of the whole file in ``dst_crs``."""
        from rasterio.warp import calculate_default_transform

        model = {"rpcs": self.rpcs} if self.kind == "rpcs" else {"gcps": list(self.gcps)}
        return calculate_default_transform(
            self.crs, dst_crs, self.width, self.height, resolution=resolution, **model,
            **self._options(),
        )  # fmt: skip

    def warp_kwargs(self, row: int, col: int, sy: float = 1.0, sx: float = 1.0) -> dict[str, Any]:
        """``reproject`` keywords for a source block whose pixel (0, 0) is the file's
        (``row``, ``col``), read ``sy`` × ``sx`` times coarser."""
        if self.kind == "rpcs":
            # RPC line/sample count from pixel centres (GDAL adds half a pixel): scale about
            # the corners, as for GCPs, then back to centres
            r = self.rpcs
            line_off = (r.line_off + 0.5 - row) / sy - 0.5
            samp_off = (r.samp_off + 0.5 - col) / sx - 0.5
            shifted = replace_rpcs(r, line_off, r.line_scale / sy, samp_off, r.samp_scale / sx)
            return {"rpcs": shifted, "src_crs": self.crs, **self._options()}
        from rasterio.control import GroundControlPoint

        gcps = [
            GroundControlPoint(row=(g.row - row) / sy, col=(g.col - col) / sx, x=g.x, y=g.y, z=g.z)
            for g in self.gcps
        ]
        return {"gcps": gcps, "src_crs": self.crs, **self._options()}


def replace_rpcs(
    r: Any, line_off: float, line_scale: float, samp_off: float, samp_scale: float
) -> Any:
    """A copy of rasterio RPCs with new line/sample offsets and scales."""
    from rasterio.rpc import RPC

    d = r.to_dict()
    d.update(line_off=line_off, line_scale=line_scale, samp_off=samp_off, samp_scale=samp_scale)
    return RPC(**d)

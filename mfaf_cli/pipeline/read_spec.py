"""What a run reads: the inputs, their bands and the output grid, checked once when built.

:class:`ReadSpec` is the first of a run's three objects (with
:class:`~mfaf_cli.pipeline.spec.InferenceSpec`, how to infer, and
:class:`~mfaf_cli.pipeline.write_spec.WriteSpec`, what to write). predict, batch mode, split
scenes and coregister take it; the CLI builds it once from its flags (``cli/options.py``).
New input options (masks, STAC settings, grid rules) belong here, as fields.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, TypeVar

from mfaf_cli.errors import UsageError

R = TypeVar("R")

SAR_UNITS = ("auto", "db", "linear")


def _frozen(mapping: Mapping[str, Any] | None, convert: Callable[[Any], Any]) -> Mapping[str, Any]:
    return MappingProxyType({k: convert(v) for k, v in (mapping or {}).items()})


def _input_value(v: Any) -> Any:
    """A path stays as given; a list of files (a stack, tiles, STAC items) becomes a tuple."""
    return tuple(v) if isinstance(v, list) else v


@dataclass(frozen=True)
class ReadSpec:
    """The inputs and the grid they are read onto.

    ``inputs``: modality → raster path or URL, a list of files to stack (or tiles to mosaic
    with ``mosaic``), a Sentinel-2 folder or STAC items; empty in a template (batch mode: the
    CSV gives the inputs). ``bands``: modality → 1-based band numbers or band names.
    ``crs``, ``resolution``, ``bounds``, ``tap``: target-grid overrides; ``aoi``: a polygon
    file or :class:`~mfaf_cli.io.aoi.Aoi` (the run covers its bounds, pixels outside it are
    nodata); ``sar_units``: ``auto`` | ``db`` | ``linear``; ``nodata``: modality → the nodata
    value of its file; ``stack_grid``: the grid of a stack (``finest``, ``coarsest``, a
    1-based position or a file name).
    """

    inputs: Mapping[str, Any] = field(default_factory=dict)
    bands: Mapping[str, Sequence[int | str]] = field(default_factory=dict)
    crs: Any = None
    resolution: float | tuple[float, float] | None = None
    bounds: tuple[float, float, float, float] | None = None
    aoi: Any = None
    sar_units: str = "auto"
    nodata: Mapping[str, float] | None = None
    tap: bool | None = None
    mosaic: bool = False
    stack_grid: str | int | None = None
    #: optical pixels to treat as missing (issue 24, :mod:`mfaf_cli.coreg.cloudmask`): a 0/1
    #: mask, an S2 SCL band, or a cloud probability raster above ``cloud_threshold`` (0-100)
    optical_mask: Any = None
    cloud_threshold: float | None = None

    def __post_init__(self) -> None:
        from mfaf_cli.coreg.grid import check_bounds, check_resolution, parse_crs
        from mfaf_cli.coreg.validity import check_nodata

        inputs = {k: v for k, v in (self.inputs or {}).items() if v is not None and v != []}
        object.__setattr__(self, "inputs", _frozen(inputs, _input_value))
        bands = {k: v for k, v in (self.bands or {}).items() if v}
        object.__setattr__(self, "bands", _frozen(bands, tuple))
        object.__setattr__(self, "nodata", _frozen(self.nodata, float) if self.nodata else None)
        if inputs:
            stray = [m for m in bands if m not in inputs]
            if stray:
                raise UsageError(f"--{stray[0]}-bands is given but there is no --{stray[0]} input")
            check_nodata(self.nodata, list(inputs))
        if self.aoi is not None and self.bounds is not None:
            raise UsageError("--aoi and --bounds both set the extent: give one of them")
        if self.sar_units not in SAR_UNITS:
            raise UsageError(f"SAR units must be auto, db or linear, got {self.sar_units!r}")
        if self.cloud_threshold is not None:
            t = float(self.cloud_threshold)
            if not 0.0 <= t <= 100.0:
                raise UsageError(f"--cloud-threshold must be within 0-100 (a percentage), got {t}")
            if self.optical_mask is None and not _l2a_folder(inputs.get("optical")):
                raise UsageError("--cloud-threshold applies to --optical-mask: give the mask file")
        if self.optical_mask is not None and inputs and "optical" not in inputs:
            raise UsageError("--optical-mask masks the optical input, but there is no --optical")
        check_resolution(self.resolution)
        if self.bounds is not None:
            check_bounds(self.bounds)
        if self.crs is not None:
            parse_crs(self.crs)

    def band_lists(self) -> dict[str, list[int | str]]:
        """``bands`` as the plain dict of lists the readers take."""
        return {k: list(v) for k, v in self.bands.items()}

    def grid_options(self) -> dict[str, Any]:
        """The keywords of :func:`~mfaf_cli.coreg.grid.grid_from_reference` (``tap`` is in
        force through :func:`expanded`)."""
        return {"crs": self.crs, "resolution": self.resolution, "bounds": self.bounds}

    def with_inputs(
        self, inputs: Mapping[str, Any], bands: Mapping[str, Sequence[int | str]] | None = None
    ) -> ReadSpec:
        """This spec for other inputs (a batch row); ``bands`` fill in for the row's modalities
        this spec has no bands for."""
        given = {m: v for m, v in inputs.items() if v is not None}
        merged = {m: b for m, b in self.bands.items() if m in given} | dict(bands or {})
        return replace(self, inputs=given, bands=merged)

    def read_aoi(self) -> Any:
        """``aoi`` read (a path: one error line if it is not a polygon file), or None."""
        if self.aoi is None or not isinstance(self.aoi, str | os.PathLike):
            return self.aoi
        from mfaf_cli.io.aoi import read_aoi

        return read_aoi(self.aoi)


def _l2a_folder(path: Any) -> bool:
    """Whether an optical input is a folder (an S2 L2A product brings its SCL band)."""
    return isinstance(path, str | os.PathLike) and os.path.isdir(path)


def expanded(
    read: ReadSpec,
    run: Callable[[ReadSpec], R],
    *,
    for_model: bool = True,
    model: Any = None,
    predictor: Any = None,
    output: Any = None,
) -> R:
    """``run(read)`` with ``read.inputs`` made plain files: STAC items and mosaics
    (:mod:`~mfaf_cli.coreg.sources`), stacks and Sentinel-2 folders
    (:mod:`~mfaf_cli.coreg.stack`), under the run's ``--nodata`` and ``--tap``
    (:mod:`~mfaf_cli.coreg.overrides`). A folder or an item gives the bands of the run's model
    (``model`` / ``predictor``; None: the default model of the inputs), or with
    ``for_model=False`` (coregister) the bands ``read`` names, else all."""
    from mfaf_cli.coreg.overrides import with_input_overrides
    from mfaf_cli.coreg.sources import expand_sources
    from mfaf_cli.coreg.stack import expand_stacks

    @with_input_overrides
    @expand_sources
    @expand_stacks
    def flat(
        inputs: Mapping[str, Any], output: Any = None, model: Any = None, *,
        bands: Any = None, predictor: Any = None,
    ) -> R:  # fmt: skip
        plain = {k: os.fspath(v) for k, v in inputs.items() if v is not None}
        return run(replace(read, inputs=plain, bands=bands or {}))

    inputs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in read.inputs.items()}
    options = {"nodata": dict(read.nodata) if read.nodata else None, "tap": read.tap,
               "mosaic": read.mosaic, "stack_grid": read.stack_grid}  # fmt: skip
    args = (output, model) if for_model else ()
    return flat(inputs, *args, bands=read.band_lists() or None, predictor=predictor,
                **options)  # fmt: skip

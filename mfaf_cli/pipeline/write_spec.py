"""What a run writes: its output set, checked once when built.

:class:`WriteSpec` is the third of a run's three objects (with
:class:`~mfaf_cli.pipeline.read_spec.ReadSpec` and
:class:`~mfaf_cli.pipeline.spec.InferenceSpec`). predict, batch mode (a template: the CSV
gives each scene's paths), split scenes and coregister take it; the CLI builds it once from
its flags (``cli/options.py``). New outputs and output options belong here, as fields.
Whether a path can be written (folder, existing file, ``overwrite``) is a fact of the disk at
run time, so the run checks that, not the object.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from mfaf_cli.errors import OutputPathError, UsageError
from mfaf_cli.types import CONFIDENCE_KINDS, PROBABILITY_DTYPES

PathLike = str | os.PathLike[str]

#: the GeoTIFF outputs, in OutputSet's order
RASTERS = ("label", "probabilities", "confidence", "exclusion")


@dataclass(frozen=True)
class WriteSpec:
    """The outputs of a run and how they are written.

    ``label``: the label GeoTIFF (uint8 class ids, nodata 255, colour table);
    ``probabilities`` (``probabilities_dtype`` ``uint8`` 0..254 or ``float32`` 0..1),
    ``confidence`` (``confidence_kind`` ``top`` or ``entropy``), ``exclusion`` (the exclusion
    mask's reason codes) and ``vector`` (polygons of the label map) are optional;
    ``mask_excluded`` writes excluded pixels as nodata everywhere; ``preview``: a quick-look
    PNG of the label map over the reference input. ``cog`` and
    ``creation_options`` (GDAL ``--co``) shape the GeoTIFFs; ``overwrite`` replaces existing
    files. With no path at all it is a template (batch mode: the CSV gives the paths).
    """

    label: PathLike | None = None
    probabilities: PathLike | None = None
    probabilities_dtype: str = "uint8"
    confidence: PathLike | None = None
    confidence_kind: str = "top"
    exclusion: PathLike | None = None
    #: the source map: which model made each pixel (fusion / fallback / none; issue 24)
    source: PathLike | None = None
    mask_excluded: bool = False
    vector: PathLike | None = None
    preview: PathLike | None = None
    cog: bool = False
    creation_options: Mapping[str, str] | None = None
    overwrite: bool = False
    #: a template holds options only: its paths come from elsewhere (batch CSV rows,
    #: coregister's folder), so having none is not "nothing to write"
    template: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from mfaf_cli.io.raster import check_creation_options
        from mfaf_cli.pipeline.exclusion import check_distinct_outputs

        if self.creation_options is not None:
            opts = MappingProxyType(dict(self.creation_options)) if self.creation_options else None
            object.__setattr__(self, "creation_options", opts)
        if self.probabilities_dtype not in PROBABILITY_DTYPES:  # OutputSet's words
            raise UsageError(
                f"probability dtype must be uint8 or float32, got {self.probabilities_dtype!r}"
            )
        if self.confidence_kind not in CONFIDENCE_KINDS:
            raise UsageError(
                f"confidence kind must be top or entropy, got {self.confidence_kind!r}"
            )
        maps = (self.label, self.probabilities, self.confidence)
        if not self.template and all(p is None for p in maps):
            raise UsageError("nothing to write: give -o/--output (or --probabilities/--confidence)")
        if self.vector is not None and self.label is None and not self.template:
            raise UsageError("--vector polygonises the label map: give -o/--output too")
        if self.preview is not None and self.label is None and not self.template:
            raise UsageError("--preview shows the label map: give -o/--output too")
        check_distinct_outputs({"-o/--output": self.label, "--probabilities": self.probabilities,
                                "--confidence": self.confidence, "--vector": self.vector,
                                "--exclusion": self.exclusion,
                                "--source": self.source})  # fmt: skip
        check_creation_options(self.creation_options)

    def rasters(self) -> dict[str, PathLike | None]:
        """The GeoTIFF outputs by kind (label, probabilities, confidence, exclusion)."""
        return {k: getattr(self, k) for k in RASTERS}

    def for_paths(self, **paths: Any) -> WriteSpec:
        """This template's options with a scene's paths (batch mode)."""
        return replace(self, template=False, **paths)

    def check_paths(self) -> None:
        """Every output can be written now (folder exists; no file, or ``overwrite``): before
        the model loads, so a wrong path fails in a second."""
        from mfaf_cli.io.raster import check_output_path

        for p in (*self.rasters().values(), self.source):
            if p is not None:
                check_output_path(p, self.overwrite)
        if self.vector is not None:
            check_vector_path(self.vector, self.overwrite)
        if self.preview is not None:
            from mfaf_cli.io.preview import check_preview_path

            check_preview_path(self.preview, self.overwrite)

    def output_set_options(self) -> dict[str, Any]:
        """The format keywords of :class:`~mfaf_cli.io.raster.OutputSet`."""
        return {
            "creation_options": self.creation_options, "cog": self.cog,
            "probability_dtype": self.probabilities_dtype, "overwrite": self.overwrite,
            "confidence_kind": self.confidence_kind, "mask_excluded": self.mask_excluded,
        }  # fmt: skip


def check_vector_path(path: PathLike, overwrite: bool) -> None:
    """Fail before any work if the vector output cannot be written."""
    try:
        from mfaf_cli.vectorize.polygons import check_output
    except ImportError:  # pragma: no cover - vectorize not built
        raise UsageError("--vector is not available in this build") from None
    p = Path(path)
    if not p.parent.exists():
        raise OutputPathError(
            f"output folder {p.parent} does not exist; create it (mkdir -p) or choose another path"
        )
    check_output(p, overwrite)

"""The one place for model metadata: modalities, bands, normalisation, classes, colours.

A :class:`ModelMeta` record travels with every model (safetensors metadata, ONNX metadata,
weights/manifest.json). Everything downstream (band selection, normalisation, resampling,
colour tables, vector attributes, metric tables) reads it from here; nothing else hard-codes
band indexes or class ids.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from mfaf_cli.errors import WeightsError

Modality = Literal["optical", "sar", "hsi", "lidar"]
#: Modalities whose grid is the default target grid, in order of preference.
REFERENCE_MODALITIES: tuple[str, ...] = ("optical", "hsi")
ALL_MODALITIES: tuple[str, ...] = ("optical", "sar", "hsi", "lidar")

#: How each modality is resampled when warped onto the target grid.
#: "sar" = averaged in linear power (dB converted to power and back), not in dB.
RESAMPLING_KIND: dict[str, str] = {
    "optical": "bilinear",
    "hsi": "bilinear",
    "lidar": "bilinear",
    "sar": "sar",
}

NODATA_LABEL = 255


@dataclass(frozen=True)
class ClassInfo:
    """One row of a class table."""

    id: int
    name: str
    color: tuple[int, int, int]


@dataclass(frozen=True)
class Normalisation:
    """Per-band normalisation, identical at training and inference time.

    ``mode="scene-percentile"``: each band is first stretched to [0, 1] between its
    ``p_low``/``p_high`` percentiles *of the scene being processed* (for predict: computed from
    a decimated read of the whole input; for training: of each training patch/sheet), clipped,
    then standardised with ``mean``/``std`` measured on the training split after that stretch.
    This is what lets a model trained on 8-bit PNG patches (OMBRIA) run on raw Sentinel-2
    reflectance (uint16/int16) and Sentinel-1 dB (float32): the stretch removes the unit.

    ``mode="fixed"``: each band is clipped to ``[clip_low, clip_high]`` (training-split
    quantiles, in sensor units; no clip when None), then ``(x - mean) / std`` with training-split
    statistics in sensor units. A pixel's value never depends on the rest of the scene, so any
    crop of a scene is normalised exactly as the whole scene is (the default since format 2).
    """

    mode: Literal["scene-percentile", "fixed"]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    p_low: float = 2.0
    p_high: float = 98.0
    clip_low: tuple[float, ...] | None = None
    clip_high: tuple[float, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "mode": self.mode,
            "mean": list(self.mean),
            "std": list(self.std),
            "p_low": self.p_low,
            "p_high": self.p_high,
        }
        if self.clip_low is not None and self.clip_high is not None:
            d["clip_low"] = list(self.clip_low)
            d["clip_high"] = list(self.clip_high)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalisation:
        def floats(key: str) -> tuple[float, ...] | None:
            return None if d.get(key) is None else tuple(float(v) for v in d[key])

        return cls(
            mode=d["mode"],
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            p_low=float(d.get("p_low", 2.0)),
            p_high=float(d.get("p_high", 98.0)),
            clip_low=floats("clip_low"),
            clip_high=floats("clip_high"),
        )

    @classmethod
    def identity(cls, n_bands: int, mode: str = "scene-percentile") -> Normalisation:
        """Neutral statistics, for untrained models."""
        mean, std = (0.5, 0.25) if mode == "scene-percentile" else (0.0, 1.0)
        return cls(mode=mode, mean=(mean,) * n_bands, std=(std,) * n_bands)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ModalitySpec:
    """A modality the model takes: its name, band names in model order, normalisation."""

    name: str
    bands: tuple[str, ...]
    normalisation: Normalisation
    #: For SAR: whether values are expected in dB ("db") or linear power ("linear").
    units: str = ""

    @property
    def n_bands(self) -> int:
        return len(self.bands)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "bands": list(self.bands),
            "normalisation": self.normalisation.to_dict(),
            "units": self.units,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModalitySpec:
        return cls(
            name=d["name"],
            bands=tuple(d["bands"]),
            normalisation=Normalisation.from_dict(d["normalisation"]),
            units=d.get("units", ""),
        )


@dataclass(frozen=True)
class ModelMeta:
    """Everything needed to run a trained model on a new scene, and to say what it is."""

    arch: str  # registry name, e.g. "mfafnet-s"
    modalities: tuple[ModalitySpec, ...]
    classes: tuple[ClassInfo, ...]
    config: dict[str, Any] = field(default_factory=dict)  # builder kwargs beyond channels/classes
    ignore_index: int = 255
    tile_size: int = 256
    divisor: int = 16
    training: dict[str, Any] = field(default_factory=dict)  # data, split, command, epochs, time
    metrics: dict[str, Any] = field(default_factory=dict)
    trained: bool = False
    format_version: int = 1

    # ---- derived views ---------------------------------------------------------------
    @property
    def modality_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modalities)

    @property
    def in_channels(self) -> dict[str, int]:
        return {m.name: m.n_bands for m in self.modalities}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def reference_modality(self) -> str:
        for name in REFERENCE_MODALITIES:
            if name in self.modality_names:
                return name
        return self.modality_names[0]

    def modality(self, name: str) -> ModalitySpec:
        for m in self.modalities:
            if m.name == name:
                return m
        raise KeyError(name)

    def colormap(self) -> dict[int, tuple[int, int, int, int]]:
        """GDAL colour table (class id -> RGBA), nodata (255) transparent black."""
        cmap = {c.id: (*c.color, 255) for c in self.classes}
        cmap[NODATA_LABEL] = (0, 0, 0, 0)
        return cmap

    # ---- (de)serialisation ----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "arch": self.arch,
            "config": self.config,
            "modalities": [m.to_dict() for m in self.modalities],
            "classes": [asdict(c) | {"color": list(c.color)} for c in self.classes],
            "ignore_index": self.ignore_index,
            "tile_size": self.tile_size,
            "divisor": self.divisor,
            "training": self.training,
            "metrics": self.metrics,
            "trained": self.trained,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelMeta:
        try:
            return cls(
                arch=d["arch"],
                config=dict(d.get("config", {})),
                modalities=tuple(ModalitySpec.from_dict(m) for m in d["modalities"]),
                classes=tuple(
                    ClassInfo(int(c["id"]), str(c["name"]), tuple(c["color"]))  # type: ignore[arg-type]
                    for c in d["classes"]
                ),
                ignore_index=int(d.get("ignore_index", 255)),
                tile_size=int(d.get("tile_size", 256)),
                divisor=int(d.get("divisor", 16)),
                training=dict(d.get("training", {})),
                metrics=dict(d.get("metrics", {})),
                trained=bool(d.get("trained", False)),
                format_version=int(d.get("format_version", 1)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise WeightsError(f"model metadata record is incomplete or malformed ({err})") from err

    @classmethod
    def from_json(cls, s: str) -> ModelMeta:
        try:
            return cls.from_dict(json.loads(s))
        except json.JSONDecodeError as err:
            raise WeightsError(f"model metadata is not valid JSON ({err})") from err


# ---- class tables -------------------------------------------------------------------------
WATER_CLASSES: tuple[ClassInfo, ...] = (
    ClassInfo(0, "not-water", (225, 220, 200)),
    ClassInfo(1, "water", (30, 90, 200)),
)

#: WHU-OPT-SAR: label value v -> v // 10; 0 (background) is ignored.
WHU_CLASSES: tuple[ClassInfo, ...] = (
    ClassInfo(0, "background", (0, 0, 0)),
    ClassInfo(1, "farmland", (255, 215, 0)),
    ClassInfo(2, "city", (220, 20, 60)),
    ClassInfo(3, "village", (255, 140, 90)),
    ClassInfo(4, "water", (30, 90, 200)),
    ClassInfo(5, "forest", (34, 139, 34)),
    ClassInfo(6, "road", (128, 128, 128)),
    ClassInfo(7, "others", (160, 82, 45)),
)

HOUSTON2013_CLASSES: tuple[ClassInfo, ...] = tuple(
    ClassInfo(i, n, c)
    for i, (n, c) in enumerate(
        [
            ("healthy-grass", (0, 205, 0)),
            ("stressed-grass", (127, 255, 0)),
            ("synthetic-grass", (46, 139, 87)),
            ("trees", (0, 139, 0)),
            ("soil", (160, 82, 45)),
            ("water", (0, 255, 255)),
            ("residential", (255, 255, 255)),
            ("commercial", (216, 191, 216)),
            ("road", (255, 0, 0)),
            ("highway", (139, 0, 0)),
            ("railway", (100, 0, 0)),
            ("parking-lot-1", (255, 255, 0)),
            ("parking-lot-2", (238, 154, 0)),
            ("tennis-court", (85, 26, 139)),
            ("running-track", (255, 127, 80)),
        ]
    )
)

CLASS_TABLES: dict[str, tuple[ClassInfo, ...]] = {
    "water": WATER_CLASSES,
    "whu": WHU_CLASSES,
    "houston2013": HOUSTON2013_CLASSES,
}

# ---- default band names per modality (used for untrained/registry defaults) ---------------
DEFAULT_BANDS: dict[str, tuple[str, ...]] = {
    "optical": ("red", "green", "blue", "nir"),
    "sar": ("vv",),
    "hsi": tuple(f"b{i + 1}" for i in range(144)),
    "lidar": ("dsm",),
}


def default_classes(n: int) -> tuple[ClassInfo, ...]:
    """A class table for ``n`` classes: a named one if sizes match, else generic colours."""
    for table in (WATER_CLASSES, WHU_CLASSES, HOUSTON2013_CLASSES):
        if len(table) == n:
            return table
    import colorsys

    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb(i / max(n, 1), 0.65, 0.9)
        out.append(ClassInfo(i, f"class-{i}", (int(r * 255), int(g * 255), int(b * 255))))
    return tuple(out)

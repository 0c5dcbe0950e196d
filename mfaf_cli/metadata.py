"""The one place for model metadata: modalities, bands, normalisation, classes, colours.

A :class:`ModelMeta` record travels with every model (safetensors metadata, ONNX metadata,
mfaf_cli/weights/manifest.json). Everything downstream (band selection, normalisation, resampling,
colour tables, vector attributes, metric tables) reads it from here; nothing else hard-codes
band indexes or class ids.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from mfaf_cli.errors import UsageError, WeightsError
from mfaf_cli.types import MODALITIES
from mfaf_cli.types import Modality as Modality  # re-exported; defined in mfaf_cli.types

#: Modalities whose grid is the default target grid, in order of preference.
REFERENCE_MODALITIES: tuple[str, ...] = ("optical", "hsi")
ALL_MODALITIES: tuple[str, ...] = MODALITIES

#: How each modality is resampled when warped onto the target grid.
#: "sar" = averaged in linear power (dB converted to power and back), not in dB.
RESAMPLING_KIND: dict[str, str] = {
    "optical": "bilinear",
    "hsi": "bilinear",
    "lidar": "bilinear",
    "sar": "sar",
}

NODATA_LABEL = 255
#: Key of the JSON model record in a checkpoint's, ONNX model's or raster's string metadata.
META_KEY = "mfaf_meta"


@dataclass(frozen=True)
class ClassInfo:
    """One row of a class table."""

    id: int
    name: str
    color: tuple[int, int, int]
    code: int | None = None  # the label product's code for this class (WorldCover 10, ...)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "name": self.name, "color": list(self.color)}
        return d if self.code is None else d | {"code": self.code}


@dataclass(frozen=True)
class Normalisation:
    """Per-band normalisation, identical at training and inference time.

    ``mode="scene-percentile"``: each band is first stretched to [0, 1] between its
    ``p_low``/``p_high`` percentiles *of the scene being processed* (for predict: computed from
    whole blocks sampled over the input, see coreg/sampling.py; for training: of each training
    patch/sheet), clipped,
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
    """A modality the model takes: its name, band names in model order, normalisation.

    ``meanings`` says what each band measures (a key of :data:`BAND_MEANINGS`, or ``""`` when
    unknown, e.g. numbered HSI bands); that is what band selection matches a file's band
    descriptions against. Records written before it existed derive it from the band names
    (``swir``, ``nir``, ``red``, ``vv``, Sentinel-2 ``B12``...), see :func:`meaning_of_name`.
    """

    name: str
    bands: tuple[str, ...]
    normalisation: Normalisation
    #: For SAR: whether values are expected in dB ("db") or linear power ("linear").
    units: str = ""
    meanings: tuple[str, ...] = ()
    #: Training split's per-band 0.1 / 99.9 % quantiles (sensor units): the input domain the
    #: model saw (see mfaf_cli/applicability.py); None in records made before it existed.
    range_low: tuple[float, ...] | None = None
    range_high: tuple[float, ...] | None = None
    #: Per band, the side(s) where the training data were saturated ("low", "high", "both" or
    #: ""): the product clipped values there, so the model saw that value stand for everything
    #: beyond it and the range is open on that side. () when no side is.
    range_open: tuple[str, ...] = ()
    #: Per band, the sensor's noise floor in the band's units (None: none known), e.g. the
    #: Sentinel-1 IW noise-equivalent sigma zero for VV / VH in dB: the range check reads
    #: values below it as the floor (they are noise, not a darker surface). () when no band has
    #: one (see mfaf_cli/applicability.py, ``noise_floors``).
    range_floor: tuple[float | None, ...] = ()

    def __post_init__(self) -> None:
        if not self.meanings:
            derived = tuple(meaning_of_name(b, self.name) or "" for b in self.bands)
            object.__setattr__(self, "meanings", derived)
        elif len(self.meanings) != len(self.bands):
            raise WeightsError(
                f"modality {self.name}: {len(self.meanings)} band meanings for "
                f"{len(self.bands)} bands"
            )

    @property
    def n_bands(self) -> int:
        return len(self.bands)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "bands": list(self.bands),
            "meanings": list(self.meanings),
            "normalisation": self.normalisation.to_dict(),
            "units": self.units,
        } | self._range_dict()

    def _range_dict(self) -> dict[str, Any]:
        if self.range_low is None or self.range_high is None:
            return {}
        d: dict[str, list[Any]] = {
            "range_low": list(self.range_low),
            "range_high": list(self.range_high),
        }
        d |= {"range_open": list(self.range_open)} if any(self.range_open) else {}
        has_floor = any(v is not None for v in self.range_floor)
        return d | ({"range_floor": list(self.range_floor)} if has_floor else {})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModalitySpec:
        return cls(
            name=d["name"],
            bands=tuple(d["bands"]),
            normalisation=Normalisation.from_dict(d["normalisation"]),
            units=d.get("units", ""),
            meanings=tuple(str(m) for m in d.get("meanings", ())),
            range_low=None if d.get("range_low") is None else tuple(map(float, d["range_low"])),
            range_high=None if d.get("range_high") is None else tuple(map(float, d["range_high"])),
            range_open=tuple(str(v) for v in d.get("range_open", ())),
            range_floor=tuple(None if v is None else float(v) for v in d.get("range_floor", ())),
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
    #: Softmax temperature fitted on the validation split (1 = uncalibrated); every engine
    #: divides the logits by it, so labels never change (arg-max is invariant).
    temperature: float = 1.0
    #: Applicability rules ``(name, expression)`` over bands by meaning, in reason-code order
    #: (parsed and checked by mfaf_cli/applicability.py; never Python ``eval``).
    rules: tuple[tuple[str, str], ...] = ()
    #: Per-pixel fallbacks: missing modality -> model (shipped name or path) that maps the
    #: pixels without it from the other modalities (pipeline/fallback.py), e.g.
    #: ``{"optical": "unet-sar-ombria-water"}``; empty: pixels missing a modality are nodata.
    fallbacks: dict[str, str] = field(default_factory=dict)

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
            "classes": [c.to_dict() for c in self.classes],
            "ignore_index": self.ignore_index,
            "tile_size": self.tile_size,
            "divisor": self.divisor,
            "training": self.training,
            "metrics": self.metrics,
            "trained": self.trained,
            "temperature": self.temperature,
        } | ({"rules": [{"name": n, "expr": e} for n, e in self.rules]} if self.rules else {}) | (
            {"fallbacks": dict(self.fallbacks)} if self.fallbacks else {}
        )  # fmt: skip

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
                    ClassInfo(
                        int(c["id"]),
                        str(c["name"]),
                        tuple(c["color"]),  # type: ignore[arg-type]
                        None if c.get("code") is None else int(c["code"]),
                    )
                    for c in d["classes"]
                ),
                ignore_index=int(d.get("ignore_index", 255)),
                tile_size=int(d.get("tile_size", 256)),
                divisor=int(d.get("divisor", 16)),
                training=dict(d.get("training", {})),
                metrics=dict(d.get("metrics", {})),
                trained=bool(d.get("trained", False)),
                format_version=int(d.get("format_version", 1)),
                temperature=_temperature(d.get("temperature", 1.0)),
                rules=tuple((str(r["name"]), str(r["expr"])) for r in d.get("rules", ())),
                fallbacks={str(k): str(v) for k, v in dict(d.get("fallbacks", {})).items()},
            )
        except (KeyError, TypeError, ValueError) as err:
            raise WeightsError(f"model metadata record is incomplete or malformed ({err})") from err

    @classmethod
    def from_json(cls, s: str) -> ModelMeta:
        try:
            return cls.from_dict(json.loads(s))
        except json.JSONDecodeError as err:
            raise WeightsError(f"model metadata is not valid JSON ({err})") from err


def _temperature(v: Any) -> float:
    """A record's softmax temperature: a finite positive number."""
    t = float(v)
    if not (t > 0 and t < float("inf")):
        raise ValueError(f"temperature {v!r} is not a positive number")
    return t


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

# ---- default band names per modality (used for untrained/registry defaults) ---------------
DEFAULT_BANDS: dict[str, tuple[str, ...]] = {
    "optical": ("red", "green", "blue", "nir"),
    "sar": ("vv",),
    "hsi": tuple(f"b{i + 1}" for i in range(144)),
    "lidar": ("dsm",),
}

#: Units of a modality's values when nothing says otherwise (SAR backscatter in dB).
DEFAULT_UNITS: dict[str, str] = {"sar": "db"}


def default_band_names(modality: str, n: int) -> tuple[str, ...]:
    """Band names for ``n`` bands of an *untrained* ``modality``: the modality's default bands
    when the count fits, VV+VH for 2 SAR bands, else ``b1..bn`` (positional: predict then
    takes the file's bands in order). Never RGB merely because there are 3 optical bands: a
    trained record names the bands it was trained on (``data/bands.py``)."""
    default = DEFAULT_BANDS.get(modality, ())
    if len(default) == n:
        return default
    if modality == "sar" and n == 2:
        return ("vv", "vh")
    return tuple(f"b{i + 1}" for i in range(n))


def default_classes(
    n: int,
    tables: Sequence[tuple[ClassInfo, ...]] = (WATER_CLASSES, WHU_CLASSES, HOUSTON2013_CLASSES),
) -> tuple[ClassInfo, ...]:
    """A class table for ``n`` classes: the first of ``tables`` with ``n`` classes, else
    generic names and colours (pass only the tables of a model's own tasks, so that a model
    for another modality pair is not named after a task it never does)."""
    for table in tables:
        if len(table) == n:
            return table
    import colorsys

    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb(i / max(n, 1), 0.65, 0.9)
        out.append(ClassInfo(i, f"class-{i}", (int(r * 255), int(g * 255), int(b * 255))))
    return tuple(out)


# ---- band meanings and what common sensors call them ------------------------------------
@dataclass(frozen=True)
class BandMeaning:
    """What a band measures, and the name each common sensor gives that band."""

    key: str  # what model metadata records, e.g. "swir"
    modality: str  # the modality such a band belongs to
    what: str  # for messages: wavelength or polarisation
    sensors: Mapping[str, str]  # sensor -> its band name, e.g. {"Sentinel-2": "B12"}
    aliases: tuple[str, ...] = ()  # other spellings of the meaning (compared without spaces)


#: The one table of band meanings. Sentinel-2 MSI (L1C: B1..B12 with B8A and B10; L2A drops
#: B10) and Sentinel-1 polarisations; LiDAR rasters are a surface model. ``swir`` is SWIR-2
#: (~2.2 µm, what OMBRIA's false-colour composite and most water indexes use), ``swir1`` ~1.6 µm.
# fmt: off
BAND_MEANINGS: tuple[BandMeaning, ...] = (
    BandMeaning("coastal", "optical", "aerosol ~443 nm", {"Sentinel-2": "B1"}, ("aerosol",)),
    BandMeaning("blue", "optical", "~490 nm", {"Sentinel-2": "B2"}),
    BandMeaning("green", "optical", "~560 nm", {"Sentinel-2": "B3"}),
    BandMeaning("red", "optical", "~665 nm", {"Sentinel-2": "B4"}),
    BandMeaning("rededge1", "optical", "red edge ~705 nm", {"Sentinel-2": "B5"}, ("re1",)),
    BandMeaning("rededge2", "optical", "red edge ~740 nm", {"Sentinel-2": "B6"}, ("re2",)),
    BandMeaning("rededge3", "optical", "red edge ~783 nm", {"Sentinel-2": "B7"}, ("re3",)),
    BandMeaning("nir", "optical", "near infrared ~842 nm", {"Sentinel-2": "B8"},
                ("nir1", "nearinfrared")),
    BandMeaning("nir2", "optical", "narrow NIR ~865 nm", {"Sentinel-2": "B8A"},
                ("nirnarrow", "narrownir", "nir08")),
    BandMeaning("watervapour", "optical", "water vapour ~945 nm", {"Sentinel-2": "B9"},
                ("watervapor", "wv")),
    BandMeaning("cirrus", "optical", "cirrus ~1375 nm", {"Sentinel-2": "B10"}),
    BandMeaning("swir1", "optical", "shortwave infrared ~1610 nm", {"Sentinel-2": "B11"},
                ("swir16",)),
    BandMeaning("swir", "optical", "shortwave infrared ~2190 nm", {"Sentinel-2": "B12"},
                ("swir2", "swir22")),
    BandMeaning("vv", "sar", "VV backscatter", {"Sentinel-1": "VV"}, ("sigma0vv",)),
    BandMeaning("vh", "sar", "VH backscatter", {"Sentinel-1": "VH"}, ("sigma0vh",)),
    BandMeaning("hh", "sar", "HH backscatter", {"Sentinel-1": "HH"}),
    BandMeaning("hv", "sar", "HV backscatter", {"Sentinel-1": "HV"}),
    BandMeaning("dsm", "lidar", "surface height", {}, ("dem", "height", "elevation", "ndsm")),
)
# fmt: on
MEANINGS: dict[str, BandMeaning] = {m.key: m for m in BAND_MEANINGS}
#: Meanings of a Sentinel-2 L1C stack's bands in file order (B1 … B8, B8A, B9 … B12).
SENTINEL2_L1C_MEANINGS: tuple[str, ...] = tuple(
    m.key for m in BAND_MEANINGS if "Sentinel-2" in m.sensors
)
_BY_SPELLING: dict[str, str] = {a: m.key for m in BAND_MEANINGS for a in (m.key, *m.aliases)}
_BY_SENSOR_NAME: dict[tuple[str, str], str] = {
    (sensor, name.lower()): m.key for m in BAND_MEANINGS for sensor, name in m.sensors.items()
}
#: How a sensor's band names look inside a description token (lower case): Sentinel-2 ``B4``,
#: ``B04``, ``B8A`` (also inside L2A / SAFE names: ``B12_20m``, ``T29SND_..._B04_10m``).
_SENSOR_TOKENS: dict[str, re.Pattern[str]] = {
    "Sentinel-2": re.compile(r"b0?(\d{1,2}a?)"),
    "Sentinel-1": re.compile(r"(vv|vh|hh|hv)"),
}


@dataclass(frozen=True)
class BandId:
    """What a band description (or a band token typed by the user) says a band is."""

    meaning: str
    sensor: str = ""  # "" when the description names the meaning itself ("nir", "SWIR 2")
    name: str = ""  # the sensor's spelling, e.g. "B12"

    @property
    def label(self) -> str:
        return self.name or self.meaning


def _compact(text: str) -> str:
    return re.sub(r"[\s_\-.]+", "", text.strip().lower())


def _sensor_band(token: str) -> BandId | None:
    for sensor, pattern in _SENSOR_TOKENS.items():
        m = pattern.fullmatch(token)
        if m is None:
            continue
        name = "b" + m.group(1) if sensor == "Sentinel-2" else m.group(1)
        key = _BY_SENSOR_NAME.get((sensor, name))
        if key is not None:
            return BandId(key, sensor, MEANINGS[key].sensors[sensor])
    return None


def identify_band(description: str | None) -> BandId | None:
    """What a file's band description says the band is, or None when it does not say.

    Accepts the meaning (``nir``, ``SWIR 2``, ``Red``), a sensor band name (``B8``, ``B08``,
    ``B8A``, ``VV``) or a product file-style name containing one (``B12_20m``,
    ``T29SND_20200101T110000_B04_10m``, ``Sigma0_VV_db``). Generic names (``Band 1``) say nothing.
    """
    if not description or not description.strip():
        return None
    tokens = [t for t in re.split(r"[^a-z0-9]+", description.lower()) if t]
    for token in tokens:
        hit = _sensor_band(token)
        if hit is not None:
            return hit
    key = _BY_SPELLING.get(_compact(description))
    if key is not None:
        return BandId(key)
    for token in tokens:
        if token in _BY_SPELLING:
            return BandId(_BY_SPELLING[token])
    return None


def meaning_of_name(band: str, modality: str) -> str | None:
    """The meaning of a band name recorded in model metadata, for records without ``meanings``.

    Meaning names and their spellings (``swir``, ``nir``, ``vv``...) and Sentinel-2 / -1 names
    as those sensors spell them (``B12``, ``B8A``, ``VV``); generic positional names (``b1``,
    ``b2``... as the registry numbers unknown bands) are not read as Sentinel-2 names. Only
    meanings of the spec's own modality count (an HSI band is never "coastal").
    """
    band = band.strip()
    key = _BY_SPELLING.get(_compact(band))
    if key is None and not re.fullmatch(r"b\d+", band):
        hit = _sensor_band(band.lower())
        key = hit.meaning if hit is not None else None
    if key is None or MEANINGS[key].modality != modality:
        return None
    return key


def sensor_names(meaning: str) -> dict[str, str]:
    """``{sensor: band name}`` for a meaning ({} when unknown)."""
    m = MEANINGS.get(meaning)
    return dict(m.sensors) if m is not None else {}


def rule_texts(value: Any, where: str) -> list[str]:
    """A ``rules`` setting of a config file or scene list as ``NAME=EXPR`` texts: a table
    (``[rules]`` with ``snow = "red > 1500"``) or a list of ``"NAME=EXPR"`` strings. The rules
    themselves are parsed and checked against the model's bands at train time."""
    if isinstance(value, dict):
        items = [(str(k), v) for k, v in value.items()]
        if any(not isinstance(v, str) or not v.strip() for _, v in items):
            raise UsageError(f'{where}: each rule is NAME = "EXPR" (a non-empty string)')
        return [f"{k}={v}" for k, v in items]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [str(v) for v in value]
    raise UsageError(
        f'{where}: give a table of NAME = "EXPR" (e.g. [rules] snow = "red > 1500") '
        'or a list of "NAME=EXPR" strings'
    )

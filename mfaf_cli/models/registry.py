"""Model registry: names → builders, default band counts, divisors and untrained metadata.

Importing this module does not import torch (``mfaf models`` can list the registry quickly);
network modules are imported only when a model is built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mfaf_cli.errors import ModelError
from mfaf_cli.metadata import (
    DEFAULT_BANDS,
    HOUSTON2013_CLASSES,
    WATER_CLASSES,
    WHU_CLASSES,
    ClassInfo,
    ModalitySpec,
    ModelMeta,
    Normalisation,
    default_classes,
)

if TYPE_CHECKING:
    from torch import nn

#: Default band count per modality (WHU-OPT-SAR optical RGBN, SAR VV, Houston 2013 HSI, DSM).
DEFAULT_IN_CHANNELS: dict[str, int] = {"optical": 4, "sar": 1, "hsi": 144, "lidar": 1}
#: Named class tables of the tasks each modality family is trained for (OMBRIA water,
#: WHU-OPT-SAR land use; Houston 2013); an untrained model of another size gets generic names.
_OPTICAL_SAR_TABLES: tuple[tuple[ClassInfo, ...], ...] = (WATER_CLASSES, WHU_CLASSES)
_HSI_LIDAR_TABLES: tuple[tuple[ClassInfo, ...], ...] = (HOUSTON2013_CLASSES,)


@dataclass(frozen=True)
class ModelEntry:
    """One registry row (``divisor`` is the default; CoMiX's depends on ``stem_stride``;
    ``class_tables`` are the named class tables of the tasks this architecture is for)."""

    name: str
    modalities: tuple[str, ...]
    default_in_channels: dict[str, int]
    divisor: int
    description: str
    class_tables: tuple[tuple[ClassInfo, ...], ...] = ()


def _entry(name: str, modalities: tuple[str, ...], divisor: int, description: str) -> ModelEntry:
    tables = _HSI_LIDAR_TABLES if set(modalities) <= {"hsi", "lidar"} else _OPTICAL_SAR_TABLES
    return ModelEntry(
        name,
        modalities,
        {m: DEFAULT_IN_CHANNELS[m] for m in modalities},
        divisor,
        description,
        tables,
    )


_ENTRIES: tuple[ModelEntry, ...] = (
    _entry(
        "mfafnet-s",
        ("optical", "sar"),
        16,
        "MFAFNet small: HWD + FDM (LT ∥ INN) + CFFB, U-Net decoder",
    ),
    _entry("mfafnet-b", ("optical", "sar"), 16, "MFAFNet base (widths 64-512)"),
    _entry(
        "comix-s",
        ("hsi", "lidar"),
        32,
        "CoMiX small: 3-D/2-D deformable conv, CMFeX + FFM, MLP decoder",
    ),
    _entry("comix-b", ("hsi", "lidar"), 32, "CoMiX base (X widths 64-512)"),
    _entry(
        "comix-lite", ("hsi", "lidar"), 32, "CoMiX small with axial 3-D DCN (K=7), CPU-friendly"
    ),
    _entry("unet", ("optical", "sar"), 16, "U-Net early fusion (stacked optical+SAR channels)"),
    _entry("unet-optical", ("optical",), 16, "U-Net on optical only"),
    _entry("unet-sar", ("sar",), 16, "U-Net on SAR only"),
    _entry(
        "unet-hsi-lidar", ("hsi", "lidar"), 16, "U-Net early fusion (stacked HSI+LiDAR channels)"
    ),
)
_BY_NAME: dict[str, ModelEntry] = {e.name: e for e in _ENTRIES}


def list_models() -> list[ModelEntry]:
    """All registered architectures, in a stable order."""
    return list(_ENTRIES)


def get_entry(name: str) -> ModelEntry:
    """The registry row for ``name``; unknown names raise :class:`ModelError` listing valid ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        valid = ", ".join(e.name for e in _ENTRIES)
        raise ModelError(f"unknown model {name!r}; valid names: {valid}") from None


def _resolve_channels(entry: ModelEntry, in_channels: dict[str, int] | None) -> dict[str, int]:
    chans = dict(entry.default_in_channels)
    for m, n in (in_channels or {}).items():
        if m not in chans:
            raise ModelError(
                f"model {entry.name!r} takes modalities {', '.join(entry.modalities)}, not {m!r}"
            )
        if int(n) < 1:
            raise ModelError(f"{m} needs at least 1 band, got {n}")
        chans[m] = int(n)
    return chans


def model_divisor(name: str, config: dict[str, Any] | None = None) -> int:
    """Input H/W must be a multiple of this (CoMiX with ``stem_stride=2`` needs 16, not 32)."""
    entry = get_entry(name)
    if name.startswith("comix"):
        return 8 * int((config or {}).get("stem_stride", 4))
    return entry.divisor


def _builder(name: str) -> Callable[..., nn.Module]:
    def mfaf(variant: str) -> Callable[..., nn.Module]:
        def build(in_channels: dict[str, int], num_classes: int, **cfg: Any) -> nn.Module:
            mod = importlib.import_module("mfaf_cli.models.mfafnet")
            return mod.MFAFNet(in_channels, num_classes, **({"variant": variant} | cfg))

        return build

    def comix(variant: str) -> Callable[..., nn.Module]:
        def build(in_channels: dict[str, int], num_classes: int, **cfg: Any) -> nn.Module:
            mod = importlib.import_module("mfaf_cli.models.comix")
            return mod.CoMiX(in_channels, num_classes, **({"variant": variant} | cfg))

        return build

    def unet(modalities: tuple[str, ...]) -> Callable[..., nn.Module]:
        def build(in_channels: dict[str, int], num_classes: int, **cfg: Any) -> nn.Module:
            mod = importlib.import_module("mfaf_cli.models.unet")
            return mod.UNet(modalities, in_channels, num_classes, **cfg)

        return build

    table: dict[str, Callable[..., nn.Module]] = {
        "mfafnet-s": mfaf("s"),
        "mfafnet-b": mfaf("b"),
        "comix-s": comix("s"),
        "comix-b": comix("b"),
        "comix-lite": comix("lite"),
        "unet": unet(("optical", "sar")),
        "unet-optical": unet(("optical",)),
        "unet-sar": unet(("sar",)),
        "unet-hsi-lidar": unet(("hsi", "lidar")),
    }
    return table[name]


def create_model(
    name: str, in_channels: dict[str, int] | None = None, num_classes: int = 2, **config: Any
) -> nn.Module:
    """Build an (untrained) network by registry name.

    ``in_channels`` overrides the default band count of some or all modalities; ``config`` is
    passed to the network constructor (ambiguity-register flags, widths...). Bad names or
    settings raise :class:`ModelError`.
    """
    entry = get_entry(name)
    chans = _resolve_channels(entry, in_channels)
    if int(num_classes) < 1:
        raise ModelError(f"num_classes must be >= 1, got {num_classes}")
    try:
        model = _builder(name)(chans, int(num_classes), **config)
    except (TypeError, ValueError) as err:
        raise ModelError(f"invalid configuration for {name!r}: {err}") from err
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (distinct) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _band_names(modality: str, n: int) -> tuple[str, ...]:
    default = DEFAULT_BANDS.get(modality, ())
    if len(default) == n:
        return default
    if modality == "optical" and n == 3:
        return ("red", "green", "blue")
    if modality == "sar" and n == 2:
        return ("vv", "vh")
    return tuple(f"b{i + 1}" for i in range(n))


def default_meta(
    name: str,
    in_channels: dict[str, int] | None = None,
    num_classes: int = 2,
    classes: tuple[ClassInfo, ...] | None = None,
    **config: Any,
) -> ModelMeta:
    """Metadata for an untrained model: default band names, neutral normalisation, and the
    class table of the entry's own task with ``num_classes`` classes (else generic names)."""
    entry = get_entry(name)
    chans = _resolve_channels(entry, in_channels)
    if classes is not None:
        num_classes = len(classes)
    mods = tuple(
        ModalitySpec(
            name=m,
            bands=_band_names(m, chans[m]),
            normalisation=Normalisation.identity(chans[m]),
            units="db" if m == "sar" else "",
        )
        for m in entry.modalities
    )
    return ModelMeta(
        arch=name,
        modalities=mods,
        classes=(
            tuple(classes)
            if classes is not None
            else default_classes(num_classes, entry.class_tables)
        ),
        config=dict(config),
        divisor=model_divisor(name, config),
        trained=False,
    )

"""Model registry: one :class:`ModelEntry` per architecture, carrying everything the rest
of the package needs to know about it (builder, divisor rule, aux outputs, the alignment losses
it supports, default bands and class tables), so no code branches on a model's name. A new
network is one :func:`register` call.

Importing this module does not import torch (``mfaf models`` can list the registry quickly);
network modules are imported only when a model is built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mfaf_cli.errors import ModelError
from mfaf_cli.metadata import (
    ALL_MODALITIES,
    DEFAULT_BANDS,
    DEFAULT_UNITS,
    HOUSTON2013_CLASSES,
    WATER_CLASSES,
    WHU_CLASSES,
    ClassInfo,
    ModalitySpec,
    ModelMeta,
    Normalisation,
    default_band_names,
    default_classes,
)
from mfaf_cli.types import ALIGNMENT_KINDS

if TYPE_CHECKING:
    from torch import nn

#: ``builder(in_channels, num_classes, **config) -> nn.Module``.
Builder = Callable[..., "nn.Module"]
#: ``rule(config) -> divisor`` for networks whose divisor depends on their configuration.
DivisorRule = Callable[[Mapping[str, Any]], int]

#: Default band count per modality (WHU-OPT-SAR optical RGBN, SAR VV, Houston 2013 HSI, DSM).
DEFAULT_IN_CHANNELS: dict[str, int] = {m: len(b) for m, b in DEFAULT_BANDS.items()}
#: Named class tables of the tasks each modality family is trained for (OMBRIA water,
#: WHU-OPT-SAR land use; Houston 2013); an untrained model of another size gets generic names.
_OPTICAL_SAR_TABLES: tuple[tuple[ClassInfo, ...], ...] = (WATER_CLASSES, WHU_CLASSES)
_HSI_LIDAR_TABLES: tuple[tuple[ClassInfo, ...], ...] = (HOUSTON2013_CLASSES,)
#: Aux outputs a training step may use: ``deep`` (per-modality deepest features, head-free
#: MMD) and ``align`` (projected embeddings + variance hinge, the projected MMD kinds).
AUX_OUTPUTS: tuple[str, ...] = ("deep", "align")


@dataclass(frozen=True)
class ModelEntry:
    """One architecture and its capabilities.

    ``divisor`` is the default input H/W multiple, ``divisor_rule`` (if any) the one for a
    given configuration; ``aux_outputs`` the keys ``forward(..., return_aux=True)`` returns;
    ``alignment_losses`` the ``--mmd`` kinds training applies to it (others train on
    cross-entropy only); ``default_bands`` the bands, by meaning, of an untrained build;
    ``class_tables`` the named class tables of the tasks the architecture is for."""

    name: str
    modalities: tuple[str, ...]
    default_in_channels: dict[str, int]
    divisor: int
    description: str
    class_tables: tuple[tuple[ClassInfo, ...], ...] = ()
    builder: Builder | None = field(default=None, compare=False, repr=False)
    divisor_rule: DivisorRule | None = field(default=None, compare=False, repr=False)
    aux_outputs: tuple[str, ...] = ()
    alignment_losses: tuple[str, ...] = ()
    default_bands: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = [
            (not self.name, "an entry needs a name"),
            (not set(self.modalities) <= set(ALL_MODALITIES), f"modalities {self.modalities}"),
            (set(self.default_in_channels) != set(self.modalities), "default_in_channels keys"),
            (self.divisor < 1, f"divisor {self.divisor}"),
            (self.builder is None or not callable(self.builder), "a builder"),
            (not set(self.aux_outputs) <= set(AUX_OUTPUTS), f"aux outputs {self.aux_outputs}"),
            (
                not set(self.alignment_losses) <= set(ALIGNMENT_KINDS),
                f"alignment losses {self.alignment_losses}",
            ),
            (bool(self.alignment_losses) and "deep" not in self.aux_outputs, "aux 'deep'"),
            (
                any(
                    len(self.default_bands.get(m, ())) != n
                    for m, n in self.default_in_channels.items()
                ),
                "default bands for each modality's default band count",
            ),
        ]
        bad = [what for failed, what in problems if failed]
        if bad:
            raise ModelError(f"registry entry {self.name!r}: invalid {'; '.join(bad)}")

    def divisor_for(self, config: Mapping[str, Any] | None = None) -> int:
        """Input H/W multiple for this configuration."""
        if self.divisor_rule is None:
            return self.divisor
        return int(self.divisor_rule(config or {}))

    def build(self, in_channels: dict[str, int], num_classes: int, **config: Any) -> nn.Module:
        """The network (untrained); ``config`` goes to its constructor."""
        assert self.builder is not None  # __post_init__ checked it
        return self.builder(in_channels, num_classes, **config)


def lazy_builder(module: str, cls: str, *args: Any, **fixed: Any) -> Builder:
    """A builder that imports ``module`` (torch) only when called: ``cls(*args, in_channels,
    num_classes, **(fixed | config))`` (so a configuration may override ``fixed``)."""

    def build(in_channels: dict[str, int], num_classes: int, **config: Any) -> nn.Module:
        net = getattr(importlib.import_module(module), cls)
        return net(*args, in_channels, num_classes, **(fixed | config))  # type: ignore[no-any-return]

    return build


def make_entry(
    name: str,
    modalities: tuple[str, ...],
    divisor: int,
    description: str,
    builder: Builder,
    **capabilities: Any,
) -> ModelEntry:
    """An entry with the package defaults for what ``capabilities`` leaves out: each
    modality's default bands (:data:`~mfaf_cli.metadata.DEFAULT_BANDS`) and the class tables
    of its modality family."""
    bands = {m: DEFAULT_BANDS[m] for m in modalities} | capabilities.pop("default_bands", {})
    hsi_lidar = set(modalities) <= {"hsi", "lidar"}
    capabilities.setdefault("class_tables", _HSI_LIDAR_TABLES if hsi_lidar else _OPTICAL_SAR_TABLES)
    return ModelEntry(
        name=name,
        modalities=modalities,
        default_in_channels={m: len(bands[m]) for m in modalities},
        divisor=divisor,
        description=description,
        builder=builder,
        default_bands=bands,
        **capabilities,
    )


def _comix_divisor(config: Mapping[str, Any]) -> int:
    """CoMiX downsamples 8× after its stem: ``stem_stride=2`` needs 16, the default 4 needs 32."""
    return 8 * int(config.get("stem_stride", 4))


def _mfafnet(name: str, variant: str, description: str) -> ModelEntry:
    return make_entry(
        name,
        ("optical", "sar"),
        16,
        description,
        lazy_builder("mfaf_cli.models.mfafnet", "MFAFNet", variant=variant),
        aux_outputs=("deep", "align"),
        alignment_losses=ALIGNMENT_KINDS,
    )


def _comix(name: str, variant: str, description: str) -> ModelEntry:
    return make_entry(
        name,
        ("hsi", "lidar"),
        32,
        description,
        lazy_builder("mfaf_cli.models.comix", "CoMiX", variant=variant),
        divisor_rule=_comix_divisor,
    )


def _unet(name: str, modalities: tuple[str, ...], description: str) -> ModelEntry:
    return make_entry(
        name, modalities, 16, description, lazy_builder("mfaf_cli.models.unet", "UNet", modalities)
    )


_BY_NAME: dict[str, ModelEntry] = {
    e.name: e
    for e in (
        _mfafnet("mfafnet-s", "s", "MFAFNet small: HWD + FDM (LT ∥ INN) + CFFB, U-Net decoder"),
        _mfafnet("mfafnet-b", "b", "MFAFNet base (widths 64-512)"),
        _comix("comix-s", "s", "CoMiX small: 3-D/2-D deformable conv, CMFeX + FFM, MLP decoder"),
        _comix("comix-b", "b", "CoMiX base (X widths 64-512)"),
        _comix("comix-lite", "lite", "CoMiX small with axial 3-D DCN (K=7), CPU-friendly"),
        _unet("unet", ("optical", "sar"), "U-Net early fusion (stacked optical+SAR channels)"),
        _unet("unet-optical", ("optical",), "U-Net on optical only"),
        _unet("unet-sar", ("sar",), "U-Net on SAR only"),
        _unet(
            "unet-hsi-lidar", ("hsi", "lidar"), "U-Net early fusion (stacked HSI+LiDAR channels)"
        ),
    )
}


def register(entry: ModelEntry) -> ModelEntry:
    """Add an architecture; every command sees it (``create_model``, ``default_meta``,
    ``mfaf models``, training). A name already registered is a :class:`ModelError`."""
    if entry.name in _BY_NAME:
        raise ModelError(f"model {entry.name!r} is already registered")
    _BY_NAME[entry.name] = entry
    return entry


def list_models() -> list[ModelEntry]:
    """All registered architectures, in a stable order."""
    return list(_BY_NAME.values())


def get_entry(name: str) -> ModelEntry:
    """The registry row for ``name``; unknown names raise :class:`ModelError` listing valid ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        valid = ", ".join(_BY_NAME)
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
    return get_entry(name).divisor_for(config)


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
        model = entry.build(chans, int(num_classes), **config)
    except (TypeError, ValueError) as err:
        raise ModelError(f"invalid configuration for {name!r}: {err}") from err
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (distinct) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _default_bands(entry: ModelEntry, modality: str, n: int) -> tuple[str, ...]:
    bands = entry.default_bands.get(modality, ())
    return bands if len(bands) == n else default_band_names(modality, n)


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
            bands=_default_bands(entry, m, chans[m]),
            normalisation=Normalisation.identity(chans[m]),
            units=DEFAULT_UNITS.get(m, ""),
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
        divisor=entry.divisor_for(config),
        trained=False,
    )

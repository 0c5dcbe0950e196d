"""The training configuration record, its validation and its TOML / YAML file form."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mfaf_cli.errors import UsageError
from mfaf_cli.metadata import rule_texts
from mfaf_cli.types import ALIGNMENT_KINDS

SCHEDULES = ("poly", "cosine")
SAMPLINGS = ("grid", "random", "balanced")
MMD_KINDS = ("none", *ALIGNMENT_KINDS)


@dataclass
class TrainConfig:
    """Everything a training run depends on; the CLI flags and config files map onto it 1:1."""

    dataset: str = ""
    data_root: str = ""
    model: str = ""
    out: str = ""
    epochs: int = 30
    batch_size: int = 8
    lr: float = 6e-4
    weight_decay: float = 0.01
    schedule: str = "poly"
    warmup: float = 0.0  # linear LR warm-up, fraction of all steps
    mmd: str = "rbf"  # MFAFNet alignment: "rbf" (head-free, on deep features), others, "none"
    mmd_lambda: float = 0.1
    mmd_warmup: float = 0.05
    amp: bool = True  # mixed precision, CUDA only
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    seed: int = 0
    num_workers: int | str = "auto"  # loader processes; auto: usable cores - 1 (loading.py)
    tile: int = 256
    photometric: float = 0.15  # training-only per-band stretch/gamma jitter strength (0 = off)
    #: per-sample probability of dropping one modality (wholly or cloud-shaped; dropout.py)
    modality_dropout: float = 0.0
    normalisation: str = "fixed"  # "fixed" (extent-independent) or "scene-percentile"
    val_fraction: float = 0.15
    device: str = "auto"
    resume: str | None = None
    overwrite: bool = False
    max_batches: int | None = None  # cap on training batches per epoch (dry runs, timing)
    max_val_batches: int | None = None
    stop_after: int | None = (
        None  # stop after this many epochs in this invocation (time-boxed jobs)
    )
    num_classes: int | None = None  # folder datasets: override the class count
    classes: str | None = None  # folder datasets: class table preset name or CSV/JSON file
    ignore_value: float | None = None  # folder datasets: label value that means unlabelled
    sampling: str = "random"  # training windows: grid | random | balanced
    class_weights: str = "none"  # cross-entropy class weights: none | auto | JSON file
    init: str | None = None  # fine-tune from this checkpoint or shipped model name
    freeze_encoder: int = 0  # epochs during which the encoder of an --init model is frozen
    bands: dict[str, list[int | str]] = field(default_factory=dict)  # 1-based numbers or names
    #: modality -> where its band list was given (``config file F [bands] optical``), for error
    #: messages; not a setting (never read from or saved to a config file)
    band_origin: dict[str, str] = field(default_factory=dict)
    #: applicability rules ``NAME=EXPR`` recorded in the model (mfaf_cli/applicability.py)
    rules: list[str] = field(default_factory=list)
    model_config: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    command: str = ""  # the exact command line, recorded in the checkpoint

    @classmethod
    def field_names(cls) -> list[str]:
        """The settings (what a config file may hold)."""
        return [f.name for f in dataclasses.fields(cls) if f.name not in NOT_SETTINGS]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---- config files --------------------------------------------------------------------------
def _parse_config_text(p: Path) -> Any:
    """The parsed document of a TOML or YAML file; a syntax error is a one-line UsageError."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10: the tomli backport (a dependency there)
        import tomli as tomllib

    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"config file {p} is not UTF-8 text") from None
    if p.suffix.lower() == ".toml":
        errors: tuple[type[Exception], ...] = (tomllib.TOMLDecodeError,)
        parse: Any = tomllib.loads
    else:
        try:
            import yaml
        except ImportError:
            raise UsageError(
                f"config file {p} is YAML, which needs PyYAML (pip install pyyaml); "
                "or write it as a .toml file"
            ) from None
        errors, parse = (yaml.YAMLError,), lambda t: yaml.safe_load(t) or {}
    try:
        return parse(text)
    except errors as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"config file {p} could not be parsed ({msg})") from None


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML / YAML (or JSON) training config; keys are TrainConfig fields (- or _)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config file {p} does not exist")
    doc = _parse_config_text(p)
    if not isinstance(doc, dict):
        raise UsageError(f"config file {p} must hold a table of settings")
    doc = {str(k).replace("-", "_"): v for k, v in doc.items()}
    if "train" in doc and isinstance(doc["train"], dict) and len(doc) == 1:
        doc = {str(k).replace("-", "_"): v for k, v in doc["train"].items()}
    unknown = sorted(set(doc) - set(TrainConfig.field_names()))
    if unknown:
        raise UsageError(
            f"config file {p}: unknown setting(s) {', '.join(unknown)}; valid: "
            + ", ".join(TrainConfig.field_names())
        )
    if "bands" in doc:
        doc["bands"] = _bands_setting(doc["bands"], f"config file {p} [bands]")
        doc["band_origin"] = {m: f"config file {p} [bands] {m}" for m in doc["bands"]}
    if "rules" in doc:
        doc["rules"] = rule_texts(doc["rules"], f"config file {p} rules")
    return doc


def _bands_setting(table: Any, where: str) -> dict[str, list[int | str]]:
    """The ``[bands]`` table in the one band grammar; errors name the file and key."""
    from mfaf_cli.bandspec import parse_bands_table

    try:
        return parse_bands_table(table, where)
    except ValueError as err:
        raise UsageError(str(err)) from None


#: TrainConfig fields that are no settings: never read from or written to a config file.
NOT_SETTINGS: tuple[str, ...] = ("band_origin",)

#: Settings that are paths: saved absolute so that ``--resume RUN_DIR`` works from any folder.
PATH_FIELDS: tuple[str, ...] = ("data_root", "out")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def config_to_toml(cfg: TrainConfig) -> str:
    """The resolved configuration as TOML (loadable with ``--config``)."""
    d = {k: v for k, v in cfg.to_dict().items() if k not in NOT_SETTINGS}
    for k in PATH_FIELDS:
        if d.get(k) and "://" not in str(d[k]):
            d[k] = os.path.abspath(os.path.expanduser(str(d[k])))
    for k in ("classes", "class_weights", "init"):  # files, or a preset / mode / shipped name
        if d.get(k) and os.path.isfile(str(d[k])):
            d[k] = os.path.abspath(str(d[k]))
    lines, tables = [], []
    for k, v in d.items():
        if v is None:
            continue
        if isinstance(v, dict):
            if v:
                tables.append(f"\n[{k}]")
                tables += [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items()]
        else:
            lines.append(f"{k} = {_toml_value(v)}")
    return "\n".join(lines + tables) + "\n"


def _workers_ok(v: Any) -> bool:
    return v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)


def validate_config(cfg: TrainConfig) -> None:
    """Usage errors for values that cannot work, before anything is read or written."""
    for name in ("dataset", "data_root", "model", "out"):
        if not getattr(cfg, name):
            raise UsageError(f"{name.replace('_', '-')} is required")
    checks = [
        (cfg.epochs >= 1, f"epochs must be >= 1, got {cfg.epochs}"),
        (cfg.batch_size >= 1, f"batch size must be >= 1, got {cfg.batch_size}"),
        (cfg.lr > 0 and math.isfinite(cfg.lr), f"lr must be positive, got {cfg.lr}"),
        (cfg.weight_decay >= 0, f"weight decay must be >= 0, got {cfg.weight_decay}"),
        (cfg.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}"),
        (cfg.mmd in MMD_KINDS, f"mmd must be one of {', '.join(MMD_KINDS)}, got {cfg.mmd!r}"),
        (cfg.mmd_lambda >= 0, f"mmd lambda must be >= 0, got {cfg.mmd_lambda}"),
        (0 <= cfg.warmup < 1, f"warmup must be a fraction in [0, 1), got {cfg.warmup}"),
        (cfg.grad_clip >= 0, f"grad clip must be >= 0, got {cfg.grad_clip}"),
        (_workers_ok(cfg.num_workers), f"num workers must be >= 0 or auto, got {cfg.num_workers}"),
        (cfg.tile >= 8, f"tile must be >= 8 pixels, got {cfg.tile}"),
        (
            0 <= cfg.modality_dropout <= 1,
            f"modality dropout must be a probability in [0, 1], got {cfg.modality_dropout}",
        ),
        (0 < cfg.val_fraction < 1, f"val fraction must be in (0, 1), got {cfg.val_fraction}"),
        (cfg.max_batches is None or cfg.max_batches >= 1, "max batches must be >= 1"),
        (cfg.max_val_batches is None or cfg.max_val_batches >= 0, "max val batches must be >= 0"),
        (cfg.stop_after is None or cfg.stop_after >= 1, "stop after must be >= 1 epochs"),
        (cfg.sampling in SAMPLINGS, f"sampling must be one of {', '.join(SAMPLINGS)}"),
        (cfg.freeze_encoder >= 0, f"freeze encoder must be >= 0 epochs, got {cfg.freeze_encoder}"),
        (not cfg.freeze_encoder or bool(cfg.init), "--freeze-encoder needs --init"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UsageError(msg)

"""The training loop: AdamW + poly/cosine, CE (+ MMD for MFAFNet), AMP, DDP, exact resume.

Run directory (created only after every input has been validated):

- ``last.safetensors`` + ``last_state.pt`` every epoch (weights with their ModelMeta; optimizer,
  scheduler, epoch, RNG states as plain tensors/dicts, loaded with ``weights_only=True``),
- ``best.safetensors`` (best validation mIoU), ``metrics.jsonl`` / ``metrics.csv`` (one row per
  epoch), ``curves.png``, ``config.toml`` (the resolved configuration).

Augmentation and data order derive from ``(seed, epoch, index)`` rather than from hidden RNG
state, so ``--resume`` reproduces an uninterrupted run bit for bit (tested), and results do
not depend on the number of loader workers. Multi-GPU / multi-node runs go through
``torchrun``: DistributedDataParallel, a DistributedSampler, rank-0 logging and checkpoints.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import math
import os
import pickle
import random
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mfaf_cli.errors import (
    DatasetError,
    MfafError,
    OutputExistsError,
    UsageError,
    WeightsError,
)
from mfaf_cli.metadata import ModelMeta
from mfaf_cli.training.metrics import confusion_matrix, metrics_from_confusion, to_jsonable

log = logging.getLogger(__name__)

SCHEDULES = ("poly", "cosine")
MMD_KINDS = ("none", "rbf", "paired", "linear", "class")
STATE_NAME = "last_state.pt"
LAST_NAME = "last.safetensors"
BEST_NAME = "best.safetensors"


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
    num_workers: int = 0
    tile: int = 256
    photometric: float = 0.15  # training-only per-band stretch/gamma jitter strength (0 = off)
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
    bands: dict[str, list[int]] = field(default_factory=dict)
    model_config: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    command: str = ""  # the exact command line, recorded in the checkpoint

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    run_dir: Path
    epochs: int
    best_epoch: int
    best_miou: float
    wall_time_s: float
    last: Path
    best: Path | None
    splits: dict[str, Any] = field(default_factory=dict)  # dataset summary per split

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["run_dir"], d["last"] = str(self.run_dir), str(self.last)
        d["best"] = str(self.best) if self.best else None
        return json.dumps(to_jsonable(d))


# ---- config files --------------------------------------------------------------------------
def _parse_config_text(p: Path) -> Any:
    """The parsed document of a TOML or YAML file; a syntax error is a one-line UsageError."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the tomli backport (a dependency there)
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
    return doc


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
    d = cfg.to_dict()
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
        (cfg.num_workers >= 0, f"num workers must be >= 0, got {cfg.num_workers}"),
        (cfg.tile >= 8, f"tile must be >= 8 pixels, got {cfg.tile}"),
        (0 < cfg.val_fraction < 1, f"val fraction must be in (0, 1), got {cfg.val_fraction}"),
        (cfg.max_batches is None or cfg.max_batches >= 1, "max batches must be >= 1"),
        (cfg.max_val_batches is None or cfg.max_val_batches >= 0, "max val batches must be >= 0"),
        (cfg.stop_after is None or cfg.stop_after >= 1, "stop after must be >= 1 epochs"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UsageError(msg)


# ---- pure helpers ---------------------------------------------------------------------------
def lr_factor(
    step: int, total: int, schedule: str, warmup: float = 0.0, power: float = 0.9
) -> float:
    """Multiplier of the base LR at ``step`` of ``total`` (linear warm-up, then poly/cosine)."""
    total = max(1, total)
    w = round(warmup * total)
    if w > 0 and step < w:
        return (step + 1) / w
    t = min(1.0, (step - w) / max(1, total - w))
    if schedule == "poly":
        return (1.0 - t) ** power
    return 0.5 * (1.0 + math.cos(math.pi * t))


class _LRLambda:
    """The schedule as a callable object (LambdaLR saves its ``__dict__`` in the state dict,
    so a resume must not load it back: see :func:`_load_scheduler`)."""

    def __init__(self, total: int, schedule: str, warmup: float) -> None:
        self.total, self.schedule, self.warmup = total, schedule, warmup

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.total, self.schedule, self.warmup)


def _load_scheduler(
    sched: torch.optim.lr_scheduler.LambdaLR, saved: dict[str, Any], base_lr: float
) -> None:
    """Restore the step count of a saved scheduler but keep *this* run's schedule.

    ``LambdaLR.load_state_dict`` would copy the saved lambda's ``__dict__`` (old total steps,
    old schedule) over the new one, so a resume with more epochs trained at LR 0. The
    optimizer's current LR is recomputed from the new schedule at the saved step, which is
    what an uninterrupted run with the new settings would use.
    """
    sched.load_state_dict({**saved, "lr_lambdas": [None] * len(sched.lr_lambdas)})
    sched.base_lrs = [base_lr] * len(sched.optimizer.param_groups)
    steps = sched.last_epoch
    lrs = [b * fn(steps) for b, fn in zip(sched.base_lrs, sched.lr_lambdas, strict=True)]
    for group, lr in zip(sched.optimizer.param_groups, lrs, strict=True):
        group["initial_lr"], group["lr"] = base_lr, lr
    sched._last_lr = lrs


def pad_batch(
    inputs: list[torch.Tensor], mask: torch.Tensor, divisor: int, ignore_index: int
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Pad H/W at bottom/right to a multiple of ``divisor`` (inputs reflect, mask ignore)."""
    h, w = mask.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    if not (ph or pw):
        return inputs, mask
    mode = "reflect" if ph < h and pw < w else "replicate"
    inputs = [F.pad(x, (0, pw, 0, ph), mode=mode) for x in inputs]
    mask = F.pad(mask, (0, pw, 0, ph), value=ignore_index)
    return inputs, mask


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "python": {"version": int(py_state[0]), "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    p = s["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in s and torch.cuda.is_available():
        with contextlib.suppress(Exception):
            torch.cuda.set_rng_state_all(s["cuda"])


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# ---- distributed ----------------------------------------------------------------------------
@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def _init_distributed(device: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    here = False
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device != "cpu"
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        here = True
    return _Dist(rank, world, local, here)


def _all_reduce(t: torch.Tensor, d: _Dist) -> torch.Tensor:
    if d.enabled:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def _barrier(d: _Dist) -> None:
    if d.enabled:
        import torch.distributed as dist

        dist.barrier()


def _resolve_device(spec: str, d: _Dist) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("device cuda requested but no CUDA GPU is available; use --device cpu")
        return torch.device("cuda", d.local_rank)
    try:
        return torch.device(spec)
    except RuntimeError as err:
        raise UsageError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from err


# ---- data loading ---------------------------------------------------------------------------
def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    mods = list(samples[0]["inputs"])
    return {
        "inputs": {m: torch.stack([s["inputs"][m] for s in samples]) for m in mods},
        "mask": torch.stack([s["mask"] for s in samples]),
        "index": torch.tensor([s["index"] for s in samples]),
    }


def _train_loader(ds: Any, cfg: TrainConfig, epoch: int, d: _Dist) -> torch.utils.data.DataLoader:
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

    ds.set_epoch(epoch)
    if d.enabled:
        sampler: Any = DistributedSampler(
            ds, num_replicas=d.world, rank=d.rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
        sampler.set_epoch(epoch)
    else:
        g = torch.Generator()
        g.manual_seed(cfg.seed * 100_003 + epoch)
        sampler = RandomSampler(ds, generator=g)
    per_rank = len(ds) // d.world if d.enabled else len(ds)
    return DataLoader(
        ds,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        collate_fn=_collate,
        drop_last=per_rank > cfg.batch_size,
        pin_memory=False,
    )


def _val_loader(ds: Any, cfg: TrainConfig, d: _Dist) -> torch.utils.data.DataLoader:
    from torch.utils.data import DataLoader, Subset

    sub = Subset(ds, list(range(d.rank, len(ds), d.world))) if d.enabled else ds
    return DataLoader(
        sub,
        batch_size=cfg.batch_size,
        shuffle=False,
        num_workers=cfg.num_workers,
        collate_fn=_collate,
    )


def _limited(loader: Any, n: int | None) -> Iterator[Any]:
    for i, b in enumerate(loader):
        if n is not None and i >= n:
            break
        yield b


def _progress(it: Any, total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        it,
        total=total,
        desc=desc,
        file=sys.stderr,
        disable=not enabled,
        leave=False,
        dynamic_ncols=True,
    )


# ---- dataset summary -----------------------------------------------------------------------
def split_summaries(
    cfg: TrainConfig, train_ds: Any, val_ds: Any, common: dict[str, Any], *, show: bool
) -> dict[str, dict[str, Any]]:
    """``{"train": ..., "val": ..., "test": ...}`` from each split's ``summary()`` (the test
    split only where the dataset has one), printed as one line per split on stderr, so a
    user sees where the split came from (e.g. WHU's division file) and what it holds."""
    from mfaf_cli.data.datasets import open_dataset

    out = {"train": train_ds.summary(), "val": val_ds.summary()}
    try:
        test_ds = open_dataset(cfg.dataset, cfg.data_root, "test", augment=False, **common)
        out["test"] = test_ds.summary()
    except MfafError:  # no test split in this dataset (or it is empty)
        pass
    if show:
        for name, s in out.items():
            files = next(f"{s[k]} {k}" for k in ("sheets", "patches", "scenes") if k in s)
            freq = ", ".join(f"{c} {100 * v:.1f} %" for c, v in s["class_fraction"].items())
            print(
                f"data {name}: {files}, {s['windows']} windows, {s['labelled_pixels']} "
                f"labelled px ({freq}); split from {s['source']}",
                file=sys.stderr,
                flush=True,
            )
    return out


# ---- resume ---------------------------------------------------------------------------------
def _resume_paths(spec: str) -> tuple[Path, Path]:
    """(checkpoint, state file) for ``--resume`` given a run directory or a checkpoint path."""
    p = Path(spec)
    if p.is_dir():
        ckpt, state = p / LAST_NAME, p / STATE_NAME
    else:
        ckpt, state = p, p.with_name(STATE_NAME)
    if not ckpt.is_file():
        raise WeightsError(f"cannot resume: {ckpt} does not exist")
    if not state.is_file():
        raise WeightsError(
            f"cannot resume: {state} (optimizer/scheduler/RNG state) does not exist next to {ckpt}"
        )
    return ckpt, state


def _check_resume_meta(meta: ModelMeta, cfg: TrainConfig, ds: Any, ckpt: Path) -> None:
    if meta.arch != cfg.model:
        raise WeightsError(
            f"cannot resume: {ckpt} is a checkpoint of model {meta.arch!r}, not {cfg.model!r}; "
            f"use --model {meta.arch} or start a new run"
        )
    if meta.in_channels != ds.in_channels or meta.num_classes != ds.num_classes:
        raise WeightsError(
            f"cannot resume: {ckpt} takes {meta.in_channels} with {meta.num_classes} classes, "
            f"but the dataset gives {ds.in_channels} with {ds.num_classes} classes"
        )
    if dict(meta.config) != dict(cfg.model_config):
        raise WeightsError(
            f"cannot resume: {ckpt} was built with model config {meta.config}, "
            f"not {cfg.model_config}"
        )


def _load_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise WeightsError(
            f"cannot resume: {path} is not a readable training state ({msg[:200]})"
        ) from None


# ---- outputs --------------------------------------------------------------------------------
def _read_history(path: Path, upto: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if int(r.get("epoch", 0)) <= upto:
                rows.append(r)
    return rows


def _write_history(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    _atomic_write_text(
        run_dir / "metrics.jsonl",
        "".join(json.dumps(to_jsonable(r), sort_keys=False) + "\n" for r in rows),
    )
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow(
            {
                k: ("" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v)
                for k, v in r.items()
            }
        )
    _atomic_write_text(run_dir / "metrics.csv", buf.getvalue())
    plot_curves(rows, run_dir / "curves.png")


def plot_curves(rows: list[dict[str, Any]], path: Path) -> Path:
    """Loss (train/val) and validation mIoU/OA per epoch."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]

    def col(k: str) -> list[float]:
        return [float("nan") if r.get(k) is None else float(r[k]) for r in rows]

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    a1.plot(ep, col("train_loss"), "o-", label="train loss")
    a1.plot(ep, col("val_loss"), "s-", label="val loss (CE)")
    a1.set_xlabel("epoch")
    a1.set_ylabel("loss")
    a1.legend()
    a1.grid(alpha=0.3)
    a2.plot(ep, col("val_miou"), "o-", label="val mIoU")
    a2.plot(ep, col("val_oa"), "s-", label="val OA")
    a2.set_xlabel("epoch")
    a2.set_ylim(0, 1)
    a2.legend()
    a2.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(".curves.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


# ---- one epoch ------------------------------------------------------------------------------
def _monitor_columns(sums: torch.Tensor) -> dict[str, float]:
    """Epoch means of the alignment monitors (NaN when no batch computed them)."""
    n = float(sums[6])
    if n == 0:
        return {"embed_cosine": float("nan"), "headfree_mmd": float("nan")}
    return {"embed_cosine": float(sums[4]) / n, "headfree_mmd": float(sums[5]) / n}


def _warn_if_collapsed(row: dict[str, Any], epoch: int) -> None:
    from mfaf_cli.models.losses import COLLAPSE_COSINE

    cos = row["embed_cosine"]
    if math.isfinite(cos) and cos > COLLAPSE_COSINE:
        log.warning(
            "epoch %d: the alignment embedding has collapsed (mean pixel-pair cosine %.4f > %.2f);"
            " the MMD term no longer aligns the modalities (try --mmd rbf)",
            epoch,
            cos,
            COLLAPSE_COSINE,
        )


def _alignment(
    aux: dict[str, Any], cfg: TrainConfig, mask: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, tuple[float, float]]:
    """(alignment loss, (embedding cosine, head-free MMD²)) from a model's aux outputs.

    The head-free MMD² (:func:`feature_mmd` on the deep features) and the mean pixel-pair
    cosine of the embedding the loss sees are monitors logged every epoch: a cosine near 1
    means the embedding collapsed and the loss no longer aligns anything.
    """
    from mfaf_cli.models.losses import (
        FEATURE_KINDS,
        embedding_cosine,
        feature_mmd,
        layer_normalised,
        mmd_loss,
        valid_samples,
    )

    f_a, f_b = aux["deep"]
    valid = valid_samples(mask, tuple(f_a.shape[-2:]), ignore_index)
    if cfg.mmd in FEATURE_KINDS:
        loss = feature_mmd(f_a, f_b, valid)
        return loss, (embedding_cosine(layer_normalised(f_a)), float(loss.detach()))
    z_a, z_b, hinge = aux["align"]
    loss = mmd_loss(z_a.float(), z_b.float(), kind=cfg.mmd, labels=mask, ignore_index=ignore_index)
    loss = loss + hinge
    with torch.no_grad():
        head_free = float(feature_mmd(f_a, f_b, valid))
    return loss, (embedding_cosine(z_a), head_free)


def _forward_loss(
    model: nn.Module,
    batch: dict[str, Any],
    modalities: tuple[str, ...],
    device: torch.device,
    cfg: TrainConfig,
    mmd_weight: float,
    divisor: int,
    ignore_index: int,
    autocast: tuple[bool, torch.dtype],
    want_aux: bool = True,
) -> tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple[float, float] | None
]:
    """(loss, ce, mmd, logits, mask, alignment monitors or None) for one batch.

    The alignment branch runs whenever MMD is on, even while its ramped weight is still 0,
    so DDP sees the same parameters used at every step.
    """
    xs = [batch["inputs"][m].to(device, non_blocking=True) for m in modalities]
    mask = batch["mask"].to(device, non_blocking=True)
    xs, mask = pad_batch(xs, mask, divisor, ignore_index)
    use_aux = want_aux and cfg.mmd != "none"
    monitors = None
    with torch.autocast(device.type, dtype=autocast[1], enabled=autocast[0]):
        out = model(*xs, return_aux=True) if use_aux else model(*xs)
        logits, aux = out if isinstance(out, tuple) else (out, {})
        logits = logits.float()
        if (mask != ignore_index).any():
            ce = F.cross_entropy(logits, mask, ignore_index=ignore_index)
        else:
            ce = logits.sum() * 0.0
        mmd = torch.zeros((), device=device)
        if use_aux and "deep" in aux:
            mmd, monitors = _alignment(aux, cfg, mask, ignore_index)
    return ce + mmd_weight * mmd, ce, mmd, logits, mask, monitors


def _validate(
    model: nn.Module,
    loader: Any,
    modalities: tuple[str, ...],
    device: torch.device,
    cfg: TrainConfig,
    k: int,
    divisor: int,
    ignore_index: int,
    d: _Dist,
    autocast: tuple[bool, torch.dtype],
) -> tuple[np.ndarray, float]:
    model.eval()
    cm = torch.zeros((k, k), dtype=torch.float64)
    loss_sum = torch.zeros(2, dtype=torch.float64)
    n = len(loader) if cfg.max_val_batches is None else min(len(loader), cfg.max_val_batches)
    with torch.inference_mode():
        for batch in _progress(
            _limited(loader, cfg.max_val_batches), n, "val", cfg.progress and d.main
        ):
            _, ce, _, logits, mask, _ = _forward_loss(
                model, batch, modalities, device, cfg, 0.0, divisor, ignore_index, autocast, False
            )
            pred = logits.argmax(1).cpu().numpy()
            m = mask.cpu().numpy()
            cm += torch.from_numpy(confusion_matrix(pred, m, k, ignore_index).astype(np.float64))
            loss_sum += torch.tensor([float(ce), 1.0], dtype=torch.float64)
    cm = _all_reduce(cm.to(device), d).cpu()
    loss_sum = _all_reduce(loss_sum.to(device), d).cpu()
    val_loss = float(loss_sum[0] / loss_sum[1]) if loss_sum[1] > 0 else float("nan")
    return cm.numpy().astype(np.int64), val_loss


# ---- main entry -------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.dataset``; see the module docstring for outputs."""
    from mfaf_cli.models.registry import get_entry, model_divisor
    from mfaf_cli.tiling.windows import check_tile

    t_start = time.time()
    validate_config(cfg)
    entry = get_entry(cfg.model)
    divisor = model_divisor(cfg.model, cfg.model_config)
    check_tile(cfg.tile, divisor, cfg.model)
    run_dir = Path(cfg.out)
    resume = cfg.resume
    if (
        resume is None
        and run_dir.is_dir()
        and (run_dir / STATE_NAME).is_file()
        and not cfg.overwrite
    ):
        raise OutputExistsError(
            f"{run_dir} already holds a training run; use --resume {run_dir} to continue it, "
            "--overwrite to replace it, or another -o"
        )
    if resume is None and run_dir.exists() and not run_dir.is_dir():
        raise OutputExistsError(f"{run_dir} exists and is not a directory")
    if run_dir.is_dir() and any(run_dir.iterdir()) and resume is None and not cfg.overwrite:
        raise OutputExistsError(f"{run_dir} is not empty; use --overwrite or another -o")

    d = _init_distributed(cfg.device)
    try:
        return _run(cfg, d, entry, divisor, run_dir, t_start)
    finally:
        if d.initialised_here:
            import torch.distributed as dist

            with contextlib.suppress(Exception):
                dist.destroy_process_group()


def _run(
    cfg: TrainConfig, d: _Dist, entry: Any, divisor: int, run_dir: Path, t_start: float
) -> TrainResult:
    from mfaf_cli.data.datasets import open_dataset
    from mfaf_cli.io.weights import load_checkpoint, read_meta, save_checkpoint
    from mfaf_cli.models.registry import create_model

    device = _resolve_device(cfg.device, d)
    common = dict(
        modalities=entry.modalities,
        tile=cfg.tile,
        seed=cfg.seed,
        val_fraction=cfg.val_fraction,
        bands=cfg.bands or None,
        normalisation=cfg.normalisation,
    )
    if cfg.dataset == "folder" and cfg.num_classes:
        common["num_classes"] = cfg.num_classes
    train_ds = open_dataset(
        cfg.dataset, cfg.data_root, "train", photometric=cfg.photometric, **common
    )
    val_ds = open_dataset(cfg.dataset, cfg.data_root, "val", augment=False, **common)
    if train_ds.num_classes != val_ds.num_classes:
        raise DatasetError("train and val splits disagree on the class table")
    train_ds.check_labels()
    val_ds.check_labels()
    splits = split_summaries(cfg, train_ds, val_ds, common, show=cfg.progress and d.main)
    if len(train_ds) < d.world:
        raise DatasetError(
            f"the train split has {len(train_ds)} samples, fewer than {d.world} processes"
        )

    state: dict[str, Any] | None = None
    resume_meta: ModelMeta | None = None
    resume_ckpt: Path | None = None
    if cfg.resume:
        resume_ckpt, state_path = _resume_paths(cfg.resume)
        resume_meta = read_meta(resume_ckpt)
        _check_resume_meta(resume_meta, cfg, train_ds, resume_ckpt)
        state = _load_state(state_path)
        if state.get("arch") != cfg.model:
            raise WeightsError(
                f"cannot resume: {state_path} belongs to model {state.get('arch')!r}"
            )
    # ---- everything validated: from here on we may write into run_dir ----
    k = train_ds.num_classes
    ignore_index = train_ds.ignore_index
    if resume_meta is not None:
        norms = {m.name: m.normalisation for m in resume_meta.modalities}
    else:
        norms = train_ds.compute_normalisation()
    train_ds.set_normalisation(norms)
    val_ds.set_normalisation(norms)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % (2**32))
    random.seed(cfg.seed)
    model = create_model(cfg.model, train_ds.in_channels, k, **cfg.model_config)
    if resume_ckpt is not None:
        loaded, _ = load_checkpoint(resume_ckpt)
        model.load_state_dict(loaded.state_dict())
        del loaded
    model.to(device)
    net: nn.Module = model
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            # the projection head is unused without a projected MMD kind
            find_unused_parameters=cfg.mmd in ("none", "rbf"),
        )
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(_train_loader(train_ds, cfg, 0, d))
    if cfg.max_batches is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.max_batches)
    if steps_per_epoch < 1:
        raise DatasetError("the train split yields no batch; lower --batch-size")
    total_steps = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _LRLambda(total_steps, cfg.schedule, cfg.warmup))
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    autocast = (use_amp, amp_dtype)

    start_epoch, global_step, best_miou, best_epoch, wall_before = 0, 0, -1.0, 0, 0.0
    history: list[dict[str, Any]] = []
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        _load_scheduler(sched, state["scheduler"], cfg.lr)
        if "scaler" in state and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        start_epoch = int(state["epoch"])
        global_step = int(state["global_step"])
        best_miou = float(state["best_miou"])
        best_epoch = int(state["best_epoch"])
        wall_before = float(state.get("wall_time_s", 0.0))
        assert resume_ckpt is not None
        history = _read_history(resume_ckpt.parent / "metrics.jsonl", start_epoch)
        _set_rng_state(state["rng"])
        if start_epoch >= cfg.epochs:
            raise UsageError(
                f"the run in {resume_ckpt.parent} already finished {start_epoch} epochs; "
                f"raise --epochs above {start_epoch} to continue"
            )

    created = False
    if d.main:
        if cfg.overwrite and cfg.resume is None and run_dir.is_dir():
            for name in (
                LAST_NAME,
                BEST_NAME,
                STATE_NAME,
                "metrics.jsonl",
                "metrics.csv",
                "curves.png",
                "config.toml",
            ):
                with contextlib.suppress(FileNotFoundError):
                    (run_dir / name).unlink()
        created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        if (
            state is not None
            and resume_ckpt is not None
            and resume_ckpt.parent.resolve() != run_dir.resolve()
        ):
            best_src = resume_ckpt.parent / BEST_NAME
            if best_src.is_file():
                shutil.copy2(best_src, run_dir / BEST_NAME)
        _atomic_write_text(run_dir / "config.toml", config_to_toml(cfg))
    _barrier(d)

    def make_meta(epoch_done: int, val_metrics: dict[str, Any], wall: float) -> ModelMeta:
        return ModelMeta(
            arch=cfg.model,
            modalities=train_ds.modality_specs(),
            classes=train_ds.classes,
            config=dict(cfg.model_config),
            ignore_index=ignore_index,
            tile_size=cfg.tile,
            divisor=divisor,
            training={
                "dataset": cfg.dataset,
                "data_root": str(cfg.data_root),
                "split": {
                    "train": len(train_ds),
                    "val": len(val_ds),
                    "rule": f"val = seeded holdout (seed {cfg.seed}, fraction {cfg.val_fraction}) "
                    "of the training data where the dataset has no val split",
                },
                "splits": splits,
                "command": cfg.command,
                "epochs": epoch_done,
                "epochs_planned": cfg.epochs,
                "best_epoch": best_epoch,
                "wall_time_s": round(wall, 1),
                "batch_size": cfg.batch_size,
                "lr": cfg.lr,
                "weight_decay": cfg.weight_decay,
                "schedule": cfg.schedule,
                "mmd": (
                    {"kind": cfg.mmd, "lambda": cfg.mmd_lambda, "warmup": cfg.mmd_warmup}
                    if mmd_used
                    else None
                ),
                "tile": cfg.tile,
                "seed": cfg.seed,
                "world_size": d.world,
                "device": device.type,
                "amp": bool(use_amp),
                "torch": torch.__version__,
            },
            metrics={"val": val_metrics},
            trained=True,
        )

    from mfaf_cli.models.losses import ramp_weight

    modalities = entry.modalities
    mmd_used = cfg.mmd != "none" and cfg.model.startswith("mfafnet")
    completed = start_epoch
    try:
        val_loader = _val_loader(val_ds, cfg, d)
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.time()
            net.train()
            loader = _train_loader(train_ds, cfg, epoch, d)
            # loss, ce, mmd, batches, embedding cosine, head-free MMD², monitored batches
            sums = torch.zeros(7, dtype=torch.float64)
            bar = _progress(
                _limited(loader, cfg.max_batches),
                steps_per_epoch,
                f"epoch {epoch + 1}/{cfg.epochs}",
                cfg.progress and d.main,
            )
            for batch in bar:
                w = 0.0
                if cfg.mmd != "none":
                    w = ramp_weight(global_step, total_steps, cfg.mmd_lambda, cfg.mmd_warmup)
                loss, ce, mmd, _, _, monitors = _forward_loss(
                    net, batch, modalities, device, cfg, w, divisor, ignore_index, autocast
                )
                mmd_used = mmd_used or monitors is not None
                cos, head_free = monitors or (0.0, 0.0)
                if not torch.isfinite(loss):
                    raise DatasetError(
                        f"training diverged at epoch {epoch + 1} step {global_step} "
                        f"(loss {float(loss)}); "
                        "lower --lr or enable --grad-clip"
                    )
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(opt)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
                sched.step()
                global_step += 1
                sums += torch.tensor(
                    [
                        float(loss.detach()),
                        float(ce.detach()),
                        float(mmd.detach()),
                        1.0,
                        cos,
                        head_free,
                        float(monitors is not None),
                    ],
                    dtype=torch.float64,
                )
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(
                        loss=f"{float(loss.detach()):.4f}", lr=f"{sched.get_last_lr()[0]:.2e}"
                    )
            sums = _all_reduce(sums.to(device), d).cpu()
            nb = max(1.0, float(sums[3]))
            t_train = time.time() - t0
            cm, val_loss = _validate(
                model, val_loader, modalities, device, cfg, k, divisor, ignore_index, d, autocast
            )
            vm = metrics_from_confusion(cm, [c.name for c in train_ds.classes])
            miou = vm["miou"] if math.isfinite(vm["miou"]) else -1.0
            improved = miou > best_miou
            if improved:
                best_miou, best_epoch = miou, epoch + 1
            wall = wall_before + (time.time() - t_start)
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "step": global_step,
                "lr": sched.get_last_lr()[0],
                "train_loss": float(sums[0]) / nb,
                "train_ce": float(sums[1]) / nb,
                "train_mmd": float(sums[2]) / nb,
                **_monitor_columns(sums),
                "val_loss": val_loss,
                "val_oa": vm["oa"],
                "val_miou": vm["miou"],
                "val_mean_accuracy": vm["mean_accuracy"],
                "val_kappa": vm["kappa"],
                **{f"val_iou_{n}": v["iou"] for n, v in vm["per_class"].items()},
                "train_time_s": round(t_train, 2),
                "epoch_time_s": round(time.time() - t0, 2),
                "batches": int(sums[3]),
            }
            history.append(row)
            _warn_if_collapsed(row, epoch + 1)
            if d.main:
                summary = {
                    "epoch": epoch + 1,
                    "oa": vm["oa"],
                    "miou": vm["miou"],
                    "kappa": vm["kappa"],
                    "mean_accuracy": vm["mean_accuracy"],
                    "per_class_iou": {n: v["iou"] for n, v in vm["per_class"].items()},
                    "split": "val",
                    "alignment": {k: row[k] for k in ("embed_cosine", "headfree_mmd")},
                }
                meta = make_meta(epoch + 1, to_jsonable(summary), wall)
                save_checkpoint(model, meta, run_dir / LAST_NAME)
                if improved:
                    save_checkpoint(model, meta, run_dir / BEST_NAME)
                state_out = {
                    "format": 1,
                    "arch": cfg.model,
                    "epoch": epoch + 1,
                    "global_step": global_step,
                    "best_miou": best_miou,
                    "best_epoch": best_epoch,
                    "wall_time_s": wall,
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "rng": _rng_state(),
                }
                if scaler.is_enabled():
                    state_out["scaler"] = scaler.state_dict()
                _atomic_torch_save(state_out, run_dir / STATE_NAME)
                _write_history(run_dir, history)
                if cfg.progress:
                    print(
                        f"epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.4f} "
                        f"(ce {row['train_ce']:.4f}, mmd {row['train_mmd']:.4f}) | val loss "
                        f"{val_loss:.4f} OA {vm['oa']:.4f} mIoU {vm['miou']:.4f} "
                        f"kappa {vm['kappa']:.4f} | {row['epoch_time_s']:.1f}s"
                        + (" *best*" if improved else ""),
                        file=sys.stderr,
                        flush=True,
                    )
            completed = epoch + 1
            _barrier(d)
            if cfg.stop_after is not None and completed - start_epoch >= cfg.stop_after:
                break
    except BaseException:
        if d.main and created and completed == start_epoch:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return TrainResult(
        run_dir=run_dir,
        epochs=completed,
        best_epoch=best_epoch,
        best_miou=best_miou,
        wall_time_s=wall_before + (time.time() - t_start),
        last=run_dir / LAST_NAME,
        best=(run_dir / BEST_NAME) if (run_dir / BEST_NAME).exists() else None,
        splits=splits,
    )

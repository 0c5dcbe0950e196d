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
import itertools
import json
import logging
import math
import os
import pickle
import random
import shutil
import sys
import time
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
from mfaf_cli.io.atomic import atomic_path
from mfaf_cli.metadata import ModelMeta
from mfaf_cli.registry import ModelEntry
from mfaf_cli.scores.metrics import confusion_matrix, metrics_from_confusion, to_jsonable
from mfaf_cli.training.config import (  # noqa: F401  (re-exported: the public training API)
    MMD_KINDS,
    SCHEDULES,
    TrainConfig,
    _parse_config_text,
    _toml_value,
    config_to_toml,
    load_config_file,
    validate_config,
)
from mfaf_cli.training.distributed import (
    _all_reduce,
    _barrier,
    _Dist,
    _init_distributed,
    _resolve_device,
    _shutdown,
    nonfinite_ranks,
)
from mfaf_cli.training.labels import check_same_classes, folder_label_options, guarded_write
from mfaf_cli.training.loading import TrainLoader, close_loader, resolve_workers

log = logging.getLogger(__name__)

STATE_NAME = "last_state.pt"
LAST_NAME = "last.safetensors"
BEST_NAME = "best.safetensors"


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
    np_state: tuple[Any, ...] = tuple(np.random.get_state())
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
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


# ---- data loading ---------------------------------------------------------------------------
def _train_loader(
    ds: Any, cfg: TrainConfig, epoch: int, d: _Dist, window_weights: np.ndarray | None = None
) -> torch.utils.data.DataLoader:
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, default_collate

    from mfaf_cli.training.sampling import DrawnSampler

    ds.set_epoch(epoch)
    if cfg.sampling != "random":  # grid order, or balanced draws (training/sampling.py)
        sampler: Any = DrawnSampler(
            len(ds), cfg.sampling, cfg.seed, epoch, window_weights, d.rank, d.world
        )
    elif d.enabled:
        sampler = DistributedSampler(
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
        num_workers=resolve_workers(cfg.num_workers),
        collate_fn=default_collate,
        drop_last=per_rank > cfg.batch_size,
        pin_memory=False,
    )


def _val_loader(
    ds: Any, cfg: TrainConfig, d: _Dist, persist: bool = False
) -> torch.utils.data.DataLoader:
    from torch.utils.data import DataLoader, Subset, default_collate

    sub = Subset(ds, list(range(d.rank, len(ds), d.world))) if d.enabled else ds
    workers = resolve_workers(cfg.num_workers)
    return DataLoader(
        sub,
        batch_size=cfg.batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=default_collate,
        persistent_workers=persist and workers > 0,  # built once per run in fit()
    )


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


# (loss, ce, mmd, logits, mask, alignment monitors or None)
_LossOut = tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple[float, float] | None
]


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
    class_weight: torch.Tensor | None = None,
) -> _LossOut:
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
            ce = F.cross_entropy(logits, mask, weight=class_weight, ignore_index=ignore_index)
        else:
            ce = logits.sum() * 0.0
        mmd = torch.zeros((), device=device)
    if use_aux and "deep" in aux:
        # in float32: autocast would run the class means' matmul in half precision
        with torch.autocast(device.type, enabled=False):
            mmd, monitors = _alignment(aux, cfg, mask, ignore_index)
    return ce + mmd_weight * mmd, ce, mmd, logits, mask, monitors


# ---- main entry -------------------------------------------------------------------------------
def _check_run_dir(cfg: TrainConfig, run_dir: Path) -> None:
    """Refuse to write over an existing run unless ``--resume`` or ``--overwrite`` says so."""
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


def train(cfg: TrainConfig) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.dataset``; see the module docstring for outputs."""
    from mfaf_cli.registry import get_entry, model_divisor
    from mfaf_cli.tiling.windows import check_tile

    t_start = time.time()
    validate_config(cfg)
    entry = get_entry(cfg.model)
    divisor = model_divisor(cfg.model, cfg.model_config)
    check_tile(cfg.tile, divisor, cfg.model)
    run_dir = Path(cfg.out)
    _check_run_dir(cfg, run_dir)
    d = _init_distributed(cfg.device)
    try:
        trainer = Trainer(cfg, d, entry, divisor, run_dir, t_start)
        trainer.setup()
        return trainer.fit()
    finally:
        _shutdown(d)


_RUN_FILES = (
    LAST_NAME,
    BEST_NAME,
    STATE_NAME,
    "metrics.jsonl",
    "metrics.csv",
    "curves.png",
    "config.toml",
)


class Trainer:
    """One training run: :meth:`setup` validates every input and builds the model, optimiser
    and schedule (restoring them on ``--resume``); :meth:`fit` runs the epochs, each one
    :meth:`train_epoch`, :meth:`validate`, then checkpoint and log on rank 0."""

    def __init__(
        self,
        cfg: TrainConfig,
        d: _Dist,
        entry: ModelEntry,
        divisor: int,
        run_dir: Path,
        t_start: float,
    ) -> None:
        self.cfg, self.d, self.entry, self.divisor = cfg, d, entry, divisor
        self.run_dir, self.t_start = run_dir, t_start
        self.modalities: tuple[str, ...] = tuple(entry.modalities)
        self.device = _resolve_device(cfg.device, d)
        self.loader: TrainLoader | None = None  # built at the first epoch, kept for the run
        self.state: dict[str, Any] | None = None
        self.resume_meta: ModelMeta | None = None
        self.resume_ckpt: Path | None = None
        self.start_epoch, self.global_step, self.wall_before = 0, 0, 0.0
        self.best_miou, self.best_epoch = -1.0, 0
        self.history: list[dict[str, Any]] = []
        self.created = False
        self.mmd_used = cfg.mmd in entry.alignment_losses
        self.window_weights: np.ndarray | None = None  # --sampling balanced
        self.class_weight: torch.Tensor | None = None  # --class-weights
        self.imbalance: dict[str, Any] = {}
        self.init_record: dict[str, Any] | None = None  # --init

    # ---- set-up ----------------------------------------------------------------------------
    def setup(self) -> None:
        """Everything before the first epoch; writes into the run directory only at the end."""
        self._open_datasets()
        self.rules = self._check_rules()
        if self.cfg.resume:
            self._read_resume()
        self._plan_imbalance()
        # ---- everything validated: from here on we may write into run_dir ----
        self._set_normalisation()
        self._seed()
        self._build_model()
        self._build_optimiser()
        if self.state is not None:
            self._restore_state(self.state)
        self._prepare_run_dir()
        _barrier(self.d)

    def _check_rules(self) -> tuple[tuple[str, str], ...]:
        """``--rule NAME=EXPR``: parsed and checked against the bands the model will take."""
        from mfaf_cli.applicability import checked_rules

        rules = checked_rules(list(self.cfg.rules), self.train_ds.modality_specs(), self.cfg.model)
        return tuple((r.name, r.expr) for r in rules)

    def _open_datasets(self) -> None:
        from mfaf_cli.data.datasets import open_dataset

        cfg, d = self.cfg, self.d
        common: dict[str, Any] = dict(
            modalities=self.entry.modalities,
            tile=cfg.tile,
            seed=cfg.seed,
            val_fraction=cfg.val_fraction,
            bands=cfg.bands or None,
            normalisation=cfg.normalisation,
        )
        if cfg.dataset == "folder" and cfg.num_classes:
            common["num_classes"] = cfg.num_classes
        common |= folder_label_options(cfg)
        train_ds = open_dataset(
            cfg.dataset, cfg.data_root, "train", photometric=cfg.photometric, **common
        )
        val_ds = open_dataset(cfg.dataset, cfg.data_root, "val", augment=False, **common)
        if train_ds.num_classes != val_ds.num_classes:
            raise DatasetError("train and val splits disagree on the class table")
        train_ds.check_labels()
        val_ds.check_labels()
        self.splits = split_summaries(cfg, train_ds, val_ds, common, show=cfg.progress and d.main)
        if len(train_ds) < d.world:
            raise DatasetError(
                f"the train split has {len(train_ds)} samples, fewer than {d.world} processes"
            )
        self.train_ds, self.val_ds = train_ds, val_ds
        self.k, self.ignore_index = train_ds.num_classes, train_ds.ignore_index

    def _read_resume(self) -> None:
        from mfaf_cli.io.weights import read_meta

        assert self.cfg.resume
        self.resume_ckpt, state_path = _resume_paths(self.cfg.resume)
        self.resume_meta = read_meta(self.resume_ckpt)
        _check_resume_meta(self.resume_meta, self.cfg, self.train_ds, self.resume_ckpt)
        check_same_classes(self.resume_meta.classes, self.train_ds.classes, self.resume_ckpt)
        self.state = _load_state(state_path)
        if self.state.get("arch") != self.cfg.model:
            raise WeightsError(
                f"cannot resume: {state_path} belongs to model {self.state.get('arch')!r}"
            )

    def _plan_imbalance(self) -> None:
        """Window sampling weights and CE class weights (one histogram pass when needed)."""
        from mfaf_cli.training.sampling import imbalance_plan

        cfg = self.cfg
        ww, cw, self.imbalance = imbalance_plan(
            cfg.sampling, cfg.class_weights, self.train_ds, self.train_ds.classes, self.ignore_index
        )
        if ww is not None and not ww.sum() > 0:
            raise DatasetError("--sampling balanced: no training window holds a labelled pixel")
        self.window_weights = ww
        if cw is not None:
            self.class_weight = torch.as_tensor(cw, dtype=torch.float32, device=self.device)

    def _set_normalisation(self) -> None:
        if self.resume_meta is not None:
            norms = {m.name: m.normalisation for m in self.resume_meta.modalities}
            self.train_ds.ranges = {
                m.name: (m.range_low, m.range_high, m.range_open)
                for m in self.resume_meta.modalities
                if m.range_low is not None and m.range_high is not None
            }
        else:
            norms = self.train_ds.compute_normalisation()
        self.train_ds.set_normalisation(norms)
        self.val_ds.set_normalisation(norms)

    def _seed(self) -> None:
        seed = self.cfg.seed
        torch.manual_seed(seed)
        np.random.seed(seed % (2**32))
        random.seed(seed)

    def _build_model(self) -> None:
        from mfaf_cli.io.weights import load_checkpoint
        from mfaf_cli.registry import create_model

        cfg, device = self.cfg, self.device
        model = create_model(cfg.model, self.train_ds.in_channels, self.k, **cfg.model_config)
        if self.resume_ckpt is not None:
            loaded, _ = load_checkpoint(self.resume_ckpt)
            model.load_state_dict(loaded.state_dict())
            del loaded
        elif cfg.init:
            from mfaf_cli.training.finetune import init_from

            self.init_record = init_from(
                model, cfg.init, cfg.model, cfg.model_config, self.train_ds.classes
            )
        model.to(device)
        self.model: nn.Module = model
        self.net: nn.Module = model
        if self.d.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.net = DDP(
                model,
                device_ids=[device.index] if device.type == "cuda" else None,
                # the projection head is unused without a projected MMD kind
                find_unused_parameters=cfg.mmd in ("none", "rbf"),
            )

    def _build_optimiser(self) -> None:
        """AdamW, the LR schedule over every step of ``cfg.epochs``, and AMP (CUDA only)."""
        cfg = self.cfg
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        steps = len(_train_loader(self.train_ds, cfg, 0, self.d, self.window_weights))
        if cfg.max_batches is not None:
            steps = min(steps, cfg.max_batches)
        if steps < 1:
            raise DatasetError("the train split yields no batch; lower --batch-size")
        self.steps_per_epoch = steps
        self.total_steps = cfg.epochs * steps
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, _LRLambda(self.total_steps, cfg.schedule, cfg.warmup)
        )
        self.use_amp = cfg.amp and self.device.type == "cuda"
        amp_dtype = torch.float16
        if self.use_amp:  # bf16 only where native; fp16 (with the GradScaler) elsewhere
            from mfaf_cli.devices import cuda_autocast_dtype

            amp_dtype, why = cuda_autocast_dtype(self.device)
            log.info("AMP %s", why)
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.use_amp and amp_dtype == torch.float16
        )
        self.autocast = (self.use_amp, amp_dtype)

    # ---- checkpoint / resume ---------------------------------------------------------------
    def _restore_state(self, state: dict[str, Any]) -> None:
        """Optimiser, schedule (this run's, at the saved step), counters, history and RNG."""
        self.opt.load_state_dict(state["optimizer"])
        _load_scheduler(self.sched, state["scheduler"], self.cfg.lr)
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.best_miou = float(state["best_miou"])
        self.best_epoch = int(state["best_epoch"])
        self.wall_before = float(state.get("wall_time_s", 0.0))
        assert self.resume_ckpt is not None
        self.history = _read_history(self.resume_ckpt.parent / "metrics.jsonl", self.start_epoch)
        _set_rng_state(state["rng"])
        if self.start_epoch >= self.cfg.epochs:
            raise UsageError(
                f"the run in {self.resume_ckpt.parent} already finished {self.start_epoch} "
                f"epochs; raise --epochs above {self.start_epoch} to continue"
            )

    def _prepare_run_dir(self) -> None:
        """Rank 0: clear an overwritten run, create the folder, carry best.safetensors over
        from a resumed run elsewhere, write config.toml."""
        if not self.d.main:
            return
        cfg, run_dir, ckpt = self.cfg, self.run_dir, self.resume_ckpt
        if cfg.overwrite and cfg.resume is None and run_dir.is_dir():
            for name in _RUN_FILES:
                with contextlib.suppress(FileNotFoundError):
                    (run_dir / name).unlink()
        self.created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        if self.state is not None and ckpt is not None:
            if ckpt.parent.resolve() != run_dir.resolve():
                best_src = ckpt.parent / BEST_NAME
                if best_src.is_file():
                    shutil.copy2(best_src, run_dir / BEST_NAME)
        _atomic_write_text(run_dir / "config.toml", config_to_toml(cfg))

    def make_meta(self, epoch_done: int, val_metrics: dict[str, Any], wall: float) -> ModelMeta:
        """The ModelMeta stored with each checkpoint: data, split, settings and metrics."""
        cfg = self.cfg
        training = {
            "dataset": cfg.dataset,
            "data_root": str(cfg.data_root),
            "split": {
                "train": len(self.train_ds),
                "val": len(self.val_ds),
                "rule": getattr(self.val_ds, "split_source", "")
                or f"val = seeded holdout (seed {cfg.seed}, fraction {cfg.val_fraction}) "
                "of the training data where the dataset has no val split",
            },
            "splits": self.splits,
            "command": cfg.command,
            "epochs": epoch_done,
            "epochs_planned": cfg.epochs,
            "best_epoch": self.best_epoch,
            "wall_time_s": round(wall, 1),
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "weight_decay": cfg.weight_decay,
            "schedule": cfg.schedule,
            "mmd": (
                {"kind": cfg.mmd, "lambda": cfg.mmd_lambda, "warmup": cfg.mmd_warmup}
                if self.mmd_used
                else None
            ),
            "tile": cfg.tile,
            **self.imbalance,
            "init": self.init_record or self._parent_record(),
            "seed": cfg.seed,
            "world_size": self.d.world,
            "device": self.device.type,
            "amp": bool(self.use_amp),
            "torch": torch.__version__,
        }
        return ModelMeta(
            arch=cfg.model,
            modalities=self.train_ds.modality_specs(),
            classes=self.train_ds.classes,
            config=dict(cfg.model_config),
            ignore_index=self.ignore_index,
            tile_size=cfg.tile,
            divisor=self.divisor,
            training=training,
            metrics={"val": val_metrics},
            trained=True,
            rules=self.rules,
        )

    def _parent_record(self) -> dict[str, Any] | None:
        """A resumed fine-tuning run keeps the parent record of its first invocation."""
        return self.resume_meta.training.get("init") if self.resume_meta else None

    def _state_out(self, epoch_done: int, wall: float) -> dict[str, Any]:
        """The resume state (plain tensors/dicts, loadable with ``weights_only=True``)."""
        out: dict[str, Any] = {
            "format": 1,
            "arch": self.cfg.model,
            "epoch": epoch_done,
            "global_step": self.global_step,
            "best_miou": self.best_miou,
            "best_epoch": self.best_epoch,
            "wall_time_s": wall,
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "rng": _rng_state(),
        }
        if self.scaler.is_enabled():
            out["scaler"] = self.scaler.state_dict()
        return out

    def save(self, row: dict[str, Any], vm: dict[str, Any], improved: bool, wall: float) -> None:
        """Rank 0: last (and best) checkpoint, the resume state and the history files."""
        from mfaf_cli.io.weights import save_checkpoint

        epoch_done = int(row["epoch"])
        summary = {
            "epoch": epoch_done,
            "oa": vm["oa"],
            "miou": vm["miou"],
            "kappa": vm["kappa"],
            "mean_accuracy": vm["mean_accuracy"],
            "per_class_iou": {n: v["iou"] for n, v in vm["per_class"].items()},
            "split": "val",
            "alignment": {k: row[k] for k in ("embed_cosine", "headfree_mmd")},
        }
        meta = self.make_meta(epoch_done, to_jsonable(summary), wall)
        with guarded_write(self.run_dir / LAST_NAME):
            save_checkpoint(self.model, meta, self.run_dir / LAST_NAME)
        if improved:
            with guarded_write(self.run_dir / BEST_NAME):
                save_checkpoint(self.model, meta, self.run_dir / BEST_NAME)
        with guarded_write(self.run_dir / STATE_NAME):
            _atomic_torch_save(self._state_out(epoch_done, wall), self.run_dir / STATE_NAME)
        with guarded_write(self.run_dir / "metrics.jsonl"):
            _write_history(self.run_dir, self.history)

    # ---- the loop --------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Run the remaining epochs; a failure before the first epoch finished removes a run
        directory this run created."""
        cfg, d = self.cfg, self.d
        completed = self.start_epoch
        val_loader = None
        try:
            val_loader = _val_loader(self.val_ds, cfg, d, persist=True)
            for epoch in range(self.start_epoch, cfg.epochs):
                self.run_epoch(epoch, val_loader)
                completed = epoch + 1
                _barrier(d)
                if cfg.stop_after is not None and completed - self.start_epoch >= cfg.stop_after:
                    break
        except BaseException:
            if d.main and self.created and completed == self.start_epoch:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise
        finally:  # the workers of both loaders persist between epochs, not after the run
            if self.loader is not None:
                self.loader.close()
                self.loader = None
            if val_loader is not None:
                close_loader(val_loader)
        if d.main:
            self.calibrate()
        _barrier(d)
        best = self.run_dir / BEST_NAME
        return TrainResult(
            run_dir=self.run_dir,
            epochs=completed,
            best_epoch=self.best_epoch,
            best_miou=self.best_miou,
            wall_time_s=self.wall_before + (time.time() - self.t_start),
            last=self.run_dir / LAST_NAME,
            best=best if best.exists() else None,
            splits=self.splits,
        )

    def calibrate(self) -> dict[str, Any] | None:
        """Rank 0, after the last epoch: fit the temperature of ``best.safetensors`` on the
        validation split (all of it, this process alone) and store it in that record."""
        from torch.utils.data import DataLoader, default_collate

        from mfaf_cli.io.weights import load_checkpoint, save_checkpoint
        from mfaf_cli.training.temperature import collect, fit_report, with_temperature

        best = self.run_dir / BEST_NAME
        if not best.exists() or len(self.val_ds) == 0:
            return None
        cfg = self.cfg
        model, meta = load_checkpoint(best, device=self.device)
        model.eval()
        loader = DataLoader(self.val_ds, batch_size=cfg.batch_size, shuffle=False,
                            num_workers=resolve_workers(cfg.num_workers),
                            collate_fn=default_collate)  # fmt: skip

        def pairs() -> Any:
            with torch.inference_mode():
                for batch in itertools.islice(loader, cfg.max_val_batches):
                    out = self._forward(model, batch, 0.0, want_aux=False)
                    yield out[3].float().cpu().numpy(), out[4].cpu().numpy()

        z, y = collect(pairs(), self.ignore_index, cfg.seed)
        report = fit_report(z, y, f"val split ({len(self.val_ds)} items, best epoch)")
        save_checkpoint(model, with_temperature(meta, report), best)
        b, a = report["before"], report["after"]
        print(f"calibrated {best.name}: temperature {report['temperature']:.3f} (val NLL "
              f"{b['nll']:.4f} -> {a['nll']:.4f}, ECE {b['ece']:.4f} -> {a['ece']:.4f})",
              file=sys.stderr, flush=True)  # fmt: skip
        return report

    def run_epoch(self, epoch: int, val_loader: Any) -> None:
        """Train, validate, update the best score, then checkpoint and log on rank 0."""
        t0 = time.time()
        sums = self.train_epoch(epoch)
        t_train = time.time() - t0
        cm, val_loss = self.validate(val_loader)
        vm = metrics_from_confusion(cm, [c.name for c in self.train_ds.classes])
        miou = vm["miou"] if math.isfinite(vm["miou"]) else -1.0
        improved = miou > self.best_miou
        if improved:
            self.best_miou, self.best_epoch = miou, epoch + 1
        wall = self.wall_before + (time.time() - self.t_start)
        row = self._epoch_row(epoch, sums, vm, val_loss, t_train, t0)
        self.history.append(row)
        _warn_if_collapsed(row, epoch + 1)
        if self.d.main:
            self.save(row, vm, improved, wall)
            if self.cfg.progress:
                _print_epoch(row, vm, self.cfg.epochs, improved)

    def _epoch_row(
        self,
        epoch: int,
        sums: torch.Tensor,
        vm: dict[str, Any],
        val_loss: float,
        t_train: float,
        t0: float,
    ) -> dict[str, Any]:
        """One metrics.csv / metrics.jsonl row."""
        nb = max(1.0, float(sums[3]))
        return {
            "epoch": epoch + 1,
            "step": self.global_step,
            "lr": self.sched.get_last_lr()[0],
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

    def train_epoch(self, epoch: int) -> torch.Tensor:
        """One pass over the training loader; the per-epoch sums, reduced over processes:
        loss, ce, mmd, batches, embedding cosine, head-free MMD², monitored batches."""
        cfg, d = self.cfg, self.d
        self.net.train()
        if cfg.freeze_encoder and epoch in (self.start_epoch, cfg.freeze_encoder):
            from mfaf_cli.training.finetune import set_encoder_frozen

            set_encoder_frozen(self.model, epoch < cfg.freeze_encoder)
        if self.loader is None:  # one loader, its workers kept between epochs
            self.loader = TrainLoader(self.train_ds, cfg, d, self.window_weights, self.device)
        loader = self.loader.epoch(epoch)
        sums = torch.zeros(7, dtype=torch.float64)
        bar = _progress(
            itertools.islice(loader, cfg.max_batches),
            self.steps_per_epoch,
            f"epoch {epoch + 1}/{cfg.epochs}",
            cfg.progress and d.main,
        )
        for batch in bar:
            sums += self._train_step(batch, epoch, bar)
        return _all_reduce(sums.to(self.device), d).cpu()

    def _forward(
        self,
        net: nn.Module,
        batch: dict[str, Any],
        mmd_weight: float,
        want_aux: bool,
        weighted: bool = False,
    ) -> _LossOut:
        """:func:`_forward_loss` with this run's modalities, device, padding and AMP."""
        return _forward_loss(
            net,
            batch,
            self.modalities,
            self.device,
            self.cfg,
            mmd_weight,
            self.divisor,
            self.ignore_index,
            self.autocast,
            want_aux,
            self.class_weight if weighted else None,
        )

    def _train_step(self, batch: dict[str, Any], epoch: int, bar: Any) -> torch.Tensor:
        """Forward, backward, (clipped) optimiser and schedule step; the batch's sums row."""
        from mfaf_cli.models.losses import ramp_weight

        cfg = self.cfg
        w = 0.0
        if cfg.mmd != "none":
            w = ramp_weight(self.global_step, self.total_steps, cfg.mmd_lambda, cfg.mmd_warmup)
        if cfg.modality_dropout > 0:  # --modality-dropout: training/dropout.py
            from mfaf_cli.training.dropout import apply_to_batch

            seed = cfg.seed + 7919 * int(getattr(self.d, "rank", 0))
            batch = apply_to_batch(
                batch, self.modalities, cfg.modality_dropout, seed, self.global_step
            )
        loss, ce, mmd, _, _, monitors = self._forward(
            self.net, batch, w, want_aux=True, weighted=True
        )
        self.mmd_used = self.mmd_used or monitors is not None
        cos, head_free = monitors or (0.0, 0.0)
        bad = nonfinite_ranks(loss, self.d)  # agreed by every rank: all stop together
        if bad:
            ranks = f"non-finite on rank {', '.join(map(str, bad))} of {self.d.world}"
            raise DatasetError(
                f"training diverged at epoch {epoch + 1} step {self.global_step} "
                f"(loss {ranks if self.d.enabled else float(loss)}); "
                "lower --lr or enable --grad-clip"
            )
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.opt)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        self.global_step += 1
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(
                loss=f"{float(loss.detach()):.4f}", lr=f"{self.sched.get_last_lr()[0]:.2e}"
            )
        values = [float(loss.detach()), float(ce.detach()), float(mmd.detach()), 1.0]
        values += [cos, head_free, float(monitors is not None)]
        return torch.tensor(values, dtype=torch.float64)

    def validate(self, loader: Any | None = None) -> tuple[np.ndarray, float]:
        """(confusion matrix, mean CE) over the validation split, summed over processes;
        ``loader`` is this process's share of it (built here if not given)."""
        cfg, d, k = self.cfg, self.d, self.k
        if loader is None:
            loader = _val_loader(self.val_ds, cfg, d)
        self.model.eval()
        cm = torch.zeros((k, k), dtype=torch.float64)
        loss_sum = torch.zeros(2, dtype=torch.float64)
        n = len(loader) if cfg.max_val_batches is None else min(len(loader), cfg.max_val_batches)
        with torch.inference_mode():
            for batch in _progress(
                itertools.islice(loader, cfg.max_val_batches), n, "val", cfg.progress and d.main
            ):
                _, ce, _, logits, mask, _ = self._forward(self.model, batch, 0.0, want_aux=False)
                pred = logits.argmax(1).cpu().numpy()
                m = mask.cpu().numpy()
                cm_b = confusion_matrix(pred, m, k, self.ignore_index).astype(np.float64)
                cm += torch.from_numpy(cm_b)
                loss_sum += torch.tensor([float(ce), 1.0], dtype=torch.float64)
        cm = _all_reduce(cm.to(self.device), d).cpu()
        loss_sum = _all_reduce(loss_sum.to(self.device), d).cpu()
        val_loss = float(loss_sum[0] / loss_sum[1]) if loss_sum[1] > 0 else float("nan")
        return cm.numpy().astype(np.int64), val_loss


def _print_epoch(row: dict[str, Any], vm: dict[str, Any], epochs: int, improved: bool) -> None:
    """The one-line epoch summary on stderr."""
    print(
        f"epoch {row['epoch']}/{epochs}: loss {row['train_loss']:.4f} "
        f"(ce {row['train_ce']:.4f}, mmd {row['train_mmd']:.4f}) | val loss "
        f"{row['val_loss']:.4f} OA {vm['oa']:.4f} mIoU {vm['miou']:.4f} "
        f"kappa {vm['kappa']:.4f} | {row['epoch_time_s']:.1f}s" + (" *best*" if improved else ""),
        file=sys.stderr,
        flush=True,
    )

"""Checkpoint and resume state: what each epoch saves (the last and best weights with their
model record, the resume state: optimiser, schedule, counters and RNG as plain tensors and
dicts loaded with ``weights_only=True``), and what ``--resume`` checks and restores, so a
resumed run continues an interrupted one bit for bit."""

from __future__ import annotations

import contextlib
import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mfaf_cli.errors import UsageError, WeightsError
from mfaf_cli.io.atomic import atomic_path
from mfaf_cli.metadata import ModelMeta
from mfaf_cli.scores.metrics import to_jsonable
from mfaf_cli.training.config import TrainConfig
from mfaf_cli.training.labels import check_same_bands, check_same_classes, guarded_write
from mfaf_cli.training.optim import Optimiser, optimiser_state, restore_optimiser
from mfaf_cli.training.records import (
    BEST_NAME,
    LAST_NAME,
    STATE_NAME,
    _read_history,
    _write_history,
)


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


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


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
    check_same_bands(meta, ds.band_names, ckpt)
    check_same_classes(meta.classes, ds.classes, ckpt)
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


@dataclass
class Resumed:
    """What ``--resume`` starts from: the checkpoint, its model record and the resume state."""

    ckpt: Path
    meta: ModelMeta
    state: dict[str, Any]


def read_resume(cfg: TrainConfig, ds: Any) -> Resumed:
    """The run ``cfg.resume`` names, checked against this run's model, bands and classes."""
    from mfaf_cli.io.weights import read_meta

    assert cfg.resume
    ckpt, state_path = _resume_paths(cfg.resume)
    meta = read_meta(ckpt)
    _check_resume_meta(meta, cfg, ds, ckpt)
    state = _load_state(state_path)
    if state.get("arch") != cfg.model:
        raise WeightsError(f"cannot resume: {state_path} belongs to model {state.get('arch')!r}")
    return Resumed(ckpt, meta, state)


@dataclass
class Progress:
    """Where a run stands: epochs done, steps taken, the best validation mIoU so far (and its
    epoch), the wall time of earlier invocations, and the metrics history."""

    start_epoch: int = 0
    global_step: int = 0
    best_miou: float = -1.0
    best_epoch: int = 0
    wall_before: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


def restore(resumed: Resumed, optimiser: Optimiser, cfg: TrainConfig) -> Progress:
    """Optimiser, schedule (this run's, at the saved step), counters, history and RNG."""
    state = resumed.state
    restore_optimiser(optimiser, state, cfg.lr)
    start = int(state["epoch"])
    progress = Progress(
        start_epoch=start,
        global_step=int(state["global_step"]),
        best_miou=float(state["best_miou"]),
        best_epoch=int(state["best_epoch"]),
        wall_before=float(state.get("wall_time_s", 0.0)),
        history=_read_history(resumed.ckpt.parent / "metrics.jsonl", start),
    )
    _set_rng_state(state["rng"])
    if start >= cfg.epochs:
        raise UsageError(
            f"the run in {resumed.ckpt.parent} already finished {start} "
            f"epochs; raise --epochs above {start} to continue"
        )
    return progress


def resume_state(
    arch: str, epoch_done: int, progress: Progress, optimiser: Optimiser, wall: float
) -> dict[str, Any]:
    """The resume state (plain tensors/dicts, loadable with ``weights_only=True``)."""
    return {
        "format": 1,
        "arch": arch,
        "epoch": epoch_done,
        "global_step": progress.global_step,
        "best_miou": progress.best_miou,
        "best_epoch": progress.best_epoch,
        "wall_time_s": wall,
        **optimiser_state(optimiser),
        "rng": _rng_state(),
    }


def val_summary(row: dict[str, Any], vm: dict[str, Any]) -> dict[str, Any]:
    """The validation scores a checkpoint's record carries."""
    return to_jsonable(
        {
            "epoch": int(row["epoch"]),
            "oa": vm["oa"],
            "miou": vm["miou"],
            "kappa": vm["kappa"],
            "mean_accuracy": vm["mean_accuracy"],
            "per_class_iou": {n: v["iou"] for n, v in vm["per_class"].items()},
            "split": "val",
            "alignment": {k: row[k] for k in ("embed_cosine", "headfree_mmd")},
        }
    )


def save_epoch(
    run_dir: Path,
    model: torch.nn.Module,
    meta: ModelMeta,
    improved: bool,
    state: dict[str, Any],
    history: list[dict[str, Any]],
) -> None:
    """Rank 0: last (and best) checkpoint, the resume state and the history files; a full
    disk fails in one line and keeps the previous files."""
    from mfaf_cli.io.weights import save_checkpoint

    with guarded_write(run_dir / LAST_NAME):
        save_checkpoint(model, meta, run_dir / LAST_NAME)
    if improved:
        with guarded_write(run_dir / BEST_NAME):
            save_checkpoint(model, meta, run_dir / BEST_NAME)
    with guarded_write(run_dir / STATE_NAME):
        _atomic_torch_save(state, run_dir / STATE_NAME)
    with guarded_write(run_dir / "metrics.jsonl"):
        _write_history(run_dir, history)


def model_record(run: Any, epoch_done: int, val_metrics: dict[str, Any], wall: float) -> ModelMeta:
    """The ModelMeta stored with each checkpoint: data, split, settings and metrics of
    ``run`` (the :class:`~mfaf_cli.training.trainer.Trainer`)."""
    cfg = run.cfg
    training = {
        "dataset": cfg.dataset,
        "data_root": str(cfg.data_root),
        "split": {
            "train": len(run.train_ds),
            "val": len(run.val_ds),
            "rule": getattr(run.val_ds, "split_source", "")
            or f"val = seeded holdout (seed {cfg.seed}, fraction {cfg.val_fraction}) "
            "of the training data where the dataset has no val split",
        },
        "splits": run.splits,
        "command": cfg.command,
        "epochs": epoch_done,
        "epochs_planned": cfg.epochs,
        "best_epoch": run.best_epoch,
        "wall_time_s": round(wall, 1),
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "schedule": cfg.schedule,
        "mmd": (
            {"kind": cfg.mmd, "lambda": cfg.mmd_lambda, "warmup": cfg.mmd_warmup}
            if run.mmd_used
            else None
        ),
        "tile": cfg.tile,
        **run.imbalance,
        "init": run.init_record or _parent_record(run),
        "seed": cfg.seed,
        "world_size": run.d.world,
        "device": run.device.type,
        "amp": bool(run.use_amp),
        "torch": torch.__version__,
    }
    return ModelMeta(
        arch=cfg.model,
        modalities=run.train_ds.modality_specs(),
        classes=run.train_ds.classes,
        config=dict(cfg.model_config),
        ignore_index=run.ignore_index,
        tile_size=cfg.tile,
        divisor=run.divisor,
        training=training,
        metrics={"val": val_metrics},
        trained=True,
        rules=run.rules,
    )


def _parent_record(run: Any) -> dict[str, Any] | None:
    """A resumed fine-tuning run keeps the parent record of its first invocation."""
    return run.resume_meta.training.get("init") if run.resume_meta else None

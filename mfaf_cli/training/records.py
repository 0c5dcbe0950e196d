"""The run's records: the run folder and its files (metrics.jsonl / metrics.csv, curves.png,
config.toml), each epoch's row and one-line summary, the per-split data summaries, and the
result a run returns. Every file is written through a temporary and a rename."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mfaf_cli.errors import MfafError, OutputExistsError
from mfaf_cli.io.atomic import atomic_path
from mfaf_cli.scores.metrics import to_jsonable
from mfaf_cli.training.alignment import _monitor_columns
from mfaf_cli.training.config import TrainConfig, config_to_toml

STATE_NAME = "last_state.pt"
LAST_NAME = "last.safetensors"
BEST_NAME = "best.safetensors"


_RUN_FILES = (
    LAST_NAME,
    BEST_NAME,
    STATE_NAME,
    "metrics.jsonl",
    "metrics.csv",
    "curves.png",
    "config.toml",
)


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


def _atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


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


def prepare_run_dir(
    cfg: TrainConfig, run_dir: Path, resume_ckpt: Path | None, resumed: bool
) -> bool:
    """Clear an overwritten run, create the folder, carry best.safetensors over from a run
    resumed elsewhere, write config.toml; whether this run created the folder."""
    if cfg.overwrite and cfg.resume is None and run_dir.is_dir():
        for name in _RUN_FILES:
            with contextlib.suppress(FileNotFoundError):
                (run_dir / name).unlink()
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    if resumed and resume_ckpt is not None:
        if resume_ckpt.parent.resolve() != run_dir.resolve():
            best_src = resume_ckpt.parent / BEST_NAME
            if best_src.is_file():
                shutil.copy2(best_src, run_dir / BEST_NAME)
    _atomic_write_text(run_dir / "config.toml", config_to_toml(cfg))
    return created


def epoch_row(
    epoch: int,
    step: int,
    lr: float | torch.Tensor,
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
        "step": step,
        "lr": lr,
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

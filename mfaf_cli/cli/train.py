"""``mfaf train``: train a fusion network on a dataset (thin wrapper over mfaf_cli.training)."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from mfaf_cli.cli.options import (
    dataset_bands_opt,
    json_opt,
    overwrite_opt,
    quiet_opt,
    refuse_stdout,
)

EPILOG = """\b
Examples:
  mfaf train --dataset ombria --data-root data/ombria --model mfafnet-s -o runs/mfaf
  mfaf train --dataset whu --data-root WHU-OPT-SAR --model mfafnet-b -o runs/whu \\
      --epochs 40 --batch-size 16 --device cuda
  mfaf train --config train.toml               # same keys as the flags (TOML or YAML)
  mfaf train --resume runs/mfaf                # continue with the run's saved config.toml
  mfaf train --resume runs/mfaf --epochs 60     # ... and extend it to 60 epochs
  torchrun --nproc_per_node 4 -m mfaf_cli train --dataset whu ...   # multi-GPU (DDP)
\b
Datasets: ombria, sen1floods11, whu (sheets or pre-cut), folder (CSV/TOML scene list).
RUN_DIR gets last.safetensors (+ last_state.pt), best.safetensors (best val mIoU),
metrics.jsonl, metrics.csv, curves.png and config.toml.
"""


def _model_config(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in value:
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", ctx=ctx, param=param)
        try:
            out[key.strip()] = json.loads(val)
        except json.JSONDecodeError:
            out[key.strip()] = val
    return out


#: CLI parameter name → TrainConfig field (where they differ).
_RENAME = {"output": "out", "bands": "bands", "model_opt": "model_config"}


def run_config(resume: str) -> Path | None:
    """The ``config.toml`` a run saved, for ``--resume RUN_DIR`` (or a checkpoint in it)."""
    p = Path(resume)
    found = (p if p.is_dir() else p.parent) / "config.toml"
    return found if found.is_file() else None


def _command_line() -> str:
    argv = sys.argv
    if "train" in argv[1:]:
        i = argv.index("train")
        prefix = "mfaf"
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            prefix = (
                f"torchrun --nproc_per_node {os.environ.get('LOCAL_WORLD_SIZE', '?')} -m mfaf_cli"
            )
        return prefix + " " + shlex.join(argv[i:])
    return ""


@click.command("train", epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=str),
    help="TOML/YAML file with the settings below (flags override it).",
)
@click.option("--dataset", help="ombria | sen1floods11 | whu | folder.")
@click.option(
    "--data-root",
    type=click.Path(path_type=str),
    help="Dataset folder (folder: the CSV/TOML scene list).",
)
@click.option("--model", help="Registry architecture, e.g. mfafnet-s, unet, comix-lite.")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=str),
    metavar="RUN_DIR",
    callback=refuse_stdout,
    help="Run directory to create.",
)
@click.option("--epochs", type=int, help="Total epochs (default 30).")
@click.option("--batch-size", type=int, help="Samples per step per process (default 8).")
@click.option("--lr", type=float, help="AdamW learning rate (default 6e-4).")
@click.option("--weight-decay", type=float, help="AdamW weight decay (default 0.01).")
@click.option(
    "--schedule", type=click.Choice(["poly", "cosine"]), help="LR schedule (default poly)."
)
@click.option("--warmup", type=float, help="Linear LR warm-up, fraction of all steps (default 0).")
@click.option(
    "--mmd",
    type=click.Choice(["none", "paired", "linear", "rbf", "class"]),
    help="MFAFNet alignment loss: rbf = multi-kernel MMD² on the LayerNorm-ed deep features "
    "(default; cannot collapse), paired/linear/class on a guarded shared projection, none.",
)
@click.option("--mmd-lambda", type=float, help="MMD weight λ (default 0.1).")
@click.option(
    "--mmd-warmup", type=float, help="Fraction of steps over which λ ramps up (default 0.05)."
)
@click.option("--amp/--no-amp", default=None, help="Mixed precision on CUDA (default on).")
@click.option("--grad-clip", type=float, help="Max gradient norm, 0 = off (default 1.0).")
@click.option("--seed", type=int, help="Seed for init, splits, order and augmentation (default 0).")
@click.option("--num-workers", type=int, help="Data-loader worker processes (default 0).")
@click.option("--tile", type=int, help="Training tile side in px (default 256).")
@click.option(
    "--photometric",
    type=click.FloatRange(0, 0.5),
    help="Per-band stretch/gamma jitter in training, for robustness across sensors and "
    "products (default 0.15, what the shipped models needed on Sentinel data; 0 = off).",
)
@click.option(
    "--normalisation",
    type=click.Choice(["fixed", "scene-percentile"]),
    help="fixed: clip + standardise in sensor units, the same for any extent (default); "
    "scene-percentile: stretch each scene between its own 2/98 % values first.",
)
@click.option(
    "--val-fraction",
    type=float,
    help="Seeded validation holdout where a dataset has no val split (default 0.15).",
)
@click.option("--device", help="auto | cpu | cuda (default auto).")
@click.option(
    "--resume",
    type=click.Path(path_type=str),
    metavar="RUN_DIR|CKPT",
    help="Continue a run exactly (optimizer, scheduler, epoch, RNG).",
)
@click.option(
    "--max-batches", type=int, help="Cap on training batches per epoch (dry runs, timing)."
)
@click.option(
    "--stop-after",
    type=int,
    metavar="N",
    help="Stop after N epochs in this invocation (time-boxed jobs); continue with --resume.",
)
@click.option("--max-val-batches", type=int, help="Cap on validation batches per epoch.")
@click.option(
    "--num-classes", type=int, help="folder datasets: number of classes (default: from the labels)."
)
@dataset_bands_opt(
    "Bands: 1-based numbers or names, e.g. optical=B12,B8,B4 or optical=13,8,4 (repeatable)."
)
@click.option(
    "--model-opt",
    multiple=True,
    callback=_model_config,
    metavar="KEY=VALUE",
    help="Network constructor option, e.g. base_width=16 (repeatable).",
)
@click.option(
    "--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)."
)
@overwrite_opt
@quiet_opt
@json_opt
@click.pass_context
def command(
    ctx: click.Context,
    config_file: str | None,
    threads: int | None,
    quiet: bool,
    as_json: bool,
    **params: Any,
) -> None:
    """Train a fusion network on a dataset; write checkpoints, metrics and curves to RUN_DIR."""
    from click.core import ParameterSource

    from mfaf_cli.training.trainer import TrainConfig, load_config_file, train

    values: dict[str, Any] = {}
    if config_file:
        values.update(load_config_file(config_file))
    elif params.get("resume") and (saved := run_config(params["resume"])) is not None:
        # `--resume RUN_DIR` alone: the run's own settings; flags given now still win.
        values.update(load_config_file(saved))
        for key in ("overwrite", "resume", "command", "progress"):
            values.pop(key, None)
        if not quiet:
            click.echo(f"resuming with the settings in {saved}", err=True)
    for name, val in params.items():
        field = _RENAME.get(name, name)
        src = ctx.get_parameter_source(name)
        explicit = src not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)
        if explicit or (field not in values and val not in (None, {}, ())):
            if val is None:
                continue
            values[field] = val
    values["progress"] = not quiet and values.get("progress", True)
    values["command"] = _command_line() or values.get("command", "")
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        cfg = TrainConfig(**values)
    except TypeError as err:
        raise click.UsageError(str(err)) from None
    result = train(cfg)
    if as_json and int(os.environ.get("RANK", "0")) == 0:
        click.echo(result.to_json())
    elif not quiet and int(os.environ.get("RANK", "0")) == 0:
        click.echo(
            f"trained {cfg.model} for {result.epochs} epochs in {result.wall_time_s:.0f}s; "
            f"best val mIoU {result.best_miou:.4f} (epoch {result.best_epoch}) -> {result.best}",
            err=True,
        )

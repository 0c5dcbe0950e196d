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
Examples, end to end (2 scenes, WorldCover labels in EPSG:3035 -> model -> map -> scores):
  mfaf train --dataset folder --data-root landcover/scenes.csv --classes worldcover \\
      --model unet --sampling balanced --class-weights auto -o runs/lc
  mfaf predict -m runs/lc/best.safetensors --optical landcover/s2_1.tif \\
      --sar landcover/s1_1.tif -o lc_map.tif
  mfaf evaluate --model runs/lc/best.safetensors --dataset folder \\
      --data-root landcover/scenes.csv --split val
  mfaf train --dataset folder --data-root landcover/scenes.csv \\
      --classes landcover/classes.csv --ignore-value 80 --model unet \\
      --init unet-ombria-water --freeze-encoder 2 -o runs/finetuned
\b
Datasets: ombria, sen1floods11, whu (sheets or pre-cut), folder (CSV/TOML scene list).
RUN_DIR gets last.safetensors (+ last_state.pt), best.safetensors (best val mIoU),
metrics.jsonl, metrics.csv, curves.png and config.toml.
\b
Scene list (--dataset folder): a CSV with a header, one scene a row
  id,optical,sar,label,split,ignore_value
  s0,s2_0.tif,s1_0.tif,worldcover_0.tif,train,
  s1,s2_1.tif,s1_1.tif,worldcover_1.tif,val,
columns: label (required; its grid is the scene's reference: any CRS, resolution,
dtype), modality rasters (optical, sar, hsi, lidar: those the model takes), id, split
(train/val/test; without it a seeded split), ignore_value (that scene's unlabelled value).
Or TOML: [[scene]] tables with the same keys, and top-level keys classes (a preset, a
class file, or a list of names), num_classes, ignore_value, [bands] and [units].
Paths are relative to the list. The label raster's nodata is always ignored.
\b
Class tables (--classes): presets worldcover (11 classes, codes 10..100),
dynamic-world (9, codes 0..8), corine-l1 (5, codes 1..5), whu-opt-sar (background 0 +
7, codes 10..70), water (not-water 0, water 1); or a file, CSV:
  code,name,colour
  10,trees,#006400
  40,crops,#f096ff
or JSON: [{"code": 10, "name": "trees", "colour": "#006400"}, ...]. Codes need not be
contiguous: the model predicts ids 0..K-1 in the table's order, and its maps name each
class with its code. A label code missing from the table is an error unless it is
the nodata or --ignore-value.
"""


class WorkersType(click.ParamType):
    """``--num-workers``: a count >= 0 or ``auto``."""

    name = "N|auto"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | str:
        if isinstance(value, int) or value == "auto":
            return value
        try:
            n = int(value)
        except (TypeError, ValueError):
            n = -1
        if n < 0:
            self.fail(f"{value!r} is not a count >= 0 or auto", param, ctx)
        return n


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
_RENAME = {"output": "out", "bands": "bands", "model_opt": "model_config", "rule": "rules"}


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
@click.option(
    "--num-workers",
    type=WorkersType(),
    help="Data-loader worker processes, or auto (default: the cores mfaf may use minus one; "
    "the workers persist between epochs and keep their files open).",
)
@click.option("--tile", type=int, help="Training tile side in px (default 256).")
@click.option(
    "--photometric",
    type=click.FloatRange(0, 0.5),
    help="Per-band stretch/gamma jitter in training, for robustness across sensors and "
    "products (default 0.15, what the shipped models needed on Sentinel data; 0 = off).",
)
@click.option(
    "--modality-dropout",
    type=float,
    metavar="P",
    help="Per training sample, with probability P make one modality missing (wholly or under "
    "a cloud-shaped region), so one fusion network degrades gracefully without it "
    "(default 0 = off; recorded in the run's config).",
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
@click.option(
    "--classes",
    metavar="PRESET|FILE",
    help="folder datasets: the labels' class table, a preset (worldcover, dynamic-world, "
    "corine-l1, whu-opt-sar, water) or a CSV/JSON file of code, name, colour.",
)
@click.option(
    "--ignore-value",
    type=float,
    help="folder datasets: a label value meaning unlabelled (e.g. -1), besides the label "
    "raster's nodata.",
)
@click.option(
    "--sampling",
    type=click.Choice(["grid", "random", "balanced"]),
    help="Training windows each epoch: grid order, random order (default), or balanced: drawn "
    "in proportion to their rare-class content.",
)
@click.option(
    "--class-weights",
    metavar="none|auto|FILE",
    help="Cross-entropy class weights: none (default), auto (median frequency) or a JSON file "
    "(a list of K weights, or {class name or code: weight}).",
)
@click.option(
    "--init",
    metavar="CKPT|NAME",
    help="Fine-tune: start from a checkpoint or shipped model (matching tensors load; the head "
    "is re-initialised for another class table).",
)
@click.option(
    "--freeze-encoder",
    type=int,
    metavar="EPOCHS",
    help="With --init: keep the encoder fixed for the first EPOCHS epochs.",
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
    "--rule",
    multiple=True,
    callback=lambda _c, _p, v: list(v) or None,
    metavar="NAME=EXPR",
    help="An applicability rule recorded in the model, over bands by meaning, e.g. "
    "'snow=(red - swir) / (red + swir) > 0.4 and red > 1500' (repeatable). Pixels where it "
    "holds are flagged by predict (--exclusion, --mask-excluded).",
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
            if field == "bands":  # the file's [bands] table is replaced: errors name --bands
                values.pop("band_origin", None)
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

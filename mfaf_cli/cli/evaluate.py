"""``mfaf evaluate``: score a model on a dataset split, or a predicted map against truth."""

from __future__ import annotations

from typing import Any

import click

from mfaf_cli.cli.options import (
    batch_size_opt,
    blend_opt,
    dataset_bands_opt,
    engine_opts,
    json_opt,
    overlap_opt,
    quiet_opt,
    tile_opt,
)
from mfaf_cli.types import Blend, Engine, Precision

EPILOG = """\b
Examples:
  mfaf evaluate water.tif --truth label.tif > metrics.txt
  mfaf evaluate water.tif --truth label.tif --json --plot cm.png
  mfaf evaluate water.tif --truth LabelHand.tif --map -1:255,0:0,1:1
  mfaf evaluate landuse.tif --truth whu_lbl.tif --map 0:255,10:1,20:2,30:3,40:4,50:5,60:6,70:7
  mfaf evaluate --model mfafnet-s-ombria-water --dataset ombria --data-root ombria \\
      --split test --json
\b
Truth is resampled (nearest) onto the prediction's grid. Ignored pixels: prediction nodata
(255), truth nodata, truth -1, and truth values mapped to 255. The table goes to stdout
(the JSON line instead with --json); --plot saves the confusion matrix as a PNG.
Metrics: OA (= aAcc), mIoU, per-class IoU / accuracy (recall) / precision / F1, mean
accuracy, Cohen's kappa; classes absent from both truth and prediction are left out of the
means.
"""


@click.command("evaluate", epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("prediction", required=False, type=click.Path(path_type=str))
@click.option(
    "--truth", type=click.Path(path_type=str), help="Truth label raster (with PREDICTION)."
)
@click.option(
    "--map",
    "mapping",
    metavar="V:C,...",
    help="Map truth values to class ids, e.g. 10:1,20:2,0:255 (255 = ignore), or a JSON file.",
)
@click.option(
    "--num-classes", type=int, help="Class count when the prediction carries no class table."
)
@click.option(
    "--model",
    default=None,
    help="Model for dataset mode: shipped name, .safetensors/.onnx path or arch "
    "(default: the shipped model).",
)
@click.option("--dataset", help="Dataset mode: ombria | sen1floods11 | whu | folder.")
@click.option("--data-root", type=click.Path(path_type=str), help="Dataset folder.")
@click.option(
    "--split", default="test", show_default=True, type=click.Choice(["train", "val", "test", "all"])
)
@dataset_bands_opt(
    "Dataset bands: 1-based numbers or names, e.g. optical=B12,B8,B4 or optical=13,8,4 "
    "(default: the model's bands, by name)."
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the dataset's holdout splits (as in training).",
)
@click.option(
    "--val-fraction",
    type=float,
    default=0.15,
    show_default=True,
    help="Validation holdout fraction (as in training).",
)
@tile_opt
@overlap_opt
@batch_size_opt
@blend_opt
@engine_opts
@click.option("--plot", type=click.Path(path_type=str), help="Save the confusion matrix as a PNG.")
@json_opt
@quiet_opt
def command(
    prediction: str | None,
    truth: str | None,
    mapping: str | None,
    num_classes: int | None,
    model: str | None,
    dataset: str | None,
    data_root: str | None,
    split: str,
    bands: dict[str, list[int | str]],
    seed: int,
    val_fraction: float,
    tile: int | None,
    overlap: float,
    batch_size: int,
    blend: Blend,
    device: str,
    engine: Engine,
    precision: Precision,
    threads: int | None,
    plot: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Score a model on a dataset split, or a predicted map (PREDICTION) against --truth."""
    from mfaf_cli.errors import UsageError

    _check_plot_path(plot)
    result: Any
    if prediction is not None:
        if truth is None:
            raise UsageError("give --truth LABELS.tif to compare the prediction with")
        if dataset or data_root:
            raise UsageError("give either PREDICTION --truth T, or --dataset/--data-root, not both")
        from mfaf_cli.training.evaluate import evaluate_rasters

        result = evaluate_rasters(prediction, truth, mapping=mapping, num_classes=num_classes)
    else:
        if not dataset or not data_root:
            raise UsageError(
                "give PREDICTION --truth LABELS.tif, or --dataset NAME --data-root DIR [--model M]"
            )
        if truth is not None:
            raise UsageError("--truth goes with a PREDICTION raster, not with --dataset")
        from mfaf_cli.training.evaluate import evaluate_model

        result = evaluate_model(
            model, dataset, data_root, split, tile=tile, overlap=overlap,
            batch_size=batch_size, blend=blend, device=device, engine=engine,
            precision=precision, threads=threads, bands=bands or None, seed=seed,
            val_fraction=val_fraction, progress=not quiet,
        )  # fmt: skip
    _report(result, plot, as_json, quiet)


def _check_plot_path(plot: str | None) -> None:
    """Fail before any work when the --plot folder does not exist."""
    if not plot:
        return
    from pathlib import Path

    from mfaf_cli.errors import OutputPathError

    if not Path(plot).resolve().parent.is_dir():
        raise OutputPathError(f"folder of --plot {plot} does not exist; create it first")


def _report(result: Any, plot: str | None, as_json: bool, quiet: bool) -> None:
    """The plot, then the result on stdout (so `> metrics.txt` keeps it): the JSON line with
    --json (the table then on stderr for the eye), else the table."""
    from mfaf_cli.training.metrics import format_table, plot_confusion

    if plot:
        title = result.info.get("dataset") or result.info.get("prediction", "")
        plot_confusion(result.confusion, result.class_names, plot, title=str(title))
    if as_json:
        if not quiet:
            click.echo(format_table(result.metrics), err=True)
        click.echo(result.to_json())
    else:
        click.echo(format_table(result.metrics))

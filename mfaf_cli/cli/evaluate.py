"""``mfaf evaluate``: score a model on a dataset split, or a predicted map against truth."""

from __future__ import annotations

from typing import Any

import click

from mfaf_cli.cli.options import (
    dataset_bands_opt,
    inference_opts,
    inference_spec,
    json_opt,
    quiet_opt,
)

EPILOG = """\b
Examples:
  mfaf evaluate water.tif --truth label.tif > metrics.txt
  mfaf evaluate water.tif --truth label.tif --json --plot cm.png
  mfaf evaluate water.tif --truth LabelHand.tif --map -1:255,0:0,1:1
  mfaf evaluate landuse.tif --truth whu_lbl.tif --map 0:255,10:1,20:2,30:3,40:4,50:5,60:6,70:7
  mfaf evaluate --model mfafnet-s-ombria-water --dataset ombria --data-root ombria \\
      --split test --json
  mfaf evaluate --batch pairs.csv --plot report.png      # columns prediction,truth[,scene]
  mfaf evaluate --compare water.tif water_b.tif --truth label.tif --block-size 128
  mfaf evaluate --compare unet-ombria-water mfafnet-s-ombria-water \\
      --dataset ombria --data-root ombria --split test
  # also without the pixels the model's exclusion check flags (snow, outside its range)
  mfaf evaluate water.tif --truth label.tif --exclusion why.tif
\b
Truth is resampled (nearest) onto the prediction's grid. Ignored pixels: prediction nodata
(255), truth nodata, truth -1, and truth values mapped to 255. The table goes to stdout
(the JSON line instead with --json); --plot saves the confusion matrix, per-scene mIoU and
(dataset mode) the reliability diagram as a PNG.
Metrics: OA (= aAcc), mIoU, per-class IoU / accuracy (recall) / precision / F1, mean
accuracy, Cohen's kappa; classes absent from both truth and prediction are left out of the
means. Every score has a 95 % interval from a bootstrap over scenes (dataset and --batch
modes) or over --block-size spatial blocks of one scene (blocks are correlated: the interval
is optimistic). Dataset mode also reports calibration from the probabilities: ECE (15 bins),
Brier score and NLL. --compare A B scores both on the same data and reports A - B with a
paired interval (models in dataset mode, maps with --truth, CSV columns with --batch).
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
@inference_opts
@click.option(
    "--exclusion",
    type=click.Path(path_type=str),
    help="With PREDICTION: its exclusion mask (predict --exclusion); also score without the "
    "excluded pixels.",
)
@click.option(
    "--mask-excluded",
    is_flag=True,
    help="Dataset mode: also score without the pixels the model's exclusion check flags.",
)
@click.option(
    "--batch",
    "batch",
    type=click.Path(path_type=str),
    help="CSV of maps and truths (prediction,truth[,scene]): per-scene and overall scores.",
)
@click.option(
    "--compare",
    nargs=2,
    metavar="A B",
    default=None,
    help="Paired difference A - B: two models (dataset mode), two maps (with --truth) or two "
    "map columns (with --batch).",
)
@click.option(
    "--block-size",
    type=click.IntRange(min=8),
    default=256,
    show_default=True,
    help="Spatial block (px) of the bootstrap within one scene.",
)
@click.option(
    "--plot",
    type=click.Path(path_type=str),
    help="Save the confusion matrix, per-scene scores and reliability diagram as a PNG.",
)
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
    batch: str | None,
    compare: tuple[str, str] | None,
    block_size: int,
    exclusion: str | None,
    mask_excluded: bool,
    plot: str | None,
    as_json: bool,
    quiet: bool,
    **inference: Any,
) -> None:
    """Score a model on a dataset split, or a predicted map (PREDICTION) against --truth."""
    from mfaf_cli.errors import UsageError

    _check_plot_path(plot)
    if compare and (prediction is not None or model is not None):
        raise UsageError("--compare A B replaces PREDICTION and --model: give the two there")
    if compare and plot:
        raise UsageError("--plot draws one evaluation; run A and B on their own to plot them")
    if batch is not None:
        if prediction is not None or truth is not None or dataset or data_root:
            raise UsageError("--batch CSV takes the maps and truths from the CSV alone")
        _batch(batch, compare, mapping, num_classes, plot, as_json, quiet)
        return
    if compare and truth is not None:
        _compare_maps(compare, truth, mapping, num_classes, block_size, as_json, quiet)
        return
    if compare:
        if not dataset or not data_root:
            raise UsageError("--compare A B needs --dataset/--data-root (models), --truth "
                             "(maps) or --batch (CSV columns)")  # fmt: skip
        from mfaf_cli.training.evaluate import compare_results, evaluate_model

        opts: dict[str, Any] = dict(
            spec=inference_spec(inference), bands=bands or None, seed=seed,
            val_fraction=val_fraction, progress=not quiet, block=block_size,
        )  # fmt: skip
        a, b = (evaluate_model(m, dataset, data_root, split, **opts) for m in compare)
        _report_compare(compare_results(a, b, *compare), as_json)
        return
    result: Any
    if prediction is not None:
        if truth is None:
            raise UsageError("give --truth LABELS.tif to compare the prediction with")
        if dataset or data_root:
            raise UsageError("give either PREDICTION --truth T, or --dataset/--data-root, not both")
        if mask_excluded:
            raise UsageError("--mask-excluded is for dataset mode; with a PREDICTION give "
                             "--exclusion MASK.tif (written by predict --exclusion)")  # fmt: skip
        from mfaf_cli.training.evaluate import evaluate_rasters

        result = evaluate_rasters(prediction, truth, mapping=mapping, num_classes=num_classes,
                                  block=block_size, exclusion=exclusion)  # fmt: skip
    else:
        if not dataset or not data_root:
            raise UsageError(
                "give PREDICTION --truth LABELS.tif, or --dataset NAME --data-root DIR [--model M]"
            )
        if truth is not None or exclusion is not None:
            raise UsageError("--truth / --exclusion go with a PREDICTION raster, not with "
                             "--dataset (there: --mask-excluded)")  # fmt: skip
        from mfaf_cli.training.evaluate import evaluate_model

        result = evaluate_model(
            model, dataset, data_root, split, spec=inference_spec(inference),
            bands=bands or None, seed=seed, val_fraction=val_fraction, progress=not quiet,
            block=block_size, mask_excluded=mask_excluded,
        )  # fmt: skip
    _report(result, plot, as_json, quiet)


def _batch(
    csv_path: str,
    compare: tuple[str, str] | None,
    mapping: str | None,
    num_classes: int | None,
    plot: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """--batch: every map of the CSV scored, or two map columns compared scene by scene."""
    from mfaf_cli.training.evaluate import compare_results, evaluate_batch

    if compare is None:
        result = evaluate_batch(csv_path, mapping=mapping, num_classes=num_classes)
        _report(result, plot, as_json, quiet)
        return
    a, b = (evaluate_batch(csv_path, mapping=mapping, num_classes=num_classes, column=c)
            for c in compare)  # fmt: skip
    _report_compare(compare_results(a, b, *compare), as_json)


def _compare_maps(
    compare: tuple[str, str],
    truth: str,
    mapping: str | None,
    num_classes: int | None,
    block_size: int,
    as_json: bool,
    quiet: bool,
) -> None:
    """--compare A.tif B.tif --truth T: paired over the spatial blocks of the one scene."""
    from mfaf_cli.training.evaluate import compare_results, evaluate_rasters

    a, b = (evaluate_rasters(p, truth, mapping=mapping, num_classes=num_classes,
                             block=block_size) for p in compare)  # fmt: skip
    _report_compare(compare_results(a, b, *compare), as_json)


def _report_compare(report: dict[str, Any], as_json: bool) -> None:
    """The difference table on stdout, or the JSON line (the table then on stderr)."""
    import json

    from mfaf_cli.scores.metrics import to_jsonable
    from mfaf_cli.training.scoring import format_compare

    table = format_compare(report, report["a"], report["b"])
    if as_json:
        click.echo(table, err=True)
        click.echo(json.dumps(to_jsonable(report)))
    else:
        click.echo(table)


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
    from mfaf_cli.scores.metrics import format_table
    from mfaf_cli.training.scoring import format_extra, plot_report

    if plot:
        title = result.info.get("dataset") or result.info.get("prediction") or result.info.get(
            "pairs", ""
        )
        plot_report(result.confusion, result.class_names, result.report, plot, title=str(title))
    table = "\n".join(t for t in (format_table(result.metrics), format_extra(result.report)) if t)
    kept = result.info.get("without_excluded")
    if kept is not None:
        table += (f"\n\nwithout excluded pixels ({100 * kept['excluded_of_scored']:.1f} % of the "
                  f"scored pixels excluded):\n{format_table(kept['metrics'])}")  # fmt: skip
    if as_json:
        if not quiet:
            click.echo(table, err=True)
        click.echo(result.to_json())
    else:
        click.echo(table)

"""``mfaf predict``: a thin wrapper over :func:`mfaf_cli.pipeline.predict.predict`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import click

from mfaf_cli.cli import options as opt
from mfaf_cli.metadata import ALL_MODALITIES

log = logging.getLogger("mfaf")

EPILOG = """\b
Examples:
  # Sentinel-2 + Sentinel-1 with the default model, which takes optical swir,nir,red
  # (Sentinel-2 B12,B8,B4) and SAR VV; a quick-look PNG too
  mfaf predict --optical S2.tif --optical-bands B12,B8,B4 --sar S1.tif --sar-bands VV \\
      -o water.tif --preview water.png
\b
  # one file per band, as Sentinel-2 ships them (stacked on the finest grid), or the
  # SAFE folder itself (the bands the model needs are picked by name)
  mfaf predict --optical T29SND_B12_20m.jp2 --optical T29SND_B08_10m.jp2 \\
      --optical T29SND_B04_10m.jp2 --sar S1.tif --sar-bands VV -o water.tif --overwrite
  mfaf predict --optical S2B_MSIL2A.SAFE --sar S1.tif --sar-bands VV -o water.tif --overwrite
\b
  # also class probabilities, a confidence map and polygons, as a COG
  mfaf predict --optical S2.tif --optical-bands B12,B8,B4 --sar S1.tif --sar-bands VV \\
      -o map.tif --probabilities probs.tif --confidence conf.tif --vector map.gpkg --cog
\b
  # hyperspectral + LiDAR with your own CoMiX weights, on a 1 m UTM grid over part of the
  # scene, on the GPU
  mfaf predict --hsi hsi.tif --lidar dsm.tif --model comix-s.safetensors -o map.tif \\
      --crs EPSG:32615 --resolution 1 --bounds 271000,3289000,271128,3289128 --device cuda
\b
  # many scenes, one model load; CSV columns scene,optical,sar,output (bands from the flags)
  mfaf predict --batch scenes.csv --optical-bands B12,B8,B4 --sar-bands VV \\
      --skip-existing --json > results.jsonl
\b
  # the same scenes on one 10 m UTM pixel lattice (target-aligned), and a VRT of their maps
  mfaf predict --batch scenes.csv --optical-bands B12,B8,B4 --sar-bands VV \\
      --crs EPSG:32630 --resolution 10 --mosaic-vrt maps.vrt --overwrite
\b
  # fill values the files do not tag, and a STAC Item beside the map (map.stac-item.json)
  mfaf predict --optical S2.tif --optical-bands B12,B8,B4 --sar S1.tif --sar-bands VV \\
      --nodata optical=0 --nodata sar=-9999 -o map.tif --stac-item
\b
  # or one process per scene (temp names are unique per process)
  xargs -P 4 -I{} mfaf predict --optical s2/{}.tif --optical-bands B12,B8,B4 \\
      --sar s1/{}.tif --sar-bands VV -o maps/{}.tif --skip-existing -q < scene-ids.txt
\b
  # one scene across the GPUs of a node: each rank predicts a strip of rows (with the
  # blending halo); rank 0 assembles map.tif, pixel for pixel a single run's
  torchrun --standalone --nproc-per-node 2 -m mfaf_cli predict --optical S2.tif \\
      --optical-bands B12,B8,B4 --sar S1.tif --sar-bands VV -o map.tif --split-scene --overwrite
\b
The output grid is the optical (or HSI) raster's grid unless --crs/--resolution/--bounds
change it; other inputs are warped onto it window by window (SAR is resampled in linear
power). Pixels where any input is nodata or outside its footprint are written as 255, and
so are values no sensor measures (SAR dB outside -60..40; reflectance x 10^4 below 0, above
20000, or 0 in every band), counted in a warning. Inputs may be located by GCPs or RPCs
instead of a CRS. Every map carries a provenance record (tag MFAF_PROVENANCE, --json).
Outputs are written to temp files and renamed at the end: an error or Ctrl-C leaves nothing.
\b
Inputs may be URLs (https://, s3://, gs://, /vsi...: only the blocks a window needs are
fetched; MFAF_HTTP_TIMEOUT / MFAF_HTTP_RETRIES tune the transfers) or STAC items
(--optical item.json, --sar item.json, or --stac items.json from a search: the assets that
carry the model's bands are picked by name, several items are mosaicked, most recent on
top). --aoi field.geojson maps only that polygon (nodata outside it).
\b
--batch CSV: columns optical, sar, hsi, lidar (paths, URLs or STAC items; "a.tif;b.tif"
stacks files, "a.json;b.json" mosaics items), output (required; missing folders are
created), optional vector, probabilities, confidence, exclusion,
<modality>_bands (e.g. "B12,B8,B4") and scene (a name for reports); relative paths are
relative to the CSV's folder. A failing scene is reported as a JSON line
{"scene": ..., "status": "error", "error": ...} on stdout and the others go on; with --json
every scene gets a line ("status": "ok" / "skipped" / "error").
Exit codes: 0 success, 1 a scene or input failed, 2 usage error, 130 Ctrl-C, 143 SIGTERM.
"""


@click.command(
    "predict",
    epilog=EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@opt.read_opts
@click.option(
    "--model",
    "-m",
    default=None,
    metavar="NAME|PATH",
    help="Shipped model name, .safetensors/.onnx file, or registry architecture "
    "(untrained). Default: the shipped model for the given modalities (see `mfaf models`).",
)
@opt.inference_opts
@opt.write_opts
@click.option(
    "--batch",
    "batch_csv",
    default=None,
    metavar="CSV",
    help="Predict every scene listed in CSV with one model load (see below).",
)
@click.option(
    "--stac-item",
    is_flag=True,
    help="Also write a STAC Item beside the map (map.stac-item.json: footprint, grid, classes "
    "by the classification extension, the provenance record).",
)
@click.option(
    "--mosaic-vrt",
    default=None,
    metavar="OUT.vrt",
    callback=opt.refuse_stdout,
    help="With --batch: also write a GDAL VRT of the batch's label maps (they must share one "
    "pixel lattice: use --crs/--resolution, target-aligned).",
)
@click.option(
    "--shard",
    default=None,
    metavar="I/N",
    help="With --batch: predict only scenes I, I+N, ... (0-based); with --split-scene: row "
    "strip I of N. Default: from torchrun (RANK/WORLD_SIZE) or a Slurm job array "
    "(SLURM_ARRAY_TASK_ID/COUNT), else all scenes.",
)
@click.option(
    "--split-scene",
    is_flag=True,
    help="Split ONE scene between N processes (torchrun, Slurm array or --shard I/N): each "
    "writes its row strip to OUTPUT.part-I-of-N.tif, then one assembles the outputs, "
    "pixel for pixel those of a single run.",
)
@click.option(
    "--assemble",
    is_flag=True,
    help="With the same command line as the --split-scene processes: only assemble their "
    "part files (e.g. after the assembling process was killed).",
)
@click.option(
    "--optical-mask",
    default=None,
    metavar="FILE",
    help="Optical pixels to treat as missing: a 0/1 mask raster (1 masked), a Sentinel-2 "
    "SCL band (cloud, shadow, cirrus, snow, no-data classes) or, with --cloud-threshold, a "
    "cloud probability raster; any grid (resampled nearest). An S2 L2A --optical folder "
    "brings its SCL band.",
)
@click.option(
    "--cloud-threshold",
    type=float,
    default=None,
    metavar="0-100",
    help="--optical-mask is a cloud probability raster (0-100): mask pixels above this.",
)
@click.option(
    "--source",
    default=None,
    metavar="SOURCE.tif",
    callback=opt.refuse_stdout,
    help="Also write which model made each pixel (uint8: 0 none, 1 fusion, 2 SAR-only, "
    "3 optical-only fallback); the fractions are in --json's sources.",
)
@click.option(
    "--fallback",
    "fallback",
    multiple=True,
    metavar="MISSING=MODEL",
    help="Map pixels missing a modality with this model (e.g. optical=unet-sar-ombria-water: "
    "SAR-only where optical is missing or masked); replaces the fallbacks the model's record "
    "names. Repeatable.",
)
@click.option(
    "--no-fallback",
    is_flag=True,
    help="Leave pixels missing a modality nodata instead of mapping them with the fallback "
    "models the model's record names (e.g. SAR-only under clouds).",
)
@click.option(
    "--skip-existing",
    is_flag=True,
    help="Leave scenes whose outputs all exist alone (exit 0) instead of failing.",
)
@opt.quiet_opt
@opt.json_opt
def command(**kw: Any) -> None:
    """Predict a land-use map from co-registered modalities.

    Give optical+SAR (--optical, --sar) or HSI+LiDAR (--hsi, --lidar) rasters in any CRS,
    resolution and extent; the model's metadata says which modalities and bands it takes.
    """
    if kw["batch_csv"] is not None and (kw["split_scene"] or kw["assemble"]):
        raise click.UsageError(
            "--batch cannot be used with --split-scene/--assemble (--shard alone splits a batch)"
        )
    fallback_flags = ("optical_mask", "cloud_threshold", "source")
    if (kw["batch_csv"] or kw["split_scene"] or kw["assemble"]) and any(
        kw[k] is not None for k in fallback_flags
    ):
        raise click.UsageError(
            "--optical-mask, --cloud-threshold and --source work on single-scene runs for now "
            "(not with --batch or --split-scene)"
        )
    if kw["batch_csv"] is not None:
        _run_batch(kw)
        return
    if kw["mosaic_vrt"]:
        raise click.UsageError(
            "--mosaic-vrt joins the label maps of a --batch run; add --batch CSV"
        )
    if kw["split_scene"] or kw["assemble"]:
        _run_split(kw)
        return
    if kw["shard"]:
        raise click.UsageError(
            "--shard splits a --batch CSV (or, with --split-scene, one scene) between "
            "processes; add --batch or --split-scene"
        )
    from mfaf_cli.pipeline.predict import predict

    inputs = opt.collect_cloud_inputs(**kw)
    if kw["skip_existing"] and _all_exist(kw):
        if kw["as_json"]:
            outs = {k: kw[k] for k in ("output", "probabilities", "confidence", "vector") if kw[k]}
            click.echo(json.dumps({"status": "skipped", "outputs": outs}, sort_keys=True))
        elif not kw["quiet"]:
            click.echo(f"skipped: {kw['output']} exists (--skip-existing)", err=True)
        return
    if not inputs:
        raise click.UsageError(
            "give the input rasters, e.g. --optical S2.tif --sar S1.tif (or --hsi and --lidar)"
        )
    read, write, spec = opt.read_spec(kw, inputs), opt.write_spec(kw), opt.inference_spec(kw)
    _check_stac_item(kw)
    result = predict(read, write, kw["model"], spec=spec, progress=not kw["quiet"])
    if kw["stac_item"]:
        _write_stac_item(result.outputs)
    if kw["as_json"]:
        click.echo(result.to_json())
    elif not kw["quiet"]:
        click.echo(_summary(result.to_dict()), err=True)


def _check_stac_item(kw: dict[str, Any]) -> None:
    """Before any work: the item is written beside the label map, so it needs one."""
    if kw["stac_item"]:
        from mfaf_cli.io.raster import check_output_path
        from mfaf_cli.pipeline.stac import stac_item_path

        if kw["output"] is None:
            raise click.UsageError("--stac-item describes the label map: give -o/--output too")
        check_output_path(stac_item_path(kw["output"]), kw["overwrite"])


def _write_stac_item(outputs: dict[str, str]) -> None:
    """The STAC Item beside the label map; added to the outputs (and the --json line)."""
    from mfaf_cli.pipeline.stac import write_stac_item

    if outputs.get("label"):
        outputs["stac_item"] = str(write_stac_item(outputs["label"], dict(outputs)))


def _write_mosaic(records: list[dict[str, Any]], path: str, quiet: bool) -> None:
    """--mosaic-vrt: a VRT of the label maps of the scenes that are done (ok or skipped)."""
    from mfaf_cli.io.mosaic import write_mosaic_vrt

    maps = [r["outputs"]["label"] for r in records if r["status"] in ("ok", "skipped")]
    write_mosaic_vrt([m for m in maps if m], path)
    if not quiet:
        click.echo(f"mosaic: {path} ({len(maps)} label maps)", err=True)


def _summary(d: dict[str, Any]) -> str:
    note = "" if d["trained"] else "  (UNTRAINED model: output is not meaningful)"
    return (
        f"wrote {', '.join(d['outputs'].values())}: {d['grid']['width']}×"
        f"{d['grid']['height']} px, {d['windows']} windows "
        f"({d['skipped_windows']} all-nodata skipped), {d['seconds']:.1f} s, "
        f"{d['megapixels_per_second']:.2f} MP/s, model {d['model']}{note}{_bands_note(d)}"
        f"{_exclusion_note(d)}{_source_note(d)}"
    )


def _source_note(d: dict[str, Any]) -> str:
    """``; sources: fusion 72.9 %, sar-only 27.1 %`` (fallback runs)."""
    parts = [f"{k} {100 * v:.1f} %" for k, v in (d.get("sources") or {}).items() if v]
    return f"; sources: {', '.join(parts)}" if parts else ""


def _exclusion_note(d: dict[str, Any]) -> str:
    """``; 0.4 % of valid pixels excluded (outside-training-range 0.4 %, snow 0.0 %)``."""
    from mfaf_cli.pipeline.exclusion import excluded_note

    return f"; {excluded_note(d['exclusion'])}" if d.get("exclusion") else ""


def _bands_note(d: dict[str, Any]) -> str:
    """``; bands: optical B12,B8,B4 (13,8,4, by band descriptions), sar VV (1, ...)``."""
    parts = []
    for m, c in (d.get("bands") or {}).items():
        idx = ",".join(str(i) for i in c["indexes"])
        names = ",".join(c["descriptions"]) if all(c["descriptions"]) else ""
        parts.append(f"{m} {names + ' ' if names else ''}({idx}, by {c['picked_by']})")
    return f"; bands: {', '.join(parts)}" if parts else ""


def _all_exist(kw: dict[str, Any]) -> bool:
    """--skip-existing in single-scene mode: every requested output is already there."""

    keys = ("output", "probabilities", "confidence", "vector", "exclusion", "source")
    paths = [kw[k] for k in keys if kw.get(k)]
    return bool(paths) and all(Path(p).exists() for p in paths)


#: options that a batch CSV gives per row, so they must not be given with --batch
_PER_ROW = (
    *ALL_MODALITIES, "output", "probabilities", "confidence", "vector", "preview", "exclusion",
)  # fmt: skip


def _run_batch(kw: dict[str, Any]) -> None:
    """--batch CSV: one model load, a JSON line per scene, exit 1 if any scene failed."""
    from mfaf_cli.pipeline.batch import predict_batch, summarise

    if kw["stac"]:
        raise click.UsageError("--stac cannot be used with --batch: put items in the CSV cells")
    given = [k for k in _PER_ROW if kw[k]]
    if given:
        flag = "-o/--output" if given[0] == "output" else f"--{given[0]}"
        raise click.UsageError(
            f"{flag} cannot be used with --batch: inputs and outputs come from the CSV's "
            f"columns ({', '.join(_PER_ROW)})"
        )
    as_json, quiet = kw["as_json"], kw["quiet"]
    if kw["mosaic_vrt"]:
        from mfaf_cli.io.raster import check_output_path

        if kw["shard"]:
            raise click.UsageError(
                "--mosaic-vrt with --shard would join one share only; after the shards "
                "finish, run the batch once more with --skip-existing --mosaic-vrt OUT.vrt"
            )

        check_output_path(kw["mosaic_vrt"], kw["overwrite"])
    done = [0]

    def report(rec: dict[str, Any]) -> None:
        done[0] += 1
        status = rec["status"]
        if as_json or status == "error":
            click.echo(json.dumps(rec, sort_keys=True))
        if not quiet and not as_json:
            if status == "ok":
                click.echo(f"[{done[0]}] {rec['scene']}: {_summary(rec)}", err=True)
            elif status == "skipped":
                click.echo(f"[{done[0]}] {rec['scene']}: skipped (outputs exist)", err=True)

    records = predict_batch(
        kw["batch_csv"],
        kw["model"],
        read=opt.read_spec(kw, inputs={}),
        write=opt.write_spec(kw, template=True),
        spec=opt.inference_spec(kw),
        skip_existing=kw["skip_existing"],
        on_result=report,
        shard=kw["shard"],
        progress=not quiet,
    )
    counts = summarise(records)
    if kw["stac_item"]:
        for rec in records:
            if rec["status"] == "ok":
                _write_stac_item(rec["outputs"])
    if kw["mosaic_vrt"]:
        _write_mosaic(records, kw["mosaic_vrt"], quiet or as_json)
    if not quiet:
        click.echo(
            f"batch: {counts['ok']} ok, {counts['skipped']} skipped, {counts['error']} failed "
            f"of {len(records)} scenes",
            err=True,
        )
    if counts["error"]:
        raise click.exceptions.Exit(1)


def _run_split(kw: dict[str, Any]) -> None:
    """--split-scene / --assemble: this process's strip of one scene (and maybe the outputs)."""
    from mfaf_cli.pipeline.split import predict_split

    write = opt.write_spec(kw)
    if kw["skip_existing"] and not kw["assemble"] and _all_exist(kw):
        if not kw["quiet"]:
            click.echo(f"skipped: {kw['output']} exists (--skip-existing)", err=True)
        return
    if kw["aoi"]:
        raise click.UsageError("--aoi cannot be used with --split-scene/--assemble (yet)")
    result = predict_split(
        opt.read_spec(kw),
        write,
        kw["model"],
        spec=opt.inference_spec(kw),
        shard=kw["shard"],
        assemble_only=kw["assemble"],
        progress=not kw["quiet"],
    )
    if kw["as_json"]:
        click.echo(result.to_json())
    elif not kw["quiet"]:
        done = f"assembled {', '.join(result.outputs.values())}" if result.assembled else ""
        if result.assembled:
            done += _exclusion_note(result.to_dict())
        if result.status == "part":
            part = (f"part {result.part}/{result.parts}: rows {result.rows[0]}..{result.rows[1]},"
                    f" {result.windows} windows, {result.seconds:.1f} s")  # fmt: skip
            done = f"{part}; {done}" if done else f"{part}; another process assembles"
        click.echo(done, err=True)

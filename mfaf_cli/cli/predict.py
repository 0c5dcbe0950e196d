"""``mfaf predict``: a thin wrapper over :func:`mfaf_cli.pipeline.predict.predict`."""

from __future__ import annotations

import logging
from typing import Any

import click

from mfaf_cli.cli import options as opt

log = logging.getLogger("mfaf")

EPILOG = """\b
Examples:
  # Sentinel-2 + Sentinel-1 with the default model; RGB+NIR are S2 bands 4,3,2,8
  mfaf predict --optical S2.tif --sar S1.tif --optical-bands 4,3,2,8 -o landuse.tif
\b
  # also class probabilities, a confidence map and polygons, as a COG
  mfaf predict --optical S2.tif --sar S1.tif -o map.tif --probabilities probs.tif \\
      --confidence conf.tif --vector map.gpkg --cog
\b
  # hyperspectral + LiDAR, on a 1 m UTM grid over part of the scene, on the GPU
  mfaf predict --hsi hsi.tif --lidar dsm.tif --model comix-s.safetensors -o map.tif \\
      --crs EPSG:32615 --resolution 1 --bounds 271000,3289000,273000,3291000 --device cuda
\b
The output grid is the optical (or HSI) raster's grid unless --crs/--resolution/--bounds
change it; other inputs are warped onto it window by window (SAR is resampled in linear
power). Pixels where any input is nodata or outside its footprint are written as 255.
Outputs are written to temp files and renamed at the end: an error or Ctrl-C leaves nothing.
"""


@click.command(
    "predict",
    epilog=EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@opt.inputs_opts
@click.option(
    "-o",
    "--output",
    default=None,
    metavar="PATH",
    help="Label GeoTIFF to write (uint8 class ids, nodata 255, colour table).",
)
@click.option(
    "--model",
    "-m",
    default=None,
    metavar="NAME|PATH",
    help="Shipped model name, .safetensors/.onnx file, or registry architecture "
    "(untrained). Default: the shipped model for the given modalities (see `mfaf models`).",
)
@opt.bands_opts
@opt.grid_opts
@opt.tile_opt
@opt.overlap_opt
@opt.batch_size_opt
@opt.blend_opt
@opt.engine_opts
@click.option(
    "--sar-units",
    type=click.Choice(("auto", "db", "linear")),
    default="auto",
    show_default=True,
    help="Units of the SAR file (auto: float with negative median = dB).",
)
@click.option(
    "--probabilities", default=None, metavar="PATH", help="Also write per-class probabilities."
)
@click.option(
    "--probabilities-dtype",
    type=click.Choice(("uint8", "float32")),
    default="uint8",
    show_default=True,
    help="uint8: 0..254 scaled (255 nodata); float32: 0..1 (NaN nodata).",
)
@click.option(
    "--confidence", default=None, metavar="PATH", help="Also write the max class probability."
)
@click.option(
    "--vector",
    default=None,
    metavar="PATH",
    help="Also polygonise the label map (.gpkg, .geojson, .parquet, .shp).",
)
@click.option("--cog", is_flag=True, help="Write Cloud Optimized GeoTIFFs with overviews.")
@opt.creation_options_opt
@opt.overwrite_opt
@opt.quiet_opt
@opt.json_opt
def command(**kw: Any) -> None:
    """Predict a land-use map from co-registered modalities.

    Give optical+SAR (--optical, --sar) or HSI+LiDAR (--hsi, --lidar) rasters in any CRS,
    resolution and extent; the model's metadata says which modalities and bands it takes.
    """
    from mfaf_cli.pipeline.predict import predict

    inputs = opt.collect_inputs(**kw)
    if not inputs:
        raise click.UsageError(
            "give the input rasters, e.g. --optical S2.tif --sar S1.tif (or --hsi and --lidar)"
        )
    if kw["output"] is None and not (kw["probabilities"] or kw["confidence"]):
        raise click.UsageError("give -o/--output PATH for the label map")
    result = predict(
        inputs,
        kw["output"],
        kw["model"],
        tile=kw["tile"],
        overlap=kw["overlap"],
        batch_size=kw["batch_size"],
        blend=kw["blend"],
        device=kw["device"],
        engine=kw["engine"],
        precision=kw["precision"],
        probabilities=kw["probabilities"],
        probabilities_dtype=kw["probabilities_dtype"],
        confidence=kw["confidence"],
        vector=kw["vector"],
        cog=kw["cog"],
        creation_options=kw["creation_options"] or None,
        overwrite=kw["overwrite"],
        progress=not kw["quiet"],
        bands=opt.collect_bands(**kw),
        crs=kw["crs"],
        resolution=kw["resolution"],
        bounds=kw["bounds"],
        sar_units=kw["sar_units"],
    )
    if kw["as_json"]:
        click.echo(result.to_json())
    elif not kw["quiet"]:
        note = "" if result.trained else "  (UNTRAINED model: output is not meaningful)"
        click.echo(
            f"wrote {', '.join(result.outputs.values())}: {result.grid['width']}×"
            f"{result.grid['height']} px, {result.windows} windows "
            f"({result.skipped_windows} all-nodata skipped), {result.seconds:.1f} s, "
            f"{result.megapixels_per_second:.2f} MP/s, model {result.model}{note}",
            err=True,
        )

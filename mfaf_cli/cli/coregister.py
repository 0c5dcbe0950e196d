"""``mfaf coregister``: write every input on the common grid (for inspection / training sets)."""

from __future__ import annotations

from typing import Any

import click

from mfaf_cli.cli import options as opt
from mfaf_cli.metadata import ALL_MODALITIES

EPILOG = """\b
Examples:
  mfaf coregister --optical S2.tif --sar S1.tif -o aligned/
  mfaf coregister --optical S2.tif --sar S1.tif --label label.tif \\
      --crs EPSG:32630 --resolution 20 -o aligned20/      # a 20 m UTM grid
  mfaf coregister --optical B12.tif --optical B08.tif --optical B04.tif -o stack/
\b
Writes DIR/optical.tif, DIR/sar.tif, ... (float32, nodata NaN, tiled, compressed) on the
optical (or HSI) raster's grid, or the grid set by --crs/--resolution/--bounds. SAR is
resampled in linear power and written in its input units; --label is resampled nearest.
"""


@click.command(
    "coregister",
    epilog=EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@opt.inputs_opts
@click.option(
    "--label", default=None, metavar="PATH", help="Categorical raster (e.g. ground truth)."
)
@click.option(
    "-o",
    "--output",
    "out_dir",
    required=True,
    metavar="DIR",
    callback=opt.refuse_stdout,
    help="Folder for the aligned files.",
)
@click.option(
    "--reference",
    type=click.Choice(ALL_MODALITIES),
    default=None,
    help="Modality whose grid is the target (default: optical, else hsi).",
)
@opt.bands_opts
@opt.grid_opts
@opt.sar_units_opt
@opt.stack_grid_opt
@opt.stac_opt
@opt.mosaic_opt
@opt.creation_options_opt
@opt.overwrite_opt
@opt.quiet_opt
@opt.json_opt
def command(**kw: Any) -> None:
    """Warp all inputs onto one grid and write them as tiled GeoTIFFs."""
    from mfaf_cli.pipeline.predict import coregister

    inputs = opt.collect_cloud_inputs(**kw)
    if kw["label"]:
        inputs["label"] = kw["label"]
    if not inputs:
        raise click.UsageError("give the input rasters, e.g. --optical S2.tif --sar S1.tif")
    result = coregister(
        opt.read_spec(kw, inputs),
        kw["out_dir"],
        write=opt.write_spec(kw, template=True),
        reference=kw["reference"],
        progress=not kw["quiet"],
    )
    if kw["as_json"]:
        click.echo(result.to_json())
    elif not kw["quiet"]:
        g = result.grid
        click.echo(
            f"wrote {', '.join(result.outputs.values())} on a {g['width']}×{g['height']} grid "
            f"({g['crs']}); {100 * result.valid_fraction:.1f} % of pixels valid in every input",
            err=True,
        )

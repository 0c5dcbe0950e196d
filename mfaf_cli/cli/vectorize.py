"""``mfaf vectorize``: polygonise a label raster (thin wrapper over mfaf_cli.vectorize)."""

from __future__ import annotations

import click

from mfaf_cli.cli.options import json_opt, overwrite_opt, quiet_opt, refuse_stdout

EPILOG = """\b
Examples:
  mfaf vectorize water.tif -o water.gpkg
  mfaf vectorize water.tif -o water.geojson --classes water --sieve 20 --simplify 10
  mfaf vectorize water.tif -o classes.parquet --dissolve --json
\b
Output format follows the extension: .gpkg, .geojson, .parquet (GeoParquet, needs pyarrow),
.shp. GeoJSON is written in WGS 84 (EPSG:4326, RFC 7946) unless --keep-crs; the others keep
the raster's CRS. Each feature has class_id, class_name and area_m2 (geodesic for geographic
CRSs). --simplify is in metres and --min-area in m² for every CRS (for a geographic CRS the
pixel size in metres is measured on the ellipsoid at the raster centre).
"""


def _split_classes(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str]:
    if not value:
        return []
    return [v.strip() for v in value.split(",") if v.strip()]


@click.command("vectorize", epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("labels", type=click.Path(path_type=str))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=str),
    callback=refuse_stdout,
    help="Vector file to write.",
)
@click.option(
    "--sieve",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="PX",
    help="Merge regions smaller than PX pixels into their largest neighbour first.",
)
@click.option(
    "--simplify",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    metavar="METRES",
    help="Simplify borders by this tolerance in metres, whatever the CRS (shared borders "
    "stay shared); a warning says when it is more than a few pixels.",
)
@click.option(
    "--min-area",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    metavar="M2",
    help="Drop polygons smaller than this many square metres.",
)
@click.option(
    "--classes",
    callback=_split_classes,
    metavar="LIST",
    help="Keep only these classes: comma-separated ids or names, e.g. water,1.",
)
@click.option("--dissolve", is_flag=True, help="One (multi)polygon per class.")
@click.option(
    "--connectivity",
    type=click.Choice(["4", "8"]),
    default="4",
    show_default=True,
    help="Pixel neighbourhood that makes one region.",
)
@click.option("--nodata", type=float, default=None, help="Label value to skip [raster nodata/255].")
@click.option(
    "--keep-crs",
    is_flag=True,
    help="Write .geojson in the raster's CRS instead of WGS 84 (RFC 7946 asks for WGS 84).",
)
@overwrite_opt
@json_opt
@quiet_opt
def command(
    labels: str,
    output: str,
    sieve: int,
    simplify: float,
    min_area: float,
    classes: list[str],
    dissolve: bool,
    connectivity: str,
    nodata: float | None,
    keep_crs: bool,
    overwrite: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Polygonise a label raster: one feature per connected region, with class and area."""
    from mfaf_cli.vectorize import vectorize_raster

    result = vectorize_raster(
        labels,
        output,
        sieve=sieve,
        simplify=simplify,
        min_area=min_area,
        classes=classes or None,
        dissolve=dissolve,
        overwrite=overwrite,
        nodata=nodata,
        connectivity=int(connectivity),
        progress=not quiet,
        geojson_wgs84=not keep_crs,
    )
    if as_json:
        click.echo(result.to_json())
    elif not quiet:
        counts = ", ".join(f"{k}: {v}" for k, v in result.per_class.items()) or "none"
        click.echo(
            f"wrote {result.n_polygons} polygons ({counts}) to {result.output} "
            f"in {result.seconds:.2f} s"
        )

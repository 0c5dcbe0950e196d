"""Shared click options, so every command spells, documents and parses a flag the same way.

Used by: predict (all), coregister (inputs, grid, bands, --sar-units, --co, --overwrite,
--quiet, --json), evaluate (tiling and engine options, --bands MOD=LIST), train (--bands
MOD=LIST), and --overwrite / --quiet / --json wherever a command has them.

A run is made of three objects, and this module is where each one's flags are declared and
turned into it: :func:`read_spec` (what to read: ``read_opts``), :func:`inference_spec` (how
to infer: ``inference_opts``) and :func:`write_spec` (what to write: ``write_opts``). A new
input or output option is a field of its object, a flag here and one line in its builder.

Parsing callbacks raise ``click.BadParameter`` naming the flag; value *ranges* that depend on
the model (tile divisor, band counts) are checked in the library, which knows the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import click

from mfaf_cli.metadata import ALL_MODALITIES
from mfaf_cli.types import BLENDS, CONFIDENCE_KINDS, ENGINES, PRECISIONS, PROBABILITY_DTYPES

F = TypeVar("F", bound=Callable[..., Any])

BLEND_CHOICES = BLENDS
ENGINE_CHOICES = ENGINES
PRECISION_CHOICES = PRECISIONS
SAR_UNITS_CHOICES = ("auto", "db", "linear")


# ---- value parsers ----------------------------------------------------------------------------
def parse_band_list(value: str, where: str = "band list") -> list[int | str]:
    """``"4,3,2,8"`` → ``[4, 3, 2, 8]``; ``"B4,nir"`` → ``["B4", "nir"]`` (the one band grammar,
    :mod:`mfaf_cli.bandspec`)."""
    from mfaf_cli.bandspec import parse_band_list as parse

    return parse(value, where)


def parse_key_values(values: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``("COMPRESS=ZSTD", "ZSTD_LEVEL=9")`` → ``{"COMPRESS": "ZSTD", "ZSTD_LEVEL": "9"}``."""
    out: dict[str, str] = {}
    for item in values:
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{item!r} is not KEY=VALUE (e.g. --co COMPRESS=ZSTD)")
        out[key.strip().upper()] = val.strip()
    return out


def parse_bounds(value: str) -> tuple[float, float, float, float]:
    """``"left,bottom,right,top"`` (commas or spaces) → 4 floats."""
    parts = value.replace(",", " ").split()
    try:
        nums = tuple(float(p) for p in parts)
    except ValueError:
        nums = ()
    if len(nums) != 4 or not all(math.isfinite(v) for v in nums):
        raise ValueError(f"{value!r} is not 'left,bottom,right,top' in the target CRS units")
    left, bottom, right, top = nums
    if not (right > left and top > bottom):
        raise ValueError(f"{value!r} is empty: need left < right and bottom < top")
    return nums  # type: ignore[return-value]


def parse_resolution(value: str) -> float | tuple[float, float]:
    """``"10"`` → 10.0; ``"10,20"`` → (10.0, 20.0) (x, y), positive."""
    parts = value.replace(",", " ").split()
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) not in (1, 2) or not all(math.isfinite(v) and v > 0 for v in nums):
        raise ValueError(f"{value!r} is not a positive pixel size (e.g. 10 or 10,10)")
    return nums[0] if len(nums) == 1 else (nums[0], nums[1])


def parse_modality_bands(values: tuple[str, ...] | list[str]) -> dict[str, list[int | str]]:
    """``("optical=B12,B8,B4", "sar=1")`` → ``{"optical": ["B12", "B8", "B4"], "sar": [1]}``
    (dataset bands: 1-based numbers or names, :mod:`mfaf_cli.bandspec`)."""
    from mfaf_cli.bandspec import parse_modality_bands as parse

    return parse(values, "")  # click's message names the option


def _callback(parser: Callable[[Any], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def cb(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None or value == ():
            return {} if param.multiple else None
        try:
            return parser(value)
        except ValueError as err:
            raise click.BadParameter(str(err), ctx=ctx, param=param) from None

    return cb


def refuse_stdout(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Outputs are files renamed into place, never a stream: ``-o -`` is a usage error."""
    if isinstance(value, str) and value.strip() == "-":
        raise click.BadParameter(
            "'-' (standard output) is not supported: give a file path", ctx=ctx, param=param
        )
    return value


def output_path_opt(*flags: str, help_text: str, metavar: str = "PATH") -> Callable[[F], F]:
    """An output file flag: a path, never ``-`` (outputs are renamed into place)."""
    return click.option(
        *flags, default=None, metavar=metavar, callback=refuse_stdout, help=help_text
    )


def choice_opt(flag: str, choices: Sequence[str], default: str, help_text: str) -> Any:
    """A flag taking one of ``choices`` (click lists them and refuses others; default shown)."""
    return click.option(
        flag, type=click.Choice(choices), default=default, show_default=True, help=help_text
    )


# ---- decorators -----------------------------------------------------------------------------
def _stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def wrap(f: F) -> F:
        for d in reversed(decorators):
            f = d(f)
        return f

    return wrap


overwrite_opt = click.option(
    "--overwrite", is_flag=True, help="Replace output files that already exist."
)
quiet_opt = click.option("-q", "--quiet", is_flag=True, help="No progress bar or notes.")
json_opt = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON summary line on stdout (for scripts)."
)
creation_options_opt = click.option(
    "--co",
    "creation_options",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_callback(parse_key_values),
    help="GDAL creation option for the GeoTIFF outputs (repeatable), e.g. --co COMPRESS=ZSTD.",
)
tile_opt = click.option(
    "--tile",
    type=int,
    default=None,
    metavar="PX",
    help="Window side in px (default: the model's tile size; a multiple of its divisor).",
)
overlap_opt = click.option(
    "--overlap",
    type=float,
    default=0.25,
    show_default=True,
    help="Fraction of a window shared with its neighbours, in [0, 1).",
)
batch_size_opt = click.option(
    "--batch-size", type=int, default=4, show_default=True, help="Windows per model call."
)
blend_opt = choice_opt(
    "--blend",
    BLEND_CHOICES,
    "gaussian",
    "How overlapping windows are weighted (only overlaps are tapered).",
)
device_opt = click.option(
    "--device",
    default="auto",
    show_default=True,
    metavar="auto|cpu|cuda[:N]",
    help="Where the model runs.",
)
engine_opt = choice_opt(
    "--engine",
    ENGINE_CHOICES,
    "auto",
    "Inference engine. auto: ONNX Runtime on CPU when installed (the export is cached "
    "per checkpoint in the user cache, $MFAF_CACHE_DIR overrides), PyTorch on CUDA.",
)
threads_opt = click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="CPU cores for the run (default: all usable cores). On CPU the engine uses all N and "
    "max(1, N/4) reader threads share them at a lower priority.",
)
precision_opt = choice_opt(
    "--precision",
    PRECISION_CHOICES,
    "auto",
    "Numeric precision (auto: mixed precision on CUDA, fp32 on CPU).",
)
engine_opts = _stack(device_opt, engine_opt, precision_opt, threads_opt)
#: every flag of :class:`~mfaf_cli.pipeline.spec.InferenceSpec` (turned into it by
#: :func:`inference_spec`)
inference_opts = _stack(tile_opt, overlap_opt, batch_size_opt, blend_opt, engine_opts)
INFERENCE_FLAGS = ("tile", "overlap", "batch_size", "blend", "device", "engine", "precision",
                   "threads")  # fmt: skip

crs_opt = click.option(
    "--crs", default=None, metavar="CRS", help="Target CRS (default: the reference input's)."
)
resolution_opt = click.option(
    "--resolution",
    default=None,
    metavar="RES",
    callback=_callback(parse_resolution),
    help="Target pixel size in target CRS units, e.g. 10 or 10,10.",
)
bounds_opt = click.option(
    "--bounds",
    default=None,
    metavar="L,B,R,T",
    callback=_callback(parse_bounds),
    help="Target extent left,bottom,right,top in target CRS units.",
)


def _nodata_pairs(values: tuple[str, ...]) -> dict[str, float]:
    from mfaf_cli.coreg.validity import parse_nodata
    from mfaf_cli.errors import UsageError

    try:
        return parse_nodata(values)
    except UsageError as err:
        raise ValueError(str(err)) from None


tap_opt = click.option(
    "--tap/--no-tap",
    default=None,
    help="Target-aligned pixels (as gdalwarp -tap): grid edges on multiples of the resolution, "
    "so neighbouring scenes share one pixel lattice [default: on with --crs/--resolution].",
)
nodata_opt = click.option(
    "--nodata",
    "nodata",
    multiple=True,
    metavar="MOD=VALUE",
    callback=_callback(_nodata_pairs),
    help="Nodata value of a modality's file, overriding or supplying its tag "
    "(repeatable; e.g. --nodata optical=0 --nodata sar=-9999).",
)
grid_opts = _stack(crs_opt, resolution_opt, bounds_opt, tap_opt, nodata_opt)
sar_units_opt = choice_opt(
    "--sar-units",
    SAR_UNITS_CHOICES,
    "auto",
    "Units of the SAR file (auto: float with negative median = dB).",
)


def band_opt(modality: str, example: str) -> Callable[[F], F]:
    """``--<modality>-bands`` taking a 1-based band list or band names."""
    return click.option(
        f"--{modality}-bands",
        f"{modality}_bands",
        default=None,
        metavar="LIST",
        callback=_callback(lambda v: parse_band_list(v, repr(v))),
        help=f"{modality} bands to use, in the model's order: 1-based numbers or band "
        f"names, e.g. {example}.",
    )


bands_opts = _stack(
    band_opt("optical", "4,3,2,8"),
    band_opt("sar", "1 or VV"),
    band_opt("hsi", "1,2,3"),
    band_opt("lidar", "1"),
)


def dataset_bands_opt(help_text: str) -> Callable[[F], F]:
    """``--bands MOD=LIST`` (repeatable): band selection of a training/evaluation dataset."""
    return click.option(
        "--bands",
        multiple=True,
        callback=_callback(parse_modality_bands),
        metavar="MOD=LIST",
        help=help_text,
    )


def input_opt(modality: str, help_text: str) -> Callable[[F], F]:
    """``--<modality> PATH`` (repeatable: several files are stacked, in the order given;
    a folder is a Sentinel-2 product). Existence is checked by the library."""
    return click.option(
        f"--{modality}",
        f"{modality}",
        multiple=True,
        metavar="PATH",
        help=help_text + " Repeat it to stack one-band files, in the model's band order.",
    )


inputs_opts = _stack(
    input_opt(
        "optical",
        "Optical raster (e.g. Sentinel-2), or a Sentinel-2 SAFE/L2A folder (the bands the "
        "model needs are picked by name); the default reference grid.",
    ),
    input_opt(
        "sar",
        "SAR raster (e.g. Sentinel-1 VV/VH, dB or linear power), or a folder of VV/VH files "
        "(BigEarthNet ..._VV.tif, terrain-corrected SAFE -vv- files, STAC vv.tif).",
    ),
    input_opt("hsi", "Hyperspectral raster; the reference grid when there is no optical."),
    input_opt("lidar", "LiDAR raster (e.g. DSM)."),
)


exclusion_opt = output_path_opt(
    "--exclusion",
    help_text="Also write the exclusion mask: uint8 reason codes where the map cannot be "
    "trusted (0 ok, 1 outside the model's training range, 2... its rules, e.g. snow; 255 "
    "nodata).",
)
mask_excluded_opt = click.option(
    "--mask-excluded",
    is_flag=True,
    help="Write excluded pixels (see --exclusion) as nodata in every output and the polygons.",
)
stack_grid_opt = click.option(
    "--stack-grid",
    default=None,
    metavar="finest|coarsest|N|FILE",
    help="Grid of a stack of files given for one modality (default: the finest input).",
)


# ---- cloud-native inputs (STAC items, mosaics, areas of interest; see coreg/sources.py) ----
stac_opt = click.option(
    "--stac",
    default=None,
    metavar="ITEMS.json",
    help="A STAC ItemCollection or saved search result (file or URL): its Sentinel-2 items "
    "are the optical input, its Sentinel-1 items the SAR input (several: a mosaic, most "
    "recent on top). --optical/--sar also take one item.json each.",
)
mosaic_opt = click.option(
    "--mosaic",
    is_flag=True,
    help="Repeated --optical/--sar files are tiles of one mosaic (the first given on top), "
    "not band files to stack.",
)
aoi_opt = click.option(
    "--aoi",
    default=None,
    metavar="FILE",
    help="Area of interest (GeoJSON, GPKG, SHP; any CRS): the run covers its bounds and "
    "pixels outside the polygon are nodata; only windows touching it are read.",
)
cloud_opts = _stack(stac_opt, mosaic_opt, aoi_opt)


def collect_inputs(**kw: Any) -> dict[str, str | list[str]]:
    """The modality → path (or list of paths to stack) from ``--optical/--sar/...`` values."""
    out: dict[str, str | list[str]] = {}
    for m in ALL_MODALITIES:
        v = kw.get(m)
        if v:
            out[m] = v if isinstance(v, str) else (v[0] if len(v) == 1 else list(v))
    return out


def collect_bands(**kw: Any) -> dict[str, list[int | str]]:
    return {m: kw[f"{m}_bands"] for m in ALL_MODALITIES if kw.get(f"{m}_bands")}


def collect_cloud_inputs(**kw: Any) -> dict[str, Any]:
    """``collect_inputs`` plus the items of ``--stac`` by modality (optical / sar)."""
    inputs: dict[str, Any] = dict(collect_inputs(**kw))
    if kw.get("stac"):
        from mfaf_cli.coreg.stac import stac_inputs

        for mod, items in stac_inputs(kw["stac"]).items():
            if mod in inputs:
                raise click.UsageError(f"--{mod} and --stac both give the {mod} input: drop one")
            inputs[mod] = items
    return inputs


#: every input and grid flag of predict (turned into a ReadSpec by :func:`read_spec`)
read_opts = _stack(inputs_opts, bands_opts, grid_opts, sar_units_opt, stack_grid_opt, cloud_opts)


# ---- what to write (predict's outputs; turned into a WriteSpec by write_spec) ---------------
output_opt = output_path_opt(
    "-o",
    "--output",
    help_text="Label GeoTIFF to write (uint8 class ids, nodata 255, colour table).",
)
probabilities_opt = output_path_opt(
    "--probabilities", help_text="Also write per-class probabilities."
)
probabilities_dtype_opt = choice_opt(
    "--probabilities-dtype",
    PROBABILITY_DTYPES,
    "uint8",
    "uint8: 0..254 scaled (255 nodata); float32: 0..1 (NaN nodata).",
)
confidence_opt = output_path_opt(
    "--confidence",
    help_text="Also write the max class probability (calibrated: the model's temperature).",
)
confidence_kind_opt = choice_opt(
    "--confidence-kind",
    CONFIDENCE_KINDS,
    "top",
    "--confidence: top = max class probability; entropy = normalised entropy "
    "(0 certain .. 1 uniform).",
)
vector_opt = output_path_opt(
    "--vector", help_text="Also polygonise the label map (.gpkg, .geojson, .parquet, .shp)."
)
preview_opt = output_path_opt(
    "--preview",
    metavar="PNG",
    help_text="Also write a quick-look PNG: the map's class colours over a greyscale of the "
    "reference input, with a legend (decimated read, long side <= 1024 px).",
)
cog_opt = click.option("--cog", is_flag=True, help="Write Cloud Optimized GeoTIFFs with overviews.")
write_opts = _stack(
    output_opt, probabilities_opt, probabilities_dtype_opt, confidence_opt, confidence_kind_opt,
    exclusion_opt, mask_excluded_opt, vector_opt, preview_opt, cog_opt, creation_options_opt,
    overwrite_opt,
)  # fmt: skip


# ---- flags → the run's objects (the one place each is built from the command line) ---------
def inference_spec(kw: Mapping[str, Any]) -> Any:
    """:class:`~mfaf_cli.pipeline.spec.InferenceSpec` from the :data:`inference_opts` flags."""
    from mfaf_cli.pipeline.spec import InferenceSpec

    fallbacks = fallback_pairs(kw.get("fallback") or ())
    if kw.get("no_fallback"):
        if fallbacks:
            raise click.UsageError("--fallback and --no-fallback contradict each other: give one")
        fallbacks = {}
    return InferenceSpec(**{k: kw[k] for k in INFERENCE_FLAGS}, fallbacks=fallbacks)


def fallback_pairs(items: Sequence[str]) -> dict[str, str] | None:
    """``--fallback MISSING=MODEL`` values as a dict (None: none given: the record's)."""
    if not items:
        return None
    out: dict[str, str] = {}
    for item in items:
        missing, sep, model = str(item).partition("=")
        if not sep or missing not in ALL_MODALITIES or not model:
            raise click.BadParameter(
                f"{item!r}: give MISSING=MODEL, MISSING one of {', '.join(ALL_MODALITIES)} "
                "(e.g. optical=unet-sar-ombria-water)",
                param_hint="--fallback",
            )
        out[missing] = model
    return out


def read_spec(kw: Mapping[str, Any], inputs: Mapping[str, Any] | None = None) -> Any:
    """:class:`~mfaf_cli.pipeline.read_spec.ReadSpec` from the input, band and grid flags
    (those a command lacks keep their defaults); ``inputs``: instead of the modality flags
    (batch mode: none, the CSV gives them)."""
    from mfaf_cli.pipeline.read_spec import ReadSpec

    return ReadSpec(
        inputs=collect_cloud_inputs(**kw) if inputs is None else inputs,
        bands=collect_bands(**kw),
        crs=kw.get("crs"),
        resolution=kw.get("resolution"),
        bounds=kw.get("bounds"),
        aoi=kw.get("aoi"),
        sar_units=kw.get("sar_units") or "auto",
        nodata=kw.get("nodata") or None,
        tap=kw.get("tap"),
        mosaic=bool(kw.get("mosaic")),
        stack_grid=kw.get("stack_grid"),
        optical_mask=kw.get("optical_mask"),
        cloud_threshold=kw.get("cloud_threshold"),
    )


def write_spec(kw: Mapping[str, Any], template: bool = False) -> Any:
    """:class:`~mfaf_cli.pipeline.write_spec.WriteSpec` from the output flags (those a command
    lacks keep their defaults); ``template``: no paths (batch mode, coregister's folder)."""
    from mfaf_cli.pipeline.write_spec import WriteSpec

    paths = {} if template else {
        "label": kw.get("output"), "probabilities": kw.get("probabilities"),
        "confidence": kw.get("confidence"), "exclusion": kw.get("exclusion"),
        "vector": kw.get("vector"), "preview": kw.get("preview"), "source": kw.get("source"),
    }  # fmt: skip
    return WriteSpec(
        probabilities_dtype=kw.get("probabilities_dtype") or "uint8",
        confidence_kind=kw.get("confidence_kind") or "top",
        mask_excluded=bool(kw.get("mask_excluded")),
        cog=bool(kw.get("cog")),
        creation_options=kw.get("creation_options") or None,
        overwrite=bool(kw.get("overwrite")),
        template=template,
        **paths,
    )

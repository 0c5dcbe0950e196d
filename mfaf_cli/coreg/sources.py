"""Inputs that are not one local raster per modality: STAC items, mosaics and URLs.

:func:`expand_sources` wraps ``predict`` / ``coregister`` (outside :func:`expand_stacks`):

* a STAC item or item collection (``item.json``, a URL, or :class:`~mfaf_cli.coreg.stac.Item`
  objects) → for each band the model needs (or ``--<modality>-bands`` names), the asset that
  carries it; several items → a mosaic per band, most recent item on top; the bands are then
  stacked as band files are (:mod:`mfaf_cli.coreg.stack`) and which asset served which band
  is logged and reported in the result's ``inputs``;
* several files with ``mosaic=True`` → one mosaic (first file on top), not a band stack;
* any URL among the inputs → GDAL's HTTP settings for the run (:func:`remote_env`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mfaf_cli.coreg.mosaic import (
    Tile,
    mosaic_info,
    mosaic_vrt_xml,
    one_crs,
    source_info,
    write_mosaic,
)
from mfaf_cli.coreg.stac import BandSource, Item, band_sources, by_recency, is_stac_path
from mfaf_cli.coreg.stac import load_items as load_items
from mfaf_cli.coreg.stack import _model_band_names, stack_vrt_xml
from mfaf_cli.errors import UsageError
from mfaf_cli.io.remote import is_remote, remote_env

R = TypeVar("R")
log = logging.getLogger("mfaf")


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def is_item_input(value: Any) -> bool:
    """Whether a modality's value is (or lists) STAC items."""
    return any(is_stac_path(v) for v in _as_list(value))


def items_for(value: Any, modality: str) -> list[Item]:
    """The items a modality's value names (files / URLs / Item objects), most recent first."""
    items: list[Item] = []
    for v in _as_list(value):
        if isinstance(v, Item):
            items.append(v)
        elif is_stac_path(v):
            items.extend(load_items(os.fspath(v), f"{modality} STAC item"))
        else:
            raise UsageError(
                f"--{modality}: {v} is a raster but the other values are STAC items; give "
                "items or rasters, not both"
            )
    return by_recency(items)


def wanted_bands(
    modality: str, given: Sequence[int | str] | None, model_bands: Sequence[str] | None
) -> list[str]:
    """The bands to take from an item: the user's names, else the model's."""
    if given:
        ints = [b for b in given if isinstance(b, int)]
        if ints:
            raise UsageError(
                f"--{modality}-bands {ints[0]}: a STAC item's bands are picked by name "
                "(e.g. B12,B8,B4 or swir22,nir,red; VV)"
            )
        return [str(b) for b in given]
    if not model_bands:
        raise UsageError(
            f"say which {modality} bands to take from the STAC item with --{modality}-bands "
            "(e.g. B12,B8,B4 or VV)"
        )
    return list(model_bands)


def item_stack(
    items: Sequence[Item], bands: Sequence[str], modality: str, folder: Path
) -> tuple[str, list[list[BandSource]]]:
    """A VRT of ``bands`` from ``items`` (a mosaic per band when there are several items),
    and per band the assets that serve it, highest priority first."""
    per_band: list[list[BandSource]] = [[] for _ in bands]
    for it in items:
        for k, src in enumerate(band_sources(it, bands, modality)):
            per_band[k].append(src)
    infos = []
    for k, sources in enumerate(per_band):
        tiles = [Tile(source_info(s.href, modality), (s.index,)) for s in sources]
        tiles = one_crs(tiles, folder)  # tiles across a UTM zone boundary: warped VRTs
        vrt = folder / f"{modality}-{k + 1}.vrt"
        vrt.write_text(mosaic_vrt_xml(tiles, [sources[0].band]), encoding="utf-8")
        infos.append(mosaic_info(tiles, [sources[0].band], str(vrt)))
    finest = min(range(len(infos)), key=lambda i: infos[i].res[0] * infos[i].res[1])
    out = folder / f"{modality}.vrt"
    out.write_text(stack_vrt_xml(infos, finest), encoding="utf-8")
    return str(out), per_band


def describe(per_band: Sequence[Sequence[BandSource]]) -> str:
    """``B12=https://…/B12.tif|https://…/B12.tif;B8=…`` (a band's tiles, top first)."""
    return ";".join(
        f"{srcs[0].band}=" + "|".join(s.describe().split("=", 1)[1] for s in srcs)
        for srcs in per_band
    )


@contextlib.contextmanager
def expanded_sources(
    inputs: Mapping[str, Any],
    bands: Mapping[str, Sequence[int | str] | None] | None,
    *,
    model_bands: Callable[[str], Sequence[str] | None],
    mosaic: bool = False,
) -> Iterator[tuple[dict[str, Any], dict[str, list[int | str]], dict[str, str]]]:
    """Items and mosaics replaced by VRTs for the body of the block: ``(inputs, bands,
    described)``; other values are left for :func:`expand_stacks`."""
    flat: dict[str, Any] = {}
    new_bands = {k: list(v) for k, v in (bands or {}).items() if v}
    described: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="mfaf-sources-") as tmp:
        for mod, value in inputs.items():
            if value is None:
                continue
            if is_item_input(value):
                want = wanted_bands(mod, new_bands.pop(mod, None), model_bands(mod))
                flat[mod], per_band = item_stack(items_for(value, mod), want, mod, Path(tmp))
                described[mod] = describe(per_band)
                for srcs in per_band:
                    log.info("%s %s: %s", mod, srcs[0].band, ", ".join(
                        f"item {s.item} asset {s.asset} ({s.href})" for s in srcs))  # fmt: skip
            elif mosaic and len(_as_list(value)) > 1:
                files = [os.fspath(v) for v in _as_list(value)]
                flat[mod] = str(Path(tmp) / f"{mod}-mosaic.vrt")
                write_mosaic(files, Path(flat[mod]), mod)
                described[mod] = "|".join(files)
            else:
                flat[mod] = value
        yield flat, new_bands, described


def any_remote(inputs: Mapping[str, Any]) -> bool:
    """Whether any input (or any asset of an item input) is read over the network."""
    for value in inputs.values():
        for v in _as_list(value) if value is not None else []:
            if isinstance(v, Item) or (is_stac_path(v) and is_remote(os.fspath(v))):
                return True
            if isinstance(v, str | os.PathLike) and is_remote(os.fspath(v)):
                return True
    return False


def expand_sources(fn: Callable[..., R]) -> Callable[..., R]:
    """Let ``fn(inputs, ...)`` take STAC items, mosaics (``mosaic=True``) and URLs.

    Extra keyword ``mosaic``: several files of one modality are tiles of one mosaic (the first
    given on top) instead of band files to stack."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(inputs: Mapping[str, Any], *args: Any, **kw: Any) -> R:
        mosaic = bool(kw.pop("mosaic", False))
        special = any(
            v is not None and (is_item_input(v) or (mosaic and len(_as_list(v)) > 1))
            for v in inputs.values()
        )
        with remote_env(any_remote(inputs) or special):
            if not special:
                return fn(inputs, *args, **kw)
            known = {k: v for k, v in kw.items() if k in sig.parameters}  # not stack_grid
            bound = sig.bind_partial(inputs, *args, **known).arguments
            present = tuple(m for m in inputs if inputs[m] is not None)

            def model_bands(mod: str) -> Sequence[str] | None:
                return _model_band_names(bound, present, mod)

            with expanded_sources(inputs, kw.get("bands"), model_bands=model_bands,
                                  mosaic=mosaic) as (flat, bands, described):  # fmt: skip
                kw["bands"] = bands
                result = fn(flat, *args, **kw)
        if hasattr(result, "inputs"):
            result.inputs.update(described)
        return result

    return wrapper

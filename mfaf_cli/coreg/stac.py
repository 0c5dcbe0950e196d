"""STAC items as inputs: the assets that carry the bands a model needs.

A STAC item is plain JSON (a GeoJSON Feature with ``assets``), so a few functions read it;
no STAC library is needed at run time (pystac-client stays a tool for *searching*, on the
user's side). An asset serves a band when its key or its ``eo:bands`` entry names it: the
band name (``B04``, ``B8A``), the common name (``red``, ``nir``, ``swir22``) or, for SAR, the
polarisation (``vv``, ``vh``; ``sar:polarizations``). That covers Earth Search (``red``,
``nir``, ``swir22``, ``vv``), the Planetary Computer (``B04``, ``B08``, ``B12``, ``vv``) and
the Copernicus Data Space (``B04_10m``). Relative hrefs are taken from the item's location.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from mfaf_cli.coreg.stack import S2_MEANINGS, canonical_band, s2_band_of
from mfaf_cli.errors import InputError
from mfaf_cli.io.remote import fetch_text, is_http, is_remote

_SAR_POLS = ("VV", "VH", "HH", "HV")
_RASTER_TYPES = ("image/tiff", "image/jp2", "application/x-geotiff", "image/vnd.stac.geotiff")
_RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt")


@dataclass(frozen=True)
class Asset:
    """One raster asset of an item: where it is and which bands it holds (by name)."""

    key: str
    href: str
    bands: tuple[str, ...] = ()  # canonical names per band of the file (eo:bands), or ()
    media_type: str = ""

    @property
    def is_cog(self) -> bool:
        return "tiff" in self.media_type.lower() or self.href.lower().split("?")[0].endswith(
            (".tif", ".tiff")
        )


@dataclass(frozen=True)
class Item:
    """A STAC item, reduced to what a run needs."""

    id: str
    datetime: str
    assets: tuple[Asset, ...]
    collection: str = ""
    properties: Mapping[str, Any] = field(default_factory=dict)

    @property
    def modality(self) -> str | None:
        """``sar`` when it has a polarisation asset, ``optical`` when it has a Sentinel-2
        band (by key or ``eo:bands``), else None."""
        if self.properties.get("sar:polarizations") or any(
            band_of_key(a.key) in _SAR_POLS for a in self.assets
        ):
            return "sar"
        if any(s2_band_of_key(a.key) or a.bands for a in self.assets):
            return "optical"
        return None


@dataclass(frozen=True)
class BandSource:
    """Which asset (and band of it) serves a band: for reports and the mosaic."""

    band: str
    item: str
    asset: str
    href: str
    index: int  # 1-based band of the asset's file

    def describe(self) -> str:
        return f"{self.band}={self.href}" + (f"#{self.index}" if self.index != 1 else "")


# ---- pure helpers (tested exactly) -------------------------------------------------------
def band_of_key(key: str) -> str:
    """An asset key or band name → one spelling: ``B04``/``red`` → ``B4``, ``vv`` → ``VV``,
    ``B04_10m`` → ``B4``; others unchanged (upper case for polarisations only)."""
    text = key.strip()
    if text.upper() in _SAR_POLS:
        return text.upper()
    hit = s2_band_of_key(text)
    return hit or canonical_band(text)


def s2_band_of_key(key: str) -> str | None:
    """The Sentinel-2 band an asset key names (``B04``, ``b8a``, ``B04_10m``, ``red``, ``nir``,
    ``swir22``), else None."""
    text = key.strip()
    if text.lower() in S2_MEANINGS:
        return S2_MEANINGS[text.lower()]
    if re.fullmatch(r"[Bb]\d{1,2}[Aa]?(_\d+m)?", text):
        hit = s2_band_of(text)
        return hit[0] if hit else None
    return None


def _eo_names(entries: Any) -> tuple[str, ...]:
    """``eo:bands`` entries → one canonical name each (common name first, then name)."""
    out = []
    for e in entries if isinstance(entries, list) else []:
        if not isinstance(e, Mapping):
            continue
        common, name = e.get("common_name"), e.get("name")
        names = [band_of_key(str(n)) for n in (name, common) if n]
        s2 = [n for n in names if n in S2_MEANINGS.values()]
        out.append(s2[0] if s2 else (names[0] if names else ""))
    return tuple(out)


def _is_raster(key: str, a: Mapping[str, Any]) -> bool:
    roles = a.get("roles") or []
    kind = str(a.get("type", "")).lower()
    if any(r in roles for r in ("thumbnail", "overview", "metadata")) and "data" not in roles:
        return False
    href = str(a.get("href", "")).lower().split("?")[0]
    return any(t in kind for t in _RASTER_TYPES) or href.endswith(_RASTER_SUFFIXES)


def resolve_href(href: str, base: str) -> str:
    """An asset href relative to the item's location (a URL or a local file) made absolute."""
    if is_remote(href) or os.path.isabs(href) or not base:
        return href
    if is_http(base):
        return urljoin(base, href)
    return os.fspath(Path(base).parent / href)


def parse_item(doc: Mapping[str, Any], base: str = "") -> Item:
    """A STAC item (a GeoJSON Feature with ``assets``) → :class:`Item`."""
    props = doc.get("properties") or {}
    assets = []
    for key, a in (doc.get("assets") or {}).items():
        if not isinstance(a, Mapping) or not a.get("href") or not _is_raster(key, a):
            continue
        eo = a.get("eo:bands") or (a.get("bands") if isinstance(a.get("bands"), list) else None)
        pols = a.get("sar:polarizations")
        names = _eo_names(eo) if eo else (tuple(p.upper() for p in pols) if pols else ())
        href = resolve_href(str(a["href"]), base)
        assets.append(Asset(str(key), href, names, str(a.get("type", ""))))
    return Item(
        id=str(doc.get("id", "")),
        datetime=str(props.get("datetime") or props.get("start_datetime") or ""),
        assets=tuple(assets),
        collection=str(doc.get("collection", "")),
        properties=props,
    )


def items_of(doc: Any, base: str, where: str) -> list[Item]:
    """An Item, an ItemCollection / FeatureCollection or a search result → its items."""
    if isinstance(doc, Mapping) and doc.get("type") == "Feature" and "assets" in doc:
        return [parse_item(doc, base)]
    features = doc.get("features") if isinstance(doc, Mapping) else None
    if isinstance(features, list):
        items = [parse_item(f, base) for f in features if isinstance(f, Mapping)]
        if items:
            return items
        raise InputError(f"{where} holds no STAC items (an empty search result?)")
    raise InputError(
        f"{where} is not a STAC item or item collection (a GeoJSON Feature with 'assets', or "
        "a FeatureCollection of them)"
    )


def asset_for(item: Item, band: str) -> tuple[Asset, int] | None:
    """The asset (and 1-based band in it) that carries ``band`` (a name or meaning): a key
    match first, then ``eo:bands``; GeoTIFFs before other copies (Earth Search's JP2s)."""
    want = band_of_key(band)
    hits: list[tuple[int, Asset, int]] = []
    for a in item.assets:
        if band_of_key(a.key) == want and len(a.bands) <= 1:
            hits.append((0 if a.is_cog else 2, a, 1))
        elif want in a.bands:
            hits.append((1 if a.is_cog else 3, a, a.bands.index(want) + 1))
    if not hits:
        return None
    hits.sort(key=lambda h: h[0])
    return hits[0][1], hits[0][2]


def band_sources(item: Item, bands: Sequence[str], modality: str) -> list[BandSource]:
    """The asset of each wanted band, or one error naming the missing bands and the assets."""
    out, missing = [], []
    for b in bands:
        hit = asset_for(item, b)
        if hit is None:
            missing.append(b)
            continue
        a, k = hit
        out.append(BandSource(band_of_key(b), item.id, a.key, a.href, k))
    if missing:
        have = ", ".join(a.key for a in item.assets) or "no raster assets"
        raise InputError(
            f"{modality} STAC item {item.id} has no asset for band {', '.join(missing)} "
            f"(assets: {have}); pick the bands with --{modality}-bands or another item"
        )
    return out


def by_recency(items: Iterable[Item]) -> list[Item]:
    """Most recent first (ISO datetimes sort as text); items without a date keep their order
    after the dated ones."""
    items = list(items)
    dated = sorted((i for i in items if i.datetime), key=lambda i: i.datetime, reverse=True)
    return dated + [i for i in items if not i.datetime]


# ---- I/O ------------------------------------------------------------------------------------
def is_stac_path(value: Any) -> bool:
    """A ``.json`` file or URL (a STAC item or item collection), or a STAC API's item URL
    (``…/collections/<c>/items/<id>``, ``…/search?…``), not a raster."""
    if isinstance(value, Item):
        return True
    if not isinstance(value, str | os.PathLike):
        return False
    text = os.fspath(value).split("?")[0].lower()
    if text.endswith((".json", ".geojson")):
        return True
    api = is_http(text) and ("/items/" in text or text.rstrip("/").endswith("/search"))
    return api and not text.endswith(_RASTER_SUFFIXES)


def load_items(path: str, what: str) -> list[Item]:
    """The items of a STAC item / collection file or URL (one error line if it is not one)."""
    text = fetch_text(path, what)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{what} {path} is not JSON ({err.msg} at line {err.lineno})") from None
    base = path if is_http(path) else os.fspath(Path(path).absolute())
    return items_of(doc, base, f"{what} {path}")


def stac_inputs(path: str) -> dict[str, list[Item]]:
    """``--stac ITEMS.json``: its items by modality (optical / sar), most recent first."""
    items = load_items(path, "--stac")
    out: dict[str, list[Item]] = {}
    for it in items:
        mod = it.modality
        if mod is None:
            raise InputError(
                f"--stac {path}: item {it.id} has neither Sentinel-2 bands nor SAR "
                "polarisations among its assets; mfaf cannot tell which input it is"
            )
        out.setdefault(mod, []).append(it)
    return {m: by_recency(v) for m, v in out.items()}

"""The one band grammar of predict, train, evaluate and config files.

A band list is 1-based band numbers (as in GDAL) or band names (``B12``, ``nir``, ``VV``),
written as a comma string (``"B12,B8,B4"``, ``"13,8,4"``) or a list (``["B12", "B8", "B4"]``,
``[13, 8, 4]``). A per-modality table is ``optical=B12,B8,B4`` on the command line (``--bands``,
repeatable) or ``[bands] optical = "B12,B8,B4"`` in a TOML/YAML file. Errors are one line and
name the option or key the user wrote (``where``). Pure: strings in, lists or ValueError out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: What a parsed band list holds: 1-based ints and band names, in the order given.
BandList = list[int | str]
_MODALITIES = ("optical", "sar", "hsi", "lidar")


def parse_band_list(value: Any, where: str) -> BandList:
    """``"B12,B8,B4"`` / ``"13,8,4"`` / ``["B12", 8, "4"]`` / ``13`` → ``["B12", 8, 4]``-style.

    Digits become ints (≥ 1), anything else stays a name; a string is split at commas, never
    read letter by letter. Raises ValueError naming ``where`` for an empty list, an empty item,
    a number below 1 or a value of another type.
    """
    if isinstance(value, bool):
        raise ValueError(f"{where}: {value!r} is not a band list (e.g. B12,B8,B4 or 13,8,4)")
    if isinstance(value, int):
        value = [value]
    if isinstance(value, str):
        items: list[Any] = value.split(",")
    elif isinstance(value, Sequence):
        items = list(value)
    else:
        raise ValueError(f"{where}: {value!r} is not a band list (e.g. B12,B8,B4 or 13,8,4)")
    out: BandList = []
    for item in items:
        out.append(_band_token(item, value, where))
    if not out:
        raise ValueError(f"{where}: the band list is empty (e.g. B12,B8,B4 or 13,8,4)")
    return out


def _band_token(item: Any, whole: Any, where: str) -> int | str:
    """One band: an int ≥ 1 (from an int or digits) or a name."""
    if isinstance(item, bool) or not isinstance(item, int | str):
        raise ValueError(f"{where}: {item!r} in {whole!r} is not a band number or name")
    text = str(item).strip()
    if not text:
        raise ValueError(
            f"{where}: {whole!r} has an empty item; write a comma-separated list such as "
            "B12,B8,B4 or 13,8,4"
        )
    if text.lstrip("+-").isdigit():
        n = int(text)
        if n < 1:
            raise ValueError(f"{where}: band numbers start at 1 (as in GDAL), got {n}")
        return n
    return text


def parse_modality_bands(values: Sequence[str], option: str = "--bands") -> dict[str, BandList]:
    """``("optical=B12,B8,B4", "sar=1")`` → ``{"optical": ["B12", "B8", "B4"], "sar": [1]}``."""
    out: dict[str, BandList] = {}
    for item in values:
        mod, sep, lst = str(item).partition("=")
        mod = mod.strip()
        where = f"{option} {item}".strip()
        if not sep or not mod:
            raise ValueError(
                f"{where!r} is not MODALITY=LIST (e.g. optical=B12,B8,B4 or optical=13,8,4)"
            )
        check_modality(mod, where)
        out[mod] = parse_band_list(lst, where)
    return out


def parse_bands_table(table: Any, where: str) -> dict[str, BandList]:
    """A ``[bands]`` table of a TOML / YAML / CSV-list file → ``{modality: band list}``.

    ``where`` names the table (``config file train.toml [bands]``); each error names the key.
    """
    if table is None:
        return {}
    if not isinstance(table, Mapping):
        raise ValueError(f'{where} must be a table of MODALITY = LIST, e.g. optical = "B12,B8,B4"')
    out: dict[str, BandList] = {}
    for mod, value in table.items():
        check_modality(str(mod), f"{where} {mod}")
        out[str(mod)] = parse_band_list(value, f"{where} {mod}")
    return out


def check_modality(name: str, where: str) -> None:
    if name not in _MODALITIES:
        raise ValueError(f"{where}: unknown modality {name!r}; valid: {', '.join(_MODALITIES)}")


def format_band_list(bands: Sequence[int | str]) -> str:
    """``["B12", 8]`` → ``"B12,8"`` (the grammar's comma form, for messages and records)."""
    return ",".join(str(b) for b in bands)


def all_numbers(bands: Sequence[int | str] | None) -> bool:
    """Whether a band list gives band numbers only (an explicit override of band names)."""
    return bool(bands) and all(isinstance(b, int) for b in bands or ())

"""Class tables as land-cover products define them: codes, names, colours, and built-in presets.

A product's codes need not be contiguous (ESA WorldCover: 10, 20, ..., 95, 100); a model
predicts ids 0..K-1. A table maps each code to the id of its row (in the order given) and
keeps the code in :class:`~mfaf_cli.metadata.ClassInfo` so outputs can name it again.

Files (``--classes FILE``): CSV with a header ``code,name,colour`` (colour ``#rrggbb``;
optional) or JSON, a list of ``{"code": 10, "name": "tree-cover", "colour": "#006400"}``
objects (``color`` and ``[r, g, b]`` are accepted too). Presets: :data:`PRESETS`.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mfaf_cli.errors import LabelError, UsageError
from mfaf_cli.metadata import WATER_CLASSES, WHU_CLASSES, ClassInfo, default_classes

_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")


def _table(rows: Iterable[tuple[int, str, str]]) -> tuple[ClassInfo, ...]:
    return tuple(
        ClassInfo(i, name, _hex(colour), code) for i, (code, name, colour) in enumerate(rows)
    )


def _hex(colour: str) -> tuple[int, int, int]:
    h = colour.lstrip("#")
    return (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))


#: ESA WorldCover 10 m (v100/v200) legend: 11 classes, codes 10..100.
WORLDCOVER = _table(
    [
        (10, "tree-cover", "#006400"),
        (20, "shrubland", "#ffbb22"),
        (30, "grassland", "#ffff4c"),
        (40, "cropland", "#f096ff"),
        (50, "built-up", "#fa0000"),
        (60, "bare-sparse-vegetation", "#b4b4b4"),
        (70, "snow-and-ice", "#f0f0f0"),
        (80, "permanent-water-bodies", "#0064c8"),
        (90, "herbaceous-wetland", "#0096a0"),
        (95, "mangroves", "#00cf75"),
        (100, "moss-and-lichen", "#fae6a0"),
    ]
)
#: Google/WRI Dynamic World V1 'label' band: 9 classes, codes 0..8.
DYNAMIC_WORLD = _table(
    [
        (0, "water", "#419bdf"),
        (1, "trees", "#397d49"),
        (2, "grass", "#88b053"),
        (3, "flooded-vegetation", "#7a87c6"),
        (4, "crops", "#e49635"),
        (5, "shrub-and-scrub", "#dfc35a"),
        (6, "built", "#c4281b"),
        (7, "bare", "#a59b8f"),
        (8, "snow-and-ice", "#b39fe1"),
    ]
)
#: CORINE Land Cover level 1: 5 classes, codes 1..5.
CORINE_L1 = _table(
    [
        (1, "artificial-surfaces", "#e6004d"),
        (2, "agricultural-areas", "#ffffa8"),
        (3, "forest-and-semi-natural-areas", "#80ff00"),
        (4, "wetlands", "#a6a6ff"),
        (5, "water-bodies", "#00ccf2"),
    ]
)
#: WHU-OPT-SAR label rasters: background 0 and 7 classes coded 10..70.
WHU_OPT_SAR = tuple(ClassInfo(c.id, c.name, c.color, 10 * c.id) for c in WHU_CLASSES)
WATER = tuple(ClassInfo(c.id, c.name, c.color, c.id) for c in WATER_CLASSES)

PRESETS: dict[str, tuple[ClassInfo, ...]] = {
    "worldcover": WORLDCOVER,
    "dynamic-world": DYNAMIC_WORLD,
    "corine-l1": CORINE_L1,
    "whu-opt-sar": WHU_OPT_SAR,
    "water": WATER,
}


# ---- reading a table ------------------------------------------------------------------------
def load_class_table(spec: str, base: Path | None = None) -> tuple[ClassInfo, ...]:
    """The table a preset name or a CSV/JSON file (relative to ``base``) describes."""
    if spec in PRESETS:
        return PRESETS[spec]
    path = Path(spec) if base is None or Path(spec).is_absolute() else base / spec
    if not path.is_file():
        raise UsageError(
            f"classes {spec!r} is neither a preset ({', '.join(PRESETS)}) nor an existing file"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"class file {path} could not be read ({err})") from None
    rows = _json_rows(path, text) if path.suffix.lower() == ".json" else _csv_rows(text)
    return class_table_from_rows(rows, str(path))


def _json_rows(path: Path, text: str) -> list[Mapping[str, Any]]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"class file {path} is not valid JSON ({err})") from None
    if isinstance(doc, dict) and isinstance(doc.get("classes"), list):
        doc = doc["classes"]
    if not isinstance(doc, list) or not all(isinstance(r, dict) for r in doc):
        raise UsageError(f"class file {path} must hold a list of {{code, name, colour}} objects")
    return doc


def _csv_rows(text: str) -> list[Mapping[str, Any]]:
    reader = csv.DictReader(text.splitlines())
    return [{(k or "").strip().lower(): (v or "").strip() for k, v in r.items()} for r in reader]


def class_table_from_rows(rows: Sequence[Mapping[str, Any]], where: str) -> tuple[ClassInfo, ...]:
    """Validated rows (code, name, optional colour) → ids 0..K-1 in the order given."""
    if not rows:
        raise UsageError(f"class file {where} lists no classes")
    generic = default_classes(len(rows), ())
    out, seen = [], set()
    for i, row in enumerate(rows):
        code = _code(row.get("code"), where, i)
        name = str(row.get("name") or "").strip()
        if not name:
            raise UsageError(f"class file {where}: class {i + 1} (code {code}) has no name")
        if code in seen:
            raise UsageError(f"class file {where}: code {code} is listed twice")
        seen.add(code)
        colour = row.get("colour", row.get("color"))
        rgb = generic[i].color if colour in (None, "") else parse_colour(colour, where, code)
        out.append(ClassInfo(i, name, rgb, code))
    return tuple(out)


def _code(value: Any, where: str, i: int) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"class file {where}: class {i + 1} has no integer code") from None
    if f != int(f):
        raise UsageError(f"class file {where}: code {value!r} is not an integer")
    return int(f)


def parse_colour(value: Any, where: str, code: int) -> tuple[int, int, int]:
    """``#rrggbb`` or ``[r, g, b]`` (0..255) → an RGB tuple; anything else is a usage error."""
    if isinstance(value, str) and (m := _HEX.match(value.strip())):
        return _hex(m.group(1))
    if (
        isinstance(value, list | tuple)
        and len(value) == 3
        and all(isinstance(v, int) and 0 <= v <= 255 for v in value)
    ):
        return (int(value[0]), int(value[1]), int(value[2]))
    raise UsageError(
        f"class file {where}: colour {value!r} of code {code} is not #rrggbb or [r, g, b]"
    )


# ---- codes → ids ----------------------------------------------------------------------------
def codes_to_ids(
    raw: np.ndarray, table: Sequence[ClassInfo], keep: np.ndarray, ignore_index: int
) -> np.ndarray:
    """Class ids of ``raw`` label codes where ``keep``, ``ignore_index`` elsewhere; codes the
    table lacks are a :class:`LabelError` listing them."""
    codes = np.array([c.id if c.code is None else c.code for c in table], dtype=np.float64)
    vals = raw[keep].astype(np.float64)
    order = np.argsort(codes)
    pos = np.clip(np.searchsorted(codes[order], vals), 0, len(codes) - 1)
    found = codes[order][pos] == vals
    if not found.all():
        missing = np.unique(vals[~found])
        shown = ", ".join(_fmt(v) for v in missing[:12]) + (" ..." if missing.size > 12 else "")
        raise LabelError(
            f"label codes {shown} are not in the class table "
            f"({', '.join(_fmt(c) for c in codes)}); add them to --classes or declare them "
            "with --ignore-value"
        )
    out = np.full(raw.shape, ignore_index, dtype=np.int64)
    out[keep] = np.asarray([c.id for c in table], dtype=np.int64)[order][pos]
    return out


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)

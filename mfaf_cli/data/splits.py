"""Split membership: seeded holdouts, official split files, and the window grid of a split.

Pure functions of ids and seeds, so a split is the same on every machine and in every worker.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np


def seeded_holdout(ids: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split sorted ids into (kept, held out) with a seeded permutation; ≥1 held out if ≥2 ids."""
    ids = sorted(ids)
    if len(ids) < 2 or fraction <= 0:
        return ids, []
    n = min(len(ids) - 1, max(1, round(len(ids) * fraction)))
    perm = np.random.default_rng(seed).permutation(len(ids))
    held = sorted(ids[i] for i in perm[:n])
    hs = set(held)
    return [i for i in ids if i not in hs], held


def seeded_split3(ids: Sequence[str], val: float, test: float, seed: int) -> dict[str, list[str]]:
    """A seeded train/val/test split of ids (each non-empty when there are ≥ 3 ids)."""
    rest, test_ids = seeded_holdout(ids, test, seed)
    train_ids, val_ids = seeded_holdout(rest, val / max(1e-9, 1 - test), seed + 1)
    return {"train": train_ids, "val": val_ids, "test": test_ids}


def grid_offsets(size: int, tile: int) -> list[int]:
    """Non-overlapping window origins along an axis, the last shifted back to end at the edge."""
    if size <= tile:
        return [0]
    offs = list(range(0, size - tile + 1, tile))
    if offs[-1] + tile < size:
        offs.append(size - tile)
    return offs


def parse_split_file(text: str, known_ids: Sequence[str]) -> dict[str, list[str]]:
    """Sheet ids listed under train/val/test headings of a split text file (any format).

    A line mentioning ``train``/``val``/``test`` starts that section; every token on any line
    that names a known sheet (with or without ``.tif``) is assigned to the current section.
    """
    known = {k.lower(): k for k in known_ids}
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    section: str | None = None
    for line in text.splitlines():
        low = line.lower()
        for key, pat in (("train", r"train"), ("val", r"\bval|valid"), ("test", r"test")):
            if re.search(pat, low):
                section = key
        for tok in re.findall(r"[A-Za-z0-9_\-]+(?:\.tiff?)?", line):
            stem = re.sub(r"\.tiff?$", "", tok, flags=re.I).lower()
            if stem in known and section is not None and known[stem] not in out[section]:
                out[section].append(known[stem])
    return out

"""Split membership: seeded holdouts, official split files, and the window grid of a split.

Pure functions of ids and seeds, so a split is the same on every machine and in every worker.
"""

from __future__ import annotations

import math
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


def group_split3(
    ids: Sequence[str], groups: Sequence[str], val: float, test: float, seed: int
) -> dict[str, list[str]]:
    """A seeded train/val/test split that holds groups (event, region, date) out whole: the
    distinct groups are split as :func:`seeded_split3` splits ids, and every id follows its
    group, so no group is on both sides."""
    if len(ids) != len(groups):
        raise ValueError(f"{len(ids)} ids but {len(groups)} groups")
    parts = seeded_split3(sorted(set(groups)), val, test, seed)
    where = {g: k for k, gs in parts.items() for g in gs}
    return {k: [i for i, g in zip(ids, groups, strict=True) if where[g] == k] for k in parts}


#: Precedence of splits where a gap is cut: a tile next to a higher split is dropped.
_PRECEDENCE = {"train": 0, "val": 1, "test": 2}


def block_size_for(n_rows: int, n_cols: int, target_blocks: int = 16) -> int:
    """Tiles per block side for about ``target_blocks`` blocks (at least 2 tiles a side)."""
    return max(2, math.ceil(math.sqrt(n_rows * n_cols / target_blocks)))


def block_split(
    n_rows: int,
    n_cols: int,
    val: float,
    test: float,
    seed: int,
    *,
    block: int | None = None,
    gap: int = 1,
) -> dict[str, list[tuple[int, int]]]:
    """Spatial block split of one scene's grid of tiles (row, col indices): square blocks of
    ``block`` tiles go whole to train/val/test (seeded), and a tile within ``gap`` tiles
    (8-neighbourhood) of a tile of a higher split (train < val < test) is dropped, so any two
    kept tiles of different splits have ``gap`` tiles between them. Empty splits when the
    grid has fewer than 3 blocks."""
    b = block or block_size_for(n_rows, n_cols)
    nbr, nbc = -(-n_rows // b), -(-n_cols // b)
    keys = [f"{i}:{j}" for i in range(nbr) for j in range(nbc)]
    parts = seeded_split3(keys, val, test, seed)
    owner = {k: s for s, ks in parts.items() for k in ks}
    rank = np.zeros((n_rows, n_cols), dtype=np.int64)
    for r in range(n_rows):
        for c in range(n_cols):
            rank[r, c] = _PRECEDENCE[owner[f"{r // b}:{c // b}"]]
    # the highest split within `gap` tiles of each tile (a max filter, edges padded low)
    padded = np.pad(rank, gap, constant_values=-1)
    near = np.full_like(rank, -1)
    for dr in range(2 * gap + 1):
        for dc in range(2 * gap + 1):
            near = np.maximum(near, padded[dr : dr + n_rows, dc : dc + n_cols])
    names = {v: k for k, v in _PRECEDENCE.items()}
    out: dict[str, list[tuple[int, int]]] = {"train": [], "val": [], "test": []}
    for r in range(n_rows):
        for c in range(n_cols):
            if near[r, c] == rank[r, c]:
                out[names[int(rank[r, c])]].append((r, c))
    return out

"""Splits that do not leak: groups held out whole, spatial blocks with a one-tile gap."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import write_geotiff
from rasterio.transform import from_origin

from mfaf_cli.data.datasets import open_dataset
from mfaf_cli.data.splits import block_split, group_split3
from mfaf_cli.errors import DatasetError


@pytest.mark.parametrize("seed", range(6))
def test_group_split_never_puts_one_group_on_both_sides(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ids = [f"chip{i}" for i in range(60)]
    groups = [f"event{g}" for g in rng.integers(0, 9, size=60)]
    parts = group_split3(ids, groups, 0.2, 0.2, seed)
    assert sorted(i for v in parts.values() for i in v) == sorted(ids)  # every id once
    of = dict(zip(ids, groups, strict=True))
    sides = [{of[i] for i in parts[k]} for k in ("train", "val", "test")]
    assert all(sides)
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])


@pytest.mark.parametrize(("rows", "cols", "seed"), [(12, 12, 0), (9, 14, 1), (20, 7, 2)])
def test_block_split_keeps_a_one_tile_gap(rows: int, cols: int, seed: int) -> None:
    parts = block_split(rows, cols, 0.2, 0.2, seed)
    assert all(parts.values())
    cells = [(r, c, k) for k, v in parts.items() for r, c in v]
    assert len({(r, c) for r, c, _ in cells}) == len(cells)  # no tile in two splits
    for r, c, k in cells:
        for r2, c2, k2 in cells:
            if k != k2:  # tiles of different splits never touch (not even at a corner)
                assert max(abs(r - r2), abs(c - c2)) >= 2
    # only gap tiles are dropped: most of the grid is kept
    assert len(cells) >= 0.5 * rows * cols


def _scenes(root: Path, n: int, size: int, groups: list[str] | None = None) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    rows = ["id,optical,label" + (",group" if groups else "")]
    for k in range(n):
        t = from_origin(600_000.0 + 10_000 * k, 4_000_000.0, 10, 10)
        lab = rng.integers(0, 2, size=(size, size)).astype(np.uint8)
        opt = rng.random((3, size, size)).astype(np.float32)
        write_geotiff(root / f"o{k}.tif", opt, transform=t)
        write_geotiff(root / f"l{k}.tif", lab, transform=t)
        rows.append(f"s{k},o{k}.tif,l{k}.tif" + (f",{groups[k]}" if groups else ""))
    (root / "scenes.csv").write_text("\n".join(rows) + "\n")
    return root / "scenes.csv"


def test_folder_group_column_holds_groups_out(tmp_path: Path) -> None:
    groups = ["spain", "spain", "india", "india", "ghana", "ghana", "peru"]
    csv = _scenes(tmp_path / "g", 7, 16, groups)
    seen: dict[str, set[str]] = {}
    for split in ("train", "val", "test"):
        ds = open_dataset("folder", csv, split, tile=16, val_fraction=0.2)
        seen[split] = {groups[i] for i in ds.scene_idx}
        assert "group-held-out" in ds.split_source
    assert all(seen.values())
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"])
    _scenes(tmp_path / "two", 3, 16, ["a", "a", "b"])
    with pytest.raises(DatasetError, match="2 groups"):
        open_dataset("folder", tmp_path / "two" / "scenes.csv", "train", tile=16)


def test_one_large_scene_gets_a_block_split(tmp_path: Path, caplog) -> None:
    csv = _scenes(tmp_path / "one", 1, 16 * 12)
    with caplog.at_level(logging.WARNING):
        parts = {s: open_dataset("folder", csv, s, tile=16) for s in ("train", "val", "test")}
    assert "splitting windows" not in caplog.text
    tiles = {s: {(r // 16, c // 16) for _, r, c in d.windows} for s, d in parts.items()}
    assert all(tiles.values())
    for a in tiles:
        for b in tiles:
            if a != b:
                assert all(max(abs(r - r2), abs(c - c2)) >= 2
                           for r, c in tiles[a] for r2, c2 in tiles[b])  # fmt: skip
    assert "one-tile gap" in parts["train"].split_source
    # too small for blocks: the old window split, and the warning names the fix
    small = _scenes(tmp_path / "small", 1, 48)
    with caplog.at_level(logging.WARNING):
        open_dataset("folder", small, "train", tile=16)
    assert "splitting windows" in caplog.text and "'group' column" in caplog.text


def test_sen1floods11_seeded_split_holds_countries_out(tmp_path: Path) -> None:
    from dataset_builders import make_sen1floods11

    ids = ("Spain_1", "Spain_2", "India_3", "India_4", "Ghana_5", "Peru_6", "Peru_7")
    root = make_sen1floods11(tmp_path / "s1f", ids=ids, size=16)
    parts = {s: open_dataset("sen1floods11", root, s, val_fraction=0.2) for s in
             ("train", "val", "test")}  # fmt: skip
    countries = {s: {i.split("_")[0] for i in d.ids} for s, d in parts.items()}
    assert all(countries.values()) and sum(len(d.ids) for d in parts.values()) == len(ids)
    assert not countries["train"] & countries["val"]
    assert not countries["train"] & countries["test"]
    assert "by country" in parts["train"].split_source

"""Builders of small datasets in the real layouts (OMBRIA, Sen1Floods11, WHU-OPT-SAR, folder),
shared by the dataset, training and evaluation tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import write_geotiff
from PIL import Image
from rasterio.transform import from_origin


def make_ombria(
    root: Path, n_train: int = 8, n_test: int = 3, size: int = 32, seed: int = 0
) -> Path:
    """OMBRIA layout; water (mask 255) where the S2 patch is dark blue and S1 is dark."""
    rng = np.random.default_rng(seed)
    for folder, n, start in (("train", n_train, 1), ("test", n_test, 100)):
        for sub in ("AFTER", "BEFORE", "MASK"):
            (root / "OmbriaS2" / folder / sub).mkdir(parents=True, exist_ok=True)
            (root / "OmbriaS1" / folder / sub).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + n):
            water = np.zeros((size, size), dtype=bool)
            r = int(rng.integers(0, size // 2))
            water[r : r + size // 2, : int(rng.integers(size // 4, size))] = True
            s2 = rng.integers(120, 220, size=(size, size, 3)).astype(np.uint8)
            s2[water] = rng.integers(10, 60, size=(int(water.sum()), 3))
            s1 = rng.integers(150, 250, size=(size, size)).astype(np.uint8)
            s1[water] = rng.integers(0, 40, size=int(water.sum()))
            mask = np.where(water, 255, 0).astype(np.uint8)
            tag = f"{i:04d}"
            Image.fromarray(s2).save(root / "OmbriaS2" / folder / "AFTER" / f"S2_after_{tag}.png")
            Image.fromarray(s1).save(root / "OmbriaS1" / folder / "AFTER" / f"S1_after_{tag}.png")
            Image.fromarray(mask).save(root / "OmbriaS2" / folder / "MASK" / f"S2_mask_{tag}.png")
            Image.fromarray(mask).save(root / "OmbriaS1" / folder / "MASK" / f"S1_mask_{tag}.png")
    return root


def make_sen1floods11(
    root: Path, ids=("Spain_1", "Spain_2", "Bolivia_3"), size=32, flat=False
) -> Path:
    """Sen1Floods11 chips: S2 13-band int16 (0 = nodata), S1 VV/VH float dB (NaN), labels -1/0/1."""
    rng = np.random.default_rng(3)
    dirs = {k: root if flat else root / k for k in ("S1Hand", "S2Hand", "LabelHand")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    t = from_origin(-3.0, 40.0, 0.0001, 0.0001)
    for cid in ids:
        water = np.zeros((size, size), dtype=bool)
        water[:, : size // 3] = True
        s2 = rng.integers(500, 3000, size=(13, size, size)).astype(np.int16)
        s2[:, water] //= 5
        s2[:, 0, 0] = 0  # nodata pixel
        s1 = rng.normal(-10, 2, size=(2, size, size)).astype(np.float32)
        s1[:, water] -= 12
        s1[:, 1, 1] = np.nan
        lab = water.astype(np.int16)
        lab[-1, :] = -1
        write_geotiff(
            dirs["S2Hand"] / f"{cid}_S2Hand.tif", s2, crs="EPSG:4326", transform=t, nodata=0
        )
        write_geotiff(
            dirs["S1Hand"] / f"{cid}_S1Hand.tif",
            s1,
            crs="EPSG:4326",
            transform=t,
            nodata=float("nan"),
        )
        write_geotiff(dirs["LabelHand"] / f"{cid}_LabelHand.tif", lab, crs="EPSG:4326", transform=t)
    return root


def make_whu_sheets(
    root: Path, names=("Optical", "SAR", "Lbl"), sheets=("NH1", "NH2", "NH3"), h=60, w=80
):
    rng = np.random.default_rng(5)
    for n in names:
        (root / n).mkdir(parents=True, exist_ok=True)
    for k, s in enumerate(sheets):
        t = from_origin(500_000.0 + k * 1000, 3_500_000.0, 5.0, 5.0)
        opt = rng.integers(0, 255, size=(4, h, w)).astype(np.uint8)
        sar = rng.integers(0, 255, size=(1, h, w)).astype(np.uint8)
        lab = (rng.integers(0, 8, size=(h, w)) * 10).astype(np.uint8)
        write_geotiff(root / names[0] / f"{s}.tif", opt, transform=t)
        write_geotiff(root / names[1] / f"{s}.tif", sar, transform=t)
        write_geotiff(root / names[2] / f"{s}.tif", lab, transform=t)
    return root


# ---- pure helpers -----------------------------------------------------------------------------


def make_folder(root: Path, n_scenes: int = 2, split_column: bool = True) -> Path:
    """HSI (5 bands, 10 m) + LiDAR DSM (5 m, different grid) + label raster (10 m reference)."""
    rng = np.random.default_rng(11)
    root.mkdir(parents=True, exist_ok=True)
    rows = ["id,hsi,lidar,label" + (",split" if split_column else "")]
    for k in range(n_scenes):
        x0 = 600_000.0 + 5000 * k
        lab = rng.integers(0, 3, size=(48, 64)).astype(np.uint8)
        lab[0, :] = 255
        hsi = (rng.random((5, 48, 64)) * 1000 + (lab[None] % 255) * 300.0).astype(np.float32)
        dsm = np.repeat(np.repeat((lab % 255).astype(np.float32) * 4, 2, 0), 2, 1) + rng.random(
            (96, 128)
        ).astype(np.float32)
        write_geotiff(root / f"hsi{k}.tif", hsi, transform=from_origin(x0, 4_000_000.0, 10, 10))
        write_geotiff(root / f"dsm{k}.tif", dsm, transform=from_origin(x0, 4_000_000.0, 5, 5))
        write_geotiff(
            root / f"gt{k}.tif", lab, transform=from_origin(x0, 4_000_000.0, 10, 10), nodata=255
        )
        split = ",train" if k == 0 else ",val"
        rows.append(f"s{k},hsi{k}.tif,dsm{k}.tif,gt{k}.tif" + (split if split_column else ""))
    (root / "scenes.csv").write_text("\n".join(rows) + "\n")
    return root / "scenes.csv"


#: WorldCover codes of the generated land-cover scenes, and each one's optical/SAR signature
LANDCOVER_CODES = {10: (300, 900, 250, -9.0), 40: (900, 1800, 700, -12.0),
                   50: (1600, 1500, 1500, -3.0), 80: (200, 150, 100, -20.0)}  # fmt: skip


def make_landcover(root: Path, size: int = 64, seed: int = 5) -> Path:
    """Two optical (3 bands, 10 m) + SAR (1 band dB, 20 m) scenes in UTM 32N whose land-cover
    labels are WorldCover codes (10, 40, 50, 80; nodata 0) on an ETRS89-LAEA (EPSG:3035)
    grid: labels in another CRS, resolution and code space than the imagery. Scene s0 is
    train, s1 val; the label raster is the scene's reference grid."""
    import rasterio
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    codes = np.array(list(LANDCOVER_CODES))
    sig = np.array(list(LANDCOVER_CODES.values()), dtype=np.float32)
    rows = ["id,optical,sar,label,split"]
    for k in range(2):
        t10 = from_origin(500_000.0 + 2000 * k, 5_000_000.0, 10, 10)
        blocks = rng.integers(0, len(codes), size=(size // 8, size // 8))
        cls = np.kron(blocks, np.ones((8, 8), dtype=np.int64))
        opt = sig[cls][..., :3].transpose(2, 0, 1) + rng.normal(0, 60, (3, size, size))
        sar = sig[cls][::2, ::2, 3] + rng.normal(0, 1.0, (size // 2, size // 2))
        write_geotiff(root / f"s2_{k}.tif", opt.clip(0).astype(np.uint16), "EPSG:32632", t10)
        write_geotiff(root / f"s1_{k}.tif", sar.astype(np.float32), "EPSG:32632",
                      from_origin(500_000.0 + 2000 * k, 5_000_000.0, 20, 20))  # fmt: skip
        src = codes[cls].astype(np.uint8)
        dst_t, w, h = calculate_default_transform(
            "EPSG:32632", "EPSG:3035", size, size, *rasterio.transform.array_bounds(size, size, t10)
        )
        lab = np.zeros((h, w), dtype=np.uint8)
        reproject(src, lab, src_transform=t10, src_crs="EPSG:32632", dst_transform=dst_t,
                  dst_crs="EPSG:3035", resampling=Resampling.nearest, src_nodata=0,
                  dst_nodata=0)  # fmt: skip
        write_geotiff(root / f"worldcover_{k}.tif", lab, "EPSG:3035", dst_t, nodata=0)
        rows.append(f"s{k},s2_{k}.tif,s1_{k}.tif,worldcover_{k}.tif,{('train', 'val')[k]}")
    (root / "scenes.csv").write_text("\n".join(rows) + "\n")
    return root / "scenes.csv"

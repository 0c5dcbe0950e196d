"""SAR-Otsu baseline on the OMBRIA test split (the figure a SAR-only model has to beat).

    python benchmarks/ombria_sar_otsu.py ../shared/data/ombria

Water = VV below Otsu's threshold, (a) one threshold per patch, (b) one threshold over the
whole split; scored over all 70 test patches pooled (water IoU, mIoU, OA). Otsu's cut is
invariant to OMBRIA's monotonic PNG -> dB mapping, so the PNG values are used as they are.
Last line: one JSON object.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from index_baselines import otsu_threshold, score


def main(root: str) -> dict[str, object]:
    r = Path(root)
    vvs, truths = [], []
    for s1 in sorted((r / "OmbriaS1" / "test" / "AFTER").glob("S1_after_*.png")):
        pid = re.search(r"_(\d+)\.png$", s1.name).group(1)  # type: ignore[union-attr]
        mask = r / "OmbriaS2" / "test" / "MASK" / f"S2_mask_{pid}.png"
        with rasterio.open(s1) as a, rasterio.open(mask) as m:
            vvs.append(a.read(1).astype(np.float64))
            truths.append((m.read(1) > 127).astype(np.int64))
    per_patch = [vv < otsu_threshold(vv.ravel(), bins=256) for vv in vvs]
    pooled_t = otsu_threshold(np.concatenate([v.ravel() for v in vvs]), bins=256)
    truth = np.concatenate([t.ravel() for t in truths])
    return {
        "patches": len(vvs),
        "otsu_vv_per_patch": score(np.concatenate([p.ravel() for p in per_patch]), truth),
        "otsu_vv_pooled": score(np.concatenate([v.ravel() for v in vvs]) < pooled_t, truth)
        | {"threshold_png": round(pooled_t, 2)},
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/ombria")))

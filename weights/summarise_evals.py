"""Seed means and spreads of the held-out checks, one markdown row per (round, model).

python3 weights/summarise_evals.py runs/*-r3-s*/eval.json runs/*-r4-s*/eval.json
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

COLUMNS = (
    ("ombria_test", "water_iou"),
    ("ombria_test", "miou"),
    ("sen1floods11_chip", "water_iou"),
    ("sen1floods11_chip", "miou"),
    ("bigearthnet_false_water", "mean"),
)


def main(files: list[str]) -> None:
    groups: dict[str, list[dict]] = defaultdict(list)
    for f in files:
        run = Path(f).parent.name
        groups[re.sub(r"-s\d+$", "", run)].append(json.loads(Path(f).read_text()))
    print("| run | seeds | " + " | ".join(f"{a} {b}" for a, b in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for name, evals in sorted(groups.items()):
        cells = []
        for a, b in COLUMNS:
            v = np.array([e[a][b] for e in evals])
            cells.append(f"{v.mean():.3f} ± {(v.max() - v.min()) / 2:.3f}")
        print(f"| {name} | {len(evals)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])

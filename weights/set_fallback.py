"""Name per-pixel fallbacks for a shipped model in the manifest (issue 24), without touching
its weights file (its sha256 stays): ``mfaf predict`` with that model maps pixels missing a
modality with the named model (mfaf_cli/pipeline/fallback.py). The record inside a checkpoint
may name them too (``ModelMeta.fallbacks``); the manifest entry fills in only when it does not.

    python weights/set_fallback.py unet-ombria-water optical=unet-sar-ombria-water
    python weights/set_fallback.py mfafnet-s-ombria-water optical=self   # maps them itself
    python weights/set_fallback.py mfafnet-s-ombria-water --clear
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PACKAGE_WEIGHTS = Path(__file__).resolve().parents[1] / "mfaf_cli" / "weights"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("fallbacks", nargs="*", help="MISSING=MODEL (optical=unet-sar-ombria-water)")
    ap.add_argument("--clear", action="store_true")
    ap.add_argument("--weights-dir", type=Path, default=PACKAGE_WEIGHTS)
    a = ap.parse_args()
    path = a.weights_dir / "manifest.json"
    doc = json.loads(path.read_text())
    names = {e["name"] for e in doc["models"]}
    entry = next((e for e in doc["models"] if e["name"] == a.name), None)
    if entry is None:
        raise SystemExit(f"{a.name} is not in {path}")
    pairs = dict(item.split("=", 1) for item in a.fallbacks)
    for missing, model in pairs.items():
        if missing not in entry["modalities"] or model not in names | {"self"}:
            raise SystemExit(f"{missing}={model}: not a modality of {a.name} or not shipped")
    if a.clear:
        entry.pop("fallbacks", None)
    else:
        entry["fallbacks"] = {**entry.get("fallbacks", {}), **pairs}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({"name": a.name, "fallbacks": entry.get("fallbacks", {})}))


if __name__ == "__main__":
    main()

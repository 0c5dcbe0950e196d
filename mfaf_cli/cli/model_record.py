"""The record a model file carries, for ``mfaf info FILE`` and ``mfaf models FILE``.

A user's own checkpoint (``runs/x/best.safetensors``) or ONNX export is described from the
metadata record inside it: modalities, bands, normalisation, classes, training data, metrics.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

#: File name endings that hold a model (and its metadata record), not a raster.
MODEL_SUFFIXES = (".safetensors", ".onnx")


def is_model_file(path: str | os.PathLike[str]) -> bool:
    """True for a ``.safetensors`` / ``.onnx`` path (whether or not it exists yet)."""
    return Path(path).suffix.lower() in MODEL_SUFFIXES


def shipped_model_path(name: str | os.PathLike[str]) -> Path | None:
    """The file of a shipped model named ``name`` (manifest name), or None: ``mfaf info
    unet-ombria-water`` describes it as it would the file (a file by that name wins)."""
    from mfaf_cli.io.weights import entry_path, read_manifest

    if Path(name).exists() or is_model_file(name):
        return None
    entry = next((e for e in read_manifest() if e.get("name") == str(name)), None)
    return None if entry is None else Path(entry_path(entry))


def model_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The file's metadata record plus where it is and its whole-file sha256.

    Raises :class:`~mfaf_cli.errors.WeightsError` (via the weights loader) for a file that is
    missing, truncated or carries no mfaf record.
    """
    from mfaf_cli.errors import InputError
    from mfaf_cli.io.weights import file_sha256, read_meta, read_onnx_meta

    p = Path(path)
    if not p.is_file():
        raise InputError(f"model file {p} does not exist; check the path")
    kind = "onnx" if p.suffix.lower() == ".onnx" else "checkpoint"
    meta = read_onnx_meta(p) if kind == "onnx" else read_meta(p)
    return {
        "command": "info",
        "file": str(p),
        "kind": kind,
        "size_bytes": p.stat().st_size,
        "sha256": file_sha256(p),
        "meta": meta.to_dict(),
    }


def _metric_line(name: str, m: dict[str, Any]) -> str:
    parts = [f"{k} {m[k]:.3f}" for k in ("miou", "oa", "kappa") if isinstance(m.get(k), float)]
    per = m.get("per_class_iou") or {}
    if per:
        shown = (f"{c} {v:.3f}" if isinstance(v, float) else f"{c} n/a" for c, v in per.items())
        parts.append("IoU " + ", ".join(shown))
    return f"  {name}: " + ("; ".join(parts) if parts else "(no scores)")


def _training_lines(t: dict[str, Any]) -> list[str]:
    if not t:
        return ["training: none recorded"]
    lines = [
        f"training: dataset {t.get('dataset', '?')} ({t.get('data_root', '?')}), "
        f"{t.get('epochs', '?')} epochs (best {t.get('best_epoch', '?')}), "
        f"tile {t.get('tile', '?')}, seed {t.get('seed', '?')}"
    ]
    split = t.get("split") or t.get("splits")
    if isinstance(split, dict):
        counts = ", ".join(f"{k} {v}" for k, v in split.items() if isinstance(v, int))
        rule = split.get("rule") or split.get("source")
        lines.append(f"  split: {counts}" + (f" ({rule})" if rule else ""))
    lines += _imbalance_lines(t)
    if t.get("command"):
        lines.append(f"  command: {t['command']}")
    return lines


def _imbalance_lines(t: dict[str, Any]) -> list[str]:
    """Sampling, class weights and the parent model of a fine-tuned run."""
    lines = []
    cw = t.get("class_weights")
    if t.get("sampling") or isinstance(cw, dict):
        weights = ""
        if isinstance(cw, dict) and cw.get("mode") != "none":
            shown = ", ".join(f"{k} {v:g}" for k, v in (cw.get("weights") or {}).items())
            weights = f" ({shown})"
        mode = cw.get("source") if isinstance(cw, dict) else "none"
        lines.append(f"  sampling {t.get('sampling', 'random')}; class weights {mode}{weights}")
    init = t.get("init")
    if isinstance(init, dict):
        lines.append(
            f"  fine-tuned from {init.get('name')} (sha256 {init.get('sha256')}); "
            f"{init.get('loaded_tensors')} tensors loaded, re-initialised: "
            + (", ".join(init.get("reinitialised") or []) or "none")
        )
    return lines


def _applicability_lines(m: dict[str, Any]) -> list[str]:
    """Training range per band and the rules (what predict's exclusion check uses)."""
    lines = []
    for spec in m["modalities"]:
        if spec.get("range_low") is None:
            continue
        opens = spec.get("range_open") or [""] * len(spec["bands"])
        floors = spec.get("range_floor") or [None] * len(spec["bands"])
        parts = []
        for b, lo, hi, side, floor in zip(spec["bands"], spec["range_low"], spec["range_high"],
                                          opens, floors, strict=True):  # fmt: skip
            lo_s = "open" if side in ("low", "both") else f"{lo:g}"
            hi_s = "open" if side in ("high", "both") else f"{hi:g}"
            noise = "" if floor is None else f" (noise floor {floor:g}: darker reads as it)"
            parts.append(f"{b} {lo_s}..{hi_s}{noise}")
        lines.append(f"  {spec['name']}: " + ", ".join(parts))
    head = "training range (0.1-99.9 % quantiles; open: saturated in training):"
    out = [head, *lines] if lines else ["training range: not recorded (no range check)"]
    rules = m.get("rules") or []
    out.append("rules:" if rules else "rules: none")
    previous = None
    for r in rules:  # consecutive entries of one name: alternatives, the first that can run runs
        same = r["name"] == previous
        out.append(f"    else (if the input lacks those bands): {r['expr']}" if same
                   else f"  {r['name']}: {r['expr']}")  # fmt: skip
        previous = r["name"]
    return out


def format_record(rec: dict[str, Any]) -> str:
    """Human-readable lines of :func:`model_record`."""
    m = rec["meta"]
    state = "TRAINED" if m.get("trained") else "UNTRAINED (random weights)"
    lines = [
        f"{rec['file']}: {rec['kind']} of {m['arch']}, {state}",
        f"  sha256 {rec['sha256']}, {rec['size_bytes'] / 1e6:.1f} MB, tile {m.get('tile_size')}, "
        f"divisor {m.get('divisor')}",
        "modalities:",
    ]
    for spec in m["modalities"]:
        norm = spec["normalisation"]
        units = f", units {spec['units']}" if spec.get("units") else ""
        stretch = (
            f" (p{norm['p_low']:g}-p{norm['p_high']:g} stretch, then mean/std)"
            if norm["mode"] == "scene-percentile"
            else ""
        )
        lines.append(
            f"  {spec['name']}: bands {band_text(spec)}{units}; normalisation "
            f"{norm['mode']}{stretch}; mean {[round(v, 4) for v in norm['mean']]}, "
            f"std {[round(v, 4) for v in norm['std']]}"
        )
    lines.append(
        "classes: "
        + ", ".join(
            f"{c['id']} {c['name']}" + (f" (code {c['code']})" if "code" in c else "")
            for c in m["classes"]
        )
    )
    lines.extend(_applicability_lines(m))
    lines.extend(_training_lines(m.get("training") or {}))
    metrics = m.get("metrics") or {}
    lines.append("metrics:" if metrics else "metrics: none recorded")
    lines.extend(_metric_line(k, v) for k, v in metrics.items() if isinstance(v, dict))
    return "\n".join(lines)


def band_text(spec: dict[str, Any]) -> str:
    """``B12 (swir), B8 (nir), B4 (red)`` / ``swir (Sentinel-2 B12), ...``: what each recorded
    band is; a record naming bands only by position says that predict needs them listed."""
    from mfaf_cli.metadata import MEANINGS

    bands, meanings = list(spec["bands"]), list(spec.get("meanings") or [])
    if not any(meanings) and all(re.fullmatch(r"b\d+", b) for b in bands):
        if bands != [f"b{i + 1}" for i in range(len(bands))]:
            idx = ",".join(b[1:] for b in bands)
            return f"{idx} of its training files (unnamed: predict needs --{spec['name']}-bands)"
    out = []
    for band, meaning in zip(bands, meanings + [""] * len(bands), strict=False):
        sensors = MEANINGS[meaning].sensors if meaning in MEANINGS else {}
        if band == meaning and sensors:
            out.append(f"{band} ({' / '.join(f'{s} {n}' for s, n in sensors.items())})")
        elif meaning and band != meaning:
            out.append(f"{band} ({meaning})")
        else:
            out.append(band)
    return ", ".join(out)

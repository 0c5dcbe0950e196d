"""Scores per unit (scene, patch or spatial block) with bootstrap intervals, calibration and
paired comparisons: what ``mfaf evaluate`` reports besides the overall confusion matrix.

The maths is in :mod:`~mfaf_cli.scores.stats` and :mod:`~mfaf_cli.scores.calibration`;
this module arranges it into the report (JSON, table, plot) as Raster Vision's ``eval.json``
does (``overall`` + ``per_scene``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mfaf_cli.scores import calibration as cal
from mfaf_cli.scores import stats

UnitKind = Literal["scene", "patch", "block"]
#: Pixels per side of the spatial blocks of a one-scene bootstrap.
DEFAULT_BLOCK = 256
PLURAL: dict[str, str] = {"scene": "scenes", "patch": "patches", "block": "blocks"}
#: Fewer units than this: the interval is reported with a caution.
FEW_UNITS = 10


@dataclass
class Units:
    """Per-unit counts: confusion matrices (U, K, K) and, from probabilities, calibration
    counts (U, L); ``kind`` says what a unit is (scene/patch: independent; blocks of one scene:
    neighbours are correlated)."""

    kind: UnitKind
    names: list[str]
    confusion: np.ndarray
    calibration: np.ndarray | None = None

    def stacked(self) -> np.ndarray:
        """(U, K·K [+ L]) one vector per unit, the bootstrap's input."""
        u = len(self.names)
        parts = [self.confusion.reshape(u, -1).astype(np.float64)]
        if self.calibration is not None:
            parts.append(self.calibration)
        return np.concatenate(parts, axis=1)


def score_fn(k: int, class_names: list[str], with_calibration: bool) -> stats.ScoreFn:
    """Scores of a stacked count vector (..., K·K [+ L]): confusion scores, ECE, Brier, NLL."""

    def fn(v: np.ndarray) -> dict[str, np.ndarray]:
        cm = v[..., : k * k].reshape(*v.shape[:-1], k, k)
        out = dict(stats.confusion_scores(cm, class_names))
        if with_calibration:
            c = v[..., k * k :]
            out |= {"ece": cal.ece(c), "brier": cal.brier(c), "nll": cal.nll(c)}
        return out

    return fn


def _unit_row(name: str, cm: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    s = stats.confusion_scores(cm, class_names)
    row: dict[str, Any] = {"name": name, "n_pixels": int(cm.sum())}
    row |= {k: float(s[k]) for k in ("oa", "miou", "mean_f1", "kappa")}
    row["iou"] = {n: float(s[f"iou/{n}"]) for n in class_names}
    return row


def summarise(
    units: Units, class_names: list[str], *, n_boot: int = stats.N_BOOT, seed: int = 0
) -> dict[str, Any]:
    """The report's extra sections: ``intervals`` (95 % percentile bootstrap over the units,
    every score), ``interval_method``, ``per_scene`` (scenes/patches; blocks are counted, not
    listed) and ``calibration`` (ECE, Brier, NLL, reliability bins) when there are
    probabilities."""
    k = len(class_names)
    with_cal = units.calibration is not None
    fn = score_fn(k, class_names, with_cal)
    u = len(units.names)
    iv = stats.bootstrap_intervals(units.stacked(), fn, n_boot=n_boot, seed=seed)
    method: dict[str, Any] = {
        "method": "percentile bootstrap", "level": stats.LEVEL, "resamples": n_boot,
        "over": PLURAL[units.kind], "units": u, "seed": seed,
    }  # fmt: skip
    if units.kind == "block":
        method["note"] = (
            "blocks of one scene are correlated with their neighbours: the interval is "
            "narrower than one over independent scenes would be"
        )
    if u < FEW_UNITS:
        method["caution"] = f"only {u} {PLURAL[units.kind]}: the interval is rough"
    out: dict[str, Any] = {"intervals": {key: list(v) for key, v in iv.items()},
                           "interval_method": method}  # fmt: skip
    if units.kind != "block":
        out["per_scene"] = [
            _unit_row(n, units.confusion[i], class_names) for i, n in enumerate(units.names)
        ]
    if units.calibration is not None:
        c = cal.calibration_summary(units.calibration.sum(axis=0))
        c["pixels"] = int(units.calibration[:, : cal.ECE_BINS].sum())
        out["calibration"] = c
    return out


def compare(
    a: Units, b: Units, class_names: list[str], *, n_boot: int = stats.N_BOOT, seed: int = 0
) -> dict[str, Any]:
    """A minus B on the same units (paired bootstrap); units must match by name."""
    from mfaf_cli.errors import UsageError

    if a.names != b.names:
        raise UsageError(
            f"the two runs scored different {a.kind}s ({len(a.names)} vs {len(b.names)}); "
            "a paired comparison needs the same data"
        )
    with_cal = a.calibration is not None and b.calibration is not None
    fn = score_fn(len(class_names), class_names, with_cal)
    va, vb = a.stacked(), b.stacked()
    if not with_cal:
        n = len(class_names) ** 2
        va, vb = va[:, :n], vb[:, :n]
    diff = stats.paired_difference(va, vb, fn, n_boot=n_boot, seed=seed)
    return {"difference": diff, "interval_method": {
        "method": "paired percentile bootstrap", "level": stats.LEVEL, "resamples": n_boot,
        "over": PLURAL[a.kind], "units": len(a.names), "seed": seed}}  # fmt: skip


# ---- text -------------------------------------------------------------------------------------
def _pct(v: Any) -> str:
    return "-" if v is None or not math.isfinite(float(v)) else f"{100 * float(v):.2f}"


def _iv(v: Any, pct: bool = True) -> str:
    if v is None:
        return ""
    if pct:
        return f" [{_pct(v[0])}, {_pct(v[1])}]"
    f = [("-" if x is None or not math.isfinite(float(x)) else f"{float(x):.4f}") for x in v]
    return f" [{f[0]}, {f[1]}]"


def format_extra(report: dict[str, Any]) -> str:
    """Intervals, per-scene lines and calibration, under the metrics table (percent)."""
    lines: list[str] = []
    iv, m = report.get("intervals"), report.get("interval_method")
    if iv and m:
        lines.append(f"95 % intervals ({m['method']} over {m['units']} {m['over']}; "
                     "kappa and Brier as fractions, the rest in %):")  # fmt: skip
        keys = ["oa", "miou", "mean_f1", "kappa"] + [k for k in iv if k.startswith("iou/")]
        keys += [k for k in ("ece", "brier") if k in iv]
        lines += [f"  {k:<16} {_iv(iv[k], k not in ('kappa', 'brier')).strip()}" for k in keys]
        lines += [f"  ({m[k]})" for k in ("caution", "note") if k in m]
    if report.get("per_scene"):
        rows = report["per_scene"]
        w = max(5, *(len(r["name"]) for r in rows))
        names = list(rows[0]["iou"])
        lines.append(f"{'scene':<{w}}  {'pixels':>10} {'OA':>6} {'mIoU':>6} "
                     + " ".join(f"{'IoU ' + n:>12}" for n in names))  # fmt: skip
        for r in rows:
            lines.append(f"{r['name']:<{w}}  {r['n_pixels']:>10d} {_pct(r['oa']):>6} "
                         f"{_pct(r['miou']):>6} "
                         + " ".join(f"{_pct(r['iou'][n]):>12}" for n in names))  # fmt: skip
    c = report.get("calibration")
    if c:
        lines.append(
            f"calibration: ECE ({c['bins']} bins) {_pct(c['ece'])}{_iv((iv or {}).get('ece'))}  "
            f"Brier {c['brier']:.4f}{_iv((iv or {}).get('brier'), False)}  NLL {c['nll']:.4f}  "
            "mean confidence "
            f"{_pct(c['mean_confidence'])} at accuracy {_pct(c['accuracy'])}"
        )
    return "\n".join(lines)


def format_compare(report: dict[str, Any], label_a: str, label_b: str) -> str:
    """The paired difference table: A, B, A − B with its interval, and whether it is real."""
    d, m = report["difference"], report["interval_method"]
    lines = [f"A = {label_a}", f"B = {label_b}",
             f"{'score':<18} {'A':>7} {'B':>7} {'A-B':>7}  95 % interval ({m['method']}, "
             f"{m['units']} {m['over']})"]  # fmt: skip
    for key, v in d.items():
        if key.startswith(("precision/", "recall/", "f1/")):
            continue
        sig = "significant" if v["significant"] else "not significant"
        lines.append(f"{key:<18} {_pct(v['a']):>7} {_pct(v['b']):>7} {_pct(v['difference']):>7}"
                     f"  [{_pct(v['low'])}, {_pct(v['high'])}] {sig}")  # fmt: skip
    return "\n".join(lines)


# ---- plot -------------------------------------------------------------------------------------
def plot_report(
    cm: np.ndarray, class_names: list[str], report: dict[str, Any], path: str | Path, title: str
) -> Path:
    """One PNG: the row-normalised confusion matrix, per-scene mIoU with the overall interval,
    and the reliability diagram when there are probabilities."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    panels = (
        1
        + bool(report.get("per_scene") or report.get("intervals"))
        + bool(report.get("calibration"))
    )
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 4.2), squeeze=False)
    ax = axes[0]
    _confusion_panel(ax[0], np.asarray(cm, dtype=np.float64), class_names, title)
    i = 1
    if report.get("per_scene") or report.get("intervals"):
        _scene_panel(ax[i], report)
        i += 1
    if report.get("calibration"):
        _reliability_panel(ax[i], report["calibration"])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def _confusion_panel(ax: Any, cm: np.ndarray, names: list[str], title: str) -> None:
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    k = len(names)
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title[-40:] or "confusion (row-normalised)", fontsize=9)
    if k <= 16:
        for r in range(k):
            for c in range(k):
                ax.text(c, r, f"{norm[r, c]:.2f}\n{int(cm[r, c])}", ha="center", va="center",
                        fontsize=7, color="white" if norm[r, c] > 0.5 else "black")  # fmt: skip


def _scene_panel(ax: Any, report: dict[str, Any]) -> None:
    rows = report.get("per_scene") or []
    vals = [r["miou"] for r in rows if r["miou"] is not None and math.isfinite(r["miou"])]
    if vals:
        ax.plot(vals, np.arange(len(vals)), "o", ms=3, color="0.4", label="per scene")
    iv = (report.get("intervals") or {}).get("miou")
    if iv and all(v is not None and math.isfinite(v) for v in iv):
        ax.axvspan(iv[0], iv[1], color="tab:blue", alpha=0.25, label="95 % interval (overall)")
    ax.set_xlabel("mIoU")
    ax.set_ylabel("scene" if rows else "")
    ax.set_xlim(0, 1)
    m = report.get("interval_method", {})
    ax.set_title(f"mIoU over {m.get('units', '?')} {m.get('over', 'units')}", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower left")


def _reliability_panel(ax: Any, c: dict[str, Any]) -> None:
    r = c["reliability"]
    edges = np.asarray(r["upper_edge"])
    width = 1.0 / len(edges)
    acc = [a if a is not None else 0.0 for a in r["accuracy"]]
    ax.bar(edges - width, acc, width=width, align="edge", edgecolor="k", color="tab:blue",
           alpha=0.7, label="accuracy")  # fmt: skip
    ax.plot([0, 1], [0, 1], "--", color="0.3", label="perfect calibration")
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"reliability: ECE {_pct(c['ece'])} %, Brier {c['brier']:.3f}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")

"""Small guards of a training run: label options for folder datasets, the class table and
bands a resumed run must keep, and checkpoint writes that fail in one line on a full disk."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mfaf_cli.errors import OutputWriteError, UsageError, WeightsError
from mfaf_cli.metadata import ClassInfo, ModelMeta
from mfaf_cli.training.config import TrainConfig


def folder_label_options(cfg: TrainConfig) -> dict[str, Any]:
    """``classes`` / ``ignore_value`` for the folder dataset; other datasets bring their own
    class table, so either option there is a usage error rather than silently unused."""
    pairs = (("classes", cfg.classes), ("ignore_value", cfg.ignore_value))
    given = {k: v for k, v in pairs if v is not None}
    if given and cfg.dataset != "folder":
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise UsageError(f"{flags}: only for --dataset folder ({cfg.dataset} has its own classes)")
    return given


def check_same_classes(saved: Sequence[ClassInfo], now: Sequence[ClassInfo], ckpt: Path) -> None:
    """``--resume`` must keep the class table (names and codes), not only its size."""
    a = [(c.name, c.code) for c in saved]
    b = [(c.name, c.code) for c in now]
    if a != b:
        show = lambda t: ", ".join(n if c is None else f"{n}={c}" for n, c in t)  # noqa: E731
        raise WeightsError(
            f"cannot resume: {ckpt} was trained on classes [{show(a)}], but the dataset now "
            f"gives [{show(b)}]; start a new run (--init {ckpt} to fine-tune from it)"
        )


def check_same_bands(saved: ModelMeta, now: Mapping[str, Sequence[str]], ckpt: Path) -> None:
    """``--resume`` must read the bands the run started on: weights trained on B12/B8/B4 that
    carry on with B4/B3/B2 would be recorded as trained on the latter."""
    for spec in saved.modalities:
        got = tuple(now.get(spec.name, ()))
        if tuple(spec.bands) != got:
            raise WeightsError(
                f"cannot resume: {ckpt} was trained on {spec.name} bands "
                f"{','.join(spec.bands)}, but the dataset now gives {','.join(got) or 'none'}; "
                f"select the same bands (--bands {spec.name}=...) or start a new run"
            )


@contextlib.contextmanager
def guarded_write(final: Path) -> Iterator[None]:
    """A checkpoint or history write that fails on a full disk says so in one line; the
    previous file of that name stays (every write goes through a temporary + rename)."""
    from mfaf_cli.io.raster import device_full

    try:
        yield
    except Exception as err:  # SafetensorError is no OSError
        if isinstance(err, OSError) or type(err).__name__ == "SafetensorError":
            if device_full(final.absolute().parent, err):
                raise OutputWriteError(
                    f"could not write {final}: no space left on device; free some space "
                    "(the last good checkpoint is kept)"
                ) from None
        raise

"""The user's overrides of what the inputs say: ``--nodata MOD=VALUE`` and ``--tap``/``--no-tap``.

:func:`with_input_overrides` gives predict, coregister and split-scene runs the keywords
``nodata`` (modality → nodata value) and ``tap`` (target-aligned grid), checks them against the
run's inputs once, and holds them for every grid and :class:`AlignedScene` the run makes
(:func:`~mfaf_cli.coreg.validity.nodata_overrides`, :func:`~mfaf_cli.coreg.tap.tap_default`),
so the many layers between the CLI and the readers do not each pass them on.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from mfaf_cli.coreg.tap import tap_default
from mfaf_cli.coreg.validity import check_nodata, nodata_overrides

R = TypeVar("R")


def with_input_overrides(fn: Callable[..., R]) -> Callable[..., R]:
    """``fn(inputs, ...)`` with the extra keywords ``nodata`` and ``tap`` (typed
    ``Callable[..., R]``, as :func:`~mfaf_cli.coreg.stack.expand_stacks`)."""

    @functools.wraps(fn)
    def wrapper(inputs: Mapping[str, Any], *args: Any, **kw: Any) -> R:
        nodata = kw.pop("nodata", None) or None
        tap = kw.pop("tap", None)
        check_nodata(nodata, [m for m, v in inputs.items() if v is not None])
        with nodata_overrides(nodata), tap_default(tap):
            return fn(inputs, *args, **kw)

    return wrapper

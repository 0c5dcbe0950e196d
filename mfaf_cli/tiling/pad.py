"""How to pad an image block at the bottom/right up to a size a network accepts (pure).

Both engines (and the trainer's and datasets' batch padding) pad the same way: reflect the
border where the block is larger than the pad (a mirrored border looks like more scene),
else repeat the edge pixel (reflection needs ``pad < size``).
"""

from __future__ import annotations

from typing import Literal

PadMode = Literal["reflect", "edge"]


def round_up(n: int, divisor: int) -> int:
    """The smallest multiple of ``divisor`` that is >= ``n``."""
    return n + (-n) % divisor


def bottom_right_pad(h: int, w: int, th: int, tw: int) -> tuple[int, int, PadMode]:
    """``(rows, cols, mode)`` that pad an ``h × w`` block at the bottom/right to ``th × tw``."""
    ph, pw = th - h, tw - w
    if ph < 0 or pw < 0:
        raise ValueError(f"cannot pad {h}x{w} down to {th}x{tw}")
    return ph, pw, "reflect" if ph < h and pw < w else "edge"

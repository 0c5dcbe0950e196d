"""Which share of a batch this process predicts, from the launcher that started it.

mfaf does not schedule anything itself: under ``torchrun`` (``RANK`` / ``WORLD_SIZE``, one GPU
per rank via ``LOCAL_RANK``), a Slurm job array (``SLURM_ARRAY_TASK_ID`` / ``_COUNT``, relative
to ``SLURM_ARRAY_TASK_MIN``) or an explicit ``--shard I/N``, process I of N takes scenes
I, I+N, I+2N, ... of the CSV. The shares are disjoint and cover every scene, so N processes
write exactly the files of one process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from mfaf_cli.errors import UsageError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Process ``index`` of ``count`` (0-based); ``source`` says where it came from."""

    index: int
    count: int
    source: str = "--shard"
    local_rank: int | None = None

    @property
    def shows_progress(self) -> bool:
        """Whether this process draws progress bars: torchrun's ranks share one terminal,
        so only rank 0 does (every other launcher gives each process its own log)."""
        return not (self.source == "torchrun" and self.index > 0)

    def take(self, items: Sequence[T]) -> list[T]:
        """This shard's items: every ``count``-th, starting at ``index`` (round robin, so
        shares differ by at most one scene)."""
        return list(items[self.index :: self.count])


def parse_shard(text: str) -> Shard:
    """``"I/N"`` (0-based I < N) → :class:`Shard`."""
    idx, sep, cnt = text.partition("/")
    try:
        if not sep:
            raise ValueError
        i, n = int(idx), int(cnt)
    except ValueError:
        raise UsageError(f"--shard {text!r} is not I/N, e.g. --shard 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"--shard {text!r}: need 0 <= I < N (I is 0-based), e.g. 0/4 ... 3/4")
    return Shard(i, n)


def _int(env: Mapping[str, str], key: str) -> int | None:
    value = env.get(key, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"environment variable {key}={value!r} is not an integer") from None


def shard_from_env(env: Mapping[str, str] | None = None) -> Shard | None:
    """The shard a launcher assigned, or None when run on its own.

    torchrun wins over Slurm (a torchrun inside a Slurm allocation sets both).
    """
    env = os.environ if env is None else env
    world, rank = _int(env, "WORLD_SIZE"), _int(env, "RANK")
    if world is not None and rank is not None and world > 1:
        if not 0 <= rank < world:
            raise UsageError(f"RANK={rank} is outside WORLD_SIZE={world}")
        return Shard(rank, world, "torchrun", _int(env, "LOCAL_RANK"))
    task, count = _int(env, "SLURM_ARRAY_TASK_ID"), _int(env, "SLURM_ARRAY_TASK_COUNT")
    if task is not None and count is not None and count > 1:
        index = task - (_int(env, "SLURM_ARRAY_TASK_MIN") or 0)
        if not 0 <= index < count:
            raise UsageError(
                f"SLURM_ARRAY_TASK_ID={task} is not within the array (min "
                f"{env.get('SLURM_ARRAY_TASK_MIN', 0)}, count {count}); use a contiguous --array"
            )
        return Shard(index, count, "slurm-array")
    return None


def resolve_shard(explicit: str | Shard | None, env: Mapping[str, str] | None = None) -> Shard:
    """``--shard`` if given, else the launcher's, else the whole batch (0/1)."""
    if isinstance(explicit, Shard):
        return explicit
    if explicit:
        return parse_shard(explicit)
    return shard_from_env(env) or Shard(0, 1, "single")


def device_for(shard: Shard, device: str) -> str:
    """One GPU per torchrun rank: ``cuda``, and ``auto`` when CUDA is there, →
    ``cuda:LOCAL_RANK`` (as training maps them); ``cuda:N`` and ``cpu`` stay as given."""
    d = device.strip().lower()
    if shard.local_rank is None or d not in ("auto", "cuda"):
        return device
    if d == "cuda":
        return f"cuda:{shard.local_rank}"
    from mfaf_cli.engine.base import cuda_requested

    return f"cuda:{shard.local_rank}" if cuda_requested("auto") else device

"""Which bands of a file feed a modality: by the user's list, or by what the bands *mean*.

The model metadata records each band's meaning (``swir``, ``nir``, ``vv``...;
:data:`mfaf_cli.metadata.BAND_MEANINGS`); a file's band descriptions often say theirs
(``B12``, ``B08``, ``T29SND_..._B04_10m``, ``VV``). When they do, the bands are picked without
``--<modality>-bands``. When they do not, the error says what the model needs by meaning and
by sensor band name, and never proposes index numbers that would mean something else.
Everything here is pure (band counts and description strings in, indexes or one-line errors
out) so it is tested exactly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mfaf_cli.errors import BandMismatchError
from mfaf_cli.metadata import (
    ALL_MODALITIES,
    MEANINGS,
    SENTINEL2_L1C_MEANINGS,
    BandId,
    ModalitySpec,
    identify_band,
)

#: Flag names for each modality, used in error messages.
BAND_FLAG = {m: f"--{m}-bands" for m in ALL_MODALITIES}

#: Sentinel-2 band orders of full stacks, from the meaning table's order (L1C: 13 bands;
#: L2A drops the cirrus band B10): the only index lists a message may propose, and only as
#: "if the file is such a stack".
_S2 = [MEANINGS[k].sensors["Sentinel-2"] for k in SENTINEL2_L1C_MEANINGS]
SENTINEL2_STACKS: dict[int, tuple[str, tuple[str, ...]]] = {
    len(_S2): ("Sentinel-2 L1C", tuple(_S2)),
    len(_S2) - 1: ("Sentinel-2 L2A", tuple(b for b in _S2 if b != "B10")),
}


@dataclass(frozen=True)
class BandChoice:
    """The bands of one input that feed the model, and how they were chosen."""

    indexes: tuple[int, ...]  # 1-based, in the model's band order
    picked_by: str  # the flag, "band descriptions" or "file order"
    labels: tuple[str, ...] = ()  # the file's descriptions of those bands ("" when none)
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "indexes": list(self.indexes),
            "descriptions": list(self.labels),
            "picked_by": self.picked_by,
            "warnings": list(self.warnings),
        }

    def summary(self) -> str:
        """``B12,B8,B4 (bands 13,8,4, by band descriptions)``."""
        idx = ",".join(str(i) for i in self.indexes)
        names = ",".join(self.labels) if all(self.labels) else ""
        where = f"band{'s' if len(self.indexes) > 1 else ''} {idx}"
        return (
            f"{names} ({where}, by {self.picked_by})" if names else f"{where} (by {self.picked_by})"
        )


# ---- pure helpers -------------------------------------------------------------------------
def band_tokens(items: Sequence[str]) -> list[int | str]:
    """Band-list tokens → 1-based ints (digits) or band names (anything else), as typed.

    The one rule shared by ``--<modality>-bands`` and batch CSV cells; raises ValueError for a
    number below 1 (the callers add where it came from).
    """
    out: list[int | str] = []
    for item in (t.strip() for t in items):
        if item.lstrip("+-").isdigit():
            n = int(item)
            if n < 1:
                raise ValueError(f"band numbers start at 1 (as in GDAL), got {n}")
            out.append(n)
        else:
            out.append(item)
    return out


def _listing(descriptions: Sequence[str | None]) -> str:
    return ", ".join(f"{k + 1}={d}" for k, d in enumerate(descriptions) if d) or "none"


def _match_name(
    item: str, descriptions: Sequence[str | None], ids: Sequence[BandId | None]
) -> list[int]:
    """1-based bands a typed name refers to: the same description, or the same meaning
    (``B08`` finds ``B8`` and ``T29SND_..._B08_10m``; ``nir`` finds ``B8``)."""
    name = item.strip().lower()
    hits = {k + 1 for k, d in enumerate(descriptions) if (d or "").strip().lower() == name}
    want = identify_band(item)
    if want is not None:
        hits |= {k + 1 for k, i in enumerate(ids) if i is not None and i.meaning == want.meaning}
    return sorted(hits)


def select_bands(
    spec: Sequence[int | str] | None,
    count: int,
    descriptions: Sequence[str | None],
    *,
    path: str,
    modality: str,
    flag: str | None = None,
) -> list[int]:
    """Turn a band list (1-based ints as in GDAL, or band names) into indexes.

    A name matches a band description exactly or by meaning; a name that matches no band or
    two bands, or a band listed twice, is a :class:`BandMismatchError` naming ``flag`` (the
    option or key the list came from; default ``--<modality>-bands``).
    """
    flag = flag or BAND_FLAG.get(modality, f"--{modality}-bands")
    if spec is None or len(spec) == 0:
        return list(range(1, count + 1))
    ids = [identify_band(d) for d in descriptions]
    out: list[int] = []
    for item in spec:
        if isinstance(item, str) and item.strip().lstrip("-").isdigit():
            item = int(item)
        if isinstance(item, int) and not isinstance(item, bool):
            if not 1 <= item <= count:
                raise BandMismatchError(
                    f"{flag} {item} is out of range: {path} has {count} band(s) "
                    f"(numbered 1..{count})"
                )
            out.append(item)
            continue
        hits = _match_name(str(item), descriptions, ids)
        if len(hits) > 1:
            raise BandMismatchError(
                f"{flag} {item!r}: bands {' and '.join(map(str, hits))} of {path} are both "
                f"described as {item} (duplicate band descriptions); use band numbers instead"
            )
        if not hits:
            raise BandMismatchError(
                f"{flag} {item!r}: no band of {path} is described as that (band descriptions: "
                f"{_listing(descriptions)}); use 1-based band numbers instead"
            )
        out.append(hits[0])
    twice = sorted({i for i in out if out.count(i) > 1})
    if twice:
        raise BandMismatchError(
            f"{flag} selects band {twice[0]} of {path} twice; list each band once"
        )
    return out


def needs_phrase(spec: ModalitySpec) -> str:
    """What a model's bands are, by meaning and sensor: ``swir ≈ Sentinel-2 B12, nir ≈ B8``."""
    parts: list[str] = []
    named: set[str] = set()
    for band, meaning in zip(spec.bands, spec.meanings, strict=True):
        sensors = MEANINGS[meaning].sensors if meaning in MEANINGS else {}
        if not sensors:
            parts.append(meaning or band)
            continue
        sensor, name = next(iter(sensors.items()))
        parts.append(f"{meaning} ≈ {name if sensor in named else f'{sensor} {name}'}")
        named.add(sensor)
    if len(parts) > 8:  # hyperspectral: b1, b2, b3, …, b144
        parts = [*parts[:3], "…", parts[-1]]
    return ", ".join(parts)


def sensor_list(spec: ModalitySpec) -> str | None:
    """The model's bands as one sensor names them (``B12,B8,B4``), if one sensor has them all."""
    for sensor in ("Sentinel-2", "Sentinel-1"):
        names = [MEANINGS[m].sensors.get(sensor) if m in MEANINGS else None for m in spec.meanings]
        if all(names):
            return ",".join(n for n in names if n)
    return None


def stack_hint(spec: ModalitySpec, count: int) -> str:
    """``13,8,4 if it is a Sentinel-2 L1C stack in band order (B1, …, B12)``, or ``""``."""
    names = sensor_list(spec)
    if names is None or count not in SENTINEL2_STACKS:
        return ""
    product, order = SENTINEL2_STACKS[count]
    if not all(n in order for n in names.split(",")):
        return ""
    idx = ",".join(str(order.index(n) + 1) for n in names.split(","))
    return f" ({idx} if it is a {count}-band {product} stack in band order {order[0]}…{order[-1]})"


_KIND = {"optical": "optical", "sar": "SAR", "lidar": "LiDAR", "hsi": "hyperspectral"}


def _plural(n: int, word: str = "band") -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def wrong_sensor(
    spec: ModalitySpec,
    ids: Sequence[BandId | None],
    descriptions: Sequence[str | None],
    *,
    path: str,
    model: str,
) -> str | None:
    """The message for a file whose described bands all belong to another modality (SAR
    polarisations given as optical, Sentinel-2 bands given as SAR), else None."""
    want = {MEANINGS[m].modality for m in spec.meanings if m in MEANINGS}
    got = [i for i in ids if i is not None]
    if not want or not got or any(MEANINGS[i.meaning].modality in want for i in got):
        return None
    sensors = sorted({i.sensor for i in got if i.sensor})
    kinds = sorted({_KIND.get(MEANINGS[i.meaning].modality, "other") for i in got})
    what = " ".join([*sensors[:1], "/".join(kinds)])
    return (
        f"{spec.name} file {path} has {what} bands ({_listing(descriptions)}), but model "
        f"{model} takes {spec.name} bands {needs_phrase(spec)}: is it the wrong file?"
    )


def _by_meaning(
    spec: ModalitySpec, ids: Sequence[BandId | None], *, path: str, flag: str
) -> list[int] | None:
    """The bands whose descriptions mean exactly the model's bands, in model order; None if
    any is missing; a meaning described on two bands is an error (which one would it be?)."""
    if not spec.meanings or not all(spec.meanings):
        return None
    out: list[int] = []
    for meaning in spec.meanings:
        hits = [k + 1 for k, i in enumerate(ids) if i is not None and i.meaning == meaning]
        if len(hits) > 1:
            raise BandMismatchError(
                f"bands {' and '.join(map(str, hits))} of {path} are both described as "
                f"{meaning} (duplicate band descriptions); pass {flag} with band numbers"
            )
        if not hits:
            return None
        out.append(hits[0])
    return out


def cannot_pick_message(
    spec: ModalitySpec,
    ids: Sequence[BandId | None],
    descriptions: Sequence[str | None],
    *,
    count: int,
    path: str,
    model: str,
    selected: int | None = None,
) -> str:
    """Why the bands could not be chosen, what the model needs (by meaning and sensor), and
    how to say which bands to use. ``selected``: how many the user's band list gave."""
    n, flag = spec.n_bands, BAND_FLAG.get(spec.name, f"--{spec.name}-bands")
    head = f"model {model} takes {_plural(n, spec.name + ' band')}: {needs_phrase(spec)}"
    names = sensor_list(spec)
    hint = stack_hint(spec, count)
    those = "that band" if n == 1 else "those bands"
    if selected is not None:
        fix = f"pass {flag} {names} or the 1-based indexes of {those}{hint}"
        if names is None:
            fix = f"pass the 1-based indexes of those {_plural(n)} in that order"
        return f"{head}; {flag} selected {selected}: {fix}"
    if count < n:
        return f"{head}; {path} has only {count}: give a file with those bands or another --model"
    if not any(d for d in descriptions):
        return (
            f"{head}; {path} has {count} bands and no band descriptions: pass {flag} with the "
            f"1-based indexes of {those}{hint}"
        )
    found = {i.meaning for i in ids if i is not None}
    missing = [
        f"{m} ({'/'.join(MEANINGS[m].sensors.values())})" if MEANINGS[m].sensors else m
        for m in spec.meanings
        if m in MEANINGS and m not in found
    ]
    lacks = f"name no {', '.join(missing)}" if missing else "do not name the model's bands"
    return (
        f"{head}; the band descriptions of {path} ({_listing(descriptions)}) {lacks}: "
        f"pass {flag} with the names or 1-based indexes of the bands to use, or give a file "
        "with those bands"
    )


def contradictions(
    spec: ModalitySpec,
    indexes: Sequence[int],
    descriptions: Sequence[str | None],
    ids: Sequence[BandId | None],
    *,
    path: str,
    model: str,
) -> list[str]:
    """Warnings for chosen bands whose descriptions mean something else than the model's
    band in that position (``VH`` given for ``vv``)."""
    out = []
    for pos, idx in enumerate(indexes):
        got, want = ids[idx - 1], spec.meanings[pos] if pos < len(spec.meanings) else ""
        if got is None or not want or got.meaning == want:
            continue
        sensors = MEANINGS[want].sensors if want in MEANINGS else {}
        alias = f" ≈ {' / '.join(f'{s} {b}' for s, b in sensors.items())}" if sensors else ""
        out.append(
            f"{spec.name} band {idx} of {path} is described as {descriptions[idx - 1]} "
            f"({got.meaning}), but model {model} takes {want}{alias} there: the map may be "
            "meaningless"
        )
    return out


def needs_explicit_bands(spec: ModalitySpec) -> bool:
    """A record that names its bands only by position in its training files (``b13,b8,b4``:
    no band there was named or described), and not simply all of them in order: nothing says
    which bands of another file those are, so the user must say."""
    positional = all(re.fullmatch(r"b\d+", b) for b in spec.bands) and not any(spec.meanings)
    in_order = spec.bands == tuple(f"b{i + 1}" for i in range(spec.n_bands))
    return positional and not in_order


def positional_message(spec: ModalitySpec, count: int, *, path: str, model: str, flag: str) -> str:
    """Why a record without band names needs ``--<modality>-bands``."""
    idx = ",".join(b[1:] for b in spec.bands)
    return (
        f"model {model} was trained on {spec.name} bands {idx} of its training files, which "
        f"did not name them, so nothing says which bands of {path} ({count} bands) those are: "
        f"pass {flag} with their 1-based indexes (e.g. {flag} {idx} for files laid out like "
        "the training files)"
    )


def choose_bands(
    spec: ModalitySpec,
    band_spec: Sequence[int | str] | None,
    count: int,
    descriptions: Sequence[str | None],
    *,
    path: str,
    model: str,
    flag: str | None = None,
) -> BandChoice:
    """The bands of a file that feed the model's modality ``spec``.

    The user's list wins; else bands whose descriptions mean the model's bands; else all of
    the file's bands in order when their number fits. Files whose described bands are of
    another modality are refused (a warning when the user gave band numbers); chosen bands
    described as something else than the model's band are a warning.
    """
    flag = flag or BAND_FLAG.get(spec.name, f"--{spec.name}-bands")
    ids = [identify_band(d) for d in descriptions]
    warnings: list[str] = []
    wrong = wrong_sensor(spec, ids, descriptions, path=path, model=model)
    if wrong is not None:
        if not band_spec or not all(str(b).strip().isdigit() for b in band_spec):
            raise BandMismatchError(wrong)
        warnings.append(wrong)
    by_meaning = None if band_spec else _by_meaning(spec, ids, path=path, flag=flag)
    if band_spec:
        indexes = select_bands(
            band_spec, count, descriptions, path=path, modality=spec.name, flag=flag
        )
        picked_by = flag
        if len(indexes) != spec.n_bands:
            raise BandMismatchError(
                cannot_pick_message(
                    spec,
                    ids,
                    descriptions,
                    count=count,
                    path=path,
                    model=model,
                    selected=len(indexes),
                )
            )
    elif by_meaning is not None:
        indexes, picked_by = by_meaning, "band descriptions"
    elif needs_explicit_bands(spec):
        raise BandMismatchError(positional_message(spec, count, path=path, model=model, flag=flag))
    elif count == spec.n_bands:
        indexes, picked_by = list(range(1, count + 1)), "file order"
        if contradictions(spec, indexes, descriptions, ids, path=path, model=model):
            # described as other bands (a VH file for a VV model): name what is missing
            raise BandMismatchError(
                cannot_pick_message(spec, ids, descriptions, count=count, path=path, model=model)
            )
    else:
        raise BandMismatchError(
            cannot_pick_message(spec, ids, descriptions, count=count, path=path, model=model)
        )
    warnings += contradictions(spec, indexes, descriptions, ids, path=path, model=model)
    labels = tuple((descriptions[i - 1] or "") for i in indexes)
    return BandChoice(tuple(indexes), picked_by, labels, tuple(warnings))

"""Band identity in training data: the names a run records, and band lists by name.

A model record names its bands as the user named them (``--bands optical=B12,B8,B4``), else as
the training files describe them (band descriptions, Sentinel-2 / -1 file names), else by their
position in the training files (``b13``): a positional name carries no meaning, so predict then
asks for explicit bands instead of guessing (never "3 optical bands, so red/green/blue").
Datasets with a fixed layout (Sen1Floods11, WHU-OPT-SAR) take band names too, matched by meaning
against the layout's bands.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from mfaf_cli.errors import BandMismatchError
from mfaf_cli.metadata import ModalitySpec, identify_band, meaning_of_name

#: A generic band description that says nothing (``Band 1``, ``band_2``).
_GENERIC = re.compile(r"band[\s_\-]*\d+", re.IGNORECASE)


def band_label(text: str | None, modality: str) -> str | None:
    """What to record for a band named or described as ``text``: the sensor's spelling
    (``B08`` → ``B8``, ``T29SND_..._B12_20m`` → ``B12``, ``Sigma0_VV_db`` → ``VV``) or the
    meaning (``nir``) when it means a band of ``modality``; the text itself when it is a name
    that means nothing known (``elevation_m``); None for nothing or a generic ``Band 1``."""
    if not text or not text.strip() or _GENERIC.fullmatch(text.strip()):
        return None
    hit = identify_band(text)
    if hit is not None and meaning_of_name(hit.meaning, modality) is not None:
        return hit.label
    return text.strip()


def recorded_names(
    modality: str,
    indexes: Sequence[int],
    descriptions: Sequence[str],
    spec: Sequence[int | str] | None,
) -> tuple[str, ...]:
    """The band names a trained model records for one modality.

    ``indexes`` are the 1-based bands read from the training files and ``descriptions`` their
    descriptions there ("" when none; file-name derived for one-band files). A band the user
    named is recorded as named; else as described; else positionally as ``b<index>``.
    """
    out: list[str] = []
    for pos, idx in enumerate(indexes):
        item = spec[pos] if spec and pos < len(spec) else None
        typed = item if isinstance(item, str) else None
        desc = descriptions[pos] if pos < len(descriptions) else ""
        out.append(band_label(typed, modality) or band_label(desc, modality) or f"b{idx}")
    return tuple(out)


def layout_indexes(
    spec: Sequence[int | str],
    layout: Sequence[str],
    *,
    modality: str,
    dataset: str,
    where: str | None = None,
) -> list[int]:
    """A band list (numbers or names) → 1-based indexes into a dataset's fixed band layout
    (``layout``: band meanings in file order, e.g. Sen1Floods11's 13 Sentinel-2 bands).
    ``where``: the file key the list came from (``config file F [bands] optical``), for errors;
    by default the ``--bands`` option."""
    meanings = [meaning_of_name(b, modality) for b in layout]
    out: list[int] = []
    for item in spec:
        if isinstance(item, int):
            out.append(item)
            continue
        hit = identify_band(item)
        want = hit.meaning if hit is not None else str(item).strip().lower()
        if want not in meanings:
            names = ", ".join(f"{k + 1}={b}" for k, b in enumerate(layout))
            raise BandMismatchError(
                f"{f'{where} {item!r}' if where else f'--bands {modality}={item}'}: the "
                f"{dataset} {modality} files have no such band "
                f"(they hold {names})"
            )
        out.append(meanings.index(want) + 1)
    return out


def model_layout_bands(
    specs: Sequence[ModalitySpec], layouts: Mapping[str, Sequence[str]]
) -> dict[str, list[int]]:
    """For a dataset of known layout: the indexes of the bands a model takes, by meaning
    (evaluate picks a model's bands by name, as predict does); modalities whose bands the
    layout does not all hold are left out (the dataset's defaults and checks apply)."""
    out: dict[str, list[int]] = {}
    for spec in specs:
        layout = layouts.get(spec.name)
        if not layout or not all(spec.meanings):
            continue
        have = [meaning_of_name(b, spec.name) for b in layout]
        if all(m in have for m in spec.meanings):
            out[spec.name] = [have.index(m) + 1 for m in spec.meanings]
    return out


def bands_for_model(
    specs: Sequence[ModalitySpec], layouts: Mapping[str, Sequence[str]], by_name: bool
) -> dict[str, list[int | str]]:
    """The band lists that give a dataset a model's bands when the user gave none: by index
    into a fixed layout (``layouts``: Sen1Floods11, WHU-OPT-SAR), else (``by_name``: a folder
    of the user's files) the model's band names, matched against each file's descriptions.
    Records that name bands only by position give nothing (the user must say)."""
    if layouts:
        return {k: [*v] for k, v in model_layout_bands(specs, layouts).items()}
    if not by_name:
        return {}
    return {s.name: list(s.bands) for s in specs if s.meanings and all(s.meanings)}

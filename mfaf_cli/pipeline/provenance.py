"""How an output was made: the provenance record in every map's tags and ``--json`` line.

One JSON object: the inputs (path, the bands read and how they were chosen, the acquisition
date where the file's tags or its name carry one), the model (name, architecture, sha256,
trained or not), mfaf's version, the inference spec (tile, overlap, batch, blend, engine,
device, precision) and the UTC time of the run. It is written as the label map's
``MFAF_PROVENANCE`` tag, returned in :class:`~mfaf_cli.pipeline.predict.PredictResult`, and
is what ``--stac-item`` puts in the item's properties.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: The label map's tag holding the record (JSON).
TAG = "MFAF_PROVENANCE"

#: File tags that hold an acquisition time, most specific first (GDAL/Sentinel/Landsat names).
DATE_TAGS = (
    "ACQUISITION_DATE", "ACQUISITION_START_TIME", "SENSING_TIME", "DATATAKE_SENSING_START",
    "PRODUCT_START_TIME", "DATE_ACQUIRED", "DATETIME", "TIFFTAG_DATETIME",
)  # fmt: skip

#: A date in a file name: 20230415T103021 (Sentinel) or 2023-04-15 / 20230415 (as a token).
_NAME_DATE = re.compile(
    r"(?<![0-9])((?:19|20)[0-9]{2})-?([01][0-9])-?([0-3][0-9])(?:T([0-9]{2})([0-9]{2})([0-9]{2}))?(?![0-9])"
)
_TIFF_DATE = re.compile(r"^((?:19|20)[0-9]{2}):([01][0-9]):([0-3][0-9])[ T]([0-9:]{8})$")


def acquisition_date(path: str, tags: Mapping[str, str]) -> dict[str, str] | None:
    """``{"date": ISO 8601, "from": "tag NAME" | "file name"}`` or None when nothing says."""
    upper = {k.upper(): v for k, v in tags.items()}
    for key in DATE_TAGS:
        iso = _iso(upper.get(key, ""))
        if iso:
            return {"date": iso, "from": f"tag {key}"}
    m = _NAME_DATE.search(Path(path).name)
    if m and 1 <= int(m[2]) <= 12 and 1 <= int(m[3]) <= 31:
        iso = f"{m[1]}-{m[2]}-{m[3]}" + (f"T{m[4]}:{m[5]}:{m[6]}Z" if m[4] else "")
        return {"date": iso, "from": "file name"}
    return None


def _iso(text: str) -> str | None:
    text = text.strip()
    if not text:
        return None
    m = _TIFF_DATE.match(text)  # TIFF's "YYYY:MM:DD HH:MM:SS"
    if m:
        return f"{m[1]}-{m[2]}-{m[3]}T{m[4]}Z"
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).isoformat()
    except ValueError:
        return None


def describe_inputs(
    inputs: Mapping[str, str], meta: Any, bands: Mapping[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """Each input's path, bands (as :class:`~mfaf_cli.coreg.align.AlignedScene` picks them)
    and acquisition date."""
    from mfaf_cli.coreg.align import file_descriptions
    from mfaf_cli.coreg.bands import choose_bands
    from mfaf_cli.io.inputs import open_raster

    out: dict[str, dict[str, Any]] = {}
    for name, path in inputs.items():
        with open_raster(path, name) as ds:
            descriptions = file_descriptions(Path(path).name, ds.count, ds.descriptions)
            choice = choose_bands(
                meta.modality(name), (bands or {}).get(name), ds.count, descriptions,
                path=Path(path).name, model=meta.arch,
            )  # fmt: skip
            tags = dict(ds.tags())
        out[name] = {
            "path": str(Path(path).absolute()) if "://" not in path else path,
            "bands": choice.to_dict(),
            "acquired": acquisition_date(os.fspath(path), tags),
        }
    return out


def provenance_record(
    inputs: Mapping[str, str],
    meta: Any,
    bands: Mapping[str, Any] | None,
    model: Mapping[str, Any],
    inference: Mapping[str, Any],
    when: dt.datetime | None = None,
) -> dict[str, Any]:
    """The record (see the module's docstring); ``model`` holds name, sha256, trained."""
    from mfaf_cli import __version__

    when = when or dt.datetime.now(dt.timezone.utc)
    return {
        "mfaf_version": __version__,
        "time": when.replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "inputs": describe_inputs(inputs, meta, bands),
        "model": {"arch": meta.arch, **dict(model)},
        "inference": dict(inference),
    }


def provenance_tags(record: Mapping[str, Any]) -> dict[str, str]:
    return {TAG: json.dumps(record, sort_keys=True)}


def read_provenance(tags: Mapping[str, str]) -> dict[str, Any] | None:
    """The record of a map written by mfaf (None for maps without one)."""
    text = tags.get(TAG)
    return json.loads(text) if text else None

"""The licence, citations and version claims say what is true of the repository and of CI."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_licence_file_matches_the_declared_licence() -> None:
    assert _pyproject()["project"]["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_claimed_versions_are_the_tested_ones() -> None:
    """pyproject claims no Python or torch older than CI installs and runs."""
    project = _pyproject()["project"]
    ci = (ROOT / ".ci" / "run").read_text()
    pinned = re.search(r"torch==([0-9.]+)", ci)
    assert pinned, "CI pins the torch it tests"
    torch_req = next(d for d in project["dependencies"] if d.startswith("torch"))
    low = re.search(r">=([0-9.]+)", torch_req)
    assert (
        low
        and [int(v) for v in low[1].split(".")][:2] == [int(v) for v in pinned[1].split(".")][:2]
    )
    py_low = re.search(r">=3\.([0-9]+)", project["requires-python"])
    assert py_low and int(py_low[1]) == sys.version_info.minor == 11


def test_citations_name_both_papers_and_every_dataset() -> None:
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["license"] == "MIT"
    refs = " ".join(str(r) for r in cff["references"])
    for name in ("Chang", "Balz", "XLVIII-G-2025", "Yokoya", "Bruzzone", "Drakonakis", "Bonafilia"):
        assert name in refs
    for doc in ("README.md", "weights/README.md"):
        text = (ROOT / doc).read_text()
        for name in ("Chang & Balz", "Bruzzone", "OMBRIA", "Sen1Floods11", "no licence"):
            assert name.lower() in text.lower(), (doc, name)

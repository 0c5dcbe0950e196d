"""Bands by meaning: the meaning table, reading band descriptions, choosing a file's bands and
the words used when they cannot be chosen (mfaf_cli/metadata.py, mfaf_cli/coreg/bands.py)."""

from __future__ import annotations

import re

import pytest

from mfaf_cli.coreg.bands import choose_bands, needs_phrase, select_bands, stack_hint
from mfaf_cli.errors import BandMismatchError
from mfaf_cli.metadata import (
    BAND_MEANINGS,
    BandId,
    ModalitySpec,
    ModelMeta,
    Normalisation,
    default_classes,
    identify_band,
    meaning_of_name,
)

S2_L1C = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]
OPT = ModalitySpec("optical", ("swir", "nir", "red"), Normalisation.identity(3))
SAR = ModalitySpec("sar", ("vv",), Normalisation.identity(1), units="db")


def choose(spec: ModalitySpec, given, count: int, desc):  # type: ignore[no-untyped-def]
    return choose_bands(spec, given, count, desc, path="in.tif", model="m")


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("B12", BandId("swir", "Sentinel-2", "B12")),
        ("B08", BandId("nir", "Sentinel-2", "B8")),
        ("b8a", BandId("nir2", "Sentinel-2", "B8A")),
        ("B12_20m", BandId("swir", "Sentinel-2", "B12")),
        ("T29SND_20200101T110000_B04_10m", BandId("red", "Sentinel-2", "B4")),
        ("VV", BandId("vv", "Sentinel-1", "VV")),
        ("Sigma0_VH_db", BandId("vh", "Sentinel-1", "VH")),
        ("SWIR 2", BandId("swir")),
        ("Near Infrared", BandId("nir")),
        ("red", BandId("red")),
        ("Band 1", None),
        ("B13", None),
        ("SCL", None),
        ("", None),
        (None, None),
    ],
)
def test_identify_band(description: str | None, expected: BandId | None) -> None:
    assert identify_band(description) == expected


def test_meaning_table_is_consistent() -> None:
    keys = [m.key for m in BAND_MEANINGS]
    assert len(keys) == len(set(keys))
    s2 = [m.sensors["Sentinel-2"] for m in BAND_MEANINGS if "Sentinel-2" in m.sensors]
    assert s2 == S2_L1C  # the table's order is the L1C stack order the hints rely on
    for m in BAND_MEANINGS:  # every sensor name reads back as its own meaning
        for name in m.sensors.values():
            assert identify_band(name) is not None and identify_band(name).meaning == m.key


def test_old_records_derive_meanings_from_band_names() -> None:
    old = {
        "name": "optical",
        "bands": ["swir", "nir", "red"],
        "normalisation": Normalisation.identity(3).to_dict(),
    }
    spec = ModalitySpec.from_dict(old)  # a checkpoint written before meanings existed
    assert spec.meanings == ("swir", "nir", "red")
    assert ModalitySpec.from_dict(spec.to_dict()) == spec
    assert [meaning_of_name(b, "optical") for b in ("B12", "B8A", "b1", "b13", "vv")] == [
        "swir",
        "nir2",
        None,  # registry's generic positional names are not Sentinel-2 names
        None,
        None,  # a SAR meaning is not an optical one
    ]
    assert meaning_of_name("b1", "hsi") is None and meaning_of_name("VV", "sar") == "vv"
    explicit = ModalitySpec("optical", ("a", "b"), Normalisation.identity(2), meanings=("red", ""))
    assert ModalitySpec.from_dict(explicit.to_dict()).meanings == ("red", "")
    meta = ModelMeta("x", (OPT, SAR), default_classes(2))
    assert ModelMeta.from_json(meta.to_json()) == meta


def test_needs_phrase_and_stack_hints() -> None:
    assert needs_phrase(OPT) == "swir ≈ Sentinel-2 B12, nir ≈ B8, red ≈ B4"
    assert needs_phrase(SAR) == "vv ≈ Sentinel-1 VV"
    hsi = ModalitySpec("hsi", ("b1", "b2"), Normalisation.identity(2))
    assert needs_phrase(hsi) == "b1, b2"
    hsi144 = ModalitySpec("hsi", tuple(f"b{i}" for i in range(1, 145)), Normalisation.identity(144))
    assert needs_phrase(hsi144) == "b1, b2, b3, …, b144"
    assert stack_hint(OPT, 13).startswith(" (13,8,4 if it is a 13-band Sentinel-2 L1C stack")
    assert stack_hint(OPT, 12).startswith(" (12,8,4 if it is a 12-band Sentinel-2 L2A stack")
    assert stack_hint(OPT, 6) == "" and stack_hint(SAR, 13) == "" and stack_hint(hsi, 13) == ""


def test_described_sentinel2_stack_is_picked_by_meaning() -> None:
    c = choose(OPT, None, 13, S2_L1C)
    assert (c.indexes, c.picked_by, c.labels, c.warnings) == (
        (13, 8, 4),
        "band descriptions",
        ("B12", "B8", "B4"),
        (),
    )
    l2a = [f"T29SND_20200101T110000_{b}_{r}" for b, r in [("B04", "10m"), ("B08", "10m"),
                                                        ("B12", "20m")]]  # fmt: skip
    assert choose(OPT, None, 3, l2a).indexes == (3, 2, 1)  # same count, reordered by meaning
    assert choose(SAR, None, 2, ["VV", "VH"]).indexes == (1,)
    assert choose(SAR, None, 2, ["VH", "VV"]).indexes == (2,)


def test_user_list_wins_and_matches_by_meaning() -> None:
    c = choose(OPT, ["B12", "B08", "b04"], 13, S2_L1C)
    assert (c.indexes, c.picked_by) == ((13, 8, 4), "--optical-bands")
    assert choose(OPT, ["swir", "nir", "red"], 13, S2_L1C).indexes == (13, 8, 4)
    assert choose(OPT, [13, 8, 4], 13, [None] * 13).indexes == (13, 8, 4)


def test_undescribed_files_in_model_band_count_are_taken_in_order() -> None:
    c = choose(OPT, None, 3, [None] * 3)
    assert (c.indexes, c.picked_by, c.warnings) == ((1, 2, 3), "file order", ())


def test_error_for_undescribed_sentinel2_stack_never_suggests_other_bands() -> None:
    with pytest.raises(BandMismatchError) as e:
        choose(OPT, None, 13, [None] * 13)
    assert str(e.value) == (
        "model m takes 3 optical bands: swir ≈ Sentinel-2 B12, nir ≈ B8, red ≈ B4; in.tif has "
        "13 bands and no band descriptions: pass --optical-bands with the 1-based indexes of "
        "those bands (13,8,4 if it is a 13-band Sentinel-2 L1C stack in band order B1…B12)"
    )
    assert "1,2,3" not in str(e.value)
    with pytest.raises(BandMismatchError) as e:
        choose(OPT, None, 6, [None] * 6)
    assert "(" not in str(e.value).split("descriptions:")[1]  # no index guess at all


def test_error_names_the_missing_meanings() -> None:
    with pytest.raises(BandMismatchError) as e:
        choose(OPT, None, 4, ["B2", "B3", "B4", "B8"])
    assert str(e.value) == (
        "model m takes 3 optical bands: swir ≈ Sentinel-2 B12, nir ≈ B8, red ≈ B4; the band "
        "descriptions of in.tif (1=B2, 2=B3, 3=B4, 4=B8) name no swir (B12): pass "
        "--optical-bands with the names or 1-based indexes of the bands to use, or give a file "
        "with those bands"
    )
    fix = "--optical-bands selected 2: pass --optical-bands B12,B8,B4 or the 1-based indexes"
    with pytest.raises(BandMismatchError, match=re.escape(fix)):
        choose(OPT, ["B12", "B8"], 13, S2_L1C)
    with pytest.raises(BandMismatchError, match=r"in.tif has only 2: give a file"):
        choose(OPT, None, 2, [None, None])


def test_wrong_sensor_is_an_error_unless_band_numbers_are_given() -> None:
    with pytest.raises(BandMismatchError) as e:
        choose(OPT, None, 2, ["VV", "VH"])
    assert str(e.value) == (
        "optical file in.tif has Sentinel-1 SAR bands (1=VV, 2=VH), but model m takes optical "
        "bands swir ≈ Sentinel-2 B12, nir ≈ B8, red ≈ B4: is it the wrong file?"
    )
    with pytest.raises(BandMismatchError, match=r"sar file in\.tif has Sentinel-2 optical bands"):
        choose(SAR, None, 13, S2_L1C)
    with pytest.raises(BandMismatchError, match="has Sentinel-2 optical bands"):
        choose(SAR, ["B4"], 13, S2_L1C)  # a name does not override it either
    c = choose(SAR, [4], 13, S2_L1C)  # band numbers: the user's call, said loudly
    assert c.indexes == (4,) and "is it the wrong file?" in c.warnings[0]


def test_contradicting_description_is_an_error_unless_numbered() -> None:
    """A file whose one band says VH given to a VV model (issue 20): one line naming the file
    and the band the model needs; an explicit band number overrides it, with a warning."""
    with pytest.raises(BandMismatchError) as e:
        choose(SAR, None, 1, ["VH"])
    assert str(e.value) == (
        "model m takes 1 sar band: vv ≈ Sentinel-1 VV; the band descriptions of in.tif (1=VH) "
        "name no vv (VV): pass --sar-bands with the names or 1-based indexes of the bands to "
        "use, or give a file with those bands"
    )
    c = choose(SAR, [1], 1, ["VH"])
    assert (c.indexes, c.picked_by) == ((1,), "--sar-bands")
    assert c.warnings == (
        "sar band 1 of in.tif is described as VH (vh), but model m takes vv ≈ Sentinel-1 VV "
        "there: the map may be meaningless",
    )
    assert choose(SAR, [1], 2, ["VH", "VV"]).warnings  # also when the user picked it


def test_duplicates_and_absent_names() -> None:
    dup = ["B12", "B8", "B4", "B04_10m"]
    with pytest.raises(BandMismatchError) as e:
        choose(OPT, None, 4, dup)
    assert str(e.value) == (
        "bands 3 and 4 of in.tif are both described as red (duplicate band descriptions); "
        "pass --optical-bands with band numbers"
    )
    with pytest.raises(BandMismatchError, match=r"bands 3 and 4 of a\.tif are both described"):
        select_bands(["B4"], 4, dup, path="a.tif", modality="optical")
    assert choose(OPT, [1, 2, 4], 4, dup).indexes == (1, 2, 4)  # numbers resolve it
    with pytest.raises(BandMismatchError, match=r"selects band 2 of a\.tif twice"):
        select_bands([2, "B8"], 4, dup, path="a.tif", modality="optical")
    with pytest.raises(BandMismatchError, match=r"'B11': no band of a.tif is described as"):
        select_bands(["B12", "B11"], 4, dup, path="a.tif", modality="optical")

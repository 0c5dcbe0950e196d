"""What a new user meets first: usage errors for streams, defaults that match the model cards."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.parametrize(
    "args",
    [
        ["predict", "--optical", "a.tif", "--sar", "b.tif", "-o", "-"],
        ["predict", "--optical", "a.tif", "--sar", "b.tif", "-o", "m.tif", "--vector", "-"],
        ["vectorize", "map.tif", "-o", "-"],
        ["coregister", "--optical", "a.tif", "-o", "-"],
        ["export", "--model", "unet", "-o", "-"],
    ],
)
def test_dash_output_is_a_one_line_usage_error(runner, tmp_path: Path, monkeypatch, args) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = runner(*args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "'-' (standard output) is not supported" in err
    assert not (tmp_path / "-").exists()


def test_training_photometric_default_is_the_model_cards_value() -> None:
    from mfaf_cli.training.trainer import TrainConfig

    assert TrainConfig.__dataclass_fields__["photometric"].default == 0.15

"""--modality-dropout (issue 24): which samples lose which modality, how, and that a run
records it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dataset_builders import make_ombria

from mfaf_cli.training.config import load_config_file
from mfaf_cli.training.dropout import COVER, cloud_masks, drop_modalities, dropout_generator

MODS = ("optical", "sar")


def _inputs(n: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {"optical": torch.randn((n, 3, 32, 32), generator=g) + 5,
            "sar": torch.randn((n, 1, 32, 32), generator=g) + 5}  # fmt: skip


def test_p1_drops_exactly_one_modality_per_sample_wholly_or_cloud_shaped() -> None:
    x = _inputs()
    out, counts = drop_modalities(x, MODS, 1.0, dropout_generator(0, 0))
    zero = {m: (out[m] == 0).all(dim=1) for m in MODS}  # (n, h, w): pixel missing
    frac = {m: zero[m].float().mean(dim=(1, 2)) for m in MODS}
    for i in range(64):
        lost = [m for m in MODS if frac[m][i] > 0]
        assert len(lost) == 1  # one modality, never both
        f = float(frac[lost[0]][i])
        assert f == 1.0 or COVER[0] - 0.05 <= f <= COVER[1] + 0.05
        kept = next(m for m in MODS if m not in lost)
        assert torch.equal(out[kept][i], x[kept][i])
    assert counts["whole"] + counts["cloud"] == 64
    assert 16 < counts["whole"] < 48  # about half wholly
    whole = sum(int((frac[m] == 1).sum()) for m in MODS)
    assert whole == counts["whole"]


def test_p0_and_one_modality_leave_inputs_alone_and_runs_repeat() -> None:
    x = _inputs()
    assert drop_modalities(x, MODS, 0.0, dropout_generator(0, 0))[0] is x
    assert drop_modalities(x, ("sar",), 1.0, dropout_generator(0, 0))[0] is x
    a, _ = drop_modalities(x, MODS, 0.3, dropout_generator(5, 17))
    b, _ = drop_modalities(x, MODS, 0.3, dropout_generator(5, 17))
    c, _ = drop_modalities(x, MODS, 0.3, dropout_generator(5, 18))
    assert all(torch.equal(a[m], b[m]) for m in MODS)
    assert not all(torch.equal(a[m], c[m]) for m in MODS)
    dropped = sum(int((a[m] == 0).all(dim=1).any(dim=(1, 2)).sum()) for m in MODS)
    assert 8 <= dropped <= 32  # ~0.3 of 64


def test_cloud_masks_are_blobs_not_noise() -> None:
    m = cloud_masks(8, 64, 64, torch.Generator().manual_seed(1))
    # neighbouring pixels agree far more often than independent noise of that cover would
    agree = (m[:, 1:, :] == m[:, :-1, :]).float().mean()
    assert agree > 0.9


def test_train_records_modality_dropout(tmp_path: Path, runner) -> None:  # type: ignore[no-untyped-def]
    root = make_ombria(tmp_path / "ombria", n_train=4, n_test=2, size=32)
    out = tmp_path / "run"
    code, _, err = runner("train", "--dataset", "ombria", "--data-root", root, "--model", "unet",
                          "-o", out, "--tile", "32", "--batch-size", "2", "--epochs", "1",
                          "--val-fraction", "0.5", "--model-opt", "base_width=4", "-q",
                          "--num-workers", "0", "--modality-dropout", "0.5")  # fmt: skip
    assert code == 0, err
    assert load_config_file(out / "config.toml")["modality_dropout"] == 0.5
    code, _, err = runner("train", "--dataset", "ombria", "--data-root", root, "--model", "unet",
                          "-o", tmp_path / "bad", "--modality-dropout", "1.5")  # fmt: skip
    assert code != 0 and "modality dropout must be a probability" in err


@pytest.mark.parametrize("p", [0.5])
def test_training_step_sees_dropped_inputs(p: float) -> None:
    x = _inputs(16)
    out, counts = drop_modalities(x, MODS, p, dropout_generator(1, 2))
    changed = sum(int((~torch.isclose(out[m], x[m])).any(dim=(1, 2, 3)).sum()) for m in MODS)
    assert changed == counts["whole"] + counts["cloud"] > 0

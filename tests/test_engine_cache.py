"""``--engine auto``: the ONNX export is cached per checkpoint sha256 + tile, reused, rebuilt
when the checkpoint changes; PyTorch where ONNX does not apply."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_net import TinyFusion, tiny_meta, use_tiny_builder

from mfaf_cli.engine import base, cache, create_predictor, factory
from mfaf_cli.engine.onnx_predictor import OnnxPredictor
from mfaf_cli.engine.torch_predictor import TorchPredictor
from mfaf_cli.io import weights as W
from mfaf_cli.models import export as E
from mfaf_cli.models.resolve import resolve_model

MODS = ("optical", "sar")


@pytest.fixture
def checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    use_tiny_builder(monkeypatch)
    monkeypatch.setenv("MFAF_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    meta = tiny_meta()
    return W.save_checkpoint(TinyFusion(meta.in_channels, 2), meta, tmp_path / "tiny.safetensors")


@pytest.fixture
def exports(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every ONNX export the cache makes."""
    calls: list[Path] = []
    real = E.export_onnx

    def counting(model, meta, path, *a, **kw):  # type: ignore[no-untyped-def]
        calls.append(Path(path))
        return real(model, meta, path, *a, **kw)

    monkeypatch.setattr(E, "export_onnx", counting)
    return calls


def _batch(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"optical": rng.normal(size=(2, 4, 32, 32)).astype(np.float32),
            "sar": rng.normal(size=(2, 1, 32, 32)).astype(np.float32)}  # fmt: skip


def test_cache_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MFAF_CACHE_DIR", str(tmp_path / "c"))
    assert cache.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MFAF_CACHE_DIR")
    assert cache.cache_dir().name == "mfaf"


def test_export_key_depends_on_checkpoint_tile_and_meta() -> None:
    k = cache.export_key("a" * 64, 256, "{}")
    assert k == cache.export_key("a" * 64, 256, "{}")
    assert len({k, cache.export_key("b" * 64, 256, "{}"), cache.export_key("a" * 64, 512, "{}"),
                cache.export_key("a" * 64, 256, '{"x": 1}')}) == 4  # fmt: skip


def test_auto_exports_once_and_reuses(checkpoint: Path, exports: list[Path]) -> None:
    first = create_predictor(str(checkpoint), engine="auto", device="cpu", modalities=MODS)
    assert isinstance(first, OnnxPredictor) and len(exports) == 1
    assert exports[0].parent == checkpoint.parent / "cache" / "onnx" and exports[0].is_file()
    second = create_predictor(str(checkpoint), engine="auto", device="cpu", modalities=MODS)
    assert isinstance(second, OnnxPredictor) and len(exports) == 1  # cache hit
    np.testing.assert_array_equal(first(_batch()), second(_batch()))
    ref = create_predictor(str(checkpoint), engine="torch", device="cpu", modalities=MODS)
    assert np.abs(second(_batch()) - ref(_batch())).max() <= 1e-5
    create_predictor(str(checkpoint), engine="auto", device="cpu", modalities=MODS, tile=64)
    assert len(exports) == 2  # another tile is another graph


def test_changed_checkpoint_is_exported_again(checkpoint: Path, exports: list[Path]) -> None:
    old = create_predictor(str(checkpoint), engine="auto", device="cpu", modalities=MODS)
    meta = tiny_meta()
    torch.manual_seed(1)
    W.save_checkpoint(TinyFusion(meta.in_channels, 2), meta, checkpoint)  # same path, new weights
    new = create_predictor(str(checkpoint), engine="auto", device="cpu", modalities=MODS)
    assert len(exports) == 2 and exports[0] != exports[1]
    ref = create_predictor(str(checkpoint), engine="torch", device="cpu", modalities=MODS)
    assert np.abs(new(_batch()) - ref(_batch())).max() <= 1e-5
    assert np.abs(old(_batch()) - ref(_batch())).max() > 1e-3  # the stale graph is not used


def test_auto_falls_back_to_torch(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pred = create_predictor(
        str(checkpoint), engine="auto", device="cpu", precision="bf16", modalities=MODS
    )
    assert isinstance(pred, TorchPredictor)  # reduced precision: torch autocast
    monkeypatch.setattr(base, "onnxruntime_available", lambda: False)
    pred = create_predictor(str(checkpoint), engine="auto", device="cpu", modalities=MODS)
    assert isinstance(pred, TorchPredictor)
    monkeypatch.setattr(base, "cuda_requested", lambda device: True)
    monkeypatch.setattr(base, "onnxruntime_available", lambda: True)
    source = resolve_model(str(checkpoint), MODS)
    assert factory.choose_engine("auto", source, "cuda") == "torch"
    assert factory.choose_engine("onnx", source, "cuda") == "onnx"


def test_engine_threads_are_applied(checkpoint: Path) -> None:
    pred = create_predictor(
        str(checkpoint), engine="auto", device="cpu", modalities=MODS, threads=1
    )
    assert pred.session.get_session_options().intra_op_num_threads == 1  # type: ignore[attr-defined]
    before = torch.get_num_threads()
    tp = create_predictor(str(checkpoint), engine="torch", device="cpu", modalities=MODS, threads=1)
    tp(_batch())
    assert torch.get_num_threads() == before  # restored after the call

"""ONNX export of every registry network, and the `mfaf export` / `mfaf models` commands."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_net import TinyFusion, tiny_meta, use_tiny_builder

from mfaf_cli import registry
from mfaf_cli.engine.onnx_predictor import OnnxPredictor
from mfaf_cli.errors import ModelError, UsageError
from mfaf_cli.io import weights as W
from mfaf_cli.metadata import ModelMeta
from mfaf_cli.models import export as X

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

#: Networks whose export + ORT check at a 64² tile takes > 20 s of CPU on a 2-core machine
#: (the forward pass and tracing of MFAFNet/CoMiX dominate). MFAFNet-S and CoMiX-S also run,
#: unmarked, at a 32² tile, so the default suite still exports every network family.
SLOW = {"mfafnet-s", "mfafnet-b", "comix-s", "comix-b", "comix-lite"}
FAST_SMALL_TILE = {"mfafnet-s": 32, "comix-s": 32}


def _network_params() -> list:
    params = [
        pytest.param(
            e.name, 64, marks=[pytest.mark.slow] if e.name in SLOW else [], id=f"{e.name}-64"
        )
        for e in registry.list_models()
    ]
    return params + [pytest.param(n, t, id=f"{n}-{t}") for n, t in FAST_SMALL_TILE.items()]


class VolumeSampler(TinyFusion):
    """Calls grid_sample on a 5-D tensor, like CoMiX's 3-D deformable conv."""

    def forward(self, *inputs: torch.Tensor, return_aux: bool = False):  # type: ignore[no-untyped-def]
        x = self.head(torch.cat(inputs, dim=1))
        n, c, h, w = x.shape
        grid = torch.zeros(n, 2, h, w, 3)
        return F.grid_sample(x.unsqueeze(2).expand(n, c, 2, h, w), grid, align_corners=False).mean(
            2
        )


@pytest.fixture
def tiny_registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_tiny_builder(monkeypatch)
    monkeypatch.setenv("MFAF_WEIGHTS_DIR", str(tmp_path / "weights"))


def graph_io(path: Path) -> tuple[dict[str, list], list[str], int]:
    proto = onnx.load(str(path))
    dims = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in proto.graph.input
    }
    opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return dims, [o.name for o in proto.graph.output], opset


# ---- every registry network -------------------------------------------------------------------
@pytest.mark.parametrize(("name", "tile"), _network_params())
def test_registry_network_exports_and_matches_torch(tmp_path: Path, name: str, tile: int) -> None:
    torch.manual_seed(0)
    model = registry.create_model(name, num_classes=5).eval()
    meta = replace(registry.default_meta(name, num_classes=5), tile_size=tile)
    path = X.export_onnx(model, meta, tmp_path / f"{name}.onnx")

    dims, outputs, opset = graph_io(path)
    assert list(dims) == list(meta.modality_names)
    for m in meta.modalities:
        assert isinstance(dims[m.name][0], str)  # dynamic batch
        assert dims[m.name][1:] == [m.n_bands, tile, tile]  # fixed bands and tile
    assert outputs == ["probabilities"]
    assert opset == (20 if name.startswith("comix") else 17)
    assert W.read_meta(path) == meta

    g = torch.Generator().manual_seed(11)  # batch 1: not the batch size used for tracing (2)
    x = tuple(torch.randn(1, m.n_bands, tile, tile, generator=g) for m in meta.modalities)
    with torch.inference_mode():
        ref = torch.softmax(model(*x).float(), dim=1).numpy()
    got = OnnxPredictor(path, device="cpu")(
        {m: t.numpy() for m, t in zip(meta.modality_names, x, strict=True)}
    )
    assert got.shape == (1, 5, tile, tile)
    assert np.abs(got - ref).max() <= 1e-4
    assert ref.std() > 1e-3  # the comparison is not between two constant maps


# ---- export_onnx details ----------------------------------------------------------------------
def test_opset_follows_grid_sample_rank() -> None:
    meta = tiny_meta()
    x = X.example_inputs(replace(meta, tile_size=16), batch=1)
    assert X.required_opset(TinyFusion(meta.in_channels, 2).eval(), x) == 17
    assert X.required_opset(VolumeSampler(meta.in_channels, 2).eval(), x) == 20


def test_volumetric_model_exports_at_opset_20(tmp_path: Path) -> None:
    meta = tiny_meta()
    model = VolumeSampler(meta.in_channels, 2).eval()
    with pytest.raises(UsageError, match="needs opset >= 20"):
        X.export_onnx(model, meta, tmp_path / "v.onnx", opset=17)
    assert not (tmp_path / "v.onnx").exists()
    path = X.export_onnx(model, meta, tmp_path / "v.onnx")
    assert graph_io(path)[2] == 20
    batch = {
        m.name: np.random.default_rng(0).normal(size=(2, m.n_bands, 32, 32)).astype(np.float32)
        for m in meta.modalities
    }
    with torch.no_grad():
        ref = torch.softmax(
            model(*(torch.from_numpy(batch[m]) for m in meta.modality_names)), 1
        ).numpy()
    assert np.abs(OnnxPredictor(path, device="cpu")(batch) - ref).max() <= 1e-5


def test_export_rejects_bad_tile_and_mismatched_meta(tmp_path: Path) -> None:
    meta = tiny_meta()
    model = TinyFusion(meta.in_channels, 2).eval()
    with pytest.raises(UsageError, match="multiple of 16"):
        X.export_onnx(model, replace(meta, tile_size=40), tmp_path / "a.onnx")
    sar_first = replace(meta, modalities=meta.modalities[::-1])
    with pytest.raises(ModelError, match="differ from the metadata"):
        X.export_onnx(model, sar_first, tmp_path / "a.onnx")
    with pytest.raises(UsageError, match="unknown exporter"):
        X.export_onnx(model, meta, tmp_path / "a.onnx", exporter="magic")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_dynamo_exporter_also_works(tmp_path: Path) -> None:
    torch.manual_seed(0)
    meta = tiny_meta()
    model = TinyFusion(meta.in_channels, 2).eval()
    path = X.export_onnx(model, meta, tmp_path / "d.onnx", exporter="dynamo")
    dims, outputs, _ = graph_io(path)
    assert list(dims) == ["optical", "sar"] and outputs == ["probabilities"]
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["mfaf_exporter"] == "dynamo"
    assert ModelMeta.from_json(props["mfaf_meta"]) == meta
    batch = {m.name: np.ones((3, m.n_bands, 32, 32), np.float32) for m in meta.modalities}
    with torch.no_grad():
        ref = torch.softmax(
            model(*(torch.from_numpy(batch[m]) for m in meta.modality_names)), 1
        ).numpy()
    assert np.abs(OnnxPredictor(path, device="cpu")(batch) - ref).max() <= 1e-5


# ---- mfaf export ------------------------------------------------------------------------------
def test_cli_export_checkpoint(tmp_path: Path, runner, tiny_registry: None) -> None:  # type: ignore[no-untyped-def]
    meta = tiny_meta()
    ckpt = W.save_checkpoint(TinyFusion(meta.in_channels, 2), meta, tmp_path / "tiny.safetensors")
    out = tmp_path / "tiny.onnx"
    code, stdout, err = runner("export", "--model", ckpt, "-o", out, "--tile", 48, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["output"] == str(out) and summary["opset"] == 17
    assert summary["inputs"] == {"optical": ["batch", 4, 48, 48], "sar": ["batch", 1, 48, 48]}
    assert 0 <= summary["max_abs_diff"] <= 1e-4
    assert W.read_meta(out) == replace(meta, tile_size=48)
    assert "UNTRAINED" not in err

    code, _, err = runner("export", "--model", ckpt, "-o", out)
    assert code == 2 and "--overwrite" in err
    code, stdout, _ = runner("export", "--model", ckpt, "-o", out, "--overwrite", "--opset", 18)
    assert code == 0 and "opset 18" in stdout and graph_io(out)[2] == 18


def test_cli_export_errors(tmp_path: Path, runner, tiny_registry: None) -> None:  # type: ignore[no-untyped-def]
    code, _, err = runner("export", "--model", "mfafnet-xxl", "-o", tmp_path / "m.onnx")
    assert code == 2
    assert "unknown model 'mfafnet-xxl'" in err and "mfafnet-s" in err and "comix-s" in err
    code, _, err = runner(
        "export", "--model", "comix-s", "-o", tmp_path / "c.onnx", "--opset", 17, "--tile", 32
    )
    assert code == 2 and "needs opset >= 20" in err
    code, _, err = runner("export", "--model", "unet", "-o", tmp_path / "nodir" / "u.onnx")
    assert code == 2 and "does not exist" in err
    code, _, err = runner("export", "--model", "unet", "-o", tmp_path / "u.onnx", "--tile", 50)
    assert code == 2 and "multiple of 16" in err
    assert not list(tmp_path.glob("*.onnx"))


# ---- mfaf models ------------------------------------------------------------------------------
def test_cli_models_json_lists_registry_and_weights(
    tmp_path: Path, runner, tiny_registry: None
) -> None:  # type: ignore[no-untyped-def]
    meta = tiny_meta(metrics={"miou": 0.7})
    ckpt = W.save_checkpoint(TinyFusion(meta.in_channels, 2), meta, tmp_path / "tiny.safetensors")
    W.register_weights(ckpt, "tiny-water", default=True)

    code, stdout, err = runner("models", "--json")
    assert code == 0, err
    assert len(stdout.strip().splitlines()) == 1
    report = json.loads(stdout)
    archs = {a["name"]: a for a in report["architectures"]}
    assert list(archs) == [e.name for e in registry.list_models()]
    for e in registry.list_models():
        assert archs[e.name]["modalities"] == list(e.modalities)
        assert archs[e.name]["in_channels"] == e.default_in_channels
        assert archs[e.name]["parameters"] > 0
    for name in ("unet-sar", "mfafnet-s"):  # meta-device count equals a real CPU build
        assert archs[name]["parameters"] == registry.count_parameters(registry.create_model(name))
    (shipped,) = report["weights"]
    assert shipped["name"] == "tiny-water" and shipped["default"] and shipped["present"]
    assert shipped["modalities"] == ["optical", "sar"] and shipped["metrics"] == {"miou": 0.7}

    code, stdout, _ = runner("models")
    assert code == 0
    assert all(e.name in stdout for e in registry.list_models()) and "tiny-water" in stdout

    code, stdout, _ = runner("models", "comix-s", "--json")
    assert code == 0
    detail = json.loads(stdout)
    assert (
        detail["meta"]["arch"] == "comix-s"
        and detail["parameters"] == archs["comix-s"]["parameters"]
    )
    code, stdout, _ = runner("models", "tiny-water", "--json")
    assert code == 0 and ModelMeta.from_dict(json.loads(stdout)["meta"]) == meta


def test_cli_models_unknown_name(runner, tiny_registry: None) -> None:  # type: ignore[no-untyped-def]
    code, stdout, err = runner("models", "segformer")
    assert code == 2 and not stdout
    assert "unknown model 'segformer'" in err and "comix-lite" in err and "unet-optical" in err


def test_calibrated_onnx_export_equals_calibrated_torch(tmp_path: Path) -> None:
    """A record's temperature is applied by both engines: the ONNX graph divides the logits
    inside, the torch engine before its softmax; labels are those of the raw logits."""
    from mfaf_cli.engine.torch_predictor import TorchPredictor

    torch.manual_seed(0)
    meta = tiny_meta(tile=32, temperature=2.5)
    model = TinyFusion(meta.in_channels, 2).eval()
    path = X.export_onnx(model, meta, tmp_path / "cal.onnx")
    assert W.read_meta(path).temperature == 2.5
    rng = np.random.default_rng(0)
    batch = {m.name: rng.normal(0, 2, (2, m.n_bands, 32, 32)).astype(np.float32)
             for m in meta.modalities}  # fmt: skip
    got = OnnxPredictor(path, device="cpu")(batch)
    ref = TorchPredictor(model, meta, device="cpu")(batch)
    raw = TorchPredictor(model, replace(meta, temperature=1.0), device="cpu")(batch)
    assert np.abs(got - ref).max() <= 1e-5
    assert np.abs(ref - raw).max() > 1e-2  # the temperature did change the probabilities
    assert np.array_equal(ref.argmax(1), raw.argmax(1))  # ... and not the labels
    with torch.inference_mode():
        logits = model(*(torch.from_numpy(batch[m]) for m in meta.modality_names)).numpy()
    assert np.abs(ref - torch.softmax(torch.from_numpy(logits) / 2.5, 1).numpy()).max() <= 1e-5
    assert ModelMeta.from_json(meta.to_json()).temperature == 2.5

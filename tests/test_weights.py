"""Checkpoints, the weights manifest (mfaf_cli/io/weights.py) and model resolution
(mfaf_cli/models/resolve.py)."""

from __future__ import annotations

import json
import logging
import pickle
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from mfaf_cli import registry
from mfaf_cli.errors import ModalityError, ModelError, WeightsError
from mfaf_cli.io import weights as W
from mfaf_cli.metadata import (
    WATER_CLASSES,
    ClassInfo,
    ModalitySpec,
    ModelMeta,
    Normalisation,
)
from mfaf_cli.models import resolve as R


# ---- a tiny stand-in network following the model contract ---------------------------------
class TinyFusion(nn.Module):
    """1×1 conv over the concatenated modalities (+ a BN buffer, so buffers round-trip too)."""

    modalities = ("optical", "sar")
    divisor = 16

    def __init__(self, in_channels: dict[str, int], num_classes: int) -> None:
        super().__init__()
        self.modalities = tuple(in_channels)
        self.norm = nn.BatchNorm2d(sum(in_channels.values()))
        self.head = nn.Conv2d(sum(in_channels.values()), num_classes, 1)

    def forward(self, *inputs: torch.Tensor, return_aux: bool = False):  # type: ignore[no-untyped-def]
        logits = self.head(self.norm(torch.cat(inputs, dim=1)))
        return (logits, {}) if return_aux else logits


def tiny_meta(trained: bool = True, **kw: object) -> ModelMeta:
    mods = (
        ModalitySpec("optical", ("red", "green", "blue", "nir"), Normalisation.identity(4)),
        ModalitySpec("sar", ("vv",), Normalisation.identity(1), units="db"),
    )
    base = ModelMeta(
        arch="tiny",
        modalities=mods,
        classes=WATER_CLASSES,
        tile_size=32,
        trained=trained,
        metrics={"miou": 0.5},
        training={"data": "synthetic"},
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def make_tiny(meta: ModelMeta, seed: int = 0) -> TinyFusion:
    torch.manual_seed(seed)
    model = TinyFusion(meta.in_channels, meta.num_classes)
    with torch.no_grad():  # non-default running stats, so a dropped buffer would show
        model.norm.running_mean.uniform_(-1, 1)
        model.norm.running_var.uniform_(0.5, 2)
    return model.eval()


@pytest.fixture
def tiny_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let load_checkpoint build the stand-in for arch "tiny" (real registry otherwise)."""
    real = W.build_model

    def build(meta: ModelMeta) -> nn.Module:
        if meta.arch == "tiny":
            return TinyFusion(meta.in_channels, meta.num_classes)
        return real(meta)

    monkeypatch.setattr(W, "build_model", build)


@pytest.fixture
def weights_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "weights"
    monkeypatch.setenv("MFAF_WEIGHTS_DIR", str(d))
    return d


@pytest.fixture
def tiny_ckpt(tmp_path: Path, tiny_registry: None) -> Path:
    meta = tiny_meta()
    return W.save_checkpoint(make_tiny(meta), meta, tmp_path / "tiny.safetensors")


def inputs_for(meta: ModelMeta, size: int = 32, n: int = 2) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(7)
    return tuple(torch.randn(n, m.n_bands, size, size, generator=g) for m in meta.modalities)


def assert_state_equal(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k


# ---- round trips ------------------------------------------------------------------------------
def test_round_trip_standin_is_bit_exact(tmp_path: Path, tiny_registry: None) -> None:
    meta = tiny_meta()
    model = make_tiny(meta)
    path = W.save_checkpoint(model, meta, tmp_path / "sub" / "m.safetensors")
    assert path.is_file()
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # temp renamed
    loaded, meta2 = W.load_checkpoint(path)
    assert meta2 == meta
    assert not loaded.training
    assert_state_equal(model, loaded)
    x = inputs_for(meta)
    with torch.no_grad():
        assert torch.equal(model(*x), loaded(*x))
    assert W.read_meta(path) == meta


@pytest.mark.parametrize(
    ("name", "in_channels", "config"),
    [
        ("unet", None, {}),
        ("unet-sar", {"sar": 2}, {}),
        ("mfafnet-s", {"optical": 13, "sar": 2}, {"share_deep_fdm": True}),  # tied weights
        ("comix-s", {"hsi": 63, "lidar": 2}, {}),
    ],
)
def test_round_trip_real_networks(
    tmp_path: Path, name: str, in_channels: dict | None, config: dict
) -> None:
    torch.manual_seed(3)
    model = registry.create_model(name, in_channels, 7, **config).eval()
    meta = registry.default_meta(name, in_channels, 7, **config)
    path = W.save_checkpoint(model, meta, tmp_path / f"{name}.safetensors")
    loaded, meta2 = W.load_checkpoint(path)
    assert meta2 == meta
    assert_state_equal(model, loaded)
    x = inputs_for(meta, size=max(32, meta.divisor), n=1)
    with torch.no_grad():
        assert torch.equal(model(*x), loaded(*x))


# ---- broken files -----------------------------------------------------------------------------
def test_truncated_checkpoint(tiny_ckpt: Path) -> None:
    data = tiny_ckpt.read_bytes()
    tiny_ckpt.write_bytes(data[:-40])
    with pytest.raises(WeightsError, match="truncated"):
        W.load_checkpoint(tiny_ckpt)
    tiny_ckpt.write_bytes(data[:20])  # cut inside the header
    with pytest.raises(WeightsError, match=r"truncated|not a valid safetensors"):
        W.load_checkpoint(tiny_ckpt)


def test_altered_tensor_byte_fails_checksum(tiny_ckpt: Path) -> None:
    data = bytearray(tiny_ckpt.read_bytes())
    data[-3] ^= 0x40  # inside the last tensor's bytes
    tiny_ckpt.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"checksum mismatch.*altered or truncated"):
        W.load_checkpoint(tiny_ckpt)


def test_altered_metadata_fails_checksum(tiny_ckpt: Path) -> None:
    data = tiny_ckpt.read_bytes()
    assert data.count(b'\\"miou\\": 0.5') == 1
    tiny_ckpt.write_bytes(data.replace(b'\\"miou\\": 0.5', b'\\"miou\\": 0.9'))  # same length
    assert W.read_meta(tiny_ckpt).metrics == {"miou": 0.9}  # still parses...
    with pytest.raises(WeightsError, match="checksum mismatch"):  # ...but is caught on load
        W.load_checkpoint(tiny_ckpt)


def test_appended_bytes_are_rejected(tiny_ckpt: Path) -> None:
    tiny_ckpt.write_bytes(tiny_ckpt.read_bytes() + b"extra")
    with pytest.raises(WeightsError, match="trailing bytes"):
        W.load_checkpoint(tiny_ckpt)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "not a safetensors"),
        (b"hello world, this is not a checkpoint at all" * 10, "not a valid safetensors"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json here!}", "not JSON"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n", "git lfs pull"),
    ],
)
def test_garbage_files(tmp_path: Path, content: bytes, match: str) -> None:
    p = tmp_path / "bad.safetensors"
    p.write_bytes(content)
    with pytest.raises(WeightsError, match=match):
        W.load_checkpoint(p)
    with pytest.raises(WeightsError):
        W.read_meta(p)


class _Payload:
    """A pickle that would create a marker file if it were ever unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_pickle_files_are_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    plain = tmp_path / "evil.safetensors"
    plain.write_bytes(pickle.dumps(_Payload(marker), protocol=4))
    zipped = tmp_path / "evil.pt"
    torch.save({"x": _Payload(marker)}, zipped)
    for p in (plain, zipped):
        with pytest.raises(WeightsError, match="never unpickles"):
            W.load_checkpoint(p)
    assert not marker.exists()


def test_missing_file_and_foreign_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    with pytest.raises(WeightsError, match="not found"):
        W.load_checkpoint(tmp_path / "nope.safetensors")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.ones(3)}, str(foreign))
    with pytest.raises(WeightsError, match="not an mfaf checkpoint"):
        W.load_checkpoint(foreign)


def test_weights_not_fitting_the_architecture(tmp_path: Path) -> None:
    model = registry.create_model("unet-sar", num_classes=2)
    meta = registry.default_meta("unet-sar", num_classes=3)  # claims 3 classes
    path = W.save_checkpoint(model, meta, tmp_path / "m.safetensors")
    with pytest.raises(WeightsError, match="does not fit architecture 'unet-sar'"):
        W.load_checkpoint(path)


def test_unknown_architecture_in_checkpoint(
    tiny_ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.undo()  # real registry: "tiny" is not an architecture
    with pytest.raises(WeightsError, match="cannot build"):
        W.load_checkpoint(tiny_ckpt)


def test_cli_reports_broken_checkpoint_in_one_line(tmp_path: Path, runner) -> None:  # type: ignore[no-untyped-def]
    model = registry.create_model("unet-sar")
    path = W.save_checkpoint(model, registry.default_meta("unet-sar"), tmp_path / "m.safetensors")
    path.write_bytes(path.read_bytes()[:-1000])
    code, _out, err = runner("export", "--model", path, "-o", tmp_path / "m.onnx")
    assert code == 1
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and "truncated" in lines[0]
    assert not (tmp_path / "m.onnx").exists()


# ---- manifest ---------------------------------------------------------------------------------
def test_register_and_resolve_default(
    tmp_path: Path, weights_dir: Path, tiny_registry: None
) -> None:
    meta = tiny_meta()
    src = W.save_checkpoint(make_tiny(meta), meta, tmp_path / "a.safetensors")
    entry = W.register_weights(src, "tiny-water", default=True, description="test")
    assert entry["sha256"] == W.file_sha256(weights_dir / "tiny-water.safetensors")
    assert entry["modalities"] == ["optical", "sar"] and entry["default"] is True
    on_disk = json.loads((weights_dir / "manifest.json").read_text())
    assert [e["name"] for e in on_disk["models"]] == ["tiny-water"]

    source = R.resolve_model(None, ["sar", "optical"])
    assert (source.kind, source.name, source.sha256) == (
        "checkpoint",
        "tiny-water",
        entry["sha256"],
    )
    assert source.meta == meta
    model, meta2 = R.load_model(None, ["optical", "sar"])
    assert isinstance(model, TinyFusion) and meta2 == meta
    assert R.resolve_model("tiny-water").path == weights_dir / "tiny-water.safetensors"

    # A second default for the same modalities takes over; the first stays listed.
    src2 = W.save_checkpoint(make_tiny(meta, seed=1), meta, tmp_path / "b.safetensors")
    W.register_weights(src2, "tiny-water-2", default=True)
    defaults = [e["name"] for e in W.read_manifest() if e["default"]]
    assert defaults == ["tiny-water-2"]
    assert R.resolve_model(None, ["optical", "sar"]).name == "tiny-water-2"


def test_manifest_checksum_is_checked(
    tmp_path: Path, weights_dir: Path, tiny_registry: None
) -> None:
    meta = tiny_meta()
    src = W.save_checkpoint(make_tiny(meta), meta, tmp_path / "a.safetensors")
    W.register_weights(src, "tiny-water", default=True)
    # Replace the shipped file with another *valid* checkpoint: only the manifest can tell.
    W.save_checkpoint(make_tiny(meta, seed=9), meta, weights_dir / "tiny-water.safetensors")
    with pytest.raises(WeightsError, match=r"checksum mismatch.*altered or truncated"):
        R.load_model("tiny-water")
    with pytest.raises(WeightsError, match="checksum mismatch"):  # by path too
        W.load_checkpoint(weights_dir / "tiny-water.safetensors")


def test_register_rejects_registry_names_and_bad_files(tmp_path: Path, weights_dir: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage" * 10)
    with pytest.raises(ModelError, match="clashes"):
        W.register_weights(bad, "mfafnet-s")
    with pytest.raises(WeightsError):
        W.register_weights(bad, "good-name")
    assert not (weights_dir / "manifest.json").exists()


def test_malformed_manifest(weights_dir: Path) -> None:
    weights_dir.mkdir()
    (weights_dir / "manifest.json").write_text('{"models": [{"file": "x.safetensors"}]}')
    with pytest.raises(WeightsError, match=r"manifest .* is malformed"):
        W.read_manifest()
    (weights_dir / "manifest.json").write_text("{oops")
    with pytest.raises(WeightsError, match="malformed"):
        R.resolve_model(None, ["optical", "sar"])


def test_manifest_entry_with_missing_file(weights_dir: Path) -> None:
    weights_dir.mkdir()
    entry = {
        "name": "gone",
        "file": "gone.safetensors",
        "modalities": ["optical", "sar"],
        "default": True,
    }
    (weights_dir / "manifest.json").write_text(json.dumps({"models": [entry]}))
    with pytest.raises(WeightsError, match=r"listed in the manifest but .* is missing"):
        R.resolve_model(None, ["optical", "sar"])


# ---- resolution without shipped weights -------------------------------------------------------
@pytest.mark.parametrize(
    ("mods", "arch"),
    [(["optical", "sar"], "mfafnet-s"), (["lidar", "hsi"], "comix-s"), (["sar"], "unet-sar")],
)
def test_no_silent_untrained_fallback(weights_dir: Path, mods: list[str], arch: str) -> None:
    with pytest.raises(ModalityError) as e:
        R.resolve_model(None, mods)
    msg = str(e.value)
    assert f"no shipped model takes {' + '.join(mods)}" in msg and "shipped: none" in msg
    assert f"(--model {arch}) to run UNTRAINED" in msg
    assert e.value.exit_code == 2


def test_no_shipped_model_lists_what_is_shipped(
    tmp_path: Path, weights_dir: Path, tiny_registry: None
) -> None:
    meta = tiny_meta()
    W.register_weights(W.save_checkpoint(make_tiny(meta), meta, tmp_path / "a.safetensors"),
                       "tiny-water", default=True)  # fmt: skip
    with pytest.raises(ModalityError) as e:
        R.resolve_model(None, ["optical"])  # SAR forgotten
    msg = str(e.value)
    assert "no shipped model takes optical; shipped: tiny-water (optical + sar)" in msg
    assert "add --sar PATH" in msg and "(--model unet-optical) to run UNTRAINED" in msg


def test_a_model_shipped_by_name_only_is_never_the_default(
    tmp_path: Path, weights_dir: Path, tiny_registry: None
) -> None:
    """A shipped model below its baseline runs when named, never when only modalities are."""
    meta = tiny_meta()
    ckpt = W.save_checkpoint(make_tiny(meta), meta, tmp_path / "a.safetensors")
    entry = W.register_weights(ckpt, "weak-water", by_name_only="below Otsu on the test split")
    assert entry["by_name_only"] == "below Otsu on the test split"
    with pytest.raises(ModalityError) as e:
        R.resolve_model(None, ["optical", "sar"])
    msg = str(e.value)
    assert msg.startswith("no shipped model is the default for optical + sar; shipped: weak-water")
    assert "name it (--model weak-water; not picked by default: below Otsu on the test" in msg
    assert R.resolve_model("weak-water", ["optical", "sar"]).name == "weak-water"
    W.register_weights(ckpt, "good-water")  # a second model for the same modalities is picked
    assert R.resolve_model(None, ["optical", "sar"]).name == "good-water"


def test_a_named_architecture_is_untrained_and_says_so(
    weights_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="mfaf"):
        source = R.resolve_model("unet-sar", ["sar"])
    assert (source.kind, source.name, source.path) == ("untrained", "unet-sar", None)
    assert source.untrained and not source.meta.trained
    assert "UNTRAINED" in caplog.text


def test_untrained_registry_model_takes_band_counts(weights_dir: Path) -> None:
    source = R.resolve_model("mfafnet-s", ["optical", "sar"], in_channels={"optical": 13, "sar": 2})
    assert source.meta.in_channels == {"optical": 13, "sar": 2}
    model, meta = R.load_model(source)
    assert not model.training
    x = inputs_for(meta, size=32, n=1)
    with torch.no_grad():
        assert model(*x).shape == (1, 2, 32, 32)


def test_shipped_weights_are_package_data(monkeypatch: pytest.MonkeyPatch) -> None:
    import mfaf_cli

    monkeypatch.delenv("MFAF_WEIGHTS_DIR", raising=False)
    assert W.weights_dir() == Path(mfaf_cli.__file__).resolve().parent / "weights"
    entries = W.read_manifest()
    assert entries, "the package ships a manifest.json"
    assert all(W.entry_path(e).is_file() for e in entries)
    assert all(R.resolve_model(e["name"]).meta.trained for e in entries)


def test_resolution_errors(tmp_path: Path, weights_dir: Path, tiny_ckpt: Path) -> None:
    with pytest.raises(ModalityError, match="no shipped model takes hsi \\+ sar"):
        R.resolve_model(None, ["hsi", "sar"])
    with pytest.raises(ModalityError, match="takes optical \\+ sar"):
        R.resolve_model(tiny_ckpt, ["hsi", "lidar"])
    with pytest.raises(ModalityError, match="takes hsi \\+ lidar"):
        R.resolve_model("comix-s", ["optical", "sar"])
    with pytest.raises(ModelError, match=r"unknown model 'mfafnet-xl'.*mfafnet-s.*comix-lite"):
        R.resolve_model("mfafnet-xl", ["optical", "sar"])
    with pytest.raises(WeightsError, match="not found"):
        R.resolve_model(str(tmp_path / "missing.safetensors"), ["optical", "sar"])
    assert ModelError.exit_code == 2 and WeightsError.exit_code == 1


def test_resolve_paths(
    tiny_ckpt: Path, weights_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="mfaf"):
        source = R.resolve_model(str(tiny_ckpt), ["optical", "sar"])
    assert (source.kind, source.path, source.name) == ("checkpoint", tiny_ckpt, "tiny")
    assert "UNTRAINED" not in caplog.text  # meta says trained
    assert R.resolve_model(tiny_ckpt).meta == tiny_meta()  # Path objects work, no modality check


def test_untrained_checkpoint_warns(tmp_path: Path, tiny_registry: None, caplog) -> None:  # type: ignore[no-untyped-def]
    meta = tiny_meta(
        trained=False, classes=(ClassInfo(0, "a", (1, 2, 3)), ClassInfo(1, "b", (4, 5, 6)))
    )
    path = W.save_checkpoint(make_tiny(meta), meta, tmp_path / "u.safetensors")
    with caplog.at_level(logging.WARNING, logger="mfaf"):
        assert R.resolve_model(str(path)).untrained
    assert "UNTRAINED" in caplog.text


def test_checkpoint_gets_umask_mode_not_private_temp_mode(tiny_ckpt: Path) -> None:
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(tiny_ckpt.stat().st_mode) == 0o666 & ~umask

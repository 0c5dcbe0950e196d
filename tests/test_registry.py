"""Registry entries carry every model fact the package uses, so a new network is one
``register`` call: no code may branch on a model's name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

from mfaf_cli import registry
from mfaf_cli.errors import ModelError
from mfaf_cli.metadata import DEFAULT_BANDS, WATER_CLASSES
from mfaf_cli.registry import ModelEntry, lazy_builder, make_entry
from mfaf_cli.types import ALIGNMENT_KINDS

PACKAGE = Path(registry.__file__).resolve().parent

torch.set_num_threads(2)


@pytest.mark.parametrize("entry", registry.list_models(), ids=lambda e: e.name)
def test_every_entry_declares_what_its_network_does(entry: ModelEntry) -> None:
    """The declared divisor, aux outputs and band counts are what the built network has."""
    assert callable(entry.builder) and entry.description
    assert entry.divisor_for() == entry.divisor
    assert set(entry.alignment_losses) <= set(ALIGNMENT_KINDS)
    for m in entry.modalities:
        assert len(entry.default_bands[m]) == entry.default_in_channels[m]
    small = {m: min(n, 4) for m, n in entry.default_in_channels.items()}
    torch.manual_seed(0)
    model = registry.create_model(entry.name, small, 3).eval()
    assert model.modalities == entry.modalities and model.divisor == entry.divisor
    size = max(32, entry.divisor)
    xs = [torch.randn(1, small[m], size, size) for m in entry.modalities]
    with torch.no_grad():
        logits, aux = model(*xs, return_aux=True)
    assert logits.shape == (1, 3, size, size)
    assert set(aux) == set(entry.aux_outputs)


def test_divisor_rule_follows_the_configuration() -> None:
    comix = registry.get_entry("comix-s")
    assert (
        comix.divisor_for({"stem_stride": 2})
        == 16
        == registry.model_divisor("comix-s", {"stem_stride": 2})
    )
    assert registry.get_entry("unet").divisor_for({"stem_stride": 2}) == 16


def test_only_mfafnet_declares_alignment_losses() -> None:
    aligned = {e.name for e in registry.list_models() if e.alignment_losses}
    assert aligned == {"mfafnet-s", "mfafnet-b"}
    assert registry.get_entry("mfafnet-s").alignment_losses == ALIGNMENT_KINDS


def _noop_builder(in_channels: dict[str, int], num_classes: int, **cfg: object) -> nn.Module:
    raise AssertionError("not built")


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"modalities": ("optical", "radar")}, "modalities"),
        ({"aux_outputs": ("features",)}, "aux outputs"),
        ({"alignment_losses": ("rbf",)}, "aux 'deep'"),
        ({"alignment_losses": ("cosine",), "aux_outputs": ("deep",)}, "alignment losses"),
        ({"builder": None}, "a builder"),
    ],
)
def test_an_entry_that_does_not_declare_itself_is_refused(kw: dict, match: str) -> None:
    fields = {
        "name": "bad",
        "modalities": ("optical",),
        "default_in_channels": {"optical": 4},
        "divisor": 16,
        "description": "",
        "builder": _noop_builder,
        "default_bands": {"optical": DEFAULT_BANDS["optical"]},
    } | kw
    if "modalities" in kw:
        fields["default_in_channels"] = dict.fromkeys(kw["modalities"], 1)
    with pytest.raises(ModelError, match=match):
        ModelEntry(**fields)


class ToyFusion(nn.Module):
    """A network the package has never heard of: 1×1 conv, 'deep' features for the MMD."""

    def __init__(self, in_channels: dict[str, int], num_classes: int, width: int = 2) -> None:
        super().__init__()
        self.modalities = tuple(in_channels)
        self.in_channels = dict(in_channels)
        self.divisor = 8 * width
        self.head = nn.Conv2d(sum(in_channels.values()), num_classes, 1)

    def forward(self, *xs: torch.Tensor, return_aux: bool = False):  # type: ignore[no-untyped-def]
        logits = self.head(torch.cat(xs, dim=1))
        return (logits, {"deep": (xs[0], xs[1])}) if return_aux else logits


@pytest.fixture()
def toy(monkeypatch: pytest.MonkeyPatch) -> ModelEntry:
    monkeypatch.setattr(registry, "_BY_NAME", dict(registry._BY_NAME))
    import sys

    monkeypatch.setitem(sys.modules, "toy_nets", sys.modules[__name__])
    return registry.register(
        make_entry(
            "toy-fusion",
            ("optical", "sar"),
            16,
            "toy",
            lazy_builder("toy_nets", "ToyFusion"),
            divisor_rule=lambda cfg: 8 * int(cfg.get("width", 2)),
            aux_outputs=("deep",),
            alignment_losses=("rbf",),
            default_bands={"optical": ("red", "green", "blue")},
        )
    )


def test_a_registered_entry_works_everywhere_without_code_edits(
    toy: ModelEntry, tmp_path: Path
) -> None:
    from mfaf_cli.models.resolve import resolve_model
    from mfaf_cli.training.config import TrainConfig
    from mfaf_cli.training.distributed import _Dist
    from mfaf_cli.training.trainer import Trainer

    assert registry.list_models()[-1] is toy and toy.default_in_channels == {"optical": 3, "sar": 1}
    model = registry.create_model("toy-fusion", num_classes=2, width=4)
    assert isinstance(model, ToyFusion) and model.divisor == 32
    assert registry.model_divisor("toy-fusion", {"width": 4}) == 32
    meta = registry.default_meta("toy-fusion", {"sar": 2}, width=4)
    assert meta.divisor == 32 and meta.classes == WATER_CLASSES and not meta.trained
    assert meta.modality("optical").bands == ("red", "green", "blue")
    assert meta.modality("sar").bands == ("vv", "vh") and meta.modality("sar").units == "db"
    source = resolve_model("toy-fusion", ("optical", "sar"))
    assert source.untrained and source.meta.arch == "toy-fusion"
    with pytest.raises(ModelError, match="already registered"):
        registry.register(toy)
    # training applies the MMD by the entry's capabilities, not by its name
    cfg = TrainConfig(model="toy-fusion", mmd="rbf", device="cpu", out=str(tmp_path))
    assert Trainer(cfg, _Dist(), toy, 16, tmp_path, 0.0).mmd_used
    unet = registry.get_entry("unet")
    cfg = TrainConfig(model="unet", mmd="rbf", device="cpu", out=str(tmp_path))
    assert not Trainer(cfg, _Dist(), unet, 16, tmp_path, 0.0).mmd_used


def _name_branches(tree: ast.AST, names: set[str]) -> list[int]:
    """Lines comparing a value with a model name or name prefix (``==``, ``in``,
    ``startswith``), the branches capabilities replace."""

    def is_name(node: ast.AST) -> bool:
        return (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and bool(node.value)
            and any(n.startswith(node.value.lower()) for n in names)
            and node.value.lower().rstrip("-") in {n.split("-")[0] for n in names} | names
        )

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(is_name(o) for o in operands) or any(
                isinstance(o, (ast.Tuple, ast.List, ast.Set)) and any(is_name(e) for e in o.elts)
                for o in operands
            ):
                lines.append(node.lineno)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("startswith", "endswith")
            and any(is_name(a) for a in node.args)
        ):
            lines.append(node.lineno)
    return lines


def test_no_code_branches_on_a_model_name() -> None:
    names = {e.name for e in registry.list_models()}
    found = {
        str(p.relative_to(PACKAGE)): lines
        for p in sorted(PACKAGE.rglob("*.py"))
        if (lines := _name_branches(ast.parse(p.read_text()), names))
    }
    assert found == {}


def test_the_name_branch_detector_finds_branches() -> None:
    names = {"mfafnet-s", "comix-s", "unet"}
    src = 'a = x.startswith("mfafnet")\nb = "comix" in y\nc = n == "unet"\nd = n in ("unet", "z")\n'
    assert _name_branches(ast.parse(src), names) == [1, 2, 3, 4]
    assert _name_branches(ast.parse('e = "mfafnet-s-water"\nf = x == "optical"\n'), names) == []

"""The package's rooms import downward only: a declared layer order, no upward import and no
import circle between modules (lazy imports inside functions count: they are arrows too)."""

from __future__ import annotations

import ast
from pathlib import Path

import mfaf_cli

PACKAGE = Path(mfaf_cli.__file__).parent

#: Rooms from the bottom up (longest prefix wins). A module may import its own room and any
#: room of a lower layer; rooms that share a layer do not import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("mfaf_cli", "mfaf_cli.types", "mfaf_cli.errors", "mfaf_cli.malloc"),
    ("mfaf_cli.metadata", "mfaf_cli.devices", "mfaf_cli.bandspec"),
    (
        "mfaf_cli.normalize",
        "mfaf_cli.classes",
        "mfaf_cli.applicability",
        "mfaf_cli.tiling",
        "mfaf_cli.registry",
        "mfaf_cli.scores",
        "mfaf_cli.training.config",
    ),
    ("mfaf_cli.stitch",),
    ("mfaf_cli.io",),
    ("mfaf_cli.models",),
    ("mfaf_cli.vectorize", "mfaf_cli.engine", "mfaf_cli.coreg"),
    ("mfaf_cli.data",),
    ("mfaf_cli.pipeline",),
    ("mfaf_cli.training",),
    ("mfaf_cli.cli",),
    ("mfaf_cli.__main__",),
)
#: Known upward arrows, each waiting for a change in a file its room's owner is editing (none
#: now: the truth readers the confusion sink needed moved down to ``io/truth.py``).
KNOWN_UPWARD: frozenset[tuple[str, str]] = frozenset()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module → the package modules it imports (``from a import b`` → ``a.b`` if a module)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    deps.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def room(module: str) -> tuple[int, str]:
    """(layer, room prefix) of a module: the longest declared prefix that contains it."""
    best: tuple[int, str] | None = None
    for layer, rooms in enumerate(LAYERS):
        for r in rooms:
            inside = module == r or module.startswith(r + ".")
            if inside and (best is None or len(r) > len(best[1])):
                best = (layer, r)
    assert best is not None, f"{module} is in no declared room; add it to LAYERS"
    return best


def upward_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    bad = set()
    for a, deps in graph.items():
        la, ra = room(a)
        for b in deps:
            lb, rb = room(b)
            if lb > la or (lb == la and ra != rb):
                bad.add((a, b))
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_is_in_a_declared_room() -> None:
    for module in import_graph():
        room(module)


def test_no_upward_imports() -> None:
    assert upward_imports(import_graph()) == KNOWN_UPWARD


def test_no_import_circles_but_the_known_one() -> None:
    graph = import_graph()
    for a, b in KNOWN_UPWARD:
        graph[a].discard(b)
    assert cycles(graph) == []


def folder(module: str) -> str:
    """The folder a module lives in (``mfaf_cli.io.raster`` → ``io``); a top-level module is
    its own folder (``mfaf_cli.metadata`` → ``metadata``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def folder_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Folder → the other folders its modules import."""
    out: dict[str, set[str]] = {}
    for a, deps in graph.items():
        out.setdefault(folder(a), set()).update(folder(b) for b in deps if folder(b) != folder(a))
    return out


def test_folders_import_one_way() -> None:
    """What a reader sees first: no two folders import each other (directly or round a loop)."""
    assert cycles(folder_graph(import_graph())) == []


def test_the_checks_catch_what_they_look_for() -> None:
    graph = {
        "mfaf_cli.io.raster": {"mfaf_cli.pipeline.core"},  # upward
        "mfaf_cli.pipeline.core": {"mfaf_cli.io.raster"},
        "mfaf_cli.coreg.grid": {"mfaf_cli.engine.base"},  # sideways, same layer
        "mfaf_cli.engine.base": set(),
    }
    assert upward_imports(graph) == {
        ("mfaf_cli.io.raster", "mfaf_cli.pipeline.core"),
        ("mfaf_cli.coreg.grid", "mfaf_cli.engine.base"),
    }
    assert cycles(graph) == [["mfaf_cli.io.raster", "mfaf_cli.pipeline.core"]]
    sideways = {"mfaf_cli.stitch.merger": {"mfaf_cli.tiling.windows"},
                "mfaf_cli.tiling.plan": {"mfaf_cli.stitch.weights"}}  # fmt: skip
    assert cycles(folder_graph(sideways)) == [["stitch", "tiling"]]
    assert room("mfaf_cli.tiling.plan") == (2, "mfaf_cli.tiling")
    assert room("mfaf_cli.tiling.windows") == (2, "mfaf_cli.tiling")

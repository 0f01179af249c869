"""The package's import structure: every module sits on a floor and imports only from its own
floor or below, and no two modules import each other, directly or around a loop.

Imports are read from the source (``ast``), including those inside functions, so a lazy import
counts like any other. ``from pkg import name`` is an import of ``pkg.name`` when that is a
module, else of ``pkg`` itself (its ``__init__``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "egovlpv2_rt"
ROOT = Path(__file__).resolve().parents[1] / "python" / PACKAGE

# Floors, bottom up (docs/ARCHITECTURE.md). The longest matching prefix decides.
FLOORS = {
    "egovlpv2_rt._version": 0,
    "egovlpv2_rt._extension": 0,
    "egovlpv2_rt.config": 0,
    "egovlpv2_rt.progress": 0,
    "egovlpv2_rt.errors": 0,
    "egovlpv2_rt.files": 0,
    "egovlpv2_rt.denormals": 0,
    "egovlpv2_rt.ops": 1,
    "egovlpv2_rt.op_flops": 1,
    "egovlpv2_rt.modeling": 2,
    "egovlpv2_rt.checkpoint": 2,
    "egovlpv2_rt.tokenizer": 3,
    "egovlpv2_rt.video": 3,
    "egovlpv2_rt.data": 3,
    "egovlpv2_rt.preprocessing": 3,
    "egovlpv2_rt.model_files": 3,
    "egovlpv2_rt.train": 4,
    "egovlpv2_rt.eval": 4,
    "egovlpv2_rt.export": 4,
    "egovlpv2_rt.tasks": 4,
    "egovlpv2_rt.runtime": 5,
    "egovlpv2_rt.cli": 6,
    "egovlpv2_rt": 7,  # the package's face: nothing inside the package imports it
}
FOUNDATION = ("egovlpv2_rt.modeling", "egovlpv2_rt.video", "egovlpv2_rt.data")
UPPER = ("egovlpv2_rt.train", "egovlpv2_rt.runtime", "egovlpv2_rt.export", "egovlpv2_rt.cli")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    if not _is_package(importer):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(name: str) -> set[str]:
    """Package modules that ``name`` imports."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    out: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, node)
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
            targets = subs if len(subs) == len(node.names) else [base, *subs]
        for t in targets:
            while t and t not in MODULES and t.startswith(PACKAGE):
                t = t.rpartition(".")[0]  # a name inside a module: the module
            if t in MODULES and t != name:
                out.add(t)
    return out


GRAPH = {name: _imports(name) for name in MODULES}


def floor(name: str) -> int | None:
    keys = [k for k in FLOORS if name == k or name.startswith(k + ".")]
    return FLOORS[max(keys, key=len)] if keys else None


def test_every_module_has_a_floor():
    assert [m for m in MODULES if floor(m) is None] == []
    assert len(MODULES) > 60  # the walk found the package


def test_imports_go_down_or_sideways():
    upward = sorted(
        f"{src} (floor {floor(src)}) imports {dst} (floor {floor(dst)})"
        for src, dsts in GRAPH.items()
        for dst in dsts
        if floor(dst) > floor(src)
    )  # type: ignore[operator]
    assert upward == []


def test_foundation_never_imports_the_upper_floors():
    bad = sorted(
        f"{src} -> {dst}"
        for src, dsts in GRAPH.items()
        for dst in dsts
        if src.startswith(FOUNDATION) and dst.startswith(UPPER)
    )
    assert bad == []


def test_nothing_imports_the_package_face():
    assert sorted(src for src, dsts in GRAPH.items() if PACKAGE in dsts) == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    assert _cycles(GRAPH) == []


@pytest.mark.parametrize(
    "graph,expected",
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": set(), "c": {"b"}}, []),
        ({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}, [["a", "b"], ["c", "d"]]),
    ],
)
def test_the_cycle_finder_finds_cycles(graph, expected):
    assert sorted(_cycles(graph)) == expected


def test_the_walk_sees_lazy_and_relative_imports():
    # runtime/loader.py imports export.onnx_export inside a function, and modeling/model.py's
    # `from .. import _extension` names a module, not the package face.
    assert "egovlpv2_rt.export.onnx_export" in GRAPH["egovlpv2_rt.runtime.loader"]
    assert "egovlpv2_rt._extension" in GRAPH["egovlpv2_rt.modeling.model"]
    assert "egovlpv2_rt.runtime" in GRAPH["egovlpv2_rt.cli.common"]

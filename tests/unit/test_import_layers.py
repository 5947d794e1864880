"""Unit (static): the app's top-level parts import one another without a cycle.

A part is a top-level subpackage (`smartapp.notes`, `smartapp.admin`, …) or module
(`smartapp.siteconfig`, `smartapp.policy`, …). Every import counts — at module level,
inside a function, under `TYPE_CHECKING` — since a lazy import is still a dependency: a
cycle hidden in a function is the `admin ↔ notes` and `siteconfig ↔ suggestions` knot
this test exists to keep broken. The source is read with `ast`; nothing is imported.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import smartapp

ROOT = Path(smartapp.__file__).resolve().parent

#: part → part → where (module:line): the first import seen that makes the edge.
Graph = dict[str, dict[str, str]]


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(tree: ast.AST, module: str, *, is_package: bool) -> Iterator[tuple[str, int]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield target, node.lineno
            # `from smartapp import kinds` imports the part `smartapp.kinds`.
            for alias in node.names:
                yield f"{target}.{alias.name}", node.lineno


def _part(module: str, parts: set[str]) -> str | None:
    pieces = module.split(".")
    if pieces[0] != "smartapp" or len(pieces) < 2:
        return None
    name = ".".join(pieces[:2])
    return name if name in parts else None


def import_graph(root: Path) -> Graph:
    """Which top-level part of the package at `root` imports which, read from the source."""
    top = {p.stem for p in root.glob("*.py") if p.name != "__init__.py"}
    top |= {p.parent.name for p in root.glob("*/__init__.py")}
    parts = {f"{root.name}.{name}" for name in top}
    graph: Graph = {part: {} for part in parts}
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        source = _part(module, parts)
        if source is None:  # the package's own __init__ (create_app) sits above every part
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for target, line in _imported(tree, module, is_package=path.name == "__init__.py"):
            other = _part(target, parts)
            if other is not None and other != source:
                graph[source].setdefault(other, f"{module}:{line}")
    return graph


def find_cycle(graph: Mapping[str, Mapping[str, str]]) -> list[str] | None:
    """One cycle (its parts, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def describe(cycle: list[str], graph: Graph) -> str:
    return "; ".join(f"{a} -> {b} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False))


def test_no_import_cycle_between_top_level_parts():
    graph = import_graph(ROOT)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + describe(cycle, graph)


def test_the_layers_the_issue_named_stay_apart():
    """The two knots broken for issue 12, by name: the lower side imports nothing above."""
    graph = import_graph(ROOT)
    assert "smartapp.admin" not in graph["smartapp.notes"], graph["smartapp.notes"]
    assert "smartapp.suggestions" not in graph["smartapp.siteconfig"]
    assert "smartapp.notes" not in graph["smartapp.siteconfig"]
    assert "smartapp.admin" not in graph["smartapp.policy"]


def _write(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


@pytest.mark.parametrize(
    "importer",
    [
        "from smartapp.notes.service import x\n",
        "def late():\n    from smartapp.notes import service\n",
        "from ..notes import service\n",
        "import smartapp.notes.service\n",
    ],
)
def test_a_reintroduced_cycle_is_found_however_it_is_imported(tmp_path, importer):
    """The checker itself, on a package laid out like ours: every import form counts."""
    root = tmp_path / "smartapp"
    _write(
        root,
        {
            "__init__.py": "from smartapp.admin import views\n",
            "kinds.py": "",
            "admin/__init__.py": "",
            "admin/views.py": importer,
            "notes/__init__.py": "",
            "notes/service.py": "from smartapp import kinds\nfrom smartapp.admin import views\n",
        },
    )
    graph = import_graph(root)
    assert graph["smartapp.notes"] == {
        "smartapp.kinds": "smartapp.notes.service:1",
        "smartapp.admin": "smartapp.notes.service:2",
    }
    cycle = find_cycle(graph)
    assert cycle is not None and set(cycle) == {"smartapp.admin", "smartapp.notes"}


def test_a_layered_package_has_no_cycle(tmp_path):
    root = tmp_path / "smartapp"
    _write(
        root,
        {
            "__init__.py": "",
            "kinds.py": "",
            "admin/__init__.py": "from smartapp.notes import service\nfrom smartapp import kinds\n",
            "notes/__init__.py": "",
            "notes/service.py": "from smartapp.kinds import KINDS\nfrom . import other\n",
            "notes/other.py": "",
        },
    )
    assert find_cycle(import_graph(root)) is None

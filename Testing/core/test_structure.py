"""The core's import structure (issue 15): the command line on top, no cycles, no argparse
below the command line, and the Slicer module's torch-free imports.

Every module of ``sainr`` is parsed (not imported) and its imports, at module level and inside
functions alike, form the graph the assertions walk.
"""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "SAINRSlicer" / "sainr"
#: The program's entry points, above the command line itself.
ENTRY_POINTS = {"sainr.__main__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, name: str) -> set[str]:
    """Every module ``path`` (module ``name``) imports, anywhere in its code, by full name:
    ``from . import x`` counts as ``pkg.x`` when that is a module, else as ``pkg``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    """sainr module -> the sainr modules it imports (names that are modules only)."""
    files = {module_name(p): p for p in CORE.rglob("*.py")}
    return {
        name: imported_modules(path, name) & files.keys() - {name} for name, path in files.items()
    }


GRAPH = graph()


def test_the_graph_sees_the_known_imports():
    """A sanity check of the parser itself, so that the assertions below cannot pass empty."""
    assert {"sainr.api", "sainr.request", "sainr.cli.common"} <= GRAPH["sainr.cli.reduce"]
    assert "sainr.cli.reduce" not in GRAPH["sainr.cli"]  # imported by name at run time only
    assert "sainr.train.adapt" in GRAPH["sainr.evaluation.methods"]  # a function-level import
    assert len(GRAPH) > 40


def test_nothing_below_the_command_line_imports_it():
    below = {
        module: sorted(m for m in imports if m == "sainr.cli" or m.startswith("sainr.cli."))
        for module, imports in GRAPH.items()
        if not module.startswith("sainr.cli") and module not in ENTRY_POINTS
    }
    assert {m: i for m, i in below.items() if i} == {}


def test_no_argparse_below_the_command_line():
    users = [
        module
        for module, path in ((module_name(p), p) for p in CORE.rglob("*.py"))
        if not module.startswith("sainr.cli") and "argparse" in imported_modules(path, module)
    ]
    assert users == []


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``edges`` as a path that ends where it starts, or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def without_packages(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph without edges from a module to the packages above it: ``from . import
    __version__`` or ``from .. import x`` runs a package's ``__init__``, which imports no
    submodule in this project (each package's ``__init__`` is checked to be light below)."""
    return {
        module: {m for m in imports if not module.startswith(m + ".")}
        for module, imports in edges.items()
    }


def test_no_import_cycle_among_the_core_modules():
    assert find_cycle(without_packages(GRAPH)) is None


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_top_package_imports_no_submodule_when_imported():
    """``sainr/__init__.py`` loads its API lazily, so importing it (as every ``from . import``
    does) starts no chain of imports; the cycle check above relies on that."""
    assert GRAPH["sainr"] == set()


def test_the_slicer_modules_core_imports_are_torch_free():
    """The Slicer process plans with these modules (no PyTorch there): none imports torch."""
    torch_free = {
        "sainr.planning",
        "sainr.geometry",
        "sainr.errors",
        "sainr.protocol",
        "sainr.request",
        "sainr.io.resources",
        "sainr.validation",
    }
    closure = set(torch_free)
    while grown := {m for t in closure for m in GRAPH[t]} - closure:
        closure |= grown
    assert closure == torch_free
    files = {t: CORE.parent / Path(*t.split(".")).with_suffix(".py") for t in closure}
    imports = {m for t, path in files.items() for m in imported_modules(path, t)}
    assert {m for m in imports if m.split(".")[0] == "torch"} == set()


def test_only_the_resource_locator_names_the_resources_folder():
    """The shipped models, the sample and the panel's files are found in one place
    (:mod:`sainr.io.resources`), so the install and source layouts are searched alike."""
    module_dir = CORE.parent
    naming = [
        path.relative_to(module_dir).as_posix()
        for path in sorted(module_dir.rglob("*.py"))
        if any(
            isinstance(node, ast.Constant) and node.value == "Resources"
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        )
    ]
    assert naming == ["sainr/io/resources.py"]

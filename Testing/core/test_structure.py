"""The core's import structure (issues 15 and 24): layers whose imports point one way (the
torch-free top, io, model, runtime, api and cohort, train, evaluation, the command line), no
cycles, no argparse below the command line, no torch in the top and io, light package
``__init__`` files, the Slicer module's torch-free imports, and a README layout and
docs/architecture.md that name what is on disk.

Every module of ``sainr`` is parsed (not imported) and its imports, at module level and inside
functions alike, form the graph the assertions walk.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "SAINRSlicer" / "sainr"
TESTING = REPO / "Testing"
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
    submodule of its own package, or (``sainr.model``) only submodules that never import the
    package back (both checked in :func:`test_package_inits_are_light`)."""
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
        "sainr.thickness",  # the plan resolves the slice thickness
        "sainr.acquisition",
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


# --- layers -----------------------------------------------------------------------------------

#: The core's layers, lowest first, by the name below ``sainr``: a module may import modules of
#: its own layer and of the layers before it, never of a later one.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset(
        "errors request protocol geometry planning validation thickness intensity acquisition".split()
    ),
    frozenset({"io"}),
    frozenset({"model"}),
    frozenset({"runtime"}),
    frozenset({"api", "cohort"}),
    frozenset({"train"}),
    frozenset({"evaluation"}),
    frozenset({"cli"}),
)
TORCH_FREE_LAYERS = 2  # the top and io

#: Imports against the layer order, each with its reason. Each one must still exist, so an
#: entry cannot outlive the import it excuses.
UPWARD_IMPORTS: dict[tuple[str, str], str] = {
    # Torch-free helpers that training scores its validation with; the test below checks that
    # they still import no torch and nothing beyond the torch-free top.
    ("sainr.train.training", "sainr.evaluation.baselines"): "validation: interpolators",
    ("sainr.train.training", "sainr.evaluation.metrics"): "validation: PSNR",
    ("sainr.train.selfsup.synthesis", "sainr.evaluation.metrics"): "sanity checks: PSNR",
    # A checkpoint that records no trained thickness range gets the one its training config's
    # patch settings imply (PatchSpec.sampler), so loading weights reads that config.
    ("sainr.runtime.weights", "sainr.train.data"): "trained range of older checkpoints",
}


def layer_of(module: str) -> int | None:
    """Index in :data:`LAYERS` of a ``sainr`` module; None for the package itself and the entry
    points, which belong to no layer."""
    if module == "sainr" or module in ENTRY_POINTS:
        return None
    name = module.split(".")[1]
    return next((i for i, names in enumerate(LAYERS) if name in names), -1)


def test_every_module_belongs_to_a_layer():
    assert [m for m in GRAPH if layer_of(m) == -1] == []


def upward_imports(edges: dict[str, set[str]]) -> set[tuple[str, str]]:
    """Every (module, imported) of ``edges`` where the imported module's layer is a later one."""
    return {
        (module, imported)
        for module, imports in edges.items()
        for imported in imports
        if None not in (layer_of(module), layer_of(imported))
        and layer_of(imported) > layer_of(module)
    }


def test_imports_point_from_later_layers_to_earlier_ones():
    assert upward_imports(GRAPH) == set(UPWARD_IMPORTS)


def test_the_layer_check_sees_an_upward_import():
    edges = {
        "sainr.io.read": {"sainr.runtime.inference", "sainr.geometry"},
        "sainr.cohort": {"sainr.api"},
        "sainr.cli.reduce": {"sainr.api"},
    }
    assert upward_imports(edges) == {("sainr.io.read", "sainr.runtime.inference")}


def torch_imports(module: str) -> set[str]:
    """The torch modules ``module`` imports itself."""
    imports = imported_modules(CORE.parent / module_path(module), module)
    return {m for m in imports if m.split(".")[0] == "torch"}


def module_path(module: str) -> Path:
    """The file of a ``sainr`` module, relative to the folder holding ``sainr``."""
    relative = Path(*module.split("."))
    package = relative / "__init__.py"
    return package if (CORE.parent / package).is_file() else relative.with_suffix(".py")


def test_the_top_and_io_import_no_torch():
    torch_free = {m for m in GRAPH if layer_of(m) in range(TORCH_FREE_LAYERS)}
    assert {"sainr.geometry", "sainr.io.read", "sainr.io.outputs"} <= torch_free
    assert {m: torch_imports(m) for m in torch_free if torch_imports(m)} == {}
    assert {m for t in torch_free for m in GRAPH[t]} - {"sainr"} <= torch_free


def test_the_upward_imports_of_training_reach_only_torch_free_code():
    """Training and stage I score with :mod:`sainr.evaluation.metrics` and
    :mod:`sainr.evaluation.baselines`: numpy and SimpleITK on the torch-free top only."""
    scorers = {imported for (_, imported) in UPWARD_IMPORTS if imported.startswith("sainr.eval")}
    assert scorers == {"sainr.evaluation.metrics", "sainr.evaluation.baselines"}
    for scorer in scorers:
        assert torch_imports(scorer) == set()
        assert {layer_of(m) for m in GRAPH[scorer]} <= {0}


#: Package ``__init__`` files that import their own submodules, with the reason.
FACADES = {
    "sainr.model": "re-exports the network's classes (SAINR, ModelConfig, Queries...)",
    "sainr.runtime.backends": "the registry of precisions, typed by the one backend interface",
}
#: Imports a package's ``__init__`` may make beyond the torch-free top, with the reason.
INIT_IMPORTS = {
    ("sainr.cli", "sainr.runtime.heap"): "the program's entry tunes the allocator at start",
}


def heavy_imports(package: str) -> set[str]:
    """What the ``__init__`` of ``package`` should not import: its own submodules (unless it
    is one of the :data:`FACADES`) and modules beyond the torch-free top."""
    own = {m for m in GRAPH[package] if m.startswith(package + ".")}
    beyond = {m for m in GRAPH[package] - own if layer_of(m) is not None and layer_of(m) > 0}
    allowed = {m for p, m in INIT_IMPORTS if p == package}
    return (beyond - allowed) | (set() if package in FACADES else own)


def test_package_inits_are_light():
    """Importing a package runs no submodule of it (``sainr.io.read`` does not load the output
    writer) and nothing beyond the torch-free top; ``sainr`` itself imports nothing (its API is
    loaded lazily). A facade's submodules never import the facade back."""
    packages = {module_name(p) for p in CORE.rglob("__init__.py")}
    assert {"sainr.io", "sainr.runtime", "sainr.train.selfsup"} <= packages
    heavy = {package: sorted(heavy_imports(package)) for package in packages}
    assert {p: m for p, m in heavy.items() if m} == {}
    assert GRAPH["sainr"] == set()
    for facade in FACADES:
        inside = [m for m in GRAPH if m.startswith(facade + ".")]
        assert inside and [m for m in inside if facade in GRAPH[m]] == []


# --- the layout as documented -----------------------------------------------------------------


def layout_block() -> list[str]:
    """The lines of the code block under README's ``## Layout``."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1]
    return section.split("```\n", 2)[1].splitlines()


def named_under(block: list[str], folder: str) -> list[tuple[int, str]]:
    """(indent, name) of every name in the first column of the lines below the unindented
    line ``folder``: the lines indented by 2 or 4 spaces, up to the next unindented line."""
    start = next(i for i, line in enumerate(block) if line.split("  ")[0].strip() == folder)
    names = []
    for line in block[start + 1 :]:
        indent = len(line) - len(line.lstrip(" "))
        if indent == 0:
            break
        if indent in (2, 4):
            names += [(indent, name) for name in line.strip().split("  ")[0].split()]
    return names


def core_names_on_disk() -> tuple[set[str], set[str]]:
    """The top-level modules of ``sainr`` (no dunders) and its packages (``train/selfsup/``)."""
    modules = {p.stem for p in CORE.glob("*.py") if not p.stem.startswith("__")}
    packages = {f"{p.parent.relative_to(CORE).as_posix()}/" for p in CORE.rglob("*/__init__.py")}
    return modules, packages


def test_the_readme_layout_names_the_core_as_it_is_on_disk_in_layer_order():
    listed, parent = [], ""
    for indent, name in named_under(layout_block(), "SAINRSlicer/sainr/"):
        parent = name if indent == 2 else parent
        listed.append(f"{parent}{name}" if indent == 4 else name)
    modules, packages = core_names_on_disk()
    assert sorted(listed) == sorted(modules | packages)
    layers = [layer_of(f"sainr.{name.split('/')[0]}") for name in listed]
    assert layers == sorted(layers)


def test_the_readme_layout_names_every_test_folder():
    listed = {name for _, name in named_under(layout_block(), "Testing/")}
    on_disk = {f"{p.name}/" for p in TESTING.iterdir() if any(p.glob("test_*.py"))}
    assert listed == on_disk and "core/" in on_disk


def test_the_architecture_picture_names_every_layer_and_only_real_packages():
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    picture = text.split("```\n", 2)[1]
    words = set(re.findall(r"[a-z_]+/?", picture))
    modules, packages = core_names_on_disk()
    short = {name.rstrip("/").split("/")[-1] + "/" for name in packages}
    assert modules | short <= words
    assert {w for w in words if w.endswith("/")} <= short

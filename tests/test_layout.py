"""The package's layers (docs/layout.md): each imports only the ones below it, and no imports run in a circle.

Every import counts, the ones inside functions too: an import put off to keep ``--help``
fast is still a dependency. Read from the source with ``ast``; nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "native_megatron"

# Layer -> the layers it may import (docs/layout.md says the same in words). A layer is a top-level
# subpackage; a nested one (data/neardup, alignment/backends) is part of its parent's layer, where
# the module-cycle check below keeps its imports one way.
MAY_IMPORT = {
    "utils": set(),
    "ops": set(),
    "data": {"utils"},
    "alignment": {"data", "utils"},
    "training": {"data", "ops", "utils"},
    "convert": {"training", "data", "utils"},
    "evaluation": {"convert", "training", "data", "utils"},
    "launch": {"utils"},
    "cli": {"alignment", "convert", "data", "evaluation", "training", "utils"},
}
# native_megatron/__init__.py holds only the version; _C is the built csrc/ extension, part of ops.
ROOT_MODULES = {"native_megatron": None, "native_megatron._C": "ops"}


def layer_of(module: str) -> str | None:
    if module in ROOT_MODULES:
        return ROOT_MODULES[module]
    layer = module.split(".")[1]
    assert layer in MAY_IMPORT, f"{module} is in no layer: add {layer} to MAY_IMPORT and docs/layout.md"
    return layer


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path) -> list[tuple[str, int]]:
    """(imported module or name, line) for every import of ours in ``path``."""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    return imports_in(path.read_text(encoding="utf-8"), package)


def imports_in(source: str, package: tuple[str, ...]) -> list[tuple[str, int]]:
    """The imports of ours in ``source``, a module of ``package``: absolute or relative, anywhere in it."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = package[:len(package) - node.level + 1]
                base = ".".join([*here, base] if base else here)
            out += [(f"{base}.{a.name}", node.lineno) for a in node.names]
    return [(name, line) for name, line in out if name.split(".")[0] == "native_megatron"]


def resolve(name: str, known: dict[str, Path]) -> str:
    """``pkg.mod.func`` -> ``pkg.mod``: the longest prefix that is a module."""
    while name not in known and name not in ROOT_MODULES and "." in name:
        name = name.rpartition(".")[0]
    return name


def import_graph() -> dict[str, dict[str, str]]:
    """module -> {imported module: "file:line"}."""
    known = modules()
    graph = {}
    for module, path in known.items():
        edges = {}
        for name, line in imports(path):
            target = resolve(name, known)
            if target != module:
                edges.setdefault(target, f"{path.relative_to(PACKAGE.parent)}:{line}")
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, path)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [])):
            return cycle
    return None


def test_each_layer_imports_only_the_layers_below_it():
    wrong = []
    for module, edges in import_graph().items():
        src = layer_of(module)
        for target, where in edges.items():
            dst = layer_of(target)
            if src is not None and dst is not None and dst != src and dst not in MAY_IMPORT[src]:
                wrong.append(f"{where}: {src} imports {dst} ({target})")
    assert not wrong, "imports against the layers of docs/layout.md:\n" + "\n".join(wrong)


def test_the_layers_form_no_cycle():
    assert find_cycle(MAY_IMPORT) is None


def test_no_modules_import_each_other_in_a_circle():
    graph = {module: set(edges) for module, edges in import_graph().items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_checks_see_a_cycle_a_lazy_import_and_a_relative_one():
    # The checks above would pass on a graph they cannot read; this shows they read one.
    assert find_cycle({"data": {"utils"}, "utils": {"training"}, "training": {"data"}}) == \
        ["data", "utils", "training", "data"]
    source = "import os\ndef f():\n    from native_megatron.training import trainer\nfrom . import model\n"
    assert sorted(imports_in(source, ("native_megatron", "training"))) == \
        [("native_megatron.training.model", 4), ("native_megatron.training.trainer", 3)]
    assert layer_of("native_megatron.alignment.backends.hf") == "alignment"
    assert layer_of("native_megatron._C") == "ops"


def test_no_script_edits_sys_path_and_the_data_benchmarks_start():
    """Issue 28 item 18: scripts import the installed package (or PYTHONPATH), never a path they insert."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in sorted([*root.glob("benchmarks/*.py"), *root.glob("tools/*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", "") == "sys":
                offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not offenders
    for script in ("bench_dedup.py", "bench_prepare_steps.py"):
        out = subprocess.run([sys.executable, str(root / "benchmarks" / script), "--help"], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0 and "usage:" in out.stdout, out.stderr[-2000:]

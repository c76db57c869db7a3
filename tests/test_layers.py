"""edge's shape, read from the code: every module's imports (those inside functions too) go to its own
layer or one below, never up, and no group of modules imports each other (no cycle). The layers, lowest
first, are `LAYERS`; a new subpackage must be placed there before its first import can pass."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"edge": REPO / "edge", "edge.export": REPO / "export", "edge.bench": REPO / "bench"}
# lowest first; a module may import its own layer (without a cycle) and any layer below it
LAYERS = ("edge.core", "edge.codec", "edge.data", "edge.models", "edge.io", "edge.inference", "edge.train",
          "edge.export", "edge.prune", "edge.bench", "edge.workflows", "edge.api", "edge.cli")
TOP = {"edge": "edge.api", "edge.__main__": "edge.cli"}  # the package's face sits with what it re-exports


def _modules() -> dict[str, Path]:
    modules = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if package == "edge" and parts[0] in ("export", "bench"):
                continue
            name = ".".join((package, *parts))
            modules[name.removesuffix(".__init__")] = path
    return modules


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    """The edge modules ``module`` imports, wherever the import statement is."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            source = f"{base}.{node.module}" if node.level and node.module else (base if node.level else node.module)
            targets = [source, *(f"{source}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {m for t in targets if (m := _resolve(t)) and m != module and m != "edge"}
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def layer(module: str) -> int:
    module = TOP.get(module, module)
    for index, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return index
    raise AssertionError(f"{module} is in no layer: place its subpackage in LAYERS")


def test_every_module_is_in_a_layer():
    for module in MODULES:
        layer(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_or_sideways_never_up(module):
    upward = sorted(m for m in GRAPH[module] if layer(m) > layer(module))
    assert not upward, f"{module} (layer {LAYERS[layer(module)]}) imports from above: {upward}"


def _cycles() -> list[list[str]]:
    """Groups of modules that import each other (strongly connected components of two or more)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return groups


def test_no_import_cycles():
    assert _cycles() == []


def test_the_library_never_imports_tests_or_studies():
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.split(".")[0] in ("tests", "studies", "conftest", "synthetic")], module


def test_the_checker_sees_an_upward_import():
    """The rules above are not vacuous: the layers of real edges differ, and an edge up is caught."""
    assert layer("edge.core.files") < layer("edge.cli")
    assert "edge.core.errors" in GRAPH["edge.io.checkpoints"]
    assert any(layer(m) < layer("edge.cli") for m in GRAPH["edge.cli"])


MAX_LEVELS = 12  # the longest downward chain of imports: a deeper one is a sign a module is in the wrong layer


def _levels(module: str, seen: dict[str, int]) -> int:
    if module not in seen:
        seen[module] = 1 + max((_levels(m, seen) for m in GRAPH[module]), default=0)
    return seen[module]


def test_the_longest_import_chain_is_at_most_max_levels():
    seen: dict[str, int] = {}
    deepest = max(MODULES, key=lambda m: _levels(m, seen))
    chain = [deepest]
    while GRAPH[chain[-1]]:
        chain.append(max(GRAPH[chain[-1]], key=lambda m: seen[m]))
    assert len(chain) == seen[deepest] <= MAX_LEVELS, " -> ".join(chain)

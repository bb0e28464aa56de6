"""The house's shape, read from the code: imports point one way, no cycles, no drawers.

The layer order (docs/architecture.md)::

    contract <- core <- monitoring <- scoring <- io <- privacy <- offline <- settings <- flow <- cli

A module may import its own layer and the layers to its left, never one to its
right. ``models/`` is pure torch and imports nothing from ``pipelines/``. Every
import counts, also one inside a function or under ``TYPE_CHECKING``: a lazy
import that runs against the order is the same dependency, only hidden.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS: tuple[str, ...] = (
    "contract",
    "core",
    "monitoring",
    "scoring",
    "io",
    "privacy",
    "offline",
    "settings",
    "flow",
    "cli",
)
MAX_LINES = 600
#: Bytewax is the engine behind flow/ (and the source/sink contracts of io/); nothing else sees it.
BYTEWAX_ALLOWED = ("pipelines.flow", "pipelines.io")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> list[Path]:
    return sorted(p for top in ("pipelines", "models") for p in (ROOT / top).rglob("*.py"))


MODULES: dict[str, Path] = {module_name(p): p for p in source_files()}


def imports_of(path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import in the file, resolved to a module of this tree when it is one."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            for a in node.names:
                sub = f"{mod}.{a.name}"
                yield node.lineno, sub if sub in MODULES else mod


def internal_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        for _, target in imports_of(path):
            # `import a.b.c` depends on a.b.c (and its packages); keep the deepest module of this tree
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != mod:
                graph[mod].add(target)
    return graph


def layer_of(mod: str) -> int | None:
    parts = mod.split(".")
    if parts[0] != "pipelines" or len(parts) < 2:
        return None
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def test_every_pipelines_module_belongs_to_a_layer() -> None:
    stray = [m for m in MODULES if m.startswith("pipelines.") and layer_of(m) is None]
    assert not stray, f"modules outside every layer (place them in a subpackage of {LAYERS}): {stray}"


def test_no_import_cycles() -> None:
    graph = internal_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_imports_follow_the_layer_order() -> None:
    wrong = []
    for mod, path in MODULES.items():
        mine = layer_of(mod)
        for line, target in imports_of(path):
            rel = f"{path.relative_to(ROOT)}:{line}"
            if mod.startswith("models") and target.split(".")[0] == "pipelines":
                wrong.append(f"{rel}: models/ imports {target} (models/ is pure torch)")
            theirs = layer_of(target)
            if mine is not None and theirs is not None and theirs > mine:
                wrong.append(f"{rel}: {LAYERS[mine]} imports {target} ({LAYERS[theirs]}, a higher layer)")
            if target.split(".")[0] == "bytewax" and not mod.startswith(BYTEWAX_ALLOWED):
                wrong.append(f"{rel}: imports {target}; Bytewax stays behind {BYTEWAX_ALLOWED}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_module_is_at_most_600_lines(mod: str) -> None:
    n = len(MODULES[mod].read_text().splitlines())
    assert n <= MAX_LINES, f"{MODULES[mod].relative_to(ROOT)} has {n} lines: split it by concept"


def test_each_subpackage_states_its_contract_and_public_names() -> None:
    missing = []
    for mod, path in MODULES.items():
        if path.name != "__init__.py" or mod in ("pipelines", "models"):
            continue
        tree = ast.parse(path.read_text())
        doc = ast.get_docstring(tree)
        has_all = any(
            isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)
            for n in tree.body
        )
        if not doc or len(doc) < 80 or not has_all:
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"subpackages without a contract docstring and __all__: {missing}"


def test_dev_broker_is_outside_the_runtime_packages() -> None:
    offenders = [m for m, p in MODULES.items() if "TansuBroker" in p.read_text() or "calfkit" in p.read_text()]
    assert not offenders, f"the dev-only broker is reachable from the runtime packages: {offenders}"


def test_graph_reader_sees_known_edges() -> None:
    """The checks above are only as good as the graph: it must see real edges, lazy ones included."""
    graph = internal_graph()
    assert "pipelines.core.state" in graph["pipelines.core.features"]
    assert any(t.startswith("pipelines.contract") for t in graph["pipelines.core.state"])
    assert len(MODULES) > 40

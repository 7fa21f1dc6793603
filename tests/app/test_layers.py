"""The architecture's floors, checked on every module's imports.

Each package may import only packages on floors below its own (and itself). Every import is
counted, including those inside functions, because a function-local import is how a cycle
hides from the import graph. No module-level cycle is allowed either.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# package -> floor; a package may import packages on a strictly lower floor.
FLOORS = {
    "gateway": 0,  # what every area shares
    "devices": 1,  # the device catalog and signal models
    "cloud": 2,
    "deploy": 2,  # bundle format, signing and the operator's deploy tools
    "firmware_sim": 2,
    "edge": 3,  # the agent; its supervisor verifies bundles with deploy's format
    "app": 4,  # the application shell: root CLI, demo, chaos, verify
}
SOURCE_DIRS = {name: ROOT / name for name in FLOORS}
SOURCE_DIRS["firmware_sim"] = ROOT / "firmware-sim" / "firmware_sim"


def module_files() -> Iterator[tuple[str, Path]]:
    for package, folder in SOURCE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [package, *rel.parts]
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(parts), path


def imports_of(module: str, path: Path) -> set[str]:
    """Every project module `module` imports, by its full dotted name."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in FLOORS}


def graph() -> dict[str, set[str]]:
    modules = dict(module_files())
    edges: dict[str, set[str]] = {}
    for module, path in modules.items():
        # `from pkg import name` names a module only when pkg.name is one.
        edges[module] = {m for m in imports_of(module, path) if m in modules and m != module}
    return edges


def test_no_import_runs_up_a_floor() -> None:
    wrong = [
        f"{module} imports {target}"
        for module, targets in graph().items()
        for target in targets
        if (src := module.split(".")[0]) != (dst := target.split(".")[0])
        and FLOORS[dst] >= FLOORS[src]
    ]
    assert wrong == []


def test_gateway_imports_no_area() -> None:
    edges = graph()
    assert all(
        target.startswith("gateway")
        for module, targets in edges.items()
        if module.startswith("gateway")
        for target in targets
    )


def _cycle(edges: dict[str, set[str]]) -> list[str]:
    """One import cycle among the modules, or [] (iterative DFS, three colours)."""
    colour = dict.fromkeys(edges, 0)
    for start in edges:
        if colour[start]:
            continue
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(edges[start])))]
        colour[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                colour[node] = 2
                stack.pop()
            elif colour.get(nxt) == 1:
                path = [n for n, _ in stack]
                return [*path[path.index(nxt) :], nxt]
            elif colour.get(nxt) == 0:
                colour[nxt] = 1
                stack.append((nxt, iter(sorted(edges[nxt]))))
    return []


def test_the_import_graph_has_no_cycle() -> None:
    assert _cycle(graph()) == []


def test_the_checker_sees_a_cycle_and_an_upward_import() -> None:
    """The checks above can fail: a made-up graph with both faults is caught."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    edges = graph()
    assert "app.cli" in edges and "edge.cli" in edges["app.cli"]

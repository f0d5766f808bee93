"""workers/ stays navigable: no import circle (every import counts, also under `if TYPE_CHECKING:` and inside
functions), no module over 300 lines."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO


def module_name(path: Path, base: Path) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """The workers.* modules `path` imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from workers.engine import reclaim` imports the module workers.engine.reclaim.
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(n for n in names if n in modules)
    found.discard(name)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same tree it imports (only written imports count)."""
    paths = sorted(root.rglob("*.py"))
    names = {p: module_name(p, root.parent) for p in paths}
    modules = set(names.values())
    return {names[p]: imports_of(p, names[p], modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the list of modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_workers_has_no_import_circle() -> None:
    cycle = find_cycle(import_graph(REPO / "workers"))
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_sees_a_circle_hidden_under_type_checking(tmp_path: Path) -> None:
    # The shape workers/pool.py and workers/reclaim.py had: a runtime import one way, a
    # TYPE_CHECKING import back.
    pkg = tmp_path / "workers"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "pool.py").write_text("from workers import reclaim\n")
    (pkg / "reclaim.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from workers.pool import Pool\n")
    assert find_cycle(import_graph(pkg)) == ["workers.pool", "workers.reclaim", "workers.pool"]


def test_no_module_in_workers_is_over_300_lines() -> None:
    long = {str(p.relative_to(REPO)): n for p in sorted((REPO / "workers").rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > 300}
    assert long == {}, "split these by concept"

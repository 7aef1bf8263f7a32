"""The layers read bottom-up: no module imports one that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (relative or absolute)."""
    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).glob("*.py")):
        name = path.stem
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1 and node.module:
                    targets.add(node.module.split(".")[0])
                elif node.module and node.module.startswith(f"{package}."):
                    targets.add(node.module.split(".")[1])
        graph[name] = targets - {name}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        if state.get(node) == 1:
            return [*trail[trail.index(node) :], node]
        if state.get(node) == 2:
            return None
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            found = visit(target, [*trail, node])
            if found:
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        found = visit(start, [])
        if found:
            return found
    return None


@pytest.mark.parametrize("package", ["consent_middleware", "dev_tenant"])
def test_no_import_cycles(package: str) -> None:
    graph = import_graph(package)
    assert len(graph) > 5
    assert cycle(graph) is None, f"import cycle: {' -> '.join(cycle(graph) or [])}"


def test_the_protocol_layer_knows_no_session() -> None:
    graph = import_graph("consent_middleware")
    for module in ("_jose", "_oidc", "_discovery", "_tokens", "_management"):
        assert not graph[module] & {"_session", "_middleware", "_routes", "_engine"}, module


def test_a_cycle_would_be_found() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None

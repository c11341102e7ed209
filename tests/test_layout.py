"""Issue 25: no import cycle among the modules of src/sparsedd (imports inside functions and under
TYPE_CHECKING counted), and no function over 60 lines."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"



def modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "sparsedd").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project's modules ``name`` imports anywhere in its file (module level, functions, TYPE_CHECKING)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                if node.level else (node.module or "")
            targets = [f"{base}.{a.name}" for a in node.names]
            targets = [t if t in known else base for t in targets]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for t in targets:
            while t not in known and "." in t:
                t = t.rsplit(".", 1)[0]
            if t in known and t != name:
                out.add(t)
    return out


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    # the finder sees imports inside functions and relative imports of packages
    assert graph["sparsedd.training.planner"] >= {"sparsedd.training.execution", "sparsedd.training.loop"}
    assert "sparsedd.experiments.distance" in graph["sparsedd.store.migrations"]
    assert graph["sparsedd.analysis.runner"] >= {"sparsedd.analysis.kinds"}
    assert [sorted(c) for c in cycles(graph)] == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_function_over_60_lines():
    over = {}
    for path in (SRC / "sparsedd").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                over[f"{path.relative_to(SRC).as_posix()}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert over == {}


def test_every_test_a_tier_names_exists():
    """The tier tables in tests/conftest.py name tests by file and function: a renamed test must not
    silently fall out of its tier."""
    from conftest import TIERS

    tests = Path(__file__).resolve().parent
    for marker, nodes in TIERS.items():
        for node in nodes:
            file, name = node.split("::")
            names = {n.name for n in ast.parse((tests / file).read_text()).body if isinstance(n, ast.FunctionDef)}
            assert name in names, (marker, node)

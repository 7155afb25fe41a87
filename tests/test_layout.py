"""The shape of the code: the library and the nodes import in one direction only (no module
imports one that imports it back, counting imports inside functions), and no class grows past
about 150 lines."""
import ast

import pytest

from support import REPO

PACKAGES = ["imgen_core", "nodes"]
MAX_CLASS_LINES = 150


def imports_of(package: str) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports, anywhere in its body."""
    modules = {p.stem: p for p in (REPO / package).glob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def circle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle as a path of module names, or [] when there is none."""
    state: dict[str, str] = {}

    def visit(module, path):
        state[module] = "open"
        for dep in sorted(graph[module]):
            if state.get(dep) == "open":
                return path[path.index(dep):] + [dep] if dep in path else path + [dep]
            if dep not in state:
                found = visit(dep, path + [dep])
                if found:
                    return found
        state[module] = "done"
        return []

    for module in sorted(graph):
        if module not in state:
            found = visit(module, [module])
            if found:
                return found
    return []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_imports_one_that_imports_it_back(package):
    graph = imports_of(package)
    assert len(graph) > 5
    assert circle(graph) == [], " -> ".join(circle(graph))


def test_the_circle_finder_finds_a_circle():
    assert circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert circle({"a": {"b"}, "b": set()}) == []


def test_no_class_is_longer_than_about_150_lines():
    long = []
    for package in PACKAGES:
        for path in (REPO / package).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                    long.append(f"{package}/{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long == []

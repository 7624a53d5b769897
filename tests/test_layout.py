"""The engine's layout: no import cycle among the modules of harness/, latency/ and plots/,
imports inside functions counted."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "latency", "plots")


def first_party_modules() -> dict[str, Path]:
    """'harness.train' -> its file, 'plots' -> plots/__init__.py, for every package of PACKAGES."""
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).glob("*.py"):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def imports_of(path: Path, modules: dict) -> set[str]:
    """The first-party modules a module imports anywhere in it (top level or inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            for alias in node.names:   # `from harness import store` names a module, `from plots import f` a function
                child = f"{node.module}.{alias.name}"
                names.add(child if child in modules else node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] in PACKAGES)
    return names & set(modules)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph, as the modules along it, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_in_the_engine():
    modules = first_party_modules()
    assert {"harness.train", "latency.run", "plots.latency_costs"} <= set(modules)
    graph = {name: imports_of(path, modules) - {name} for name, path in modules.items()}
    assert "latency.spec" in graph["latency.run"] and "harness.suite" in graph["harness.cli"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_readme_is_a_front_door():
    readme = ROOT / "README.md"
    assert len(readme.read_bytes()) <= 12_000, "README.md is the front door: findings go to results/<suite>/README.md"

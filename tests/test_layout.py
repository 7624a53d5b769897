"""The engine's layout: no import cycle among harness/ modules, imports inside functions counted."""
import ast
from pathlib import Path

HARNESS = Path(__file__).resolve().parent.parent / "harness"


def harness_imports(path: Path) -> set[str]:
    """The harness modules a module imports anywhere in it (top level or inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "harness":
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("harness."):
            names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("harness."))
    return names


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
    modules = {p.stem: p for p in HARNESS.glob("*.py")} | {p.name: p / "__init__.py" for p in HARNESS.iterdir()
                                                            if (p / "__init__.py").exists()}
    graph = {name: {m for m in harness_imports(path) if m in modules and m != name} for name, path in modules.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_readme_is_a_front_door():
    readme = HARNESS.parent / "README.md"
    assert len(readme.read_bytes()) <= 12_000, "README.md is the front door: findings go to results/<suite>/README.md"

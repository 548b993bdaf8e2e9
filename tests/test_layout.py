"""The layout rules of the code: short modules and functions, and no import cycles (the import
direction between folders is checked by the import-linter contracts in pyproject.toml, which
`make test` runs)."""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = [ROOT / "grasp_deploy", ROOT / "serving", ROOT / "bench"]
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 300, 60


def test_modules_and_functions_stay_short():
    too_long = []
    for path in sorted(p for folder in CODE for p in folder.rglob("*.py")):
        source = path.read_text()
        lines = len(source.splitlines())
        name = path.relative_to(ROOT)
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}:{node.lineno} {node.name}(): {length} lines")
    assert not too_long, "split these:\n" + "\n".join(too_long)


def _import_cycles() -> list[list[str]]:
    """Groups of modules that import each other, directly or around a circle (Tarjan's strongly
    connected components over the import graph, type-checking imports included)."""
    import grimp

    sys.path.insert(0, str(ROOT))
    try:
        graph = grimp.build_graph("grasp_deploy", "grasp_serving", "bench")
    finally:
        sys.path.remove(str(ROOT))
    mods = sorted(m for m in graph.modules if m.split(".")[0] in
                  ("grasp_deploy", "grasp_serving", "bench"))
    known = set(mods)
    edges = {m: sorted(b for b in graph.find_modules_directly_imported_by(m)
                       if b in known and b != m) for m in mods}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in mods:
        if v not in index:
            visit(v)
    return cycles


def test_no_modules_import_each_other():
    assert _import_cycles() == []

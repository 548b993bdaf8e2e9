"""The layout rules of the package: short modules and functions (the import direction is
checked by the import-linter contracts in pyproject.toml, which `make test` runs)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "grasp_deploy"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 300, 60


def test_modules_and_functions_stay_short():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        lines = len(source.splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(PACKAGE)}: {lines} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}(): "
                                    f"{length} lines")
    assert not too_long, "split these:\n" + "\n".join(too_long)

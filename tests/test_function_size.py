"""Functions stay readable where the inversion and evaluation logic lives (issue: the
fitting and tracking monoliths): none over 80 lines in these packages."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fitting", "tracking", "inversion", "evaluation", "rendering")
MAX_LINES = 80


@pytest.mark.parametrize("package", PACKAGES)
def test_no_function_over_80_lines(package):
    long = []
    for path in sorted((ROOT / "gphm" / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    assert not long, "functions over 80 lines: " + ", ".join(long)

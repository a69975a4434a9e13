"""Flows only orchestrate: no function in ``flows/`` is longer than 40 lines of code.

Docstrings do not count (a flow's parameters are documented where Prefect shows them); blank
lines and comments do. A longer function is doing a task's work and belongs in ``tasks/`` or
the core.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 40


def long_functions(source: str, limit: int = MAX_LINES) -> list[tuple[str, int]]:
    """(name, lines of code) of every function in ``source`` longer than ``limit``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        lines = node.end_lineno - node.lineno + 1
        first = node.body[0]
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                and isinstance(first.value.value, str):
            lines -= first.end_lineno - first.lineno + 1
        if lines > limit:
            found.append((node.name, lines))
    return found


def test_no_function_in_flows_is_over_40_lines_of_code():
    too_long = {
        f"{path.relative_to(ROOT)}:{name}": lines
        for path in sorted((ROOT / "flows").glob("*.py"))
        for name, lines in long_functions(path.read_text())
    }
    assert not too_long, f"functions in flows/ over {MAX_LINES} lines of code: {too_long}"


def test_the_count_skips_the_docstring_and_finds_a_long_body():
    body = "\n".join(f"    x{k} = {k}" for k in range(41))
    doc = '    """' + "\n".join(["doc"] * 30) + '"""\n'
    assert long_functions(f"def f():\n{doc}{body}\n") == [("f", 42)]
    assert long_functions(f"def g():\n{doc}    return 1\n") == []

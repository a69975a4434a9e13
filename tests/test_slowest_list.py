"""conftest's SLOWEST list names tests that exist (a renamed test would silently lose its place)."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _slowest() -> list[str]:
    """The SLOWEST list, read from conftest's source (a ``tests`` package elsewhere may shadow it)."""
    tree = ast.parse((ROOT / "tests" / "conftest.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SLOWEST" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("tests/conftest.py has no SLOWEST list")


def test_every_slowest_entry_names_a_test_function_in_its_file():
    missing = []
    entries = _slowest()
    assert entries
    for entry in entries:
        path, name = entry.split("::")
        source = (ROOT / path).read_text() if (ROOT / path).is_file() else ""
        if not re.search(rf"^(async )?def {re.escape(name)}\(", source, flags=re.MULTILINE):
            missing.append(entry)
    assert not missing, f"SLOWEST names tests that do not exist: {missing}"

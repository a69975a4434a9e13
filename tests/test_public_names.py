"""A function or class that another module uses has a public name: no module imports another's ``_name``.

A leading underscore says "only this module uses it"; a shared name without one can be found,
documented and changed with its callers in view.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cli", "flows", "benchmarks", "tasks", "tangentlab", "db", "scripts")


def private_imports(source: str, own_packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """``module._name`` for every private name of a product module that ``source`` imports
    (``from m import _name``) or reads off an imported product module (``m._name``)."""
    tree = ast.parse(source)
    found, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] in own_packages:
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{node.module}.{alias.name}")
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in own_packages:
                    aliases[alias.asname or alias.name] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in aliases and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            found.append(f"{aliases[node.value.id]}.{node.attr}")
    return found


def test_no_module_uses_a_private_name_of_another():
    hits = {
        str(path.relative_to(ROOT)): names
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if (names := private_imports(path.read_text()))
    }
    assert not hits, f"private names used across modules (make them public): {hits}"


def test_the_check_finds_imported_and_attribute_private_names():
    source = ("from tangentlab.acquisition.posterior import _chol, solve\n"
              "from tangentlab.exploration import engines as em\n"
              "import benchmarks.analysis\n"
              "class C(em._Split): pass\n"
              "x = benchmarks.analysis\n"
              "from numpy import _private_but_not_ours\n"
              "from tangentlab import __version__\n")
    assert private_imports(source) == ["tangentlab.acquisition.posterior._chol",
                                       "tangentlab.exploration.engines._Split"]

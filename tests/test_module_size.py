"""Product modules stay readable: none of tangentlab/, flows/, cli/, tasks/ or db/ grows far past
400 lines. A module that does is doing two things; split it by concern (as config/sections.py,
safe_load.py and the flows' rendering modules were split off)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tangentlab", "flows", "cli", "tasks", "db")
MAX_LINES = 450  # "about 400": a module a little past it is fine, one past this is not


def long_modules(limit: int = MAX_LINES) -> dict[str, int]:
    sizes = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            lines = len(path.read_text().splitlines())
            if lines > limit:
                sizes[str(path.relative_to(ROOT))] = lines
    return sizes


def test_no_product_module_is_far_past_400_lines():
    assert long_modules() == {}, f"modules over {MAX_LINES} lines (split them by concern): {long_modules()}"


def test_the_count_finds_a_long_module():
    assert long_modules(limit=300)  # several product modules are longer than 300 lines

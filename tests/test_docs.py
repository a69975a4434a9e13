"""The manual covers the product: every command is in docs/running.md, every benchmark page is
reachable from docs/benchmarks/README.md with its result's date and commit, every module is on
the architecture page, and no link leads nowhere."""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

import pytest

from cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _commands(parser: argparse.ArgumentParser) -> list[str]:
    """Every ``tangentlab`` subcommand, with the choices of a command that takes a kind
    (``benchmark replay``)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands = []
    for name, command in sub.choices.items():
        kinds = [a for a in command._actions if a.choices and not a.option_strings]
        commands += [f"{name} {kind}" for kind in kinds[0].choices] if kinds else [name]
    return commands


def test_every_command_is_shown_in_the_running_guide():
    block = re.search(r"## Commands\n\n```bash\n(.*?)```", (ROOT / "docs/running.md").read_text(), re.S)
    shown = block.group(1)
    missing = [c for c in _commands(build_parser()) if f"tangentlab {c}" not in shown]
    assert not missing, f"commands missing from docs/running.md's command list: {missing}"
    assert "benchmark replay" in _commands(build_parser())


def _linked(page: Path) -> set[Path]:
    return {(page.parent / target).resolve() for target in LINK.findall(page.read_text())
            if not re.match(r"[a-z]+:", target)}


def _result_table(page: Path) -> bool:
    """A table a benchmark run writes beside its JSON (``<name>.md``), not a page of prose."""
    return page.read_text().startswith("|") and page.with_suffix(".json").exists()


def test_every_benchmark_page_is_reachable_from_the_benchmarks_index():
    """A page is linked from the index or from a page it links; a result table is reached
    through its JSON."""
    folder = ROOT / "docs" / "benchmarks"
    seen, todo = set(), [(folder / "README.md").resolve()]
    while todo:
        page = todo.pop()
        if page in seen or not page.is_file():
            continue
        seen.add(page)
        if page.suffix == ".md":
            todo += _linked(page)
    pages = {p.resolve() for p in folder.rglob("*.md")}
    unreachable = sorted(str(p.relative_to(ROOT)) for p in pages - seen
                         if not (_result_table(p) and p.with_suffix(".json") in seen))
    assert not unreachable, f"benchmark pages no link leads to from docs/benchmarks/README.md: {unreachable}"


def test_every_link_of_the_manual_leads_to_a_file():
    pages = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *(ROOT / "docs").rglob("*.md")]
    broken = [f"{page.relative_to(ROOT)} -> {target}" for page in pages
              for target in LINK.findall(page.read_text())
              if not re.match(r"[a-z]+:", target) and not (page.parent / target).exists()]
    assert not broken, f"links to missing files: {broken}"


def test_every_benchmark_page_has_an_index_row_with_its_result_date_and_commit():
    folder = ROOT / "docs" / "benchmarks"
    index = (folder / "README.md").read_text()
    rows = {LINK.search(line).group(1): line for line in index.splitlines()
            if line.startswith("| [") and LINK.search(line)}
    pages = [p.name for p in folder.glob("*.md") if p.name != "README.md" and not _result_table(p)]
    assert set(pages) <= set(rows), f"benchmark pages without an index row: {sorted(set(pages) - set(rows))}"
    for page in pages:
        measured = rows[page].rstrip(" |").rsplit("|", 1)[-1]
        assert re.search(r"\b20\d\d-\d\d-\d\d\b", measured) and re.search(r"\b[0-9a-f]{7}\b", measured), \
            f"{page}: the index row gives no date and commit of its result"


def test_the_architecture_page_names_every_module():
    text = (ROOT / "docs" / "reference" / "architecture.md").read_text()
    listing = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True)
    if listing.returncode != 0:
        pytest.skip("not a git checkout")
    modules = [Path(name) for name in listing.stdout.split()
               if not name.startswith(("tests/", "db/migrations/versions/"))
               and Path(name).name not in ("__init__.py", "__main__.py")]
    missing = [str(m) for m in modules if not re.search(rf"\b{re.escape(m.name)}|\b{m.stem}\b", text)]
    assert not missing, f"modules docs/reference/architecture.md does not name: {missing}"

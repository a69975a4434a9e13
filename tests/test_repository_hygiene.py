"""Tracked files describe the product, not how it was built, and name no machine's paths.

History belongs in CHANGELOG.md (by date). A path of a development machine in a doc, a
config or a stored result means nothing on another machine: write paths relative to the
repository or to the data root (TANGENTLAB_DATA).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Spelled so that this file does not match itself.
HISTORY = re.compile("|".join([
    r"\bsessions?[\s_-]*\d",
    r"\bissues?[\s_-]*#?\d",
    r"\bhelp" + r"ers?\b",
    r"\bthis\s+" + r"task\b",
]), re.IGNORECASE)
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|tmp|root|home)/")


def _tracked_text_files() -> list[Path]:
    try:
        listing = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                                 check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = []
    for name in listing.stdout.decode().split("\0"):
        path = ROOT / name
        if name and path.is_file():
            data = path.read_bytes()
            if b"\0" not in data[:8192]:  # binary files (images, models) hold no prose
                files.append(path)
    return files


def _hits(pattern: re.Pattern) -> list[str]:
    hits = []
    for path in _tracked_text_files():
        text = path.read_text(errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            match = pattern.search(line)
            if match:
                hits.append(f"{path.relative_to(ROOT)}:{number}: {match.group(0)!r}")
    return hits


def test_no_tracked_file_speaks_of_the_development_history():
    hits = _hits(HISTORY)
    assert not hits, "history in tracked files (it belongs in CHANGELOG.md):\n" + "\n".join(hits)


def test_no_tracked_file_names_an_absolute_path_of_a_machine():
    hits = _hits(MACHINE_PATH)
    assert not hits, "machine paths in tracked files:\n" + "\n".join(hits)


def test_the_patterns_find_what_they_are_for():
    # the examples are split so that this file holds none of them
    for text in ("as measured in Sess" + "ion 7", "sess" + "ions 4-6", "the sess" + "ion-7 command", "see iss" + "ue #14",
                 "iss" + "ue 13 leftover", "the second help" + "er",
                 "not available to this " + "task"):
        assert HISTORY.search(text), text
    for text in ("the session's Prefect server", "session_scope(engine)", "an issue with SCF"):
        assert not HISTORY.search(text), text
    for text in ("/wo" + "rk/shared/data", "PGDATA=/t" + "mp/x", "/ro" + "ot/.cache",
                 "cd /ho" + "me/me"):
        assert MACHINE_PATH.search(text), text
    for text in ("tangentlab/wo" + "rk/x", "docs/t" + "mp/y", "~/.cache",
                 "http://example.org/ho" + "me/x"):
        assert not MACHINE_PATH.search(text), text

"""The asynchronous-rounds figure is drawn from the stored benchmark results."""

import json
from pathlib import Path

import pytest

from benchmarks.async_figure import arms, main

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "async-schedule.json"


def test_the_figure_is_drawn_from_the_stored_results(tmp_path):
    results = json.loads(RESULTS.read_text())
    runs = arms(results)
    assert {"sync", "async", "async capped"} <= set(runs)
    assert all(run["schedule"] == "sync" for run in runs["sync"])
    out = main([str(RESULTS), "--out", str(tmp_path / "f.png")])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_file_without_runs_is_refused_with_an_error_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"preset": "x"}))
    with pytest.raises(SystemExit, match="^error: .*not an async-schedule result file"):
        main([str(bad), "--out", str(tmp_path / "f.png")])

"""Merging a replay benchmark run in parts gives the table of running it at once."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from benchmarks.merge import MergeError, main, merge

BENCHMARKS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
STORED = BENCHMARKS / "acac-pool1000-finetune-defaults.json"


def _split(results: dict, seeds: set[int]) -> dict:
    part = copy.deepcopy(results)
    part["campaigns"] = {n: c for n, c in part["campaigns"].items() if c["seed"] in seeds}
    keep = [k for k, seed in enumerate(results["spec"]["seeds"]) if seed in seeds]
    for entry in part["calibration"].values():
        for key in ("per_seed_force", "per_seed_energy"):
            if key in entry:
                entry[key] = [entry[key][k] for k in keep]
    part["spec"]["seeds"] = sorted(seeds)
    return part


def test_two_parts_give_the_table_of_all_seeds_summarised_together(tmp_path, capsys):
    whole = json.loads(STORED.read_text())
    assert len(whole["spec"]["seeds"]) == 5
    a, b = _split(whole, {0, 1}), _split(whole, {2, 3, 4})
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    out = tmp_path / "out"
    assert main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(out)]) == 0
    merged = json.loads((out / f"{whole['name']}.json").read_text())
    assert merged["table"] == whole["table"]
    assert merged["spec"]["seeds"] == [0, 1, 2, 3, 4]
    calibration = merged["calibration"]["default"]
    assert calibration["per_seed_force"] == whole["calibration"]["default"]["per_seed_force"]
    assert merged["acquisition_time"]["default"]["acquire_s_total_mean"] == pytest.approx(
        whole["acquisition_time"]["default"]["acquire_s_total_mean"]
    )
    assert [p["seeds"] for p in merged["parts"]] == [[0, 1], [2, 3, 4]]
    # a part alone has a different table: the merge is what makes it equal
    assert merge([a])["table"] != whole["table"]


def test_parts_of_different_data_or_disagreeing_campaigns_are_refused(tmp_path, capsys):
    whole = json.loads(STORED.read_text())
    a, b = _split(whole, {0, 1}), _split(whole, {2, 3, 4})
    other_data = copy.deepcopy(b)
    other_data["manifest"]["pool_file_sha256"] = "0" * 64
    with pytest.raises(MergeError, match="pool_file_sha256"):
        merge([a, other_data])
    clash = _split(whole, {1, 2})
    name = next(n for n, c in clash["campaigns"].items() if c["seed"] == 1)
    clash["campaigns"][name]["curve"]["force"][-1] += 1.0
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "clash.json").write_text(json.dumps(clash))
    out = tmp_path / "out"
    assert main([str(tmp_path / "a.json"), str(tmp_path / "clash.json"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: clash.json: campaign ") and name in err
    assert not out.exists()

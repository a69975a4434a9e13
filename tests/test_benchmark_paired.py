"""benchmarks.paired: seed-paired differences against any reference, across result files."""

from __future__ import annotations

import json

import pytest

from benchmarks.paired import campaigns, differences, main


def _result(path, curves):
    """A replay result with one campaign per (method, seed, final force, final energy)."""
    path.write_text(json.dumps({"campaigns": {
        f"{m}-{s}": {"method": m, "seed": s,
                     "curve": {"labels": [6, 12], "force": [500.0, f], "energy": [90.0, e]}}
        for m, s, f, e in curves}}))
    return path


def test_differences_pair_by_seed_across_files(tmp_path, capsys):
    randoms = [("random", 1, 330.0, 50.0), ("random", 2, 360.0, 60.0)]
    first = _result(tmp_path / "a.json",
                    [*randoms, ("activation", 1, 320.0, 30.0), ("activation", 2, 340.0, 30.0)])
    second = _result(tmp_path / "b.json",
                     [*randoms, ("force_ntk", 2, 350.0, 40.0), ("force_ntk", 1, 340.0, 35.0)])
    table = differences(campaigns([first, second]), "activation")
    assert table["force_ntk"]["force"]["mean"] == pytest.approx(15.0)  # (+20, +10) by seed
    assert table["force_ntk"]["energy"]["mean"] == pytest.approx(7.5)
    assert table["force_ntk"]["force"]["n"] == 2 and table["force_ntk"]["force"]["half_width"] > 0
    assert table["random"]["force"]["mean"] == pytest.approx(15.0)  # (+10, +20)
    assert "activation" not in table
    assert main([str(first), str(second), "--reference", "activation"]) == 0
    assert "force_ntk: force +15.0 ±" in capsys.readouterr().out


def test_files_that_disagree_or_lack_the_reference_are_refused(tmp_path, capsys):
    first = _result(tmp_path / "a.json", [("random", 1, 330.0, 50.0)])
    other = _result(tmp_path / "b.json", [("random", 1, 331.0, 50.0)])
    assert main([str(first), str(other), "--reference", "random"]) == 2
    assert capsys.readouterr().err.startswith("error: random seed 1 has different curves")
    assert main([str(first), "--reference", "activation"]) == 2
    assert "error: reference method 'activation' is in none of the files" in capsys.readouterr().err

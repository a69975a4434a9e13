"""Stored benchmark results name files relative to roots a reader knows, not one machine's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from benchmarks.paths import REPOSITORY, path_roots, portable_paths, portable_text
from benchmarks.report import write_outputs
from benchmarks.spec import load_spec_data

ROOT = Path(__file__).resolve().parents[1]


def test_paths_become_relative_to_their_root(tmp_path):
    data, work, out = tmp_path / "data", tmp_path / "work", tmp_path / "work" / "out"
    roots = path_roots(data_root=data, work_dir=work, out=out)
    assert portable_text(f"{data}/h2combustion/irc_rxn04.extxyz", roots) == (
        "${TANGENTLAB_DATA}/h2combustion/irc_rxn04.extxyz"
    )
    # the longest root wins: the output folder sits inside the work folder
    assert portable_text(f"{out}/h2.json", roots) == "<out>/h2.json"
    assert portable_text(f"sqlite:///{work}/h2/benchmark.db", roots) == (
        "sqlite:///<work_dir>/h2/benchmark.db"
    )
    assert portable_text(f"--work-dir {work} --out {out}", roots) == (
        "--work-dir <work_dir> --out <out>"
    )
    # a sibling folder whose name starts like a root is not that root
    assert portable_text(f"{data}2/x.xyz", roots) == f"{data}2/x.xyz"
    model = REPOSITORY / "tangentlab" / "data" / "tangentlab-hcno-xtb.model"
    assert portable_text(str(model), roots) == "tangentlab/data/tangentlab-hcno-xtb.model"
    assert portable_paths({f"{data}/a": [str(data), 3]}, roots) == {
        "${TANGENTLAB_DATA}/a": ["${TANGENTLAB_DATA}", 3]
    }


def test_written_results_name_no_machine_path_and_reload(tmp_path, monkeypatch):
    data, work = tmp_path / "data", tmp_path / "work"
    monkeypatch.delenv("TANGENTLAB_DATA", raising=False)
    pool = f"{data}/h2combustion/pool_rxn01.extxyz"
    spec = {
        "name": "tiny",
        "data": {"pool_files": [pool], "test_files": [f"{data}/h2combustion/irc_rxn01.extxyz"]},
        "model": f"{data}/../models/mace-tutorial-hco-swa.model",
        "work_dir": str(work),
    }
    results = {
        "name": "tiny",
        "spec": spec,
        "campaigns": {},
        "table": {},
        "manifest": {"pool_file": f"{work}/tiny/data/pool.extxyz", "pool_files": [pool]},
        "database_url": f"sqlite:///{work}/tiny/benchmark.db",
    }
    command = f"tangentlab benchmark replay --work-dir {work} --out {tmp_path / 'out'}"
    write_outputs(results, tmp_path / "out", command, data_root=data)
    text = (tmp_path / "out" / "tiny.json").read_text()
    assert str(tmp_path) not in text
    stored = json.loads(text)
    assert stored["manifest"]["pool_file"] == "<work_dir>/tiny/data/pool.extxyz"
    assert stored["database_url"] == "sqlite:///<work_dir>/tiny/benchmark.db"
    assert stored["command"] == "tangentlab benchmark replay --work-dir <work_dir> --out <out>"
    assert stored["spec"]["model"] == "${TANGENTLAB_DATA}/../models/mace-tutorial-hco-swa.model"
    # the stored specification is a preset again: it loads with any data root
    (tmp_path / "again.json").write_text(json.dumps(stored["spec"]))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = load_spec_data(tmp_path / "again.json", str(elsewhere))
    assert again["data"]["pool_files"] == [f"{elsewhere}/h2combustion/pool_rxn01.extxyz"]


def test_stored_results_hold_no_absolute_machine_paths():
    """Every result file kept in docs/benchmarks names its files relative to a known root."""
    files = subprocess.run(
        ["git", "ls-files", "docs/benchmarks"], cwd=ROOT, capture_output=True, text=True,
        check=True,
    ).stdout.split()
    results = [f for f in files if f.endswith((".json", ".md", ".txt"))]
    assert len(results) > 20
    for name in results:
        text = (ROOT / name).read_text()
        for folder in ("work", "tmp", "root", "home"):
            for before in ('"', " ", "//", "="):
                prefix = f"{before}/{folder}/"
                assert prefix not in text, f"{name} holds a machine path (/{folder}/...)"


def test_stored_results_were_run_with_the_shipped_presets_and_configs(monkeypatch, tmp_path):
    """Each stored replay result's specification is its preset's or config's (docs pages say so).

    Only the methods, seeds and work folder may differ (they are command-line options).
    """
    from benchmarks.spec import make_spec, preset, preset_names

    monkeypatch.setenv("TANGENTLAB_DATA", str(tmp_path))
    docs = ROOT / "docs" / "benchmarks"
    renamed = {"h2-heldout-ew30": "h2-heldout"}  # run as: --name h2-heldout-ew30
    roots = path_roots(data_root=tmp_path)
    checked = 0
    for path in sorted(docs.rglob("*.json")):
        stored = json.loads(path.read_text()).get("spec")
        if not isinstance(stored, dict):
            continue  # not a replay benchmark's result
        name = renamed.get(stored["name"], stored["name"])
        config = docs / "configs" / f"{name}.yaml"
        assert config.exists() or name in preset_names(), f"{path.name}: no preset or config"
        source = load_spec_data(config) if config.exists() else preset(name)
        shipped = portable_paths(make_spec(source).model_dump(), roots)
        for key in set(stored) | set(shipped):
            if key not in ("name", "methods", "seeds", "work_dir"):
                assert stored.get(key) == shipped.get(key), f"{path.name}: {key} differs"
        checked += 1
    assert checked >= 20

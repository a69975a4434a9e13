"""The `tangentlab` command on a real SQLite database (no QM: import, export, status, errors)."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
from ase import Atoms
from conftest import write_pool

from cli import main
from db import campaigns, init_db, make_engine, session_scope, structures


@pytest.fixture
def campaign_db(tmp_path, tiny_model_file):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    engine = make_engine(url)
    init_db(engine)
    with session_scope(engine) as session:
        campaigns.create_campaign(session, "demo", {"model": str(tiny_model_file)})
    return url


def test_import_twice_adds_nothing_the_second_time(campaign_db, tmp_path, capsys):
    from tangentlab.structures import content_hash

    pool = write_pool(tmp_path / "pool.extxyz", 12, seed=3)
    unique = len({content_hash(a) for a in ase.io.read(pool, ":")})
    assert main(["--db", campaign_db, "import", "demo", str(pool)]) == 0
    assert f"imported {unique} structures" in capsys.readouterr().out
    assert main(["--db", campaign_db, "import", "demo", str(pool)]) == 0
    assert "imported 0 structures into 'demo' (12 already there)" in capsys.readouterr().out
    with session_scope(make_engine(campaign_db)) as session:
        assert len(structures.campaign_structures(session, campaigns.get_campaign(session, "demo"))) == unique


@pytest.mark.parametrize(
    ("atoms", "message"),
    [
        (Atoms("HCl", positions=[[0, 0, 0], [1.3, 0, 0]]), "element Cl not in allowed elements"),
        (Atoms("H2", positions=[[0, 0, 0], [np.nan, 0, 0]]), "NaN"),
        (Atoms("OH", positions=[[0, 0, 0], [0.05, 0, 0]]), "atoms 0 and 1 are 0.050 Å apart"),
    ],
)
def test_bad_structures_are_rejected_and_nothing_is_stored(campaign_db, tmp_path, capsys, atoms, message):
    good = write_pool(tmp_path / "good.extxyz", 3, seed=1)
    path = tmp_path / "mixed.extxyz"
    ase.io.write(path, [*ase.io.read(good, ":"), atoms])
    assert main(["--db", campaign_db, "import", "demo", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "structure 3" in err
    with session_scope(make_engine(campaign_db)) as session:
        assert structures.campaign_structures(session, campaigns.get_campaign(session, "demo")) == []


def test_unreadable_file_is_named(campaign_db, tmp_path, capsys):
    path = tmp_path / "garbage.xyz"
    path.write_text("this is not\na structure file\n")
    assert main(["--db", campaign_db, "import", "demo", str(path)]) == 2
    assert "garbage.xyz" in capsys.readouterr().err


def test_unknown_campaign_and_bad_config(campaign_db, tmp_path, capsys):
    assert main(["--db", campaign_db, "status", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    config = tmp_path / "c.yaml"
    config.write_text("name: x\ntargets: {energy_mae_mev_per_atom: -1}\nbatch: 3\n")
    assert main(["--db", campaign_db, "start", str(config)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'batch'" in err and "targets.energy_mae_mev_per_atom" in err


def test_status_and_init_config(campaign_db, tmp_path, capsys):
    assert main(["--db", campaign_db, "status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report[0]["name"] == "demo" and report[0]["rounds"] == []
    path = tmp_path / "new.yaml"
    assert main(["init-config", str(path), "--name", "fresh"]) == 0
    assert "name: fresh" in path.read_text()
    assert main(["init-config", str(path)]) == 2  # never overwrites


@pytest.mark.parametrize(
    ("oracle", "message"),
    [
        ("{name: orca}", "oracle: unknown oracle name 'orca'"),
        ("{name: pyscf, functional: b3lyp}", "unknown key 'oracle.pyscf.functional'"),
        ("{name: pyscf, basis: not-a-basis}", "invalid oracle: unknown basis set 'not-a-basis'"),
        ("{name: quacc, recipe: quacc.recipes.nowhere.core.static_job}",
         "invalid oracle: recipe 'quacc.recipes.nowhere.core.static_job': cannot import module"),
    ],
)
def test_invalid_oracles_stop_start_naming_the_problem(tmp_path, capsys, oracle, message):
    config = tmp_path / "c.yaml"
    config.write_text(f"name: x\npool: [p.xyz]\noracle: {oracle}\n")
    assert main(["--db", f"sqlite:///{tmp_path / 'c.db'}", "start", str(config)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "c.db").exists()


def test_resume_ends_with_the_outcome_and_label_counts_in_words(campaign_db, monkeypatch, capsys):
    import flows.campaign

    result = {"name": "demo", "status": "budget_exhausted", "reason": "round budget used (2/2); energy MAE 61.2",
              "labels": {"pending": 0, "running": 0, "done": 21, "failed": 1},
              "models": [{"id": 1, "round": None, "path": "m0", "test": {"energy_mae_mev_per_atom": 80.0,
                                                                          "force_mae_mev_per_a": 500.0}},
                         {"id": 2, "round": 0, "path": "m1", "test": None}]}
    seen = {}

    def fake_campaign(config=None, name=None, wait=False):
        seen.update(config=config, name=name)
        return result

    monkeypatch.setattr(flows.campaign, "campaign", fake_campaign)
    monkeypatch.setenv("TANGENTLAB_DATABASE_URL", "unused")  # restored after the test
    assert main(["--db", campaign_db, "resume", "demo"]) == 3  # not targets_met
    assert seen == {"config": None, "name": "demo"}
    out = capsys.readouterr().out
    assert "campaign 'demo': budget exhausted\n  round budget used (2/2)" in out
    assert "  labels: 21 done, 1 failed\n" in out
    assert "{" not in out and "_" not in out.replace("'demo'", "")
    assert "start" in out and "80.0" in out and "500.0" in out

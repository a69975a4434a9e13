"""Real campaigns end to end: Prefect flow, SQLite, quacc QM jobs, MACE fine-tuning.

The oracle is PySCF HF/STO-3G on molecules of 2-4 atoms (well under a second a job), a level
of theory different from the model's pretraining, so the campaign has to refit the reference
energies and fine-tune to reach its targets.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_pool

from db import campaigns, init_db, make_engine, reports, session_scope
from tangentlab.config import shipped_file

pytestmark = pytest.mark.slow

ORACLE = {"name": "pyscf", "xc": "hf", "basis": "sto-3g", "num_threads": 1}


def campaign_config(tmp_path: Path, name: str, **overrides) -> dict:
    config = {
        "name": name,
        "pool": [str(write_pool(tmp_path / "pool.extxyz", 40, seed=0, max_atoms=4))],
        "model": shipped_file("tangentlab-hcno-xtb.model"),
        "work_dir": str(tmp_path / "runs"),
        "test_size": 8,
        "initial_size": 6,
        "oracle": ORACLE,
        "acquisition": {"method": "activation", "batch_size": 4},
        "budgets": {"max_rounds": 3, "max_labels": 30},
        # Measured with these settings (UHF with the stability step for radicals): forces 2186
        # (start), 1663, 1254 meV/Å after rounds 0-1; energies ~1e6 (start: xTB vs HF
        # references), then 684, 456 meV/atom. Targets are met after one acquisition round.
        # Point estimates decide (8 test structures give intervals too wide for these targets).
        "targets": {"energy_mae_mev_per_atom": 500.0, "force_mae_mev_per_a": 1300.0, "confidence": None},
        "finetune": {"max_epochs": 4, "patience": 4},
        "qm": {"timeout_s": 120},
    }
    config.update(overrides)
    return config


def finished_jobs(tmp_path: Path, name: str) -> list[int]:
    log = tmp_path / "runs" / name / "qm_jobs.jsonl"
    return [json.loads(line)["label_id"] for line in log.read_text().splitlines()] if log.exists() else []


def test_campaign_reaches_its_targets(prefect_server, tmp_path):
    from flows.campaign import campaign

    url = f"sqlite:///{tmp_path / 'c.db'}"
    result = campaign(config=campaign_config(tmp_path, "reach"), database_url=url)

    assert result["status"] == "targets_met", result["reason"]
    start, *trained = result["models"]
    assert start["round"] is None and trained
    assert start["test"]["force_mae_mev_per_a"] > 1300.0  # the starting model misses the targets
    assert len(trained) >= 2  # at least one acquisition round after the initial set
    final = trained[-1]["test"]
    assert final["energy_mae_mev_per_atom"] <= 500.0 and final["force_mae_mev_per_a"] <= 1300.0
    assert final["force_mae_mev_per_a"] < start["test"]["force_mae_mev_per_a"]
    with session_scope(make_engine(url)) as session:
        report = reports.campaign_report(session, campaigns.get_campaign(session, "reach"))
    assert report["status"] == "targets_met"
    assert report["labels"]["done"] == len(finished_jobs(tmp_path, "reach"))
    for version in result["models"][1:]:
        assert Path(version["path"]).exists()

    # What the Prefect UI shows (docs/monitoring.md): the outcome as the run's state name, label
    # runs named by purpose, the overview and every round's selection with its labels' outcomes.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterName,
        FlowRunFilterParentFlowRunId,
    )

    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["campaign reach"])))
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])))
    assert (run.state.type.value, run.state.name) == ("COMPLETED", "Targets met")
    assert run.state.message == result["reason"]
    rounds_run = len(trained)
    assert sorted(child.name for child in children) == sorted(
        ["label reach: test set (8 structures)", "label reach: round 0 (6 structures)"]
        + [f"label reach: round {n} (4 structures)" for n in range(1, rounds_run)])
    overview = _latest_artifact("campaign-reach-overview")
    assert overview["data"].startswith("## Campaign reach: Targets met\n\n**Targets met:** targets met: energy")
    assert "| start | starting model | | 0 |" in overview["data"].replace("  ", " ")
    for number in range(rounds_run):
        selection = _latest_artifact(f"campaign-reach-round-{number}-selection")["data"]
        assert "still to run" not in selection and "not queued" not in selection
        assert selection.count("| done |") + selection.count("| failed (") == (6 if number == 0 else 4)


def _latest_artifact(key: str) -> dict:
    """The newest artifact with ``key``, from the Prefect REST API."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    response = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", timeout=30,
                          json={"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1})
    response.raise_for_status()
    (artifact,) = response.json()
    return artifact


def test_start_with_unknown_element_stores_nothing(prefect_server, tmp_path):
    import ase.io
    from ase import Atoms

    from flows.campaign import campaign

    pool = tmp_path / "bad.extxyz"
    ase.io.write(pool, [Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.3, 0.9, 0]]),
                        Atoms("NaCl", positions=[[0, 0, 0], [2.4, 0, 0]])])
    url = f"sqlite:///{tmp_path / 'c.db'}"
    config = campaign_config(tmp_path, "bad", pool=[str(pool)])
    with pytest.raises(Exception, match="bad.extxyz, structure 1: element Cl, Na not in allowed elements"):
        campaign(config=config, database_url=url)
    engine = make_engine(url)
    init_db(engine)
    with session_scope(engine) as session:
        assert campaigns.all_campaigns(session) == []

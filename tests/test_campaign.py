"""Real campaigns end to end: Prefect flow, SQLite, quacc QM jobs, MACE fine-tuning.

The oracle is PySCF HF/STO-3G on molecules of 2-4 atoms (well under a second a job), a level
of theory different from the model's pretraining, so the campaign has to refit the reference
energies and fine-tune to reach its targets.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ONE_EPOCH, tiny_model_path, write_pool
from sqlalchemy import func, select

from db import Label, campaigns, init_db, make_engine, reports, rounds, session_scope
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
        # (start), 1622, 1414, 1278, 1256 meV/Å after rounds 0-3; energies ~1e6 (start: xTB vs HF
        # references), then 430-480 meV/atom. Targets are met after two acquisition rounds.
        # Point estimates decide (8 test structures give intervals too wide for these targets).
        "targets": {"energy_mae_mev_per_atom": 500.0, "force_mae_mev_per_a": 1300.0, "confidence": None},
        "finetune": {"max_epochs": 8, "patience": 4},
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
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, FlowRunFilterParentFlowRunId

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


def _cli(args: list[str], api_url: str, cwd: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_API_URL": api_url}
    return subprocess.Popen([sys.executable, "-m", "cli", *args], cwd=cwd, env=env,
                            start_new_session=True, **popen)


def test_killed_campaign_resumes_without_repeating_or_losing_qm_jobs(prefect_server, tmp_path):
    """SIGKILL the campaign process while it labels round 1, then resume it to the end."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    # The targets are never met, so how well the rounds train does not matter here: the tiny
    # model and one epoch a round (the kill and the resume are what is checked).
    config = campaign_config(tmp_path, "killed", targets={"energy_mae_mev_per_atom": 0.01,
                                                          "force_mae_mev_per_a": 0.01},
                             budgets={"max_rounds": 2, "max_labels": 30},
                             acquisition={"method": "activation", "batch_size": 6},
                             model=tiny_model_path(), finetune=dict(ONE_EPOCH))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    log = open(tmp_path / "first.log", "w")
    first = _cli(["--db", url, "start", "c.yaml"], prefect_server, tmp_path, stdout=log, stderr=log)
    engine = make_engine(url)
    deadline = time.time() + 600
    killed_at = None
    while time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
        try:
            with session_scope(engine) as session:
                round_1 = rounds.get_round(session, campaigns.get_campaign(session, "killed"), 1)
                if round_1 is None:
                    continue
                ids = [e["structure_id"] for e in round_1.selected]
                done = session.scalar(select(func.count()).select_from(Label).where(
                    Label.structure_id.in_(ids), Label.status == "done"))
        except Exception:  # the database may not exist yet
            continue
        if 1 <= done < len(ids):
            os.killpg(first.pid, signal.SIGKILL)
            killed_at = done
            break
    first.wait(timeout=60)
    assert killed_at is not None, f"never caught round 1 mid-labelling; log:\n{(tmp_path / 'first.log').read_text()}"
    assert first.returncode == -signal.SIGKILL

    jobs_before = finished_jobs(tmp_path, "killed")
    with session_scope(engine) as session:
        done_before = {lab.id for lab in session.scalars(select(Label).where(Label.status == "done"))}
    assert set(jobs_before) == done_before  # every finished QM job was stored before the kill

    second = _cli(["--db", url, "resume", "killed"], prefect_server, tmp_path,
                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = second.communicate(timeout=900)
    assert second.returncode == 3, out  # budget exhausted, not targets met: the exit code says so

    jobs = finished_jobs(tmp_path, "killed")
    assert len(jobs) == len(set(jobs)), "a finished QM job ran again"
    with session_scope(engine) as session:
        labels = list(session.scalars(select(Label)))
        report = reports.campaign_report(session, campaigns.get_campaign(session, "killed"))
    done = {lab.id for lab in labels if lab.status == "done"}
    assert done == set(jobs), "labels and finished QM jobs disagree"
    assert done_before <= done, "a label stored before the kill was lost"
    assert report["status"] == "budget_exhausted"
    assert [r["status"] for r in report["rounds"]] == ["evaluated"] * 3
    expected = 8 + 6 + 6 + 6  # test + initial + two rounds of 6
    assert len(done) + report["labels"]["failed"] == expected

    # In the Prefect UI the killed run and its labelling subflow show Crashed (the resumed run
    # marked them), not Running for ever.
    runs = _flow_runs_named_like("killed")
    assert [state for name, state in runs if name == "campaign killed"] == ["CRASHED", "COMPLETED"], runs
    assert "CRASHED" in [state for name, state in runs if name.startswith("label killed")], runs
    assert "RUNNING" not in [state for _, state in runs], runs


def _flow_runs_named_like(text: str) -> list[tuple[str, str]]:
    """(name, state type) of the flow runs whose name contains ``text``, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=text)),
                                     sort=FlowRunSort.START_TIME_ASC)
    return [(r.name, r.state.type.value) for r in runs]


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

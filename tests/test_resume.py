"""SIGKILL a real campaign process during acquisition and during fine-tuning, then resume it.

The kill points are observed, not provoked: the test watches the Prefect API (the task run
``acquire round 1`` running with the first committee member already on disk; the task run
``fine-tune round 1`` running with its progress artifact past the first epoch) and the database,
then kills the process group. (A kill during labelling is in tests/test_campaign.py.) After
every kill it checks that no finished QM job ran again (``qm_jobs.jsonl`` has each label once),
that no stored label was lost, and that every registered model is still there with its sha256.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import replay_campaign_config
from sqlalchemy import select

from db import Label, ModelVersion, campaigns, make_engine, registry, rounds, session_scope

pytestmark = pytest.mark.slow

NAME = "resumed"


def _config(tmp_path: Path) -> dict:
    # Labels replayed from the pool (the kills are not during labelling); two short epochs, so
    # that a fine-tuning is caught between its first epoch and its end.
    return replay_campaign_config(
        tmp_path, NAME, 30, seed=2,
        acquisition={"method": "committee", "committee_size": 2, "batch_size": 4},
        budgets={"max_rounds": 1, "max_labels": 30},
        targets={"energy_mae_mev_per_atom": 0.01, "force_mae_mev_per_a": 0.01},  # never met
        finetune={"max_epochs": 2, "patience": 2, "min_steps_per_epoch": 6},
    )


def _cli(args: list[str], api_url: str, cwd: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_API_URL": api_url, "OMP_NUM_THREADS": "1", "PREFECT_LOGGING_LEVEL": "INFO"}
    out = open(log, "w")  # noqa: SIM115  (the child writes to it until it dies)
    return subprocess.Popen([sys.executable, "-m", "cli", *args], cwd=cwd, env=env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _kill_when(process: subprocess.Popen, ready: Callable[[], bool], log: Path, what: str) -> None:
    """Poll ``ready()`` and SIGKILL the process group as soon as it holds."""
    deadline = time.time() + 900  # a loaded machine takes minutes to start a campaign
    error = None
    while time.time() < deadline and process.poll() is None:
        try:
            hit = ready()
        except Exception as exc:  # database or API not there yet
            hit, error = False, exc
        if hit:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
            assert process.returncode == -signal.SIGKILL
            return
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"never caught the campaign {what} (last error: {error!r}); log:\n{log.read_text()[-5000:]}")


def _running_task(name: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterName,
        TaskRunFilter,
        TaskRunFilterName,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"campaign {NAME}"])),
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=[name]),
                                          state=TaskRunFilterState(type=TaskRunFilterStateType(
                                              any_=[StateType.RUNNING]))),
            sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=5)
    return bool(runs)


def _flow_run_states() -> list[str]:
    """States of the ``campaign NAME`` flow runs (oldest first) and of every task run in them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"campaign {NAME}"])),
                                     sort=FlowRunSort.START_TIME_ASC)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [r.id for r in runs]}))
    running = [t.name for t in tasks if t.state.type.value == "RUNNING"]
    assert not running, f"task runs of killed processes still Running: {running}"
    return [r.state.type.value for r in runs]


def _latest_artifact(key: str) -> dict | None:
    """The newest artifact with ``key`` from the Prefect REST API (``type``, ``data``, ``description``)."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    response = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", timeout=30,
                          json={"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1})
    response.raise_for_status()
    found = response.json()
    return found[0] if found else None


def _jobs(tmp_path: Path, name: str = NAME) -> list[int]:
    log = tmp_path / "runs" / name / "qm_jobs.jsonl"
    return [json.loads(line)["label_id"] for line in log.read_text().splitlines()] if log.exists() else []


def _state(url: str, name: str = NAME) -> dict:
    """Done labels, registered models (id -> sha256, all verified on disk) and round statuses."""
    with session_scope(make_engine(url)) as session:
        campaign = campaigns.get_campaign(session, name)
        done = {lab.id for lab in session.scalars(select(Label).where(Label.status == "done"))}
        models = {}
        for version in session.scalars(select(ModelVersion).order_by(ModelVersion.id)):
            registry.verified_model_path(session, version.id)  # file there, sha256 unchanged
            models[version.id] = (version.round_number, version.sha256)
        statuses = {r.number: r.status.value for r in rounds.campaign_rounds(session, campaign)}
    return {"done": done, "models": models, "rounds": statuses}


def _round_exists(url: str, number: int) -> bool:
    with session_scope(make_engine(url)) as session:
        return rounds.get_round(session, campaigns.get_campaign(session, NAME), number) is not None


def _check_no_loss(tmp_path: Path, before: dict, after: dict, name: str = NAME) -> None:
    jobs = _jobs(tmp_path, name)
    assert len(jobs) == len(set(jobs)), "a finished QM job ran again"
    assert set(jobs) == after["done"], "labels and finished QM jobs disagree"
    assert before["done"] <= after["done"], "a stored label was lost"
    for version, record in before["models"].items():
        assert after["models"][version] == record, f"model version {version} was lost or changed"


def test_kills_during_acquisition_and_fine_tuning_lose_and_repeat_nothing(prefect_server, tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_config(tmp_path)))
    empty = {"done": set(), "models": {}, "rounds": {}}
    committee_member = tmp_path / "runs" / NAME / "committee" / "round-001" / "member-0.model"

    # 1. Killed while the committee acquisition of round 1 runs (member 0 trained, member 1 training).
    first = _cli(["--db", url, "start", "c.yaml"], prefect_server, tmp_path, tmp_path / "first.log")
    _kill_when(first, lambda: committee_member.exists() and _running_task("acquire round 1 (committee)")
               and not _round_exists(url, 1), tmp_path / "first.log", "during acquisition")
    after_acquire = _state(url)
    _check_no_loss(tmp_path, empty, after_acquire)
    assert after_acquire["rounds"] == {0: "evaluated"}
    assert [r for r, _ in after_acquire["models"].values()] == [None, 0]  # starting model + round 0
    assert len(after_acquire["done"]) == 12  # 6 test + 6 initial
    acquiring = _latest_artifact(f"campaign-{NAME}-round-1-acquisition")  # the UI showed where it was
    assert acquiring["type"] == "progress" and 0 < acquiring["data"] < 90, acquiring
    assert acquiring["description"].startswith("Round 1: committee member"), acquiring

    # 2. Resumed, then killed while fine-tuning round 1, after its first epoch.
    def fine_tuning_round_1() -> bool:
        progress = _latest_artifact(f"campaign-{NAME}-round-1-fine-tune")
        return (progress is not None
                and progress["description"].startswith(f"Campaign {NAME}, round 1: fine-tune epoch")
                and 0 < progress["data"] < 100 and _running_task("fine-tune round 1"))

    second = _cli(["--db", url, "resume", NAME], prefect_server, tmp_path, tmp_path / "second.log")
    _kill_when(second, fine_tuning_round_1, tmp_path / "second.log", "during fine-tuning")
    after_finetune = _state(url)
    _check_no_loss(tmp_path, after_acquire, after_finetune)
    assert after_finetune["rounds"] == {0: "evaluated", 1: "labelled"}
    assert after_finetune["models"] == after_acquire["models"]  # no half-trained model registered
    assert len(after_finetune["done"]) == 12 + 4

    # 3. Resumed to the end: the round budget stops it.
    third = _cli(["--db", url, "resume", NAME], prefect_server, tmp_path, tmp_path / "third.log")
    assert third.wait(timeout=600) == 3, (tmp_path / "third.log").read_text()[-5000:]
    final = _state(url)
    _check_no_loss(tmp_path, after_finetune, final)
    assert final["rounds"] == {0: "evaluated", 1: "evaluated"}
    assert [r for r, _ in final["models"].values()] == [None, 0, 1]  # one model per round, none twice
    assert final["done"] == after_finetune["done"]  # the last run needed no new QM job
    log = (tmp_path / "third.log").read_text()
    assert "resuming campaign 'resumed' at round 1, which is labelled: next step is fine-tuning" in log

    # The killed runs no longer show as Running in the UI: the resumed runs marked them Crashed.
    assert _flow_run_states() == ["CRASHED", "CRASHED", "COMPLETED"]
    assert "marked 1 flow runs left Running by a killed process as Crashed" in log

    # `tangentlab status` shows the same rounds from the database.
    status = subprocess.run([sys.executable, "-m", "cli", "--db", url, "status", NAME, "--json"],
                            capture_output=True, text=True, check=True)
    (report,) = json.loads(status.stdout)
    assert [(r["round"], r["labels"], r["model_version"]) for r in report["round_table"]] == [
        (0, 6, list(final["models"])[1]), (1, 10, list(final["models"])[2])]
    assert report["round_table"][1]["method"] == "committee" and report["round_table"][1]["acquire_s"] > 0
    chosen = report["selected_structures"]
    assert chosen["round"] == 1 and len(chosen["structures"]) == 4
    assert all(s["score"] is not None and s["label"] == "done" for s in chosen["structures"])

    # The Prefect UI shows the same: the overview's round table and learning curve, the selection.
    overview = _latest_artifact(f"campaign-{NAME}-overview")["data"]
    assert overview.startswith(f"## Campaign {NAME}: Round budget exhausted")
    table = overview.split("### Rounds\n")[1].split("###")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in [line for line in table.splitlines() if line.startswith("|")][2:]]
    # the force cell reads "MAE [low, high]": the measured MAE, then its confidence interval
    assert [(r[0], r[3], r[5].split(" [")[0]) for r in rows[1:]] == [
        (str(r["round"]), str(r["labels"]), f"{r['force_mae_meV_A']:.1f}") for r in report["round_table"]]
    assert rows[0][:2] == ["start", "starting model"]
    assert "](data:image/png;base64,iVBORw0KGgo" in overview
    assert (tmp_path / "runs" / NAME / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    selection = _latest_artifact(f"campaign-{NAME}-round-1-selection")["data"]
    section = selection.split("### Picks\n")[1].split("###")[0]
    table_lines = [line for line in section.splitlines() if line.startswith("|")][2:]  # no header rows
    picks = [line.split("|")[2].strip() for line in table_lines]
    assert picks == [str(s["structure_id"]) for s in chosen["structures"]]
    assert "**Labels:** 4 done, 0 failed QM." in selection
    finetune = _latest_artifact(f"campaign-{NAME}-round-1-fine-tune")
    assert finetune["type"] == "progress" and finetune["data"] == 100.0

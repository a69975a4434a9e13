"""A campaign stopped dead during acquisition and during fine-tuning, then resumed.

The campaign flow runs in this process, and each stop is a :class:`Killed` raised at the
point a SIGKILL would land (after the first committee member of round 1 is on disk; after
the first epoch of round 1's fine-tune): nothing after it runs, and no step stores anything
it had not committed. What the database and the campaign folder hold then is what a killed
process leaves (the real SIGKILLs, with flow runs marked Crashed and leases taken over, are in
tests/test_lease_processes.py, tests/test_exploration.py and tests/test_periodic.py). After
every stop it checks that no finished QM job ran again (``qm_jobs.jsonl`` has each label
once), that no stored label was lost, and that every registered model is still there with its
sha256; the resume continues at the step the round's status names.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import replay_campaign_config
from sqlalchemy import select

from db import Label, ModelVersion, campaigns, make_engine, registry, rounds, session_scope

pytestmark = pytest.mark.slow

NAME = "resumed"


def _config(tmp_path: Path) -> dict:
    # Labels replayed from the pool (the kills are not during labelling); two short epochs, so
    # that a fine-tuning is stopped between its first epoch and its end.
    return replay_campaign_config(
        tmp_path, NAME, 30, seed=2,
        acquisition={"method": "committee", "committee_size": 2, "batch_size": 4},
        budgets={"max_rounds": 1, "max_labels": 30},
        targets={"energy_mae_mev_per_atom": 0.01, "force_mae_mev_per_a": 0.01},  # never met
        finetune={"max_epochs": 2, "patience": 2, "min_steps_per_epoch": 2},
    )


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


def _check_no_loss(tmp_path: Path, before: dict, after: dict, name: str = NAME) -> None:
    jobs = _jobs(tmp_path, name)
    assert len(jobs) == len(set(jobs)), "a finished QM job ran again"
    assert set(jobs) == after["done"], "labels and finished QM jobs disagree"
    assert before["done"] <= after["done"], "a stored label was lost"
    for version, record in before["models"].items():
        assert after["models"][version] == record, f"model version {version} was lost or changed"


class Killed(BaseException):
    """The process died here: nothing after this point runs (not an ``Exception``, so that no
    handler of the flow publishes or records anything on its way out)."""


def dies(real, when):
    """``real`` (a trainer taking a ``progress`` callback) that raises :class:`Killed` after
    the progress report for which ``when(*report)`` holds."""
    def trainer(*args, progress=None, **kwargs):
        def watched(*report):
            if progress is not None:
                progress(*report)
            if when(*report):
                raise Killed
        return real(*args, progress=watched, **kwargs)
    return trainer


def run_in_process(url: str, **parameters) -> dict:
    """One run of the campaign flow in this process, as `tangentlab start/resume` runs it; a
    new process would hold no round context of the run before."""
    from flows.campaign import campaign
    from tasks.context import release_context

    release_context()
    return campaign(database_url=url, **parameters)


class FlowLog(logging.Handler):
    """The messages the campaign's flow and task runs log at INFO and above, while open."""

    LOGGERS = ("prefect.flow_runs", "prefect.task_runs")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def __enter__(self) -> FlowLog:
        self.levels = []
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            self.levels.append(logger.level)
            logger.setLevel(logging.INFO)
            logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        for name, level in zip(self.LOGGERS, self.levels, strict=True):
            logging.getLogger(name).removeHandler(self)
            logging.getLogger(name).setLevel(level)


def test_kills_during_acquisition_and_fine_tuning_lose_and_repeat_nothing(
        prefect_server, tmp_path, monkeypatch, capsys):
    import tasks.acquire
    import tasks.train
    from cli import main

    url = f"sqlite:///{tmp_path / 'c.db'}"
    config = _config(tmp_path)
    empty = {"done": set(), "models": {}, "rounds": {}}
    committee = tmp_path / "runs" / NAME / "committee" / "round-001"

    # 1. Killed while the committee acquisition of round 1 runs (member 0 trained, member 1
    # training).
    monkeypatch.setattr(tasks.acquire, "fit_committee", dies(tasks.acquire.fit_committee,
                                                              lambda member, *_: member == 1))
    with pytest.raises(Killed):
        run_in_process(url, config=config)
    monkeypatch.undo()
    assert (committee / "member-0.model").exists() and not (committee / "member-1.model").exists()
    after_acquire = _state(url)
    _check_no_loss(tmp_path, empty, after_acquire)
    assert after_acquire["rounds"] == {0: "evaluated"}  # no round 1 stored
    # the starting model and round 0's
    assert [r for r, _ in after_acquire["models"].values()] == [None, 0]
    assert len(after_acquire["done"]) == 12  # 6 test + 6 initial
    # the UI showed where it was
    acquiring = _latest_artifact(f"campaign-{NAME}-round-1-acquisition")
    assert acquiring["type"] == "progress" and 0 < acquiring["data"] < 90, acquiring
    assert acquiring["description"].startswith("Round 1: committee member 2/2"), acquiring

    # 2. Resumed, then killed while fine-tuning round 1, after its first epoch of two.
    monkeypatch.setattr(tasks.train, "finetune", dies(tasks.train.finetune,
                                                       lambda epoch, total, record: epoch == 1))
    with pytest.raises(Killed):
        run_in_process(url, name=NAME)
    monkeypatch.undo()
    progress = _latest_artifact(f"campaign-{NAME}-round-1-fine-tune")
    assert progress["description"].startswith(f"Campaign {NAME}, round 1: fine-tune epoch 1/2")
    assert progress["type"] == "progress" and 0 < progress["data"] < 100, progress
    after_finetune = _state(url)
    _check_no_loss(tmp_path, after_acquire, after_finetune)
    assert after_finetune["rounds"] == {0: "evaluated", 1: "labelled"}
    assert after_finetune["models"] == after_acquire["models"]  # no half-trained model registered
    assert len(after_finetune["done"]) == 12 + 4
    with session_scope(make_engine(url)) as session:
        round_1 = rounds.get_round(session, campaigns.get_campaign(session, NAME), 1)
        selected_before = round_1.selected

    # 3. Resumed to the end: it fine-tunes round 1 (no new acquisition), and the round budget
    # stops it.
    with FlowLog() as log:
        result = run_in_process(url, name=NAME)
    assert result["status"] == "budget_exhausted", result
    final = _state(url)
    _check_no_loss(tmp_path, after_finetune, final)
    assert final["rounds"] == {0: "evaluated", 1: "evaluated"}
    # one model per round, none twice
    assert [r for r, _ in final["models"].values()] == [None, 0, 1]
    assert final["done"] == after_finetune["done"]  # the last run needed no new QM job
    assert ("resuming campaign 'resumed' at round 1, which is labelled: next step is fine-tuning"
            in log.lines), log.lines
    with session_scope(make_engine(url)) as session:
        round_1 = rounds.get_round(session, campaigns.get_campaign(session, NAME), 1)
        assert round_1.selected == selected_before

    # `tangentlab status` shows the same rounds from the database.
    capsys.readouterr()
    assert main(["--db", url, "status", NAME, "--json"]) == 0
    (report,) = json.loads(capsys.readouterr().out)
    assert [(r["round"], r["labels"], r["model_version"]) for r in report["round_table"]] == [
        (0, 6, list(final["models"])[1]), (1, 10, list(final["models"])[2])]
    assert report["round_table"][1]["method"] == "committee"
    assert report["round_table"][1]["acquire_s"] > 0
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

"""Asynchronous rounds (``schedule: async``): the label queue, and a real campaign process
killed during a fine-tune while its QM jobs are in flight, then resumed.

The kill test watches the database: a round past the first one is ``labelled`` (its fine-tune
is running: the round is opened already labelled and moves on only when the model is
registered) while labels are ``running`` on the streaming workers. After the resume it checks
that no finished QM job ran again (``qm_jobs.jsonl`` has each label once), that no label was
lost, that every model version records the exact labels it was trained on, and that a new
model re-ranked the queue into another order.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ase.build import molecule
from conftest import STARTED_PROCESSES, cli_argv, replay_campaign_config
from sqlalchemy import select

from db import (
    Label,
    LabelStatus,
    ModelVersion,
    campaigns,
    init_db,
    labels,
    make_engine,
    queue,
    rounds,
    session_scope,
    structures,
)
from tangentlab.config import ConfigError, make_config
from tangentlab.structures import charge_and_multiplicity, content_hash

LEVEL = {"method": "GFN2-xTB", "basis": None, "code": "tblite"}
NAME = "streamed"


def test_streaming_settings_need_the_async_schedule():
    assert make_config({"schedule": "async"}).streaming.jobs_per_worker == 2
    with pytest.raises(ConfigError, match="streaming has no effect with schedule 'sync'"):
        make_config({"streaming": {"train_every": 5}})
    with pytest.raises(
        ConfigError, match="schedule 'async' does not support an exploration section"
    ):
        make_config({"schedule": "async", "exploration": {}})
    with pytest.raises(ConfigError, match="schedule"):
        make_config({"schedule": "sometimes"})


def _queued_campaign(url: str, n: int):
    engine = make_engine(url)
    init_db(engine)
    molecules = []
    for i in range(n):
        atoms = molecule("H2O")
        atoms.positions[0, 0] += 0.01 * i
        atoms.info["charge"], atoms.info["multiplicity"] = charge_and_multiplicity(atoms)
        molecules.append(atoms)
    with session_scope(engine) as session:
        campaign_id = campaigns.create_campaign(session, "queue", {"seed": 1}).id
        ids = structures.import_atoms(
            session, campaign_id, molecules, [content_hash(a) for a in molecules], origin="t"
        ).structure_ids
        structures.set_split(session, ids[1:], "train")
        initial = labels.ensure_labels(session, ids[:1], LEVEL)  # unranked: claimed first
        picked = queue.queue_picks(session, campaign_id, ids[1:], LEVEL, picked_by=None)
    return engine, campaign_id, initial, picked, ids


def test_the_queue_is_claimed_by_rank_and_reranking_leaves_claimed_picks(database_url):
    engine, campaign_id, initial, picked, ids = _queued_campaign(database_url, 5)
    key = labels.level_key(LEVEL)
    with session_scope(engine) as session:
        assert labels.claim_labels(session, campaign_id, key, 2, "w") == [initial[0], picked[0]]
    with session_scope(engine) as session:  # the new model's order, with the claimed one in it
        assert queue.rerank(session, campaign_id, [picked[3], picked[0], picked[2], picked[1]]) == 3
    with session_scope(engine) as session:
        order = [p.label_id for p in queue.picks(session, campaign_id, key, status=["pending"])]
        assert order == [picked[3], picked[2], picked[1]]
        assert labels.claim_labels(session, campaign_id, key, 1, "w") == [picked[3]]
    with session_scope(engine) as session:
        returned = queue.cancel_pending(session, campaign_id, key)
    with session_scope(engine) as session:
        left = {lab.id: lab.status for lab in session.scalars(select(Label))}
        pool = {s.id for s in structures.campaign_structures(session, campaign_id, split="pool")}
    assert left == {initial[0]: "running", picked[0]: "running", picked[3]: "running"}
    assert sorted(returned) == [ids[2], ids[3]]  # the two picks no worker claimed
    assert pool == {ids[0], ids[2], ids[3]}
    engine.dispose()


def _config(tmp_path: Path) -> dict:
    # Replayed labels that take up to 2 s (the quick start's PySCF times, median 6 s, cut at
    # 8 s, on a clock four times as fast), two workers and a queue that holds every pick of the
    # budget (so that picks are still queued when a fine-tune ends), a fine-tune every six new
    # labels.
    return replay_campaign_config(
        tmp_path,
        NAME,
        40,
        seed=3,
        schedule="async",
        streaming={"jobs_per_worker": 8, "train_every": 6},
        oracle={"name": "replay", "latency": {"max_s": 8, "scale": 0.25}},
        qm={"timeout_s": 120, "max_parallel": 2, "max_attempts": 1},
        acquisition={"batch_size": 4},
        budgets={"max_rounds": 20, "max_labels": 22},
        # never met, and no interval calls them out of reach: the label budget stops it
        targets={"energy_mae_mev_per_atom": 0.01, "force_mae_mev_per_a": 0.01, "confidence": None},
        finetune={"max_epochs": 2, "patience": 2, "min_steps_per_epoch": 4},
    )


def _cli(
    args: list[str], api_url: str, cwd: Path, log: Path, go: Path | None = None
) -> subprocess.Popen:
    """`python -m cli ARGS`; with ``go``, imported ahead and run once ``go`` exists
    (``CLI_ON_SIGNAL``)."""
    env = {**os.environ, "PREFECT_API_URL": api_url, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = open(log, "w")  # noqa: SIM115  (the child writes to it until it dies)
    process = subprocess.Popen(
        [sys.executable, *cli_argv(go, log.stem), *args],
        cwd=cwd,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    STARTED_PROCESSES.append(process)  # SIGKILLed with its group if alive when the test ends
    return process


def _fine_tuning_with_labels_in_flight(url: str) -> bool:
    with session_scope(make_engine(url)) as session:
        campaign = campaigns.get_campaign(session, NAME)
        latest = rounds.campaign_rounds(session, campaign)[-1]
        running = session.scalar(
            select(Label.id).where(Label.status == LabelStatus.RUNNING).limit(1)
        )
        return latest.number >= 1 and latest.status == "labelled" and running is not None


def _kill_when_fine_tuning(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline, error = time.time() + 600, None
    while time.time() < deadline and process.poll() is None:
        try:
            hit = _fine_tuning_with_labels_in_flight(url)
        except Exception as exc:  # database not there yet
            hit, error = False, exc
        if hit:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
            return
        time.sleep(0.05)
    process.kill()
    raise AssertionError(
        f"never caught a fine-tune with labels in flight ({error!r}):\n{log.read_text()[-4000:]}"
    )


def _done(url: str) -> set[int]:
    with session_scope(make_engine(url)) as session:
        return set(session.scalars(select(Label.id).where(Label.status == LabelStatus.DONE)))


def _jobs(tmp_path: Path) -> list[int]:
    import json

    log = tmp_path / "runs" / NAME / "qm_jobs.jsonl"
    return [json.loads(line)["label_id"] for line in log.read_text().splitlines()]


@pytest.mark.slow
def test_kill_during_a_fine_tune_with_labels_in_flight_loses_and_repeats_nothing(
    prefect_server, tmp_path
):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    # Both runs are started ahead of their turn: the start imports while the configuration is
    # written, the resume while the start works (its labels mostly wait); each runs its
    # command when its file ``go-*`` is written.
    first = _cli(
        ["--db", url, "start", str(tmp_path / "c.yaml")],
        prefect_server,
        tmp_path,
        tmp_path / "first.log",
        tmp_path / "go-first",
    )
    second = _cli(
        ["--db", url, "resume", NAME],
        prefect_server,
        tmp_path,
        tmp_path / "second.log",
        tmp_path / "go-second",
    )
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_config(tmp_path)))
    (tmp_path / "go-first").touch()
    _kill_when_fine_tuning(first, url, tmp_path / "first.log")
    before = _done(url)
    (tmp_path / "go-second").touch()
    assert second.wait(timeout=900) == 3, (tmp_path / "second.log").read_text()[-5000:]
    jobs, after = _jobs(tmp_path), _done(url)
    assert len(jobs) == len(set(jobs)), "a finished QM job ran again"
    assert set(jobs) == after, "labels and finished QM jobs disagree"
    assert before <= after, "a stored label was lost"

    with session_scope(make_engine(url)) as session:
        campaign = campaigns.get_campaign(session, NAME)
        assert campaign.status == "budget_exhausted"
        open_labels = session.scalars(
            select(Label).where(Label.status.in_(["pending", "running"]))
        ).all()
        assert open_labels == [], "picks left open after the campaign stopped"
        picked = labels.labelled(session, campaign.id, ["train", "valid"])
        versions = session.scalars(select(ModelVersion).order_by(ModelVersion.id)).all()
        all_rounds = rounds.campaign_rounds(session, campaign)
    trained = [set(v.training_label_ids) for v in versions[1:]]
    done_picks = {label.id for _, label in picked}
    assert len(trained) == len(all_rounds) >= 3
    for earlier, later in itertools.pairwise(trained):
        assert earlier < later, "a model version's training set is not recorded exactly"
    assert trained[-1] == done_picks  # the last model trained on every label of the budget
    assert len(done_picks) == 22
    initial = {s["structure_id"] for s in all_rounds[0].selected}
    assert all(label.picked_by_model_id is not None for s, label in picked if s.id not in initial)
    reranked = [r.parameters["rerank"] for r in all_rounds if "rerank" in (r.parameters or {})]
    assert any(r["before"] != r["after"] for r in reranked), (
        f"no new model changed the queue: {reranked}"
    )


def test_max_ahead_below_the_labels_a_fine_tune_waits_for_is_refused():
    config = make_config({"schedule": "async", "streaming": {"max_ahead": 8, "train_every": 6}})
    assert config.streaming.max_ahead == 8
    with pytest.raises(ConfigError, match="streaming.max_ahead 5 is below the 6 new labels"):
        make_config({"schedule": "async", "streaming": {"max_ahead": 5, "train_every": 6}})
    with pytest.raises(ConfigError, match="streaming.max_ahead 9 is below the 10 new labels"):
        make_config({"schedule": "async", "streaming": {"max_ahead": 9}})  # batch_size 10


CAP = 7


@pytest.mark.slow
def test_no_label_is_picked_or_started_beyond_the_newest_models_training_set_and_max_ahead(
    prefect_server, tmp_path
):
    """Four workers and twelve open picks wanted (the starting model alone would pick the six
    beside the initial six that the budget leaves), a cap of seven: the database shows that
    every pick and every claim kept within the newest model's training set plus seven, and
    that the cap was reached."""
    from flows.campaign import campaign

    url = f"sqlite:///{tmp_path / 'c.db'}"
    config = replay_campaign_config(
        tmp_path,
        "capped",
        30,
        seed=6,
        schedule="async",
        streaming={"jobs_per_worker": 3, "train_every": 3, "max_ahead": CAP},
        oracle={"name": "replay", "latency": {"max_s": 20, "scale": 0.05}},
        qm={"timeout_s": 120, "max_parallel": 4},
        acquisition={"batch_size": 3},
        budgets={"max_rounds": 10, "max_labels": 12},
        targets={"energy_mae_mev_per_atom": 0.01, "force_mae_mev_per_a": 0.01, "confidence": None},
    )
    state = campaign(config=config, database_url=url, return_state=True)
    assert state.is_completed() and state.name == "Label budget exhausted", state
    with session_scope(make_engine(url)) as session:
        campaign_id = campaigns.get_campaign(session, "capped").id
        picks = queue.picks(session, campaign_id, None, status=["done", "failed"])
        claimed = {lab.id: lab.claimed_at for lab in session.scalars(select(Label))}
        versions = [
            (v.id, v.created_at, len(v.training_label_ids or []))
            for v in session.scalars(select(ModelVersion).order_by(ModelVersion.id))
        ]
    assert [p.status for p in picks] == ["done"] * 12  # a failed pick would leave the cap
    trained = {vid: size for vid, _, size in versions}
    # picks, in the order they were made (label ids): each within its picker's training set + CAP
    # (the initial set's six, picked by no model, are beyond the starting model's empty one)
    ahead = [
        rank + 1 - trained.get(p.picked_by_model_id, 0)
        for rank, p in enumerate(sorted(picks, key=lambda p: p.label_id))
    ]
    assert max(ahead) == CAP, ahead
    # claims, in the order workers started them: within the newest model's training set + CAP
    for rank, (when, _) in enumerate(sorted((claimed[p.label_id], p.label_id) for p in picks)):
        newest = max(size for _, created, size in versions if created <= when)
        assert rank + 1 <= newest + CAP, (rank + 1, newest, when)

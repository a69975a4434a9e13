"""Asynchronous rounds on the QM dispatch the synchronous ones use: Dask workers and a labelling
deployment claim from the same queue, and stop when the campaign's stream closes in the database.

The campaigns run in this process on the replay oracle (labels stored with the pool), the tiny
model and one-epoch fine-tunes; the QM workers run elsewhere: in the processes of a real Dask
LocalCluster, or in a flow run of the ``label`` deployment served by another process (what
``qm.deployment`` sends the labelling to, as a work pool's worker would run it). Each checks
that every label was computed once, in those processes, that no pick was left open, and that
every model version records its training set.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import replay_campaign_config, stop_process_group
from sqlalchemy import select, update

from db import (
    Label,
    LabelStatus,
    ModelVersion,
    campaigns,
    labels,
    make_engine,
    queue,
    rounds,
    session_scope,
)
from db.models import CampaignLease
from db.queue import STREAM

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, name: str, **qm) -> dict:
    # Labels that take up to 1 s (the quick start's PySCF times on a clock 20 times as fast),
    # so that several are in flight while a fine-tune runs; the label budget stops it.
    return replay_campaign_config(
        tmp_path,
        name,
        30,
        seed=6,
        schedule="async",
        streaming={"jobs_per_worker": 2, "train_every": 4},
        oracle={"name": "replay", "latency": {"max_s": 20, "scale": 0.05}},
        qm={"timeout_s": 120, "max_parallel": 2, **qm},
        acquisition={"batch_size": 4},
        budgets={"max_rounds": 10, "max_labels": 10},
        targets={"energy_mae_mev_per_atom": 0.01, "force_mae_mev_per_a": 0.01, "confidence": None},
    )


def _check_campaign(tmp_path: Path, url: str, name: str) -> set[str]:
    """Every label computed once and stored, no open pick, the stream closed, each model
    version's training set recorded; returns the label workers' names."""
    log = tmp_path / "runs" / name / "qm_jobs.jsonl"
    jobs = [json.loads(line)["label_id"] for line in log.read_text().splitlines()]
    with session_scope(make_engine(url)) as session:
        campaign = campaigns.get_campaign(session, name)
        all_labels = session.scalars(select(Label)).all()
        picked = labels.labelled(session, campaign.id, ["train", "valid"])
        versions = session.scalars(select(ModelVersion).order_by(ModelVersion.id)).all()
        all_rounds = rounds.campaign_rounds(session, campaign)
        stream = session.get(CampaignLease, name + STREAM)
    assert campaign.status == "budget_exhausted", campaign.stop_reason
    done = {lab.id for lab in all_labels if lab.status == LabelStatus.DONE}
    assert len(jobs) == len(set(jobs)), "a finished QM job ran again"
    assert set(jobs) == done, "labels and finished QM jobs disagree"
    assert [lab.id for lab in all_labels if lab.status in ("pending", "running")] == []
    assert len(picked) == 10
    trained = [set(v.training_label_ids) for v in versions[1:]]
    # streaming.train_on: batches: the initial set, then 4 more labels a model, as in sync rounds
    assert [len(t) for t in trained] == [6, 10] and len(all_rounds) == 2
    for earlier, later in itertools.pairwise(trained):
        assert earlier < later
    assert trained[-1] == {label.id for _, label in picked}
    assert stream is not None and stream.token is None, "the stream was left open"
    return {lab.worker for lab in all_labels}


def _pids(workers: set[str]) -> set[int]:
    return {labels.worker_process(w)[1] for w in workers}


@pytest.mark.slow
def test_async_rounds_label_on_dask_worker_processes(prefect_server, tmp_path):
    """A running Dask cluster (``qm.dask_address``) of two worker processes: every label ran
    in one of them."""
    import dask
    from distributed import Client, LocalCluster

    from flows.campaign import campaign

    url = f"sqlite:///{tmp_path / 'c.db'}"
    with dask.config.set({"distributed.worker.daemon": False}), LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster, Client(cluster) as client:
        worker_pids = set(client.run(os.getpid).values())
        config = _config(tmp_path, "dasked", task_runner="dask", dask_address=cluster.scheduler_address)
        state = campaign(config=config, database_url=url, return_state=True)
    assert state.is_completed() and state.name == "Label budget exhausted", state
    pids = _pids(_check_campaign(tmp_path, url, "dasked"))
    assert pids == worker_pids, "a label ran outside the cluster's two worker processes"


@pytest.mark.slow
def test_async_rounds_label_on_a_served_labelling_deployment(prefect_server, tmp_path):
    from flows.campaign import campaign

    env = {**os.environ, "PREFECT_API_URL": prefect_server, "OMP_NUM_THREADS": "1",
           "PREFECT_RUNNER_POLL_FREQUENCY": "1", "PYTHONPATH": str(REPO)}
    log = tmp_path / "served.log"
    with open(log, "w") as out:
        served = subprocess.Popen(
            [sys.executable, "-c", "from flows.label import label; label.serve(name='label')"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"sqlite:///{tmp_path / 'c.db'}"
    try:
        _wait_for_deployment("label/label", served, log)
        state = campaign(
            config=_config(tmp_path, "deployed", deployment="label/label"),
            database_url=url,
            return_state=True,
        )
    finally:
        stop_process_group(served)
    assert state.is_completed() and state.name == "Label budget exhausted", f"{state}\n{log.read_text()[-4000:]}"
    workers = _check_campaign(tmp_path, url, "deployed")
    assert os.getpid() not in _pids(workers), "a label ran in the campaign's process"
    from test_deployment import _deployment_runs

    runs = _deployment_runs(prefect_server, "label", limit=20)
    streamed = [r for r in runs if r["parameters"].get("stream")]
    assert streamed and all(r["state_type"] == "COMPLETED" for r in runs), [
        (r["name"], r["state_type"]) for r in runs
    ]


def _wait_for_deployment(name: str, served: subprocess.Popen, log: Path) -> None:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + 180
    with get_client(sync_client=True) as client:
        while True:
            with contextlib.suppress(Exception):
                client.read_deployment_by_name(name)
                return
            assert served.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)


def test_a_streaming_worker_claims_only_while_its_stream_is_open(database_url, no_run_logger):
    """Closed, replaced by a newer stream, or its campaign's lease expired: the worker ends
    without claiming; open: it claims in rank order."""
    from test_async_rounds import LEVEL, _queued_campaign

    from tasks.label import StreamClosed, claim_next

    engine, campaign_id, initial, picked, _ = _queued_campaign(database_url, 4)
    key = labels.level_key(LEVEL)
    with session_scope(engine) as session:
        first = queue.open_stream(session, campaign_id)
    assert claim_next(engine, campaign_id, key, "w", first)[0] == initial[0]
    with session_scope(engine) as session:
        second = queue.open_stream(session, campaign_id)  # a new run of the campaign
    assert isinstance(claim_next(engine, campaign_id, key, "w", first), StreamClosed)
    assert claim_next(engine, campaign_id, key, "w", second)[0] == picked[0]
    with session_scope(engine) as session:  # the run that opened it holds an expired lease
        session.add(CampaignLease(name="queue", token="t", expires_at=_past()))
    assert isinstance(claim_next(engine, campaign_id, key, "w", second), StreamClosed)
    with session_scope(engine) as session:
        session.execute(update(CampaignLease).where(CampaignLease.name == "queue")
                        .values(expires_at=_past(-60)))
    assert claim_next(engine, campaign_id, key, "w", second)[0] == picked[1]
    with session_scope(engine) as session:
        assert queue.close_stream(session, campaign_id, second)
        assert not queue.close_stream(session, campaign_id, first)
    assert isinstance(claim_next(engine, campaign_id, key, "w", second), StreamClosed)
    with session_scope(engine) as session:  # the closed stream's refused claims were rolled back
        running = session.scalars(select(Label.id).where(Label.status == "running")).all()
    assert sorted(running) == sorted([initial[0], picked[0], picked[1]])
    engine.dispose()


def _past(seconds: float = 60):
    from datetime import datetime, timedelta, timezone

    return datetime.now(timezone.utc) - timedelta(seconds=seconds)

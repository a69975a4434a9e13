"""One live run per campaign, with real `tangentlab` processes on one database.

Two `start`s at the same instant: one runs, the other exits 2 naming it. The runner is
SIGKILLed while it labels; two `resume`s at the same instant: one takes the dead run's lease
over, the other exits 2 naming the new holder; a `start` while that resume runs exits 2 naming
it too; a `resume --wait` waits for it and then finds nothing left to do. In the end no QM job
ran twice, no label was lost, each round has exactly one model version, and the killed run and
its labelling subflow show Crashed in the UI. On SQLite and, where ``TANGENTLAB_TEST_POSTGRES_URL`` is set,
PostgreSQL.

The `tangentlab` processes are started ahead of their turn: each imports what the command
needs, then waits for a signal file before it runs the command (``python -m cli``'s `main`,
in the same process). Two processes released together then start at the same instant, and the
imports of the later ones run while the earlier ones work.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from conftest import (
    HOLD_QM_JOBS_AFTER,
    RELEASE_QM_JOBS,
    STARTED_PROCESSES,
    cli_argv,
    stop_process_group,
    xtb_campaign_config,
)
from sqlalchemy import select

from db import Label, ModelVersion, campaigns, make_engine, reports, session_scope

pytestmark = pytest.mark.slow

NAME = "leased"


def _cli(args: list[str], api_url: str, url: str, cwd: Path, log: Path,
         go: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`tangentlab --db URL ARGS`; with ``go``, imported ahead and run once ``go`` exists
    (see ``_released``); ``env`` adds to its environment."""
    env = {**os.environ, "PREFECT_API_URL": api_url, "OMP_NUM_THREADS": "1",
           "PREFECT_LOGGING_LEVEL": "INFO", "TANGENTLAB_LEASE_HEARTBEAT_S": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **(env or {})}
    out = open(log, "w")  # noqa: SIM115  (the child writes to it until it ends)
    process = subprocess.Popen([sys.executable, *cli_argv(go, log.stem), "--db", url, *args],
                               cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True)
    STARTED_PROCESSES.append(process)
    return process


def _released(go: Path, processes: dict[str, subprocess.Popen], timeout: float = 600) -> None:
    """Wait until every process (by the stem of its log) is ready, then start them together."""
    deadline = time.time() + timeout
    for stem, process in processes.items():
        while not Path(f"{go}.ready-{stem}").exists():
            assert process.poll() is None and time.time() < deadline, f"{stem} did not get ready"
            time.sleep(0.05)
    go.touch()


def _one_round_campaign(tmp_path: Path, name: str, seed: int, max_labels: int = 6) -> None:
    """``c.yaml``: a tiny xTB campaign whose targets are never met and whose label budget is
    spent by the initial set, so that it stops after its first fine-tune (round 0) (xTB, not
    replayed labels: the runner is killed while a real QM job runs). A larger ``max_labels``
    adds acquisition round 1 (4 labels and a second fine-tune)."""
    config = xtb_campaign_config(
        tmp_path, name, 20, seed=seed, acquisition={"method": "activation", "batch_size": 4},
        budgets={"max_rounds": 1, "max_labels": max_labels},
        targets={"energy_mae_mev_per_atom": 0.01, "force_mae_mev_per_a": 0.01})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))


def _first_to_end(processes: list[subprocess.Popen], timeout: float = 600) -> subprocess.Popen:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for process in processes:
            if process.poll() is not None:
                return process
        time.sleep(0.1)
    raise AssertionError("no process ended")


PREFECT_RECORD = re.compile(r"\d\d:\d\d:\d\d\.\d+ \| [A-Z]+ +\| ")


def _check_refused(log: Path, holder_pid: int) -> None:
    """The loser's last line names the holder; no traceback. Prefect's own log records (its
    events worker may still flush at exit, after the error, on a loaded machine) are skipped."""
    text = log.read_text()
    assert "Traceback" not in text, text[-5000:]
    last = [line for line in text.rstrip().splitlines() if not PREFECT_RECORD.match(line)][-1]
    host = re.escape(socket.gethostname())
    assert re.match(rf"error: campaign '{NAME}' is being run by pid {holder_pid} on {host} "
                    r"since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", last), last


def _jobs(tmp_path: Path) -> list[int]:
    log = tmp_path / "runs" / NAME / "qm_jobs.jsonl"
    if not log.exists():
        return []
    return [json.loads(line)["label_id"] for line in log.read_text().splitlines()]


def _done(url: str) -> set[int]:
    with session_scope(make_engine(url)) as session:
        return set(session.scalars(select(Label.id).where(Label.status == "done")))


def _campaign_runs(since, prefix: str | None = None) -> list[str]:
    """States of this test's campaign flow runs (the session's server also holds the runs of
    the other backend's parametrisation, under the same name), or of its runs whose name
    starts with ``prefix``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    named = (FlowRunFilterName(any_=[f"campaign {NAME}"]) if prefix is None
             else FlowRunFilterName(like_=prefix))
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=named),
                                     sort=FlowRunSort.START_TIME_ASC)
        runs = [r for r in runs if prefix is None or r.name.startswith(prefix)]
    return sorted(r.state.type.value for r in runs if r.created is not None and r.created >= since)


def test_one_live_run_per_campaign(prefect_server, database_url, tmp_path):
    url = database_url
    started = datetime.now(timezone.utc)

    # 1. Two starts at the same instant, on a database neither has seen: one runs. (They
    # import while the campaign's configuration is written.) The one that runs holds in its
    # third QM job (conftest.CLI_ON_SIGNAL).
    names = ["start0", "start1"]
    starts = [_cli(["start", "c.yaml"], prefect_server, url, tmp_path, tmp_path / f"{stem}.log",
                   tmp_path / "go-start", env={HOLD_QM_JOBS_AFTER: "2"}) for stem in names]
    _one_round_campaign(tmp_path, NAME, seed=3)
    _released(tmp_path / "go-start", dict(zip(names, starts)))
    # The resumes, the late start and the waiter import meanwhile.
    later = {stem: _cli(args, prefect_server, url, tmp_path, tmp_path / f"{stem}.log", tmp_path / go)
             for stem, go, args in [("resume0", "go-resume", ["resume", NAME]),
                                    ("resume1", "go-resume", ["resume", NAME]),
                                    ("late-start", "go-late", ["start", "c.yaml"]),
                                    ("wait", "go-late", ["resume", NAME, "--wait"])]}
    loser = _first_to_end(starts)
    winner = starts[1 - starts.index(loser)]
    loser_log = tmp_path / f"start{starts.index(loser)}.log"
    assert loser.returncode == 2, loser_log.read_text()[-5000:]
    _check_refused(loser_log, winner.pid)

    # 2. The runner is SIGKILLed while it labels, early (2 QM jobs finished, the third one
    # running): the resume that takes over then has most of the labelling and a fine-tune
    # left, long enough for the `resume --wait` of step 4 to find it running (the campaign
    # ends after round 0).
    deadline = time.time() + 600
    while winner.poll() is None and time.time() < deadline and len(_jobs(tmp_path)) < 2:
        time.sleep(0.05)
    winner_log = tmp_path / f"start{starts.index(winner)}.log"
    assert winner.poll() is None, winner_log.read_text()[-5000:]
    os.killpg(winner.pid, signal.SIGKILL)
    winner.wait(timeout=60)
    # It marked nothing Crashed: the refused start beside it was alive.
    assert "Crashed" not in winner_log.read_text()
    done_before = _done(url)
    assert set(_jobs(tmp_path)) == done_before and len(done_before) == 2

    # 3. Two resumes at the same instant: one takes the dead run's lease, the other is refused.
    resumes = [later["resume0"], later["resume1"]]
    _released(tmp_path / "go-resume", {"resume0": resumes[0], "resume1": resumes[1]})
    refused = _first_to_end(resumes)
    runner = resumes[1 - resumes.index(refused)]
    refused_log = tmp_path / f"resume{resumes.index(refused)}.log"
    assert refused.returncode == 2, refused_log.read_text()[-5000:]
    _check_refused(refused_log, runner.pid)

    # 4. A start of the same campaign while the resume runs (a start finds the campaign stored
    # and would resume it): refused, naming the runner. A resume with --wait queues behind the
    # runner, then finds nothing left to do.
    late_start, waiter = later["late-start"], later["wait"]
    _released(tmp_path / "go-late", {"late-start": late_start, "wait": waiter})
    assert late_start.wait(timeout=600) == 2, (tmp_path / "late-start.log").read_text()[-5000:]
    _check_refused(tmp_path / "late-start.log", runner.pid)
    runner_log = tmp_path / f"resume{resumes.index(runner)}.log"
    assert runner.wait(timeout=900) == 3, runner_log.read_text()[-5000:]  # the label budget
    assert waiter.wait(timeout=600) == 3, (tmp_path / "wait.log").read_text()[-5000:]
    waited = (tmp_path / "wait.log").read_text()
    assert f"waiting for the run of campaign '{NAME}' by pid {runner.pid}" in waited
    marked = rf"marked [12] flow runs left Running by a killed process as Crashed: campaign {NAME}"
    assert re.search(marked, runner_log.read_text())  # the killed run (and its label subflow)
    assert "Crashed" not in waited

    # No QM job ran twice, no label was lost, one model version per round.
    jobs = _jobs(tmp_path)
    assert len(jobs) == len(set(jobs)), "a QM job ran twice"
    done = _done(url)
    assert set(jobs) == done and done_before <= done
    with session_scope(make_engine(url)) as session:
        versions = list(session.scalars(
            select(ModelVersion.round_number).order_by(ModelVersion.id)))
    assert versions == [None, 0]
    with session_scope(make_engine(url)) as session:
        report = reports.campaign_report(session, campaigns.get_campaign(session, NAME))
    assert report["status"] == "budget_exhausted"
    assert [r["status"] for r in report["rounds"]] == ["evaluated"]
    assert len(done) + report["labels"]["failed"] == 6 + 6  # test, initial
    # The killed run shows Crashed (the lease holder that replaced it marked it), the three
    # refused runs Failed, the runner and the waiter Completed; none is left Running. The
    # labelling subflow the killed run was in shows Crashed too.
    assert _campaign_runs(started) == ["COMPLETED", "COMPLETED", "CRASHED", "FAILED", "FAILED", "FAILED"]
    labelling = _campaign_runs(started, f"label {NAME}: ")
    assert "CRASHED" in labelling and "RUNNING" not in labelling, labelling


def test_a_scheduled_nightly_run_overlapping_a_cli_run_is_refused(prefect_server, tmp_path):
    """`python -m flows.serve --nightly` serves the campaign's nightly resume; its scheduled run
    comes while a `tangentlab start` of that campaign labels. The nightly run fails at once
    with a message naming the CLI run; the CLI run goes on undisturbed (no flow run of its
    marked Crashed, no QM job twice, no label lost, one model version per round).

    On SQLite: the refusal is the campaign lease's, which `test_one_live_run_per_campaign` and
    tests/test_leases.py check on PostgreSQL too."""
    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    from db import leases

    name = "nightly-overlap"
    database_url = f"sqlite:///{tmp_path / 'c.db'}"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "TANGENTLAB_DATABASE_URL": database_url,
           "PREFECT_RUNNER_POLL_FREQUENCY": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root),
           "TANGENTLAB_LEASE_HEARTBEAT_S": "1"}
    with open(tmp_path / "serve.log", "w") as out:
        serve = subprocess.Popen([sys.executable, "-m", "flows.serve", "--nightly", name, "--cron", "0 1 1 1 *",
                                  "--no-zombie-automation"], cwd=root, env=env, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # The CLI run must outlast the nightly run's start (a served flow run starts in a new
        # process): it holds in its third QM job until the nightly run has given up
        # (conftest.CLI_ON_SIGNAL), then runs rounds 0 and 1. Written while the served process
        # starts.
        _one_round_campaign(tmp_path, name, seed=4, max_labels=30)
        cli = _cli(["start", "c.yaml"], prefect_server, database_url, tmp_path, tmp_path / "cli.log",
                   tmp_path / "go-cli", env={HOLD_QM_JOBS_AFTER: "2",
                                             RELEASE_QM_JOBS: str(tmp_path / "release")})
        _released(tmp_path / "go-cli", {"cli": cli})
        engine = make_engine(database_url)
        deadline = time.time() + 600
        while True:  # the CLI run holds the campaign and the nightly deployment is served
            assert cli.poll() is None, (tmp_path / "cli.log").read_text()[-5000:]
            assert serve.poll() is None and time.time() < deadline, (tmp_path / "serve.log").read_text()[-5000:]
            try:
                holder = leases.current_holder(engine, name)
            except Exception:  # no lease table yet
                holder = None
            with get_client(sync_client=True) as client:
                try:
                    deployment = client.read_deployment_by_name(f"campaign/{name}-nightly")
                except Exception:  # not registered yet
                    deployment = None
            if holder is not None and deployment is not None:
                break
            time.sleep(0.2)
        assert holder.pid == cli.pid
        with get_client(sync_client=True) as client:  # what the scheduler makes at 01:00
            run = client.create_flow_run_from_deployment(deployment.id, state=Scheduled())
            while True:
                state = client.read_flow_run(run.id).state
                if state.is_final() or time.time() > deadline:
                    break
                time.sleep(0.5)
        assert state.is_failed(), (state, (tmp_path / "serve.log").read_text()[-5000:])
        assert re.search(rf"campaign '{name}' is being run by pid {cli.pid} on {re.escape(socket.gethostname())}",
                         state.message), state.message
        assert cli.poll() is None  # the CLI run was still running when the nightly one gave up
        (tmp_path / "release").touch()
        assert cli.wait(timeout=900) == 3, (tmp_path / "cli.log").read_text()[-5000:]  # the label budget
    finally:
        stop_process_group(serve)
    log = (tmp_path / "cli.log").read_text()
    assert "Crashed" not in log and "Traceback" not in log
    jobs = [json.loads(line)["label_id"] for line in
            (tmp_path / "runs" / name / "qm_jobs.jsonl").read_text().splitlines()]
    assert len(jobs) == len(set(jobs)), "a QM job ran twice"
    with session_scope(engine) as session:
        done = set(session.scalars(select(Label.id).where(Label.status == "done")))
        versions = list(session.scalars(select(ModelVersion.round_number).order_by(ModelVersion.id)))
    assert set(jobs) == done
    assert versions == [None, 0, 1]

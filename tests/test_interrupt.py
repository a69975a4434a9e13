"""Ctrl-C through a pseudo-terminal, as a user presses it, with Prefect's temporary server,
and SIGTERM: one campaign, stopped three times.

A Ctrl-C pressed while the first QM job starts (the fork server that starts QM jobs still
importing) reaches the campaign process only: the job finishes and is stored, the state is
recorded (no label left `running`, no attempt counted, the lease free), the temporary server
and the fork server are gone, the way to resume is printed. Two Ctrl-Cs exit at once. SIGTERM
during a fine-tune stops like Ctrl-C after that fine-tune, naming it. No QM job ran twice.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import HOLD_QM_JOBS_AFTER, STARTED_PROCESSES, cli_argv, xtb_campaign_config
from sqlalchemy import select

from db import Label, ModelVersion, leases, make_engine, session_scope

pytestmark = pytest.mark.slow

NAME = "interrupted"
REPO = Path(__file__).resolve().parents[1]


class Terminal:
    """A `tangentlab` process on a pseudo-terminal of its own (its controlling terminal); with
    ``go``, imported ahead and run once the file ``go`` exists (``CLI_ON_SIGNAL``)."""

    def __init__(
        self, args: list[str], cwd: Path, env: dict[str, str], go: Path | None = None
    ) -> None:
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(
            [sys.executable, *cli_argv(go, "" if go is None else go.name), *args], cwd=cwd,
            env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        STARTED_PROCESSES.append(self.process)
        os.close(slave)
        self.output = bytearray()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # the terminal closed
                return
            if not chunk:
                return
            self.output.extend(chunk)

    def text(self) -> str:
        return self.output.decode(errors="replace")

    def ctrl_c(self) -> None:
        os.write(self.master, b"\x03")  # the line discipline sends SIGINT to the foreground group

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            raise AssertionError(f"hung after Ctrl-C; output:\n{self.text()[-5000:]}") from None


def _jobs(tmp_path: Path) -> list[int]:
    log = tmp_path / "runs" / NAME / "qm_jobs.jsonl"
    if not log.exists():
        return []
    return [json.loads(line)["label_id"] for line in log.read_text().splitlines()]


def _labels(url: str) -> dict[str, set[int]]:
    with session_scope(make_engine(url)) as session:
        rows = session.execute(select(Label.id, Label.status)).all()
    found: dict[str, set[int]] = {}
    for label_id, status in rows:
        found.setdefault(str(status), set()).add(label_id)
    return found


def _wait_for_jobs(terminal: Terminal, tmp_path: Path, more_than: int) -> None:
    deadline = time.time() + 600
    while len(_jobs(tmp_path)) <= more_than:
        assert terminal.process.poll() is None and time.time() < deadline, terminal.text()[-5000:]
        time.sleep(0.05)


def _temporary_servers(prefect_home: Path) -> list[int]:
    """Pids of the Prefect API servers started with this PREFECT_HOME."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if b"prefect.server.api.server:create_app" in command and \
                f"PREFECT_HOME={prefect_home}".encode() in environ.split(b"\0"):
            found.append(int(proc.name))
    return found


def _children(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        if proc.name.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(proc.name))
    return found


def _fork_server(pid: int) -> int | None:
    """The QM fork server started by process ``pid``, once it exists."""
    for child in _children(pid):
        try:
            if b"multiprocessing.forkserver" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
        except OSError:
            continue
    return None


def _attempts(url: str) -> dict[int, int]:
    with session_scope(make_engine(url)) as session:
        return dict(session.execute(select(Label.id, Label.attempts)).all())


def test_ctrl_c_stops_cleanly_and_twice_at_once(tmp_path):
    """Three runs of one campaign, each a process of its own with its own temporary server:
    a start stopped by Ctrl-C while its first QM job starts, a resume stopped by two Ctrl-Cs
    while it labels, a resume stopped by SIGTERM during its first fine-tune."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), OMP_NUM_THREADS="1",
               PREFECT_LOGGING_LEVEL="INFO", PYTHONPATH=str(REPO))
    # Each run is started ahead of its turn: it imports while the test or the run before it
    # works, and runs its command (as `tangentlab` does) when its file ``go-*`` is written.
    first = Terminal(["--db", url, "start", "c.yaml"], tmp_path, env, go=tmp_path / "go-first")
    # The second holds in its second QM job (conftest.CLI_ON_SIGNAL): both Ctrl-Cs land while
    # a job runs, however fast the xTB jobs are.
    second = Terminal(["--db", url, "resume", NAME], tmp_path, {**env, HOLD_QM_JOBS_AFTER: "1"},
                      go=tmp_path / "go-second")
    config = xtb_campaign_config(
        tmp_path, NAME, 20, seed=4, acquisition={"method": "activation", "batch_size": 4},
        budgets={"max_rounds": 1, "max_labels": 30},
        targets={"energy_mae_mev_per_atom": 0.01, "force_mae_mev_per_a": 0.01},  # never met
        qm={"timeout_s": 300, "max_attempts": 1},  # a failed attempt would show as a failed label
        # a few seconds: building the model to train takes longer than SIGTERM takes to land
        finetune={"max_epochs": 2, "patience": 2, "min_steps_per_epoch": 4})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))

    # 1. One Ctrl-C while the first QM job starts (its label claimed, the fork server importing
    # PySCF and quacc): the job finishes and is stored, then the run stops and says how to go on.
    (tmp_path / "go-first").touch()
    deadline = time.time() + 600
    while (fork_server := _fork_server(first.process.pid)) is None:
        assert first.process.poll() is None and time.time() < deadline, first.text()[-3000:]
        time.sleep(0.02)
    servers = _temporary_servers(tmp_path / "prefect")
    state = _labels(url)
    assert len(state.get("running", ())) == 1 and not state.get("done"), state  # job starting
    first.ctrl_c()
    assert first.wait(timeout=600) == 130, first.text()[-5000:]
    out = first.text()
    assert "stopping after the QM jobs running now" in out, out[-5000:]
    assert f"to continue: tangentlab --db {url} resume {NAME}" in out, out[-5000:]
    assert "Traceback" not in out and "ConnectError" not in out and "EOFError" not in out, out[-5000:]
    assert servers, "no temporary Prefect server was seen"
    assert not any(Path(f"/proc/{pid}").exists() for pid in servers), "the server outlived the run"
    state = _labels(url)
    assert not state.get("running") and not state.get("failed"), state  # nothing left claimed
    jobs = _jobs(tmp_path)
    assert jobs and set(jobs) == state["done"], (jobs, state)  # the starting job was stored
    assert set(_attempts(url).values()) == {0}  # no attempt counted
    assert state.get("pending"), state  # it stopped before labelling everything
    assert leases.current_holder(make_engine(url), NAME) is None  # the lease was released
    deadline = time.time() + 30  # the fork server ends when the campaign process is gone
    while Path(f"/proc/{fork_server}").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{fork_server}").exists()

    # 2. Two Ctrl-Cs: the second exits at once.
    (tmp_path / "go-second").touch()
    third = Terminal(["--db", url, "resume", NAME], tmp_path, env, go=tmp_path / "go-third")
    _wait_for_jobs(second, tmp_path, len(_jobs(tmp_path)))
    servers = _temporary_servers(tmp_path / "prefect")
    second.ctrl_c()
    # The second Ctrl-C once the first is handled (its message shown), while the held job
    # still runs.
    deadline = time.time() + 60
    while "stopping after the QM jobs running now" not in second.text():
        assert second.process.poll() is None and time.time() < deadline, second.text()[-5000:]
        time.sleep(0.005)
    pressed = time.monotonic()
    second.ctrl_c()
    assert second.wait(timeout=60) == 130, second.text()[-5000:]
    assert time.monotonic() - pressed < 15, second.text()[-5000:]
    assert "stopped at once" in second.text(), second.text()[-5000:]
    deadline = time.time() + 30  # the server gets SIGTERM when its parent dies
    while any(Path(f"/proc/{pid}").exists() for pid in servers) and time.time() < deadline:
        time.sleep(0.2)
    assert servers and not any(Path(f"/proc/{pid}").exists() for pid in servers)

    # 3. SIGTERM to the resumed run's process group (what `kill -- -PGID` or a service manager
    # sends) during its first fine-tune, after it labelled the rest of the initial and test
    # sets: the fine-tune finishes and is registered, the message names it, the command prints
    # how to resume and exits 143, without a traceback.
    (tmp_path / "go-third").touch()
    deadline = time.time() + 900
    while "round 0: fine-tuning model" not in third.text():
        assert third.process.poll() is None and time.time() < deadline, third.text()[-5000:]
        time.sleep(0.05)
    os.killpg(third.process.pid, signal.SIGTERM)
    assert third.wait(timeout=600) == 143, third.text()[-5000:]
    out = third.text()
    assert "SIGTERM: stopping after the fine-tune round 0 running now" in out, out[-5000:]
    assert "QM jobs running now" not in out, out[-5000:]
    assert f"campaign {NAME!r} stopped by SIGTERM between two steps" in out, out[-5000:]
    assert f"to continue: tangentlab --db {url} resume {NAME}" in out, out[-5000:]
    assert "Traceback" not in out, out[-5000:]
    # Prefect's last logs reached the temporary server before it stopped (no late send to a
    # server that is gone after the run).
    assert "Error logging to API" not in out, out[-3000:]
    with session_scope(make_engine(url)) as session:
        rounds = list(session.scalars(select(ModelVersion.round_number).order_by(ModelVersion.id)))
    assert rounds == [None, 0]  # the fine-tune that ran was finished and registered
    jobs = _jobs(tmp_path)
    assert len(jobs) == len(set(jobs)), "a QM job ran twice"
    state = _labels(url)
    assert set(jobs) == state["done"] and not state.get("running"), state
    assert leases.current_holder(make_engine(url), NAME) is None

"""Ctrl-C through a pseudo-terminal, as a user presses it, with Prefect's temporary server.

The first Ctrl-C stops the campaign after its running QM job: the state is recorded (no label
left `running`, the lease free), the temporary server is gone, the way to resume is printed.
Two Ctrl-Cs exit at once. A resume then finishes the campaign with no QM job run twice.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import xtb_campaign_config
from sqlalchemy import select

from db import Label, ModelVersion, leases, make_engine, session_scope

pytestmark = pytest.mark.slow

NAME = "interrupted"
REPO = Path(__file__).resolve().parents[1]


class Terminal:
    """A `tangentlab` process on a pseudo-terminal of its own (its controlling terminal)."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli", *args], cwd=cwd, env=env, stdin=slave, stdout=slave,
            stderr=slave, start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
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


def test_ctrl_c_stops_cleanly_and_twice_at_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    config = xtb_campaign_config(
        tmp_path, NAME, 20, seed=4, acquisition={"method": "activation", "batch_size": 4},
        budgets={"max_rounds": 1, "max_labels": 30},
        targets={"energy_mae_mev_per_atom": 0.01, "force_mae_mev_per_a": 0.01},  # never met
        finetune={"max_epochs": 3, "patience": 3, "min_steps_per_epoch": 4})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), OMP_NUM_THREADS="1",
               PREFECT_LOGGING_LEVEL="INFO", PYTHONPATH=str(REPO))

    # 1. One Ctrl-C while labelling: it stops after the running job, records it, says how to go on.
    first = Terminal(["--db", url, "start", "c.yaml"], tmp_path, env)
    _wait_for_jobs(first, tmp_path, 0)
    servers = _temporary_servers(tmp_path / "prefect")
    first.ctrl_c()
    assert first.wait(timeout=300) == 130, first.text()[-5000:]
    out = first.text()
    assert "stopping after the QM jobs running now" in out, out[-5000:]
    assert f"to continue: tangentlab --db {url} resume {NAME}" in out, out[-5000:]
    assert "Traceback" not in out and "ConnectError" not in out, out[-5000:]
    assert servers, "no temporary Prefect server was seen"
    assert not any(Path(f"/proc/{pid}").exists() for pid in servers), "the server outlived the run"
    state = _labels(url)
    assert not state.get("running"), state  # nothing left claimed
    assert set(_jobs(tmp_path)) == state["done"]
    assert state.get("pending"), state  # it stopped before labelling everything
    assert leases.current_holder(make_engine(url), NAME) is None  # the lease was released

    # 2. Two Ctrl-Cs: the second exits at once.
    second = Terminal(["--db", url, "resume", NAME], tmp_path, env)
    _wait_for_jobs(second, tmp_path, len(_jobs(tmp_path)))
    servers = _temporary_servers(tmp_path / "prefect")
    second.ctrl_c()
    time.sleep(0.5)
    pressed = time.monotonic()
    second.ctrl_c()
    assert second.wait(timeout=60) == 130, second.text()[-5000:]
    assert time.monotonic() - pressed < 15, second.text()[-5000:]
    assert "stopped at once" in second.text(), second.text()[-5000:]
    deadline = time.time() + 30  # the server gets SIGTERM when its parent dies
    while any(Path(f"/proc/{pid}").exists() for pid in servers) and time.time() < deadline:
        time.sleep(0.2)
    assert servers and not any(Path(f"/proc/{pid}").exists() for pid in servers)

    # 3. A resume finishes it: no QM job ran twice, one model version per round.
    third = subprocess.run([sys.executable, "-m", "cli", "--db", url, "resume", NAME], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=900)
    assert third.returncode == 3, (third.stdout + third.stderr)[-5000:]
    # Prefect's last logs reached the temporary server before it stopped (no late send to a
    # server that is gone after the result).
    assert "Error logging to API" not in third.stdout + third.stderr, (third.stdout + third.stderr)[-3000:]
    jobs = _jobs(tmp_path)
    assert len(jobs) == len(set(jobs)), "a QM job ran twice"
    assert set(jobs) == _labels(url)["done"]
    with session_scope(make_engine(url)) as session:
        rounds = list(session.scalars(select(ModelVersion.round_number).order_by(ModelVersion.id)))
    assert rounds == [None, 0, 1]

"""Ctrl-C during a campaign: the first stops it cleanly, the second at once; nothing hangs.

A terminal's Ctrl-C sends SIGINT to its whole foreground process group. Prefect's temporary
API server would get it too and die first, leaving the flow unable to report anything. So the
temporary server runs in a session of its own (and dies with this process, Linux), the first
SIGINT only asks the campaign to stop after its current QM jobs (:mod:`tasks.interrupt`), and
the server is stopped last, after the flow recorded its end. The second SIGINT kills the QM
jobs still running (they are in process groups of their own) and exits with code 130.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import prefect
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import PREFECT_API_URL, get_current_settings

from tasks.interrupt import request_stop

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with suppress(OSError, AttributeError):  # not Linux: the server outlives a killed parent
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class _SessionServer(SubprocessASGIServer):
    """Prefect's temporary server, out of the terminal's reach (same command as Prefect's)."""

    def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
        server_env = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                      "PREFECT__SERVER_FINAL": "1"}
        return subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent),
             "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "error", "--lifespan", "on"],
            env={**os.environ, **server_env,
                 **get_current_settings().to_environment_variables(exclude_unset=True)},
            start_new_session=True, preexec_fn=_die_with_parent)


def _drain_prefect_workers() -> None:
    """Send the logs and events Prefect still holds before the temporary server stops; else they
    are sent at exit, to a server that is gone ("Error logging to API ... All connection
    attempts failed" after the campaign's result)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with suppress(Exception):  # monitoring never fails the command
            worker.drain_all(timeout=10)


def _kill_qm_jobs() -> None:
    for child in multiprocessing.active_children():
        try:
            os.killpg(child.pid, signal.SIGKILL)  # a QM job's own process group
        except (ProcessLookupError, PermissionError):
            child.kill()


@contextmanager
def ctrl_c_stops_cleanly(resume_hint: str) -> Iterator[None]:
    """
    Within the block, the first SIGINT asks for a clean stop, the second exits at once.

    Parameters
    ----------
    resume_hint
        The command that continues the campaign, printed on either stop.
    """
    server = None
    if not PREFECT_API_URL.value():  # Prefect will start a temporary server: make it ours
        server = _SessionServer()
    pressed = 0

    def on_sigint(_signum: int, _frame: Any) -> None:
        nonlocal pressed
        pressed += 1
        if pressed == 1:
            request_stop()
            print("\nstopping after the QM jobs running now (nothing new starts); press Ctrl-C "
                  "again to exit at once", file=sys.stderr, flush=True)
            return
        _kill_qm_jobs()
        print(f"\nstopped at once; the jobs that were running run again on resume: {resume_hint}",
              file=sys.stderr, flush=True)
        os._exit(EXIT_INTERRUPTED)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if server is not None:
            _drain_prefect_workers()  # the run's last logs and events reach the server first
            server.stop()  # last: the flow has recorded its end

"""Ctrl-C or SIGTERM during a campaign: the first stops it cleanly, the second at once.

A terminal's Ctrl-C sends SIGINT to its whole foreground process group. Prefect's temporary
API server would get it too and die first, leaving the flow unable to report anything. So the
temporary server runs in a session of its own (and dies with this process, Linux), as does the
fork server of the QM jobs (`tangentlab.oracles.isolation`), so the signal reaches this process
alone. The first SIGINT or SIGTERM only asks the campaign to stop after the step running now
(:mod:`tasks.interrupt`), and the server is stopped last, after the flow recorded its end. The
second kills the QM jobs still running (they are not counted as failed attempts) and exits at
once, with code 130 (SIGINT) or 143 (SIGTERM), as shells report a process ended by them.
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

from tangentlab.oracles.isolation import kill_running_jobs
from tasks.interrupt import request_stop, stop_reason

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM
_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}
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
    kill_running_jobs()  # tangentlab's QM jobs: not recorded as failed attempts
    for child in multiprocessing.active_children():  # any other child process
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            child.kill()


def exit_code() -> int:
    """The exit code of a campaign stopped by a signal: 143 after SIGTERM, else 130."""
    return EXIT_TERMINATED if stop_reason() == "SIGTERM" else EXIT_INTERRUPTED


def _say(text: str) -> None:
    """Write to stderr directly: inside a flow run Prefect turns `print` into log records."""
    with suppress(OSError):
        os.write(2, text.encode())


def running_step() -> str:
    """What this process is running now, in the words of its Prefect runs: ``QM jobs`` in a
    labelling flow, the task run's name (``fine-tune round 2``) in a task, else ``step``."""
    from prefect.context import FlowRunContext, TaskRunContext

    with suppress(Exception):  # a signal handler never fails
        task = TaskRunContext.get()
        if task is not None:
            return task.task_run.name
        flow = FlowRunContext.get()
        if flow is not None and flow.flow.name == "label":
            return "QM jobs"
    return "step"


def _take_prefects_sigterm(handler: Any) -> Any:
    """Make Prefect's flow engine install ``handler`` for SIGTERM; returns what to restore.

    During every flow run Prefect replaces the SIGTERM handler by one that raises
    ``TerminationSignal`` in the middle of the running step (and then kills the process with
    the previous handler). For a command-line run that is a crash, not a stop: the engine
    installs the handler it finds under this name, so it installs ours.
    """
    try:
        import prefect.utilities.engine as engine
    except ImportError:
        return None
    previous = getattr(engine, "_prefect_sigterm_handler", None)
    if previous is not None:
        engine._prefect_sigterm_handler = handler
    return previous


@contextmanager
def ctrl_c_stops_cleanly(resume_hint: str) -> Iterator[None]:
    """
    Within the block, the first SIGINT or SIGTERM asks for a clean stop, the second exits at once.

    Parameters
    ----------
    resume_hint
        The command that continues the campaign, printed on either stop.
    """
    server = None
    if not PREFECT_API_URL.value():  # Prefect will start a temporary server: make it ours
        server = _SessionServer()
    received = 0

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal received
        received += 1
        name = _NAMES.get(signum, f"signal {signum}")
        if received == 1:
            request_stop(name)
            prefix, again = ("", "press Ctrl-C again") if signum == signal.SIGINT else (
                f"{name}: ", f"send {name} again")
            _say(f"\n{prefix}stopping after the {running_step()} running now (nothing new "
                 f"starts); {again} to exit at once\n")
            return
        _kill_qm_jobs()
        _say(f"\nstopped at once; the jobs that were running run again on resume: {resume_hint}\n")
        os._exit(EXIT_TERMINATED if signum == signal.SIGTERM else EXIT_INTERRUPTED)

    previous = {signum: signal.signal(signum, on_signal) for signum in _NAMES}
    prefects = _take_prefects_sigterm(on_signal)
    try:
        yield
    finally:
        if prefects is not None:
            _take_prefects_sigterm(prefects)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if server is not None:
            _drain_prefect_workers()  # the run's last logs and events reach the server first
            server.stop()  # last: the flow has recorded its end

"""Run a QM job in a child process with a time limit, so that a hang or a crash of the QM
code becomes a `QMFailure` instead of taking the caller down.

The QM jobs are out of the terminal's reach: the fork server that starts them leads a session
of its own (`tangentlab.oracles._forkserver`), and each job runs in a process group of its own.
A Ctrl-C or a SIGTERM sent to the campaign's process group therefore reaches the campaign
process only, which lets the running jobs finish, or stops them with `kill_running_jobs`.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import signal
import sys
import threading
from functools import cache
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any

from tangentlab.oracles.results import QMFailure, QMResult, describe_error

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.connection import Connection

    from ase.atoms import Atoms

_EXIT_GRACE_S = 10.0  # how long a child that has sent its result may take to exit

# Imported once by the fork server, so that children start with them loaded; the first one
# moves the fork server into a session of its own.
_PRELOAD = [
    "tangentlab.oracles._forkserver",
    "tangentlab.oracles",
    "quacc.recipes.tblite.core",
    "quacc.runners.ase",
    "quacc.schemas.ase",
    "tblite.ase",
    "pyscf.dft",
    "pyscf.grad",
]
# Signals blocked while the fork server starts, until it has left the terminal's session.
_BLOCKED_AT_START = {signal.SIGINT, signal.SIGTERM}

_RUNNING: set[multiprocessing.process.BaseProcess] = set()  # the QM jobs of this process
_RUNNING_LOCK = threading.RLock()  # re-entrant: taken by a signal handler of the main thread
_STOPPING = threading.Event()  # kill_running_jobs was called: nothing new starts


class QMJobStopped(Exception):
    """A QM job killed by `kill_running_jobs` (the campaign stopping at once): not a failure of
    the job, so it is not counted as an attempt; the label runs again on resume."""


def run_with_timeout(
    fn: Callable[..., QMResult], atoms: Atoms, *, timeout_s: float | None, **kwargs: Any
) -> QMResult:
    """
    Run a QM job in a child process, killing it when it runs past a time limit.

    The child comes from a fork server (multiprocessing "forkserver" context) that has
    imported quacc, PySCF and tblite once: each job then starts in milliseconds, and it
    is forked from a clean single-purpose process, not from the caller, which may hold
    threads and OpenMP pools (Prefect, torch) that make a plain fork unsafe. The child
    runs in the caller's working directory, in its own process group, so that programs
    it starts are killed with it; the fork server leads a session of its own, so signals
    sent to the caller's process group (a terminal's Ctrl-C) reach neither it nor the
    jobs. As with any non-fork start method, a script that calls
    this needs the `if __name__ == "__main__":` guard, and `fn` must be importable by name.
    Environment variables such as OMP_NUM_THREADS are those of the caller when the fork
    server started (its first call).

    Parameters
    ----------
    fn
        A picklable (module-level) job function, e.g. `xtb_static` or `pyscf_static`.
    atoms
        The molecule.
    timeout_s
        Wall-clock limit in seconds; None waits for as long as the job runs.
    **kwargs
        Keywords for `fn`.

    Returns
    -------
    QMResult
        What `fn` returned.

    Raises
    ------
    QMFailure
        On timeout ("timeout after N s"), when the child dies from a signal ("QM process
        killed by signal N (SIGNAME)") or exits without a result, and for any exception
        raised by `fn` (its message becomes the reason).
    QMJobStopped
        When `kill_running_jobs` stopped the job (or was called before it started).
    """
    results_dir = kwargs.get("results_dir")
    run_dir = None if results_dir is None else str(results_dir)
    if _STOPPING.is_set():
        raise QMJobStopped("the campaign is stopping: the QM job was not started")
    context = _process_context()
    _start_fork_server()
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_run_child,
        args=(sender, fn, atoms.copy(), kwargs, os.getcwd()),
        daemon=True,
    )
    process.start()
    with _RUNNING_LOCK:
        _RUNNING.add(process)
    sender.close()
    try:
        if _STOPPING.is_set():  # kill_running_jobs ran while this job started
            _kill_process_group(process)
        elif not wait([receiver, process.sentinel], timeout=timeout_s):
            _kill_process_group(process)
            raise QMFailure(f"timeout after {timeout_s:g} s", run_dir)
        message = _receive(receiver)
        process.join(timeout=_EXIT_GRACE_S)
    finally:
        if process.is_alive():
            _kill_process_group(process)
        receiver.close()
        with _RUNNING_LOCK:
            _RUNNING.discard(process)
    if message is None and _STOPPING.is_set():
        raise QMJobStopped("the QM job was stopped with the campaign")
    if message is None:
        code = process.exitcode
        if code is not None and code < 0:
            raise QMFailure(f"QM process killed by signal {-code} ({_signal_name(-code)})", run_dir)
        raise QMFailure(f"QM process exited with code {code} without a result", run_dir)
    if message[0] == "failure":
        raise QMFailure(message[1], message[2] or run_dir)
    return message[1]


@cache
def _process_context() -> Any:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([*_PRELOAD, *_main_preload()])
    return context


def _start_fork_server() -> None:
    """Start the fork server (if it is not running) with SIGINT and SIGTERM blocked, so that
    none reaches it before it has left the terminal's session (as CPython starts its resource
    tracker); blocking is per thread, so this works from any thread. The resource tracker is
    started first: starting it unblocks SIGINT and SIGTERM again."""
    multiprocessing.resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED_AT_START)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def kill_running_jobs() -> int:
    """
    Kill every QM job this process is running (each with its process group) and start no new one.

    The campaign stopping at once (a second Ctrl-C) calls this: the killed jobs raise
    `QMJobStopped` in their callers, not `QMFailure`, so they are not recorded as failed
    attempts. Safe to call from a signal handler.

    Returns
    -------
    int
        How many jobs were killed.
    """
    _STOPPING.set()
    with _RUNNING_LOCK:
        running = list(_RUNNING)
    for process in running:
        pid = process.pid
        if pid is None:
            continue
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return len(running)


def _main_preload() -> list[str]:
    """
    How the fork server should import the caller's main module, so that children, which
    re-run it as `__mp_main__` the way spawned processes do, find its imports loaded.
    """
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is None:
        return ["__main__"]
    if spec.name.endswith("__main__"):
        return []
    return [spec.name]


def _run_child(
    sender: Connection, fn: Callable[..., QMResult], atoms: Atoms, kwargs: dict[str, Any], cwd: str
) -> None:
    os.setpgid(0, 0)
    os.chdir(cwd)
    try:
        result = fn(atoms, **kwargs)
    except QMFailure as err:
        sender.send(("failure", err.reason, err.run_dir))
    except Exception as err:
        sender.send(("failure", describe_error(err), None))
    else:
        sender.send(("ok", result))
    finally:
        sender.close()


def _receive(receiver: Connection) -> tuple | None:
    """The child's message, or None if it died before sending one."""
    if not receiver.poll():
        return None
    try:
        return receiver.recv()
    except EOFError:
        return None


def _kill_process_group(process: multiprocessing.process.BaseProcess) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()
    process.join()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"

"""Run a QM job in a child process with a time limit, so that a hang or a crash of the QM
code becomes a `QMFailure` instead of taking the caller down."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from functools import cache
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any

from tangentlab.oracles.results import QMFailure, QMResult, describe_error

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.connection import Connection

    from ase.atoms import Atoms

_EXIT_GRACE_S = 10.0  # how long a child that has sent its result may take to exit

# Imported once by the fork server, so that children start with them loaded.
_PRELOAD = [
    "tangentlab.oracles",
    "quacc.recipes.tblite.core",
    "quacc.runners.ase",
    "quacc.schemas.ase",
    "tblite.ase",
    "pyscf.dft",
    "pyscf.grad",
]


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
    it starts are killed with it. As with any non-fork start method, a script that calls
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
    """
    results_dir = kwargs.get("results_dir")
    run_dir = None if results_dir is None else str(results_dir)
    context = _process_context()
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_run_child,
        args=(sender, fn, atoms.copy(), kwargs, os.getcwd()),
        daemon=True,
    )
    process.start()
    sender.close()
    try:
        if not wait([receiver, process.sentinel], timeout=timeout_s):
            _kill_process_group(process)
            raise QMFailure(f"timeout after {timeout_s:g} s", run_dir)
        message = _receive(receiver)
        process.join(timeout=_EXIT_GRACE_S)
    finally:
        if process.is_alive():
            _kill_process_group(process)
        receiver.close()
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

"""QM labels: GFN2-xTB through quacc's tblite recipe and molecular DFT with PySCF.

Every job returns a `QMResult` (energy in eV, forces in eV/Å) or raises `QMFailure` with a
short reason and the run directory. `run_with_timeout` runs a job in a child process so
that a hang or a crash of the QM code becomes a `QMFailure` instead of taking the caller
down. `make_oracle` turns a level-of-theory spec into a callable `Oracle`.
"""

from __future__ import annotations

import inspect
import multiprocessing
import os
import signal
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import version
from multiprocessing.connection import wait
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any

import numpy as np

from tangentlab._pyscf_calculator import PySCFCalculator, check_dispersion
from tangentlab.structures import charge_and_multiplicity

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from multiprocessing.connection import Connection

    from ase.atoms import Atoms

XTB_METHODS = ("GFN1-xTB", "GFN2-xTB", "IPEA1-xTB")
_EXIT_GRACE_S = 10.0  # how long a child that has sent its result may take to exit


@dataclass
class QMResult:
    """
    Result of one QM single point.

    Attributes
    ----------
    energy
        Total energy (eV).
    forces
        Forces, shape (natoms, 3) (eV/Å).
    wall_time
        Wall time of the job (s).
    run_dir
        Directory holding the job's files.
    level
        Level of theory: method, basis, code, code_version.
    """

    energy: float
    forces: np.ndarray
    wall_time: float
    run_dir: str
    level: dict[str, Any] = field(default_factory=dict)


class QMFailure(RuntimeError):
    """
    A QM job that gave no usable result.

    Attributes
    ----------
    reason
        Short human-readable cause ("SCF not converged after 100 cycles", "timeout after 60 s").
    run_dir
        Directory holding the failed job's files, if any.
    """

    def __init__(self, reason: str, run_dir: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.run_dir = run_dir


def _spin_state(atoms: Atoms) -> tuple[int, int]:
    """Charge and multiplicity of a molecule, checked against its electron count."""
    charge, multiplicity = charge_and_multiplicity(atoms)
    electrons = int(atoms.numbers.sum()) - charge
    unpaired = multiplicity - 1
    if electrons < 0 or unpaired < 0 or unpaired > electrons or (electrons - unpaired) % 2:
        msg = (
            f"multiplicity {multiplicity} is impossible for {electrons} electrons "
            f"({atoms.get_chemical_formula()}, charge {charge})"
        )
        raise ValueError(msg)
    return charge, multiplicity


def xtb_level(method: str = "GFN2-xTB") -> dict[str, Any]:
    """
    Level-of-theory dict of an xTB job.

    Parameters
    ----------
    method
        xTB Hamiltonian.

    Returns
    -------
    dict
        method, basis (None), code ("tblite"), code_version.
    """
    return {"method": method, "basis": None, "code": "tblite", "code_version": version("tblite")}


def pyscf_level(
    xc: str = "wb97x", basis: str = "6-31g*", dispersion: str | None = None
) -> dict[str, Any]:
    """
    Level-of-theory dict of a PySCF job.

    Parameters
    ----------
    xc
        Functional (or "hf").
    basis
        Basis set.
    dispersion
        Dispersion correction, appended to the method as "+d3bj".

    Returns
    -------
    dict
        method, basis, code ("pyscf"), code_version.
    """
    method = xc if dispersion is None else f"{xc}+{dispersion}"
    return {"method": method, "basis": basis, "code": "pyscf", "code_version": version("pyscf")}


def xtb_static(
    atoms: Atoms, *, method: str = "GFN2-xTB", results_dir: str | Path | None = None
) -> QMResult:
    """
    GFN-xTB single point through quacc's tblite `static_job`.

    Parameters
    ----------
    atoms
        The molecule; charge and multiplicity come from `atoms.info`.
    method
        xTB Hamiltonian ("GFN1-xTB", "GFN2-xTB", "IPEA1-xTB").
    results_dir
        Where quacc puts the job directory; None keeps quacc's RESULTS_DIR.

    Returns
    -------
    QMResult
        Energy, forces and the job directory.

    Raises
    ------
    QMFailure
        If tblite fails (e.g. SCF not converged).
    """
    from quacc import strip_decorator
    from quacc.recipes.tblite.core import static_job

    charge, multiplicity = _spin_state(atoms)
    start = perf_counter()
    with _quacc_results_dir(results_dir), _job_failure_as_qm_failure():
        result = strip_decorator(static_job)(
            atoms, method=method, charge=charge, multiplicity=multiplicity, verbosity=0
        )
    return _qm_result(result, perf_counter() - start, xtb_level(method))


def pyscf_static(
    atoms: Atoms,
    *,
    xc: str = "wb97x",
    basis: str = "6-31g*",
    conv_tol: float = 1e-9,
    max_cycle: int = 100,
    level_shift: float = 0.0,
    init_guess: str = "minao",
    soscf: bool = False,
    dispersion: str | None = None,
    num_threads: int | None = None,
    results_dir: str | Path | None = None,
) -> QMResult:
    """
    Molecular HF/DFT single point with PySCF, run and summarised the way quacc recipes are.

    Parameters
    ----------
    atoms
        The molecule; charge and multiplicity come from `atoms.info`. Singlets run
        restricted, other multiplicities unrestricted.
    xc
        Functional (PySCF/libxc name, e.g. "wb97x") or "hf".
    basis
        Basis set.
    conv_tol
        SCF energy convergence threshold (Hartree).
    max_cycle
        Maximum SCF cycles.
    level_shift
        Level shift (Hartree).
    init_guess
        Initial guess ("minao", "atom", ...).
    soscf
        Use second-order (Newton) SCF.
    dispersion
        Dispersion correction (e.g. "d3bj"); needs the pyscf-dispersion package.
    num_threads
        OpenMP threads for PySCF; None keeps the current setting.
    results_dir
        Where quacc puts the job directory; None keeps quacc's RESULTS_DIR.

    Returns
    -------
    QMResult
        Energy, forces and the job directory (holding `pyscf.log`).

    Raises
    ------
    QMFailure
        If the SCF does not converge or PySCF fails.
    """
    from quacc.runners.ase import Runner
    from quacc.schemas.ase import Summarize

    check_dispersion(dispersion)
    charge, multiplicity = _spin_state(atoms)
    calc = PySCFCalculator(
        xc=xc,
        basis=basis,
        charge=charge,
        multiplicity=multiplicity,
        conv_tol=conv_tol,
        max_cycle=max_cycle,
        level_shift=level_shift,
        init_guess=init_guess,
        soscf=soscf,
        dispersion=dispersion,
        num_threads=num_threads,
    )
    start = perf_counter()
    with _quacc_results_dir(results_dir), _job_failure_as_qm_failure():
        final_atoms = Runner(atoms, calc).run_calc()
        result = Summarize(additional_fields={"name": "PySCF Static"}).run(final_atoms, atoms)
    return _qm_result(result, perf_counter() - start, pyscf_level(xc, basis, dispersion))


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


@dataclass(frozen=True)
class Oracle:
    """
    A level of theory that labels structures.

    Attributes
    ----------
    name
        "xtb" or "pyscf".
    settings
        Keywords for the job function (`xtb_static` or `pyscf_static`).
    """

    name: str
    settings: dict[str, Any]

    @property
    def level(self) -> dict[str, Any]:
        """Level-of-theory dict: method, basis, code, code_version."""
        if self.name == "xtb":
            return xtb_level(self.settings.get("method", "GFN2-xTB"))
        return pyscf_level(
            self.settings.get("xc", "wb97x"),
            self.settings.get("basis", "6-31g*"),
            self.settings.get("dispersion"),
        )

    def retry_kwargs(self, attempt: int) -> dict[str, Any]:
        """
        Settings that change on a retry.

        Parameters
        ----------
        attempt
            1 for the first try, 2 for the first retry, ...

        Returns
        -------
        dict
            Keywords that override `settings`: for PySCF, attempt 2 adds a level shift
            and the atomic initial guess with twice the cycles, attempt 3 and later use
            second-order SCF. xTB has none.
        """
        if self.name != "pyscf" or attempt < 2:
            return {}
        max_cycle = 2 * self.settings.get("max_cycle", 100)
        if attempt == 2:
            return {"level_shift": 0.25, "init_guess": "atom", "max_cycle": max_cycle}
        return {"soscf": True, "init_guess": "atom", "max_cycle": max_cycle}

    def __call__(
        self,
        atoms: Atoms,
        results_dir: str | Path | None = None,
        timeout_s: float | None = None,
        attempt: int = 1,
    ) -> QMResult:
        """
        Label one structure.

        Parameters
        ----------
        atoms
            The molecule.
        results_dir
            Where the job directory goes; None keeps quacc's RESULTS_DIR.
        timeout_s
            Wall-clock limit; with a limit the job runs in a child process
            (`run_with_timeout`), without one in this process.
        attempt
            Attempt number; from 2 on, `retry_kwargs(attempt)` changes the settings.

        Returns
        -------
        QMResult
            The label.

        Raises
        ------
        QMFailure
            For every failure, with its reason.
        """
        fn = _JOBS[self.name]
        kwargs = self.settings | self.retry_kwargs(attempt)
        if timeout_s is not None:
            if results_dir is None:
                from quacc import get_settings

                results_dir = get_settings().RESULTS_DIR
            kwargs["results_dir"] = str(Path(results_dir).resolve())
            return run_with_timeout(fn, atoms, timeout_s=timeout_s, **kwargs)
        try:
            return fn(atoms, results_dir=results_dir, **kwargs)
        except QMFailure:
            raise
        except Exception as err:
            run_dir = None if results_dir is None else str(results_dir)
            raise QMFailure(_describe(err), run_dir) from err


def make_oracle(spec: dict[str, Any]) -> Oracle:
    """
    Build an oracle from a spec, checking it before any job runs.

    Parameters
    ----------
    spec
        `{"name": "xtb", "method": "GFN2-xTB"}` or `{"name": "pyscf", "xc": "wb97x",
        "basis": "6-31g*", ...}`: the name plus keywords of `xtb_static` or `pyscf_static`
        (all but `results_dir`).

    Returns
    -------
    Oracle
        The oracle.

    Raises
    ------
    ValueError
        For a missing or unknown name, an unknown keyword, an unknown xTB method, basis
        set, functional or dispersion correction.
    ImportError
        If the dispersion correction needs a library that is not installed.
    """
    settings = dict(spec)
    name = settings.pop("name", None)
    if name not in _JOBS:
        msg = f"unknown oracle name {name!r}; known: {sorted(_JOBS)}"
        raise ValueError(msg)
    allowed = [
        p.name
        for p in inspect.signature(_JOBS[name]).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "results_dir"
    ]
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        msg = f"unknown keyword(s) {unknown} for oracle {name!r}; allowed: {allowed}"
        raise ValueError(msg)
    if name == "xtb":
        _check_xtb_settings(settings)
    else:
        _check_pyscf_settings(settings)
    return Oracle(name=name, settings=settings)


_JOBS: dict[str, Callable[..., QMResult]] = {"xtb": xtb_static, "pyscf": pyscf_static}

# Imported once by the fork server, so that children start with them loaded.
_PRELOAD = [
    "tangentlab.qm",
    "quacc.recipes.tblite.core",
    "quacc.runners.ase",
    "quacc.schemas.ase",
    "tblite.ase",
    "pyscf.dft",
    "pyscf.grad",
]


def _check_xtb_settings(settings: dict[str, Any]) -> None:
    method = settings.get("method", "GFN2-xTB")
    if method not in XTB_METHODS:
        msg = f"unknown xTB method {method!r}; known: {XTB_METHODS}"
        raise ValueError(msg)


def _check_pyscf_settings(settings: dict[str, Any]) -> None:
    from pyscf import gto
    from pyscf.dft import libxc

    basis = settings.get("basis", "6-31g*")
    try:
        gto.basis.load(basis, "H")
    except Exception as err:
        msg = f"unknown basis set {basis!r} for PySCF"
        raise ValueError(msg) from err
    xc = settings.get("xc", "wb97x")
    if xc.lower() != "hf":
        try:
            libxc.parse_xc(xc)
        except Exception as err:
            msg = f"unknown exchange-correlation functional {xc!r} for PySCF"
            raise ValueError(msg) from err
    check_dispersion(settings.get("dispersion"))


def _quacc_results_dir(results_dir: str | Path | None) -> Any:
    from quacc import change_settings

    if results_dir is None:
        return nullcontext()
    path = Path(results_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return change_settings({"RESULTS_DIR": path})


@contextmanager
def _job_failure_as_qm_failure() -> Iterator[None]:
    """Turn quacc's JobFailure (raised by Runner when the calculator fails) into QMFailure."""
    from quacc import JobFailure

    try:
        yield
    except JobFailure as err:
        raise QMFailure(_describe(err.parent_error or err), str(err.directory)) from err


def _describe(err: BaseException) -> str:
    """Short reason for an exception: its message, prefixed by its type unless a QM failure."""
    from ase.calculators.calculator import CalculationFailed

    if isinstance(err, QMFailure):
        return err.reason
    if isinstance(err, CalculationFailed) and str(err):
        return str(err)
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _qm_result(result: dict[str, Any], wall_time: float, level: dict[str, Any]) -> QMResult:
    return QMResult(
        energy=float(result["results"]["energy"]),
        forces=np.asarray(result["results"]["forces"], dtype=np.float64).reshape(-1, 3),
        wall_time=wall_time,
        run_dir=str(result["dir_name"]),
        level=level,
    )


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
        sender.send(("failure", _describe(err), None))
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

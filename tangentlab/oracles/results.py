"""What every QM job returns (`QMResult`) or raises (`QMFailure`), and how quacc's results
and errors become them."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from ase.atoms import Atoms
    from ase.calculators.calculator import Calculator


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
    stress
        Stress of a structure periodic in all three directions (Voigt order xx, yy, zz, yz, xz,
        xy; eV/Å³), when the oracle gives one; None otherwise.
    """

    energy: float
    forces: np.ndarray
    wall_time: float
    run_dir: str
    level: dict[str, Any] = field(default_factory=dict)
    stress: np.ndarray | None = None


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


def describe_error(err: BaseException) -> str:
    """
    Short reason for an exception.

    Parameters
    ----------
    err
        The exception a job raised.

    Returns
    -------
    str
        Its message, prefixed by its type unless it is a QM failure or a failed ASE
        calculation (whose messages already say what went wrong).
    """
    from ase.calculators.calculator import CalculationFailed

    if isinstance(err, QMFailure):
        return err.reason
    if isinstance(err, CalculationFailed) and str(err):
        return str(err)
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def quacc_results_dir(results_dir: str | Path | None) -> Any:
    """
    Context in which quacc puts job directories under `results_dir`.

    Parameters
    ----------
    results_dir
        The folder (created if missing); None keeps quacc's RESULTS_DIR.

    Returns
    -------
    contextlib.AbstractContextManager
        quacc's `change_settings` context, or a context that changes nothing.
    """
    from quacc import change_settings

    if results_dir is None:
        return nullcontext()
    path = Path(results_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return change_settings({"RESULTS_DIR": path})


@contextmanager
def job_failure_as_qm_failure() -> Iterator[None]:
    """Turn quacc's JobFailure (raised by Runner when the calculator fails) into QMFailure."""
    from quacc import JobFailure

    try:
        yield
    except JobFailure as err:
        raise QMFailure(describe_error(err.parent_error or err), str(err.directory)) from err


def qm_result(result: dict[str, Any], wall_time: float, level: dict[str, Any]) -> QMResult:
    """
    The `QMResult` of a quacc result schema.

    Parameters
    ----------
    result
        quacc's summary (`results.energy`, `results.forces`, `dir_name`).
    wall_time
        Wall time of the job (s).
    level
        Level-of-theory dict recorded with the result.

    Returns
    -------
    QMResult
        Energy, forces, the job directory and, for a structure periodic in all three
        directions whose calculator gave one, the stress (a slab's or a molecule's is not kept:
        it has no volume of its own).
    """
    stress = result["results"].get("stress")
    atoms = result.get("atoms")
    if stress is not None and (atoms is None or not np.asarray(atoms.pbc).all()):
        stress = None
    if stress is not None:
        stress = np.asarray(stress, dtype=np.float64)
        if stress.shape == (3, 3):
            stress = stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    return QMResult(
        energy=float(result["results"]["energy"]),
        forces=np.asarray(result["results"]["forces"], dtype=np.float64).reshape(-1, 3),
        wall_time=wall_time,
        run_dir=str(result["dir_name"]),
        level=level,
        stress=stress,
    )


def run_quacc_job(
    job: Callable[[], dict[str, Any]], level: dict[str, Any], results_dir: str | Path | None
) -> QMResult:
    """
    Run one quacc job the way every oracle does.

    Parameters
    ----------
    job
        The job call (a quacc recipe with its arguments bound, or `calculator_job`); it may
        raise `QMFailure` itself.
    level
        Level-of-theory dict recorded with the result.
    results_dir
        Where quacc puts the job directory; None keeps quacc's RESULTS_DIR.

    Returns
    -------
    QMResult
        The job's result with its wall time.

    Raises
    ------
    QMFailure
        If the job fails (quacc's JobFailure, with the job directory).
    """
    start = perf_counter()
    with quacc_results_dir(results_dir), job_failure_as_qm_failure():
        result = job()
    return qm_result(result, perf_counter() - start, level)


def calculator_job(atoms: Atoms, calc: Calculator, name: str) -> Callable[[], dict[str, Any]]:
    """A quacc static job of an ASE calculator: quacc's `Runner`, then its `Summarize` schema
    under the job name ``name``."""

    def job() -> dict[str, Any]:
        from quacc.runners.ase import Runner
        from quacc.schemas.ase import Summarize

        final_atoms = Runner(atoms, calc).run_calc()
        return Summarize(additional_fields={"name": name}).run(final_atoms, atoms)

    return job

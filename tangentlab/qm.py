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
from tangentlab.structures import content_hash, spin_state

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

    charge, multiplicity = spin_state(atoms)
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
    stability: bool = True,
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
    stability
        Open-shell runs only: follow internal SCF instabilities to the lower solution
        (`PySCFCalculator`); an SCF that stays unstable is a failure.
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
    charge, multiplicity = spin_state(atoms)
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
        stability=stability,
    )
    start = perf_counter()
    with _quacc_results_dir(results_dir), _job_failure_as_qm_failure():
        final_atoms = Runner(atoms, calc).run_calc()
        result = Summarize(additional_fields={"name": "PySCF Static"}).run(final_atoms, atoms)
    return _qm_result(result, perf_counter() - start, pyscf_level(xc, basis, dispersion))


# Keywords through which quacc recipes that pass **calc_kwargs to their calculator take the
# charge and multiplicity (recipes with named `charge`/`spin_multiplicity` need no entry).
RECIPE_SPIN_KEYWORDS: dict[str, tuple[str, str]] = {
    "quacc.recipes.tblite.core.static_job": ("charge", "multiplicity"),
}
_SPIN_KEYWORD_NAMES = (("charge",), ("spin_multiplicity", "multiplicity"))


def import_recipe(path: str) -> Callable[..., Any]:
    """
    The quacc recipe (or any job function) at a dotted import path, without its decorator.

    Parameters
    ----------
    path
        "package.module.function", e.g. "quacc.recipes.orca.core.static_job".

    Returns
    -------
    Callable
        The undecorated function (`quacc.strip_decorator`), so that it runs here, inside
        our own child process, whatever quacc's workflow engine is.

    Raises
    ------
    ValueError
        If the path has no module part, the module cannot be imported, or it has no
        callable of that name.
    """
    from importlib import import_module

    from quacc import strip_decorator

    module_name, _, attribute = path.rpartition(".")
    if not module_name:
        msg = f"recipe {path!r} is not a dotted import path like 'quacc.recipes.tblite.core.static_job'"
        raise ValueError(msg)
    try:
        module = import_module(module_name)
    except ImportError as err:
        msg = f"recipe {path!r}: cannot import module {module_name!r} ({err})"
        raise ValueError(msg) from err
    function = getattr(module, attribute, None)
    if not callable(function):
        msg = f"recipe {path!r}: module {module_name!r} has no job function {attribute!r}"
        raise ValueError(msg)
    return strip_decorator(function)


def recipe_spin_keywords(path: str) -> tuple[str | None, str | None]:
    """
    The keywords through which a recipe takes the charge and the spin multiplicity.

    Named parameters `charge` and `spin_multiplicity` (or `multiplicity`) are used when the
    recipe has them, else `RECIPE_SPIN_KEYWORDS`; None where the recipe takes neither.

    Parameters
    ----------
    path
        Import path of the recipe.

    Returns
    -------
    tuple
        (charge keyword or None, multiplicity keyword or None).
    """
    if path in RECIPE_SPIN_KEYWORDS:
        return RECIPE_SPIN_KEYWORDS[path]
    parameters = inspect.signature(import_recipe(path)).parameters
    found = [next((n for n in names if n in parameters), None) for names in _SPIN_KEYWORD_NAMES]
    return found[0], found[1]


def recipe_level(
    recipe: str, recipe_kwargs: dict[str, Any] | None = None, level: dict[str, Any] | None = None
) -> dict[str, Any]:
    """
    Level-of-theory dict of a quacc-recipe oracle.

    Parameters
    ----------
    recipe
        Import path of the recipe.
    recipe_kwargs
        Its keywords (recorded: they are part of the level, e.g. functional and basis).
    level
        What the user declares: method, basis (recorded as given).

    Returns
    -------
    dict
        method, basis, code (the recipe's quacc code module, e.g. "orca"), recipe, kwargs.
    """
    level = level or {}
    parts = recipe.split(".")
    code = parts[2] if len(parts) > 3 and parts[:2] == ["quacc", "recipes"] else parts[0]
    return {
        "method": level.get("method"),
        "basis": level.get("basis"),
        "code": code,
        "recipe": recipe,
        "kwargs": dict(sorted((recipe_kwargs or {}).items())),
    }


def recipe_static(
    atoms: Atoms,
    *,
    recipe: str,
    kwargs: dict[str, Any] | None = None,
    level: dict[str, Any] | None = None,
    results_dir: str | Path | None = None,
) -> QMResult:
    """
    Single point with any quacc recipe (or job function with a quacc-style result).

    Parameters
    ----------
    atoms
        The molecule; its charge and multiplicity are passed through the recipe's own
        keywords (`recipe_spin_keywords`).
    recipe
        Import path, e.g. "quacc.recipes.orca.core.static_job".
    kwargs
        Keywords for the recipe.
    level
        Declared level of theory (method, basis), recorded with the result.
    results_dir
        Where quacc puts the job directory; None keeps quacc's RESULTS_DIR.

    Returns
    -------
    QMResult
        Energy and forces from the recipe's `results`, and its `dir_name`.

    Raises
    ------
    QMFailure
        If the recipe fails, returns no energy or forces, or cannot take a charged or
        open-shell structure.
    """
    function = import_recipe(recipe)
    recipe_kwargs = dict(kwargs or {})
    charge, multiplicity = spin_state(atoms)
    charge_key, multiplicity_key = recipe_spin_keywords(recipe)
    default_multiplicity = 1 if (int(atoms.numbers.sum()) - charge) % 2 == 0 else 2
    for key, value, default in ((charge_key, charge, 0), (multiplicity_key, multiplicity, default_multiplicity)):
        if key is not None:
            recipe_kwargs[key] = value
        elif value != default:
            msg = (f"recipe {recipe} takes no charge/multiplicity keyword, so it cannot label "
                   f"{atoms.get_chemical_formula()} with charge {charge}, multiplicity {multiplicity}")
            raise QMFailure(msg)
    start = perf_counter()
    with _quacc_results_dir(results_dir), _job_failure_as_qm_failure():
        result = function(atoms, **recipe_kwargs)
    results = result.get("results", {}) if isinstance(result, dict) else {}
    missing = [key for key in ("energy", "forces") if results.get(key) is None]
    if missing:
        msg = f"recipe {recipe} returned no {' or '.join(missing)} in its results"
        raise QMFailure(msg, str(result.get("dir_name")) if isinstance(result, dict) else None)
    return _qm_result(result, perf_counter() - start, recipe_level(recipe, kwargs, level))


def replay_level(files: list[str], reference_level: dict[str, Any] | None = None) -> dict[str, Any]:
    """
    Level-of-theory dict of a replay oracle.

    Parameters
    ----------
    files
        Structure files whose stored labels are revealed.
    reference_level
        The level the stored labels were computed at (method, basis, code), as declared.

    Returns
    -------
    dict
        method and basis of the reference (None when not declared), code "replay", files.
    """
    reference_level = reference_level or {}
    return {
        "method": reference_level.get("method"),
        "basis": reference_level.get("basis"),
        "code": "replay",
        "reference_code": reference_level.get("code"),
        "files": sorted(str(Path(f).resolve()) for f in files),
    }


def replay_static(
    atoms: Atoms,
    *,
    files: list[str],
    reference_level: dict[str, Any] | None = None,
    results_dir: str | Path | None = None,
) -> QMResult:
    """
    Reveal the label stored with a structure in its source files (no QM is run).

    Benchmarks replay a labelled data set as the candidate pool: the campaign imports the
    structures without their labels, and a label becomes visible only when acquisition
    picks the structure and this oracle "computes" it.

    Parameters
    ----------
    atoms
        The structure; matched on `structures.content_hash` (positions to 1e-6 Å, cell,
        pbc, charge, multiplicity).
    files
        ASE-readable files with energies and forces (extxyz `energy`, `forces`).
    reference_level
        Declared level of the stored labels, recorded with the result.
    results_dir
        Unused (no job directory); accepted for the common oracle interface.

    Returns
    -------
    QMResult
        The stored energy (eV) and forces (eV/Å); wall time of the lookup.

    Raises
    ------
    QMFailure
        If no file holds this structure with an energy and forces.
    """
    start = perf_counter()
    labels = stored_labels(tuple(sorted(str(Path(f).resolve()) for f in files)))
    found = labels.get(content_hash(atoms))
    if found is None:
        msg = f"no stored label for {atoms.get_chemical_formula()} in {[Path(f).name for f in files]}"
        raise QMFailure(msg)
    energy, forces = found
    return QMResult(energy=energy, forces=forces.copy(), wall_time=perf_counter() - start,
                    run_dir="", level=replay_level(files, reference_level))


@cache
def stored_labels(files: tuple[str, ...]) -> dict[str, tuple[float, np.ndarray]]:
    """
    Energies and forces stored in structure files, by content hash (read once per process).

    Parameters
    ----------
    files
        Resolved file paths.

    Returns
    -------
    dict
        content hash -> (energy in eV, forces (natoms, 3) in eV/Å); structures without both
        are left out.
    """
    from ase.io import read

    labels: dict[str, tuple[float, np.ndarray]] = {}
    for path in files:
        for atoms in read(path, ":"):
            energy, forces = _stored_energy_forces(atoms)
            if energy is not None and forces is not None:
                labels[content_hash(atoms)] = (energy, forces)
    return labels


def _stored_energy_forces(atoms: Atoms) -> tuple[float | None, np.ndarray | None]:
    results = atoms.calc.results if atoms.calc is not None else {}
    energy = results.get("energy", atoms.info.get("energy"))
    forces = results.get("forces", atoms.arrays.get("forces"))
    if energy is None or forces is None:
        return None, None
    return float(energy), np.asarray(forces, dtype=np.float64).reshape(-1, 3)


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
        "xtb", "pyscf", "quacc" (any quacc recipe by import path) or "replay" (labels
        stored with the pool files).
    settings
        Keywords for the job function (`xtb_static`, `pyscf_static`, `recipe_static`,
        `replay_static`).
    """

    name: str
    settings: dict[str, Any]

    @property
    def level(self) -> dict[str, Any]:
        """Level-of-theory dict recorded with every label (it keys idempotency)."""
        s = self.settings
        if self.name == "xtb":
            return xtb_level(s.get("method", "GFN2-xTB"))
        if self.name == "quacc":
            return recipe_level(s["recipe"], s.get("kwargs"), s.get("level"))
        if self.name == "replay":
            return replay_level(s["files"], s.get("reference_level"))
        return pyscf_level(s.get("xc", "wb97x"), s.get("basis", "6-31g*"), s.get("dispersion"))

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
            second-order SCF. The other oracles have none (a recipe's own settings are
            the user's to choose).
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
            (`run_with_timeout`), without one in this process. The replay oracle, a
            lookup, always runs in this process.
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
        if timeout_s is not None and self.name != "replay":
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
        The name plus the keywords of its job function (all but `results_dir`):

        - `{"name": "xtb", "method": "GFN2-xTB"}` (`xtb_static`)
        - `{"name": "pyscf", "xc": "wb97x", "basis": "6-31g*", ...}` (`pyscf_static`)
        - `{"name": "quacc", "recipe": "quacc.recipes.orca.core.static_job",
          "kwargs": {"xc": "wb97x-d3bj", "basis": "def2-tzvp"},
          "level": {"method": "wB97X-D3BJ", "basis": "def2-TZVP"}}` (`recipe_static`)
        - `{"name": "replay", "files": ["pool.extxyz"], "reference_level": {...}}`
          (`replay_static`)

    Returns
    -------
    Oracle
        The oracle.

    Raises
    ------
    ValueError
        For a missing or unknown name, an unknown keyword, an unknown xTB method, basis
        set, functional or dispersion correction, a recipe path that does not import, a
        keyword the recipe does not take, a charge or multiplicity among the recipe's
        keywords (they come from each structure), or replay files that do not exist.
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
    _CHECKS[name](settings)
    return Oracle(name=name, settings=settings)


_JOBS: dict[str, Callable[..., QMResult]] = {
    "xtb": xtb_static,
    "pyscf": pyscf_static,
    "quacc": recipe_static,
    "replay": replay_static,
}

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


def _check_recipe_settings(settings: dict[str, Any]) -> None:
    recipe = settings.get("recipe")
    if not isinstance(recipe, str):
        msg = "oracle 'quacc' needs 'recipe', the import path of a quacc job, e.g. 'quacc.recipes.tblite.core.static_job'"
        raise ValueError(msg)
    function = import_recipe(recipe)
    kwargs = settings.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        msg = f"oracle 'quacc': 'kwargs' must be a mapping of keywords for {recipe}, got {type(kwargs).__name__}"
        raise ValueError(msg)
    spin_keys = {k for k in recipe_spin_keywords(recipe) if k is not None}
    reserved = sorted(set(kwargs) & (spin_keys | {"atoms", "charge", "multiplicity", "spin_multiplicity"}))
    if reserved:
        msg = (f"oracle 'quacc': {reserved} must not be set in kwargs: the atoms, charge and "
               "multiplicity come from each structure")
        raise ValueError(msg)
    parameters = inspect.signature(function).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unknown = sorted(set(kwargs) - set(parameters))
    if unknown and not takes_any:
        allowed = [n for n in parameters if n != "atoms"]
        msg = f"unknown keyword(s) {unknown} for recipe {recipe}; allowed: {allowed}"
        raise ValueError(msg)
    level = settings.get("level") or {}
    if not isinstance(level, dict) or set(level) - {"method", "basis"}:
        msg = "oracle 'quacc': 'level' must be a mapping with 'method' and/or 'basis'"
        raise ValueError(msg)


def _check_replay_settings(settings: dict[str, Any]) -> None:
    files = settings.get("files")
    if not files or not isinstance(files, list | tuple):
        msg = "oracle 'replay' needs 'files', the structure files that hold the stored labels"
        raise ValueError(msg)
    missing = [str(f) for f in files if not Path(f).is_file()]
    if missing:
        msg = f"oracle 'replay': label file(s) not found: {missing}"
        raise ValueError(msg)
    settings["files"] = [str(Path(f).resolve()) for f in files]


_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "xtb": _check_xtb_settings,
    "pyscf": _check_pyscf_settings,
    "quacc": _check_recipe_settings,
    "replay": _check_replay_settings,
}


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

"""Molecular HF/DFT labels with PySCF, run and summarised the way quacc recipes are, with an
SCF stability step for open-shell molecules and a retry strategy for hard SCF cases."""

from __future__ import annotations

from importlib.metadata import version
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from tangentlab.oracles.base import BaseOracleSettings, Oracle, register
from tangentlab.oracles.pyscf_calculator import (
    DISPERSION_CORRECTIONS,
    PySCFCalculator,
    check_dispersion,
)
from tangentlab.oracles.results import (
    QMResult,
    calculator_job,
    run_quacc_job,
)
from tangentlab.structures import spin_state

if TYPE_CHECKING:
    from pathlib import Path

    from ase.atoms import Atoms


class PySCFSettings(BaseOracleSettings):
    """Molecular HF/DFT with PySCF (`pyscf_static`, docs/oracles.md)."""

    name: Literal["pyscf"] = Field("pyscf", description="The PySCF oracle (the default).")
    xc: str = Field("wb97x", description="Functional (PySCF/libxc name) or 'hf'.")
    basis: str = Field("6-31g*", description="Basis set.")
    conv_tol: float = Field(1e-9, description="SCF energy convergence threshold (Hartree).")
    max_cycle: int = Field(100, description="Maximum SCF cycles (doubled on retries).")
    level_shift: float = Field(0.0, description="Level shift (Hartree).")
    init_guess: str = Field("minao", description="Initial guess ('minao', 'atom', ...).")
    soscf: bool = Field(False, description="Second-order (Newton) SCF.")
    dispersion: str | None = Field(
        None, description=f"Dispersion correction, one of {DISPERSION_CORRECTIONS}; needs pyscf-dispersion.")
    num_threads: int | None = Field(None, description="OpenMP threads per job (None: qm.num_threads).")
    stability: bool = Field(True, description="Open-shell runs: follow internal SCF instabilities.")


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
    return run_quacc_job(calculator_job(atoms, calc, "PySCF Static"),
                         pyscf_level(xc, basis, dispersion), results_dir)


@register
class PySCFOracle(Oracle):
    """PySCF HF/DFT labels (`pyscf_static`), retried with a changed SCF strategy."""

    name = "pyscf"
    settings_model = PySCFSettings
    job = staticmethod(pyscf_static)

    @property
    def level(self) -> dict[str, Any]:
        """Level-of-theory dict recorded with every label (`pyscf_level`)."""
        s = self.settings
        return pyscf_level(s.get("xc", "wb97x"), s.get("basis", "6-31g*"), s.get("dispersion"))

    @classmethod
    def check(cls, settings: dict[str, Any]) -> None:
        """Reject a basis set, functional or dispersion correction PySCF does not know.

        Raises ValueError naming it, or ImportError if the dispersion library is missing.
        """
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
            Attempt 2 adds a level shift and the atomic initial guess with twice the
            cycles; attempt 3 and later use second-order SCF.
        """
        if attempt < 2:
            return {}
        max_cycle = 2 * self.settings.get("max_cycle", 100)
        if attempt == 2:
            return {"level_shift": 0.25, "init_guess": "atom", "max_cycle": max_cycle}
        return {"soscf": True, "init_guess": "atom", "max_cycle": max_cycle}

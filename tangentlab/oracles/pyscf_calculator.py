"""A small ASE calculator for molecular SCF (HF or Kohn-Sham DFT) with PySCF."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path
from typing import IO, TYPE_CHECKING, ClassVar

from ase.calculators.calculator import CalculationFailed, Calculator, all_changes
from ase.units import Bohr, Hartree

if TYPE_CHECKING:
    from typing import Any

    from ase.atoms import Atoms

# Stability-analysis restarts before an open-shell SCF that stays unstable counts as failed.
MAX_STABILITY_RESTARTS = 3
# A stability restart that lowers the energy by less than this (Hartree) found the same state.
STABILITY_TOLERANCE_EH = 1e-5

# Dispersion corrections PySCF applies through the pyscf-dispersion package (pyscf.scf.dispersion).
DISPERSION_CORRECTIONS = ("d3bj", "d3zero", "d3bjm", "d3zerom", "d3op", "d4")


def check_dispersion(dispersion: str | None) -> None:
    """
    Check that a dispersion correction is known and that the library for it is importable.

    Parameters
    ----------
    dispersion
        Name of the correction (e.g. "d3bj") or None for no correction.

    Returns
    -------
    None

    Raises
    ------
    ValueError
        If the correction is not one PySCF knows.
    ImportError
        If the pyscf-dispersion package (simple-dftd3 / dftd4 bindings) is not installed.
    """
    if dispersion is None:
        return
    if dispersion not in DISPERSION_CORRECTIONS:
        msg = f"unknown dispersion correction {dispersion!r}; known: {DISPERSION_CORRECTIONS}"
        raise ValueError(msg)
    if find_spec("pyscf.dispersion") is None:
        msg = (
            f"dispersion={dispersion!r} needs the pyscf-dispersion package "
            "(module pyscf.dispersion), which is not installed"
        )
        raise ImportError(msg)


class PySCFCalculator(Calculator):
    """
    Molecular SCF energies and forces from PySCF.

    Singlets run restricted (RHF/RKS), all other multiplicities unrestricted (UHF/UKS).
    `xc="hf"` gives Hartree-Fock. The PySCF log is written to `pyscf.log` in the
    calculator's `directory` (set by quacc's Runner to the job's run directory).

    Parameters
    ----------
    xc
        Exchange-correlation functional as PySCF/libxc names it (e.g. "wb97x", "b3lyp"),
        or "hf".
    basis
        Basis set name (e.g. "6-31g*", "def2-svp").
    charge
        Total charge.
    multiplicity
        Spin multiplicity 2S+1.
    conv_tol
        SCF energy convergence threshold (Hartree).
    max_cycle
        Maximum number of SCF cycles.
    level_shift
        Virtual-orbital level shift (Hartree); helps hard SCF cases converge.
    init_guess
        Initial guess ("minao", "atom", "huckel", ...).
    soscf
        Use second-order (Newton) SCF.
    dispersion
        Dispersion correction applied by PySCF (e.g. "d3bj"); needs pyscf-dispersion.
    num_threads
        OpenMP threads for PySCF during the calculation; None keeps the current setting.
    stability
        For unrestricted (open-shell) runs: after the SCF converges, run PySCF's internal
        stability analysis and, while it finds a lower solution, restart the SCF from it
        (at most `MAX_STABILITY_RESTARTS` times). Without it an open-shell SCF can settle in
        an excited state without any warning (see docs/reference/qm_validation.md). The number of
        restarts is kept in `stability_restarts`.
    verbose
        PySCF verbosity of the log file.
    """

    implemented_properties: ClassVar[list[str]] = ["energy", "forces"]
    default_parameters: ClassVar[dict[str, Any]] = {
        "xc": "wb97x",
        "basis": "6-31g*",
        "charge": 0,
        "multiplicity": 1,
        "conv_tol": 1e-9,
        "max_cycle": 100,
        "level_shift": 0.0,
        "init_guess": "minao",
        "soscf": False,
        "dispersion": None,
        "num_threads": None,
        "stability": True,
        "verbose": 4,
    }

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | None = None,
        system_changes: list[str] = all_changes,
    ) -> None:
        """
        Run the SCF and, when forces are asked for, the nuclear gradient.

        Parameters
        ----------
        atoms
            The molecule.
        properties
            Properties to compute ("energy", "forces").
        system_changes
            What changed since the last calculation.

        Returns
        -------
        None

        Raises
        ------
        ase.calculators.calculator.CalculationFailed
            If the SCF does not converge.
        """
        properties = properties or ["energy"]
        super().calculate(atoms, properties, system_changes)
        check_dispersion(self.parameters.dispersion)

        from pyscf import lib

        Path(self.directory).mkdir(parents=True, exist_ok=True)
        threads_before = lib.num_threads()
        with open(Path(self.directory) / "pyscf.log", "w", encoding="utf-8") as log:
            try:
                if self.parameters.num_threads:
                    lib.num_threads(self.parameters.num_threads)
                mf = self._scf(self._molecule(log))
                mf.kernel()
                self._check_converged(mf)
                self.stability_restarts = 0
                if self.parameters.stability and int(self.parameters.multiplicity) != 1 and _has_rotations(mf):
                    self.stability_restarts = self._follow_instabilities(mf, log)
                self.results["energy"] = float(mf.e_tot) * Hartree
                self.results["free_energy"] = self.results["energy"]
                if "forces" in properties:
                    gradient = mf.nuc_grad_method().kernel()
                    self.results["forces"] = -gradient * Hartree / Bohr
            finally:
                lib.num_threads(threads_before)

    def _check_converged(self, mf: Any) -> None:
        if not mf.converged:
            msg = f"SCF not converged after {self.parameters.max_cycle} cycles"
            raise CalculationFailed(msg)

    def _follow_instabilities(self, mf: Any, log: IO[str]) -> int:
        """Restart the SCF from the lower solution internal stability analysis finds.

        Stops when the analysis finds the solution stable, or when a restart lowers the
        energy by less than `STABILITY_TOLERANCE_EH` (the "instability" was a rotation among
        degenerate orbitals, as for a free O atom's 2p shell: the same state). Returns the
        number of restarts.
        """
        for restart in range(MAX_STABILITY_RESTARTS + 1):
            mo, _, stable, _ = mf.stability(return_status=True)
            if stable:
                log.write(f"tangentlab: SCF internally stable after {restart} restart(s)\n")
                return restart
            if restart == MAX_STABILITY_RESTARTS:
                break
            energy_before = mf.e_tot
            mf.kernel(mf.make_rdm1(mo, mf.mo_occ))
            self._check_converged(mf)
            log.write(f"tangentlab: stability restart {restart + 1}: "
                      f"E {energy_before:.10f} -> {mf.e_tot:.10f} Eh\n")
            if mf.e_tot > energy_before - STABILITY_TOLERANCE_EH:
                log.write("tangentlab: restart did not lower the energy; same state\n")
                return restart + 1
        msg = (f"SCF still internally unstable after {MAX_STABILITY_RESTARTS} stability restarts "
               "that each lowered the energy")
        raise CalculationFailed(msg)

    def _molecule(self, log: IO[str]) -> Any:
        from pyscf import gto

        mol = gto.Mole()
        mol.stdout = log
        return mol.build(
            dump_input=False,
            parse_arg=False,
            verbose=self.parameters.verbose,
            atom=list(zip(self.atoms.get_chemical_symbols(), self.atoms.positions.tolist())),
            basis=self.parameters.basis,
            charge=int(self.parameters.charge),
            spin=int(self.parameters.multiplicity) - 1,
            unit="Angstrom",
        )

    def _scf(self, mol: Any) -> Any:
        from pyscf import dft, scf

        params = self.parameters
        restricted = int(params.multiplicity) == 1
        if params.xc.lower() == "hf":
            mf = scf.RHF(mol) if restricted else scf.UHF(mol)
        else:
            mf = dft.RKS(mol) if restricted else dft.UKS(mol)
            mf.xc = params.xc
        mf.conv_tol = params.conv_tol
        mf.max_cycle = params.max_cycle
        mf.level_shift = params.level_shift
        mf.init_guess = params.init_guess
        mf.chkfile = None
        if params.dispersion is not None:
            mf.disp = params.dispersion
        if params.soscf:
            mf = mf.newton()
        return mf


def _has_rotations(mf: Any) -> bool:
    """Whether any occupied-virtual orbital rotation exists (none for H in a minimal basis)."""
    nalpha, nbeta = mf.mol.nelec
    nao = mf.mol.nao
    return nalpha * (nao - nalpha) + nbeta * (nao - nbeta) > 0

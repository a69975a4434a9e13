"""Periodic Kohn-Sham DFT labels with PySCF's PBC module (GTH pseudopotentials and basis sets),
run and summarised the way quacc recipes are.

Plane-wave-quality production labels come from quacc's ESPRESSO or VASP recipes through the
`quacc` oracle (docs/oracles.md); this oracle is the periodic DFT that installs with tangentlab
itself: PySCF ships the GTH pseudopotentials and the GTH basis sets (gth-szv, gth-dzvp, ...),
so a small cell is labelled at PBE without any other program. Its accuracy and cost against
GPAW are in docs/reference/qm_validation.md.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ase.calculators.calculator import CalculationFailed, Calculator, all_changes
from ase.units import Bohr, Hartree
from pydantic import Field

from tangentlab.oracles.base import BaseOracleSettings, Oracle, register
from tangentlab.oracles.results import (
    QMFailure,
    QMResult,
    calculator_job,
    run_quacc_job,
)
from tangentlab.structures import charge_and_multiplicity

if TYPE_CHECKING:
    from ase.atoms import Atoms


class PySCFPBCSettings(BaseOracleSettings):
    """Periodic Kohn-Sham DFT with PySCF's PBC module (`pyscf_pbc_static`, docs/oracles.md)."""

    name: Literal["pyscf-pbc"] = Field(
        description="Periodic DFT with PySCF (GTH pseudopotentials)."
    )
    xc: str = Field("pbe", description="Functional (PySCF/libxc name); semilocal functionals only.")
    basis: str = Field("gth-szv", description="GTH basis set ('gth-szv', 'gth-dzvp', ...).")
    pseudo: str = Field(
        "gth-pbe", description="GTH pseudopotential family ('gth-pbe', 'gth-lda', ...)."
    )
    kpts: list[int] = Field(
        [1, 1, 1], description="Monkhorst-Pack k-point mesh; [1, 1, 1] is the Γ point."
    )
    ke_cutoff: float | None = Field(
        None,
        description="Kinetic-energy cutoff of the density's plane-wave grid (Hartree); None: "
        "PySCF's choice from the basis (tight, slow).",
    )
    smearing_eV: float | None = Field(
        None, description="Fermi-Dirac smearing width (eV) for metals; None: integer occupations."
    )
    conv_tol: float = Field(1e-8, description="SCF energy convergence threshold (Hartree).")
    max_cycle: int = Field(100, description="Maximum SCF cycles (doubled on retries).")
    num_threads: int | None = Field(
        None, description="OpenMP threads per job (None: qm.num_threads)."
    )


class PySCFPBCCalculator(Calculator):
    """
    Energies and forces of a periodic cell from PySCF's PBC module (restricted Kohn-Sham).

    It runs `pyscf.pbc.dft.KRKS` with plane-wave density fitting (FFTDF) on the k-point mesh
    (the Γ point too: PySCF's Γ-point RKS gradients need its multigrid integration, which was 2-5x
    slower on small cells here). Directions that ASE calls non-periodic (a slab's z) are
    computed as periodic with the cell's own vacuum, as plane-wave codes do. The PySCF log goes
    to `pyscf.log` in the calculator's `directory`.

    Parameters
    ----------
    xc
        Exchange-correlation functional (PySCF/libxc name).
    basis
        GTH basis set.
    pseudo
        GTH pseudopotential family.
    kpts
        Monkhorst-Pack mesh.
    ke_cutoff
        Kinetic-energy cutoff of the density grid (Hartree); None: PySCF's choice.
    smearing_eV
        Fermi-Dirac smearing width (eV); None: integer occupations. The energy reported is
        then the free energy (the one whose derivative the forces are).
    conv_tol
        SCF energy convergence threshold (Hartree).
    max_cycle
        Maximum SCF cycles.
    num_threads
        OpenMP threads for PySCF during the calculation; None keeps the current setting.
    verbose
        PySCF verbosity of the log file.
    """

    implemented_properties: ClassVar[list[str]] = ["energy", "free_energy", "forces"]
    default_parameters: ClassVar[dict[str, Any]] = {
        "xc": "pbe",
        "basis": "gth-szv",
        "pseudo": "gth-pbe",
        "kpts": (1, 1, 1),
        "ke_cutoff": None,
        "smearing_eV": None,
        "conv_tol": 1e-8,
        "max_cycle": 100,
        "num_threads": None,
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

        Raises
        ------
        ase.calculators.calculator.CalculationFailed
            If the SCF does not converge.
        """
        properties = properties or ["energy"]
        super().calculate(atoms, properties, system_changes)
        from pyscf import lib

        Path(self.directory).mkdir(parents=True, exist_ok=True)
        threads_before = lib.num_threads()
        with open(Path(self.directory) / "pyscf.log", "w", encoding="utf-8") as log:
            try:
                if self.parameters.num_threads:
                    lib.num_threads(self.parameters.num_threads)
                mf = self._scf(self._cell(log))
                mf.kernel()
                if not mf.converged:
                    msg = f"SCF not converged after {self.parameters.max_cycle} cycles"
                    raise CalculationFailed(msg)
                self.results["energy"] = float(mf.e_tot) * Hartree
                self.results["free_energy"] = self.results["energy"]
                if "forces" in properties:
                    gradient = mf.nuc_grad_method().kernel()
                    self.results["forces"] = -gradient * Hartree / Bohr
            finally:
                lib.num_threads(threads_before)

    def _cell(self, log: Any) -> Any:
        from pyscf.pbc import gto

        params = self.parameters
        cell = gto.Cell()
        cell.stdout = log
        cell.atom = list(
            zip(self.atoms.get_chemical_symbols(), self.atoms.positions.tolist(), strict=True)
        )
        cell.a = self.atoms.cell.array.tolist()
        cell.unit = "Angstrom"
        cell.basis = params.basis
        cell.pseudo = params.pseudo
        cell.verbose = params.verbose
        if params.ke_cutoff is not None:
            cell.ke_cutoff = float(params.ke_cutoff)
        return cell.build(dump_input=False, parse_arg=False)

    def _scf(self, cell: Any) -> Any:
        from pyscf.pbc import dft, scf

        params = self.parameters
        mf = dft.KRKS(cell, cell.make_kpts(list(params.kpts)), xc=params.xc)
        mf.conv_tol = params.conv_tol
        mf.max_cycle = params.max_cycle
        mf.chkfile = None
        if params.smearing_eV:
            mf = scf.addons.smearing_(mf, sigma=params.smearing_eV / Hartree, method="fermi")
        return mf


def pyscf_pbc_level(
    xc: str = "pbe",
    basis: str = "gth-szv",
    pseudo: str = "gth-pbe",
    kpts: list[int] | tuple[int, ...] = (1, 1, 1),
    ke_cutoff: float | None = None,
    smearing_eV: float | None = None,
) -> dict[str, Any]:
    """
    Level-of-theory dict of a periodic PySCF job.

    Parameters
    ----------
    xc, basis, pseudo, kpts, ke_cutoff, smearing_eV
        As `pyscf_pbc_static`; each one changes the label, so each is recorded.

    Returns
    -------
    dict
        method, basis, pseudo, kpts, ke_cutoff, smearing_eV, code ("pyscf-pbc"), code_version.
    """
    return {
        "method": xc,
        "basis": basis,
        "pseudo": pseudo,
        "kpts": [int(k) for k in kpts],
        "ke_cutoff": ke_cutoff,
        "smearing_eV": smearing_eV,
        "code": "pyscf-pbc",
        "code_version": version("pyscf"),
    }


def check_periodic_cell(atoms: Atoms) -> None:
    """
    Check that a structure can be computed as a 3D-periodic cell.

    Raises
    ------
    QMFailure
        For a structure with no periodic direction (a molecule: the `pyscf` oracle labels it),
        or a cell vector that is zero or cell vectors that span no volume (a slab needs its
        vacuum written into the cell).
    """
    import numpy as np

    if not atoms.pbc.any():
        msg = (
            "oracle 'pyscf-pbc' labels periodic structures; this one has no periodic "
            "direction (label molecules with the 'pyscf' oracle)"
        )
        raise QMFailure(msg)
    if abs(float(np.linalg.det(atoms.cell.array))) < 1e-6:
        msg = (
            "oracle 'pyscf-pbc' computes every direction as periodic, so the cell needs three "
            "independent vectors: give a slab its vacuum in the cell (e.g. ase.build's vacuum=)"
        )
        raise QMFailure(msg)


def pyscf_pbc_static(
    atoms: Atoms,
    *,
    xc: str = "pbe",
    basis: str = "gth-szv",
    pseudo: str = "gth-pbe",
    kpts: list[int] | tuple[int, ...] = (1, 1, 1),
    ke_cutoff: float | None = None,
    smearing_eV: float | None = None,
    conv_tol: float = 1e-8,
    max_cycle: int = 100,
    num_threads: int | None = None,
    results_dir: str | Path | None = None,
) -> QMResult:
    """
    Periodic Kohn-Sham single point with PySCF, run and summarised the way quacc recipes are.

    Parameters
    ----------
    atoms
        The periodic structure (bulk cell or slab with vacuum in its cell): neutral and, without
        smearing, closed-shell.
    xc
        Functional (PySCF/libxc name), e.g. "pbe".
    basis
        GTH basis set, e.g. "gth-szv" or "gth-dzvp".
    pseudo
        GTH pseudopotential family, e.g. "gth-pbe".
    kpts
        Monkhorst-Pack mesh; (1, 1, 1) is the Γ point.
    ke_cutoff
        Kinetic-energy cutoff of the density grid (Hartree); None: PySCF's choice.
    smearing_eV
        Fermi-Dirac smearing width (eV) for metals; None: integer occupations.
    conv_tol
        SCF energy convergence threshold (Hartree).
    max_cycle
        Maximum SCF cycles.
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
        For a molecule or a cell without volume, a charged structure, an open-shell one without
        smearing, an SCF that does not converge, or a PySCF failure.
    """
    check_periodic_cell(atoms)
    charge, multiplicity = charge_and_multiplicity(atoms)
    if charge != 0:
        msg = f"oracle 'pyscf-pbc' labels neutral cells only; this one has charge {charge}"
        raise QMFailure(msg)
    if multiplicity != 1 and not smearing_eV:
        msg = (
            f"oracle 'pyscf-pbc' runs restricted Kohn-Sham: multiplicity {multiplicity} needs "
            "smearing_eV (a metal), or a closed-shell cell"
        )
        raise QMFailure(msg)
    calc = PySCFPBCCalculator(
        xc=xc,
        basis=basis,
        pseudo=pseudo,
        kpts=tuple(kpts),
        ke_cutoff=ke_cutoff,
        smearing_eV=smearing_eV,
        conv_tol=conv_tol,
        max_cycle=max_cycle,
        num_threads=num_threads,
    )
    level = pyscf_pbc_level(xc, basis, pseudo, kpts, ke_cutoff, smearing_eV)
    return run_quacc_job(calculator_job(atoms, calc, "PySCF PBC Static"), level, results_dir)


@register
class PySCFPBCOracle(Oracle):
    """Periodic PySCF DFT labels (`pyscf_pbc_static`), retried with more SCF cycles."""

    name = "pyscf-pbc"
    settings_model = PySCFPBCSettings
    job = staticmethod(pyscf_pbc_static)

    @property
    def level(self) -> dict[str, Any]:
        """Level-of-theory dict recorded with every label (`pyscf_pbc_level`)."""
        s = self.settings
        return pyscf_pbc_level(
            s.get("xc", "pbe"),
            s.get("basis", "gth-szv"),
            s.get("pseudo", "gth-pbe"),
            s.get("kpts", (1, 1, 1)),
            s.get("ke_cutoff"),
            s.get("smearing_eV"),
        )

    @classmethod
    def check(cls, settings: dict[str, Any]) -> None:
        """Reject a basis set, pseudopotential family, functional or k-point mesh that cannot
        work (ValueError naming it)."""
        from pyscf.dft import libxc
        from pyscf.pbc import gto

        basis = settings.get("basis", "gth-szv")
        try:
            gto.basis.load(basis, "Si")
        except Exception as err:
            msg = f"unknown GTH basis set {basis!r} for PySCF (e.g. 'gth-szv', 'gth-dzvp')"
            raise ValueError(msg) from err
        pseudo = settings.get("pseudo", "gth-pbe")
        try:
            gto.pseudo.load(pseudo, "Si")
        except Exception as err:
            msg = f"unknown pseudopotential family {pseudo!r} for PySCF (e.g. 'gth-pbe')"
            raise ValueError(msg) from err
        xc = settings.get("xc", "pbe")
        try:
            hybrid = libxc.is_hybrid_xc(xc)
        except Exception as err:
            msg = f"unknown exchange-correlation functional {xc!r} for PySCF"
            raise ValueError(msg) from err
        if hybrid:
            msg = (
                f"oracle 'pyscf-pbc' runs semilocal functionals only (LDA, GGA, meta-GGA); "
                f"{xc!r} is a hybrid"
            )
            raise ValueError(msg)
        kpts = settings.get("kpts", [1, 1, 1])
        if len(kpts) != 3 or any(int(k) < 1 for k in kpts):
            msg = f"oracle 'pyscf-pbc': kpts must be three positive integers, got {kpts}"
            raise ValueError(msg)
        for key in ("ke_cutoff", "smearing_eV"):
            value = settings.get(key)
            if value is not None and value <= 0:
                msg = f"oracle 'pyscf-pbc': {key} must be positive, got {value}"
                raise ValueError(msg)

    def retry_kwargs(self, attempt: int) -> dict[str, Any]:
        """Attempt 2 and later: twice the SCF cycles."""
        if attempt < 2:
            return {}
        return {"max_cycle": 2 * self.settings.get("max_cycle", 100)}

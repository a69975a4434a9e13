"""GFN-xTB labels through quacc's tblite recipe."""

from __future__ import annotations

from importlib.metadata import version
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from tangentlab.oracles.base import BaseOracleSettings, Oracle, register
from tangentlab.oracles.results import (
    QMResult,
    run_quacc_job,
)
from tangentlab.structures import spin_state

if TYPE_CHECKING:
    from pathlib import Path

    from ase.atoms import Atoms

XTB_METHODS = ("GFN1-xTB", "GFN2-xTB", "IPEA1-xTB")


class XTBSettings(BaseOracleSettings):
    """GFN-xTB through quacc's tblite `static_job` (docs/oracles.md)."""

    name: Literal["xtb"] = Field(description="The xTB oracle.")
    method: str = Field("GFN2-xTB", description=f"xTB Hamiltonian, one of {XTB_METHODS}.")


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
    job = strip_decorator(static_job)
    return run_quacc_job(
        lambda: job(atoms, method=method, charge=charge, multiplicity=multiplicity, verbosity=0),
        xtb_level(method), results_dir,
    )


@register
class XTBOracle(Oracle):
    """GFN-xTB labels (`xtb_static`); no retry strategy."""

    name = "xtb"
    settings_model = XTBSettings
    job = staticmethod(xtb_static)

    @property
    def level(self) -> dict[str, Any]:
        """Level-of-theory dict recorded with every label (`xtb_level`)."""
        return xtb_level(self.settings.get("method", "GFN2-xTB"))

    @classmethod
    def check(cls, settings: dict[str, Any]) -> None:
        """Reject an xTB method tblite does not have (ValueError)."""
        method = settings.get("method", "GFN2-xTB")
        if method not in XTB_METHODS:
            msg = f"unknown xTB method {method!r}; known: {XTB_METHODS}"
            raise ValueError(msg)

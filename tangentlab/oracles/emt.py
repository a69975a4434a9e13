"""EMT labels through quacc's `emt` recipe: fast, periodic, for tests and examples.

ASE's effective-medium theory knows Al, Ni, Cu, Pd, Ag, Pt, Au and (as test parameters) H, C,
N, O. It labels a molecule, a slab or a bulk cell in milliseconds, so that a periodic campaign
runs end to end on a laptop; it is not a level of theory to fine-tune a production model on.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from tangentlab.oracles.base import BaseOracleSettings, Oracle, register
from tangentlab.oracles.results import (
    QMFailure,
    QMResult,
    run_quacc_job,
)
from tangentlab.structures import charge_and_multiplicity

if TYPE_CHECKING:
    from pathlib import Path

    from ase.atoms import Atoms


class EMTSettings(BaseOracleSettings):
    """ASE's EMT through quacc's `emt` `static_job` (docs/oracles.md)."""

    name: Literal["emt"] = Field(description="The EMT oracle (ASE's effective-medium theory).")


def emt_elements() -> list[str]:
    """The elements ASE's EMT has parameters for."""
    from ase.calculators.emt import parameters

    return sorted(parameters)


def emt_level() -> dict[str, Any]:
    """
    Level-of-theory dict of an EMT job.

    Returns
    -------
    dict
        method ("EMT"), basis (None), code ("ase"), code_version.
    """
    return {"method": "EMT", "basis": None, "code": "ase", "code_version": version("ase")}


def emt_static(atoms: Atoms, *, results_dir: str | Path | None = None) -> QMResult:
    """
    EMT single point through quacc's `emt` `static_job`.

    Periodic cells and constraints are passed through; the forces returned are the
    calculator's, on every atom (constraints do not zero them).

    Parameters
    ----------
    atoms
        The structure: neutral, with the default multiplicity (EMT has no electrons).
    results_dir
        Where quacc puts the job directory; None keeps quacc's RESULTS_DIR.

    Returns
    -------
    QMResult
        Energy, forces and the job directory.

    Raises
    ------
    QMFailure
        For an element EMT has no parameters for, a charged structure or a multiplicity
        other than the default, or a failed calculation.
    """
    from quacc import strip_decorator
    from quacc.recipes.emt.core import static_job

    known = emt_elements()
    unknown = sorted(set(atoms.get_chemical_symbols()) - set(known))
    if unknown:
        msg = f"EMT has no parameters for {', '.join(unknown)} (it knows {', '.join(known)})"
        raise QMFailure(msg)
    charge, multiplicity = charge_and_multiplicity(atoms)
    electrons = int(atoms.numbers.sum()) - charge
    if charge != 0 or multiplicity != (1 if electrons % 2 == 0 else 2):
        msg = (
            f"EMT labels neutral structures with the default multiplicity only; this one has "
            f"charge {charge} and multiplicity {multiplicity}"
        )
        raise QMFailure(msg)
    return run_quacc_job(lambda: strip_decorator(static_job)(atoms), emt_level(), results_dir)


@register
class EMTOracle(Oracle):
    """EMT labels (`emt_static`); no settings, no retry strategy."""

    name = "emt"
    settings_model = EMTSettings
    job = staticmethod(emt_static)

    @property
    def level(self) -> dict[str, Any]:
        """Level-of-theory dict recorded with every label (`emt_level`)."""
        return emt_level()

    @classmethod
    def check(cls, settings: dict[str, Any]) -> None:
        """Nothing to check: EMT takes no settings."""

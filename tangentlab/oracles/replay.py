"""Replay: labels stored with the pool files, revealed only when a structure is acquired.

Benchmarks replay a labelled data set as the candidate pool; no QM is run.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from time import perf_counter, sleep
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tangentlab.oracles.base import BaseOracleSettings, Oracle, register
from tangentlab.oracles.results import QMFailure, QMResult
from tangentlab.structures import content_hash

if TYPE_CHECKING:
    from ase.atoms import Atoms


class Latency(BaseModel):
    """A two-piece log-normal QM time, drawn once per structure (from its content hash)."""

    model_config = ConfigDict(extra="forbid")

    median_s: float = Field(6.0, gt=0, description="Median label time (s).")
    sigma_below: float = Field(1.0, ge=0, description="Log-normal σ below the median.")
    sigma_above: float = Field(1.7, ge=0, description="Log-normal σ above the median (the long tail).")
    min_s: float = Field(0.0, ge=0, description="Shortest time (s).")
    max_s: float = Field(230.0, gt=0, description="Longest time (s).")
    scale: float = Field(1.0, gt=0, description="Multiplies every time (a faster clock for tests).")


def latency_seconds(z: float | np.ndarray, latency: dict[str, Any]) -> float | np.ndarray:
    """The label time of standard normal draw(s) ``z`` under ``latency`` (:class:`Latency`)."""
    settings = Latency(**latency)
    sigma = np.where(np.asarray(z) < 0, settings.sigma_below, settings.sigma_above)
    seconds = np.clip(settings.median_s * np.exp(sigma * z), settings.min_s, settings.max_s)
    return settings.scale * seconds


def structure_latency(atoms: Atoms, latency: dict[str, Any]) -> float:
    """The simulated QM time of one structure: the same on every run and resume."""
    z = np.random.default_rng(int(content_hash(atoms)[:12], 16)).standard_normal()
    return float(latency_seconds(z, latency))


class ReplaySettings(BaseOracleSettings):
    """Labels stored with the pool files (`replay_static`, docs/oracles.md)."""

    name: Literal["replay"] = Field(description="The replay oracle (benchmarks).")
    files: list[str] | None = Field(
        None, description="Files holding the stored labels; None: the campaign's pool and test_file.")
    reference_level: dict[str, Any] | None = Field(
        None, description="Declared level of the stored labels (method, basis, code).")
    latency: Latency | None = Field(
        None, description="A simulated QM time per label (the oracle waits for it): benchmarks and "
        "tests of asynchronous rounds. None: no wait.")


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
    latency: dict[str, Any] | None = None,
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
    latency
        :class:`Latency` settings: wait that long before answering (a stand-in QM time).

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
    if latency is not None:
        sleep(structure_latency(atoms, latency))
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
            energy, forces = stored_energy_forces(atoms)
            if energy is not None and forces is not None:
                labels[content_hash(atoms)] = (energy, forces)
    return labels


def stored_energy(atoms: Atoms) -> float | None:
    """A structure's stored energy (eV): its calculator's result first, else
    ``info["energy"]``; None when it has neither."""
    results = atoms.calc.results if atoms.calc is not None else {}
    energy = results.get("energy", atoms.info.get("energy"))
    return None if energy is None else float(energy)


def stored_forces(atoms: Atoms) -> np.ndarray | None:
    """A structure's stored forces (natoms × 3, eV/Å): its calculator's result first, else
    ``arrays["forces"]``; None when it has neither."""
    results = atoms.calc.results if atoms.calc is not None else {}
    forces = results.get("forces", atoms.arrays.get("forces"))
    return None if forces is None else np.asarray(forces, dtype=np.float64).reshape(-1, 3)


def stored_energy_forces(atoms: Atoms) -> tuple[float | None, np.ndarray | None]:
    """A structure's stored energy and forces (`stored_energy`, `stored_forces`); (None,
    None) unless both."""
    energy, forces = stored_energy(atoms), stored_forces(atoms)
    if energy is None or forces is None:
        return None, None
    return energy, forces


@register
class ReplayOracle(Oracle):
    """Stored labels (`replay_static`): a lookup, run in the caller's process, never retried differently."""

    name = "replay"
    settings_model = ReplaySettings
    job = staticmethod(replay_static)
    isolated = False

    @property
    def level(self) -> dict[str, Any]:
        """Level-of-theory dict recorded with every label (`replay_level`)."""
        return replay_level(self.settings["files"], self.settings.get("reference_level"))

    @classmethod
    def check(cls, settings: dict[str, Any]) -> None:
        """Reject missing label files (ValueError); resolve their paths in place."""
        files = settings.get("files")
        if not files or not isinstance(files, list | tuple):
            msg = "oracle 'replay' needs 'files', the structure files that hold the stored labels"
            raise ValueError(msg)
        missing = [str(f) for f in files if not Path(f).is_file()]
        if missing:
            msg = f"oracle 'replay': label file(s) not found: {missing}"
            raise ValueError(msg)
        settings["files"] = [str(Path(f).resolve()) for f in files]

"""Outlier guards on predicted forces (the σ² guard lives in `select_batch`).

DP-GEN labels a candidate only when the committee's force deviation lies between a lower and an
upper trust level: above the upper one a structure is taken to be unphysical or far outside what
the potential must serve. Kernels rank such outliers first, which is how maximum-variance
selection lost to random on reactive data (docs/benchmarks). `force_guard` is that upper level
on the current model's predicted forces.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from ase import Atoms

from tangentlab.mace_model import predict


def largest_predicted_force(model: torch.nn.Module, atoms_list: Sequence[Atoms],
                            device: str | torch.device | None = None) -> np.ndarray:
    """The largest absolute force component (eV/Å) the model predicts for each structure."""
    return np.array([float(np.abs(forces).max()) for _, forces in predict(model, atoms_list, device=device)])


def force_guard(model: torch.nn.Module, pool_atoms: Sequence[Atoms], max_force: float | None,
                device: str | torch.device | None = None) -> list[int]:
    """
    Pool indices whose predicted largest force component exceeds ``max_force``.

    Parameters
    ----------
    model
        The current model.
    pool_atoms
        The candidates.
    max_force
        The bound (eV/Å, > 0); None guards nothing.

    Returns
    -------
    Indices to exclude from selection, ascending (every index when the bound excludes the whole
    pool: the caller decides what to do then).
    """
    if max_force is None or len(pool_atoms) == 0:
        return []
    if not max_force > 0:
        raise ValueError(f"max_force must be positive, got {max_force}")
    largest = largest_predicted_force(model, pool_atoms, device)
    return [int(i) for i in np.flatnonzero(largest > max_force)]

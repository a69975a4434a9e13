"""What a round picked, set against what it could have picked.

Maximum-variance selection on reactive data picked frames with twice the pool's mean
maximum force; nothing showed it until a benchmark lost. `selection_diagnostics` puts the
picks' predicted energy per atom and largest force component beside the pool's (and the
target's), from the current model's predictions, so every round shows whether the batch
follows the pool or chases its tail.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from ase import Atoms

from tangentlab.mace_model import predict

QUANTILES = (0.1, 0.5, 0.9)


def _summary(model: torch.nn.Module, atoms_list: Sequence[Atoms]) -> dict[str, object]:
    predictions = predict(model, atoms_list)
    energy = np.array([e / len(a) for (e, _), a in zip(predictions, atoms_list)])
    max_force = np.array([float(np.abs(f).max()) if f.size else 0.0 for _, f in predictions])
    summary: dict[str, object] = {"count": len(atoms_list)}
    for name, values in (("energy_per_atom_eV", energy), ("max_force_eV_per_A", max_force)):
        summary[name] = {
            "mean": float(values.mean()) if values.size else None,
            **{f"q{int(q * 100)}": float(np.quantile(values, q)) if values.size else None
               for q in QUANTILES},
        }
    return summary


def _sample(atoms_list: Sequence[Atoms], size: int, rng: np.random.Generator) -> list[Atoms]:
    if len(atoms_list) <= size:
        return list(atoms_list)
    return [atoms_list[i] for i in np.sort(rng.choice(len(atoms_list), size, replace=False))]


def selection_diagnostics(
    model: torch.nn.Module,
    picked: Sequence[Atoms],
    pool: Sequence[Atoms],
    target: Sequence[Atoms] | None = None,
    sample_size: int = 500,
    seed: int = 0,
) -> dict[str, dict[str, object]]:
    """
    Predicted energy-per-atom and max-force distributions of the picks, the pool and the target.

    Parameters
    ----------
    model
        The model the round acquired with.
    picked
        The selected structures.
    pool
        The candidates (a uniform sample of ``sample_size`` is predicted).
    target
        The acquisition target when it is not the pool.
    sample_size
        Pool and target structures predicted at most.
    seed
        Seed of the sample.

    Returns
    -------
    dict
        ``{"picked": ..., "pool": ..., ["target": ...]}``, each with ``count`` and, for
        ``energy_per_atom_eV`` and ``max_force_eV_per_A``, the mean and the 10/50/90 %
        quantiles (JSON-serialisable).
    """
    rng = np.random.default_rng(seed)
    result = {"picked": _summary(model, picked), "pool": _summary(model, _sample(pool, sample_size, rng))}
    if target is not None:
        result["target"] = _summary(model, _sample(target, sample_size, rng))
    return result

"""Error metrics of energy and force predictions (meV/atom and meV/Å)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tangentlab.confidence import DEFAULT_LEVEL, mae_interval, rounded


def _energy_errors_per_atom(
    pred_energies: Sequence[float], ref_energies: Sequence[float], natoms: Sequence[int]
) -> np.ndarray:
    pred = np.asarray(pred_energies, dtype=np.float64)
    ref = np.asarray(ref_energies, dtype=np.float64)
    counts = np.asarray(natoms, dtype=np.float64)
    if not pred.shape == ref.shape == counts.shape or pred.ndim != 1:
        raise ValueError(
            f"need equally long 1-D energies and atom counts, got shapes "
            f"{pred.shape}, {ref.shape}, {counts.shape}"
        )
    if np.any(counts < 1):
        raise ValueError("every structure needs at least one atom")
    return (pred - ref) / counts


def _force_errors(
    pred_forces: Sequence[np.ndarray],
    ref_forces: Sequence[np.ndarray],
    free: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    errors = _force_errors_per_structure(pred_forces, ref_forces, free)
    return np.concatenate(errors) if errors else np.zeros(0)


def _force_errors_per_structure(
    pred_forces: Sequence[np.ndarray],
    ref_forces: Sequence[np.ndarray],
    free: Sequence[np.ndarray] | None = None,
) -> list[np.ndarray]:
    if len(pred_forces) != len(ref_forces):
        raise ValueError(
            f"{len(pred_forces)} predicted and {len(ref_forces)} reference force arrays"
        )
    if free is not None and len(free) != len(ref_forces):
        raise ValueError(f"{len(free)} free-component masks for {len(ref_forces)} structures")
    errors = []
    for index, (pred, ref) in enumerate(zip(pred_forces, ref_forces)):
        pred = np.asarray(pred, dtype=np.float64)
        ref = np.asarray(ref, dtype=np.float64)
        if pred.shape != ref.shape or pred.ndim != 2 or pred.shape[1] != 3:
            raise ValueError(
                f"structure {index}: forces must both be (natoms, 3), got {pred.shape} "
                f"and {ref.shape}"
            )
        error = pred - ref
        if free is not None:
            mask = np.asarray(free[index], dtype=bool)
            if mask.shape != error.shape:
                raise ValueError(
                    f"structure {index}: free-component mask {mask.shape}, forces {error.shape}"
                )
            error = error[mask]
        errors.append(error.ravel())
    return errors


def energy_mae_per_atom(
    pred_energies: Sequence[float], ref_energies: Sequence[float], natoms: Sequence[int]
) -> float:
    """
    Mean absolute energy error per atom.

    Parameters
    ----------
    pred_energies
        Predicted total energies (eV).
    ref_energies
        Reference total energies (eV).
    natoms
        Atom count of each structure.

    Returns
    -------
    float
        ``mean_s |E_pred - E_ref| / N_s`` in meV/atom.
    """
    errors = _energy_errors_per_atom(pred_energies, ref_energies, natoms)
    if errors.size == 0:
        raise ValueError("no structures to evaluate")
    return float(np.mean(np.abs(errors))) * 1e3


def force_mae(pred_forces: Sequence[np.ndarray], ref_forces: Sequence[np.ndarray]) -> float:
    """
    Mean absolute force error over all force components of all structures.

    Parameters
    ----------
    pred_forces
        Predicted forces, one (natoms, 3) array per structure (eV/Å).
    ref_forces
        Reference forces, same shapes (eV/Å).

    Returns
    -------
    float
        The MAE in meV/Å.
    """
    errors = _force_errors(pred_forces, ref_forces)
    if errors.size == 0:
        raise ValueError("no force components to evaluate")
    return float(np.mean(np.abs(errors))) * 1e3


def error_metrics(
    preds: Sequence[tuple[float, np.ndarray]],
    refs: Sequence[tuple[float, np.ndarray | None]],
    natoms: Sequence[int],
    free: Sequence[np.ndarray] | None = None,
    level: float = DEFAULT_LEVEL,
) -> dict[str, float | int | str | list[float] | None]:
    """
    Energy and force MAE and RMSE of predictions against references.

    Parameters
    ----------
    preds
        ``(energy, forces)`` per structure (eV, eV/Å), as `tangentlab.mace_model.predict`
        returns them.
    refs
        Reference ``(energy, forces)`` per structure; forces may be None for structures
        labelled with energies only (they are left out of the force metrics).
    natoms
        Atom count of each structure.
    free
        Per structure, a boolean (natoms, 3) mask of the force components to score (e.g.
        `tangentlab.structures.free_components`: the atoms a slab's ``FixAtoms`` does not
        hold); None scores every component.
    level
        Coverage of the MAE intervals (`tangentlab.confidence.mae_interval`).

    Returns
    -------
    dict
        ``energy_mae_mev_per_atom``, ``energy_rmse_mev_per_atom``, ``force_mae_mev_per_a``,
        ``force_rmse_mev_per_a`` (None when no reference has forces or no component is free),
        ``force_atoms`` (``"free"`` with masks, ``"all"`` without) and ``n_structures``; the
        bootstrap intervals over structures ``energy_mae_interval_mev_per_atom`` and
        ``force_mae_interval_mev_per_a`` (``[low, high]``, None for fewer than two structures)
        at ``interval_level``.
    """
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
    if len(preds) == 0:
        raise ValueError("no structures to evaluate")
    energy_errors = _energy_errors_per_atom(
        [energy for energy, _ in preds], [energy for energy, _ in refs], natoms
    )
    with_forces = [i for i, (_, forces) in enumerate(refs) if forces is not None]
    per_structure = _force_errors_per_structure(
        [preds[i][1] for i in with_forces],
        [refs[i][1] for i in with_forces],
        None if free is None else [free[i] for i in with_forces],
    )
    force_errors = np.concatenate(per_structure) if per_structure else np.zeros(0)
    has_forces = force_errors.size > 0
    force_interval = mae_interval(
        [np.abs(e).sum() * 1e3 for e in per_structure], [e.size for e in per_structure], level=level
    ) if has_forces else None
    return {
        "energy_mae_mev_per_atom": float(np.mean(np.abs(energy_errors))) * 1e3,
        "energy_rmse_mev_per_atom": float(np.sqrt(np.mean(energy_errors**2))) * 1e3,
        "force_mae_mev_per_a": float(np.mean(np.abs(force_errors))) * 1e3 if has_forces else None,
        "force_rmse_mev_per_a": (
            float(np.sqrt(np.mean(force_errors**2))) * 1e3 if has_forces else None
        ),
        "force_atoms": "all" if free is None else "free",
        "n_structures": len(preds),
        "energy_mae_interval_mev_per_atom": rounded(
            mae_interval(np.abs(energy_errors) * 1e3, level=level), 2),
        "force_mae_interval_mev_per_a": rounded(force_interval, 2),
        "interval_level": level,
    }

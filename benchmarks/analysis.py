"""Benchmark analysis: learning curves, labels-to-reach, seed-paired differences.

The headline number (as in the papers) is the labels a method needs to reach the error that
random acquisition reaches at the end of its budget. Because the initial set differs between
seeds and dominates the error at small budgets, every comparison is also made *paired by
seed* (the same initial set), with a Student-t interval over seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def learning_curve(report: dict[str, Any]) -> dict[str, list[float]]:
    """
    Labels and test errors after every evaluated round, from `db.reports.campaign_report`.

    Returns
    -------
    dict
        ``labels`` (training + validation labels after the round), ``energy`` (meV/atom),
        ``force`` (meV/Å), their bootstrap intervals over the test structures
        ``energy_interval`` and ``force_interval`` (``[low, high]`` per round, None where the
        round was evaluated without one) at ``interval_level``, and ``acquire_s`` (per
        acquisition round, round 0 excluded).
    """
    labels, energy, force, acquire = [], [], [], []
    energy_interval, force_interval, levels = [], [], set()
    total = 0
    for r in report["rounds"]:
        total += r["selected"]
        if r["force_mae_mev_per_a"] is None:
            continue
        labels.append(total)
        energy.append(r["energy_mae_mev_per_atom"])
        force.append(r["force_mae_mev_per_a"])
        energy_interval.append(r.get("energy_mae_interval_mev_per_atom"))
        force_interval.append(r.get("force_mae_interval_mev_per_a"))
        if r.get("interval_level") is not None:
            levels.add(r["interval_level"])
        if r["number"] > 0:
            acquire.append(float(r["timings"].get("acquire_s", 0.0)))
    return {"labels": labels, "energy": energy, "force": force, "energy_interval": energy_interval,
            "force_interval": force_interval, "interval_level": levels.pop() if len(levels) == 1 else None,
            "acquire_s": acquire}


def labels_to_reach(
    labels: Sequence[float], errors: Sequence[float], target: float
) -> float | None:
    """
    Labels at which a learning curve first reaches ``target`` (linear interpolation).

    Parameters
    ----------
    labels
        Increasing label counts.
    errors
        Error after each count.
    target
        Error to reach.

    Returns
    -------
    float or None
        The interpolated label count; None when the curve never reaches the target.
    """
    labels = np.asarray(labels, dtype=float)
    errors = np.asarray(errors, dtype=float)
    if labels.shape != errors.shape or labels.size == 0:
        raise ValueError(
            f"labels {labels.shape} and errors {errors.shape} must be equal, non-empty"
        )
    if errors[0] <= target:
        return float(labels[0])
    for i in range(1, len(errors)):
        if errors[i] <= target:
            frac = (errors[i - 1] - target) / (errors[i - 1] - errors[i])
            return float(labels[i - 1] + frac * (labels[i] - labels[i - 1]))
    return None


def mean_curves(
    curves: list[dict[str, list[float]]], key: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, mean and std over seeds of one error, on the label points every curve has."""
    common = sorted(set.intersection(*(set(c["labels"]) for c in curves)))
    values = np.array([[c[key][c["labels"].index(x)] for x in common] for c in curves])
    return np.asarray(common, float), values.mean(axis=0), values.std(axis=0)


def comparison_table(curves: dict[str, list[dict[str, list[float]]]]) -> dict[str, dict[str, Any]]:
    """
    Per method and error: final error, labels to reach random's final error, reduction.

    The target is random acquisition's mean error (over seeds) at the end of its budget; the
    labels a method needs are read off its mean curve (`labels_to_reach`), and the reduction
    is ``1 - labels / labels_random`` with random's own count read the same way. Per-seed
    counts (each seed's curve against the same target) give the spread.

    Parameters
    ----------
    curves
        Method -> learning curves (one per finished seed).

    Returns
    -------
    dict
        Method -> {"energy": {...}, "force": {...}, "seeds": n}.
    """
    if "random" not in curves or not curves["random"]:
        raise ValueError("the table needs finished random campaigns (the reference)")
    table: dict[str, dict[str, Any]] = {}
    for key in ("energy", "force"):
        x_ref, mean_ref, _ = mean_curves(curves["random"], key)
        target = float(mean_ref[-1])
        random_labels = labels_to_reach(x_ref, mean_ref, target)
        for method, method_curves in curves.items():
            if not method_curves:
                continue
            x, mean, _ = mean_curves(method_curves, key)
            needed = labels_to_reach(x, mean, target)
            per_seed = [labels_to_reach(c["labels"], c[key], target) for c in method_curves]
            finals = [c[key][-1] for c in method_curves]
            table.setdefault(method, {"seeds": len(method_curves)})[key] = {
                "final_mean": float(np.mean(finals)),
                "final_std": float(np.std(finals)),
                "final_min": float(np.min(finals)),
                "final_max": float(np.max(finals)),
                "budget": float(x[-1]),
                "random_target": target,
                "labels_to_reach": needed,
                "random_labels_to_reach": random_labels,
                "reduction_vs_random": None if needed is None else 1.0 - needed / random_labels,
                "per_seed_labels_to_reach": per_seed,
                **_paired(method_curves, curves["random"], key),
            }
    return table


def _paired(method_curves: list[dict], random_curves: list[dict], key: str) -> dict[str, Any]:
    """
    Seed-paired labels-to-reach: each seed against random's final error with the same seed.

    The initial set differs between seeds and dominates the error at small budgets, so the
    mean-curve comparison can be decided by one unlucky seed; pairing by seed compares
    methods that started from the same initial set. Curves need a ``seed`` key (seeds
    without a random campaign are skipped).

    Returns
    -------
    dict
        ``paired_labels`` and ``paired_reduction`` per seed (None: not reached within the
        budget), ``paired_reduction_mean`` over the seeds that reached it and
        ``paired_not_reached`` (count).
    """
    by_seed = {c.get("seed"): c for c in random_curves}
    labels, reductions = {}, {}
    for curve in method_curves:
        reference = by_seed.get(curve.get("seed"))
        if reference is None or curve.get("seed") is None:
            continue
        target = reference[key][-1]
        own = labels_to_reach(reference["labels"], reference[key], target)
        needed = labels_to_reach(curve["labels"], curve[key], target)
        labels[str(curve["seed"])] = needed
        reductions[str(curve["seed"])] = None if needed is None else 1.0 - needed / own
    reached = [r for r in reductions.values() if r is not None]
    return {
        "paired_labels": labels,
        "paired_reduction": reductions,
        "paired_reduction_mean": float(np.mean(reached)) if reached else None,
        "paired_not_reached": sum(r is None for r in reductions.values()),
        "paired_difference": paired_difference(method_curves, random_curves, key),
    }


def mean_with_interval(values: Sequence[float], level: float = 0.95) -> dict[str, float | None]:
    """
    Mean and the half-width of its Student-t confidence interval over seeds.

    Returns
    -------
    dict
        ``mean``, ``half_width`` (None for fewer than two values), ``n``.
    """
    from scipy.stats import t

    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if values.size == 0:
        return {"mean": None, "half_width": None, "n": 0}
    if values.size < 2:
        return {"mean": float(values.mean()), "half_width": None, "n": 1}
    half = t.ppf(0.5 + level / 2, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size)
    return {"mean": float(values.mean()), "half_width": float(half), "n": int(values.size)}


def paired_difference(method_curves: list[dict], random_curves: list[dict], key: str) -> dict[str, Any]:
    """
    Error minus random's error with the same seed (same initial set), at every budget.

    Returns
    -------
    dict
        ``labels`` (the label counts both curves have), ``mean`` and ``half_width`` (95 %
        Student-t interval over seeds) of the difference at each, ``per_seed`` differences,
        and ``final``: the same at the end of the budget. Negative: fewer errors than random.
    """
    by_seed = {c.get("seed"): c for c in random_curves}
    pairs = [
        (c, by_seed[c["seed"]]) for c in method_curves if c.get("seed") is not None and c["seed"] in by_seed
    ]
    if not pairs:
        return {"labels": [], "mean": [], "half_width": [], "per_seed": {}, "final": None}
    common = sorted(set.intersection(*(set(c["labels"]) & set(r["labels"]) for c, r in pairs)))
    per_seed = {
        str(c["seed"]): [c[key][c["labels"].index(x)] - r[key][r["labels"].index(x)] for x in common]
        for c, r in pairs
    }
    columns = list(zip(*per_seed.values())) if common else []
    stats = [mean_with_interval(column) for column in columns]
    return {
        "labels": common,
        "mean": [s["mean"] for s in stats],
        "half_width": [s["half_width"] for s in stats],
        "per_seed": per_seed,
        "final": stats[-1] if stats else None,
    }


def per_structure_errors(preds, atoms_list) -> tuple[np.ndarray, np.ndarray]:
    """Per-structure |energy error| per atom (meV/atom) and force MAE (meV/Å)."""
    energy = np.array(
        [1e3 * abs(e - a.info["energy"]) / len(a) for (e, _), a in zip(preds, atoms_list)]
    )
    force = np.array(
        [1e3 * np.abs(f - a.arrays["forces"]).mean() for (_, f), a in zip(preds, atoms_list)]
    )
    return energy, force


def path_errors(
    predicted: Sequence[float], reference: Sequence[float], natoms: int
) -> dict[str, float]:
    """
    Errors of a predicted energy path (e.g. a NEB) against the reference path.

    Energies are compared relative to each path's first frame, so a constant offset (reference
    energies) does not count; the barrier is the highest frame minus the first.

    Returns
    -------
    dict
        ``relative_mae_mev`` (per frame, meV, whole molecule), ``relative_mae_mev_per_atom``,
        ``barrier_ref_mev``, ``barrier_pred_mev``, ``barrier_error_mev``.
    """
    pred = np.asarray(predicted, float) - predicted[0]
    ref = np.asarray(reference, float) - reference[0]
    mae = float(np.mean(np.abs(pred - ref))) * 1e3
    return {
        "relative_mae_mev": mae,
        "relative_mae_mev_per_atom": mae / natoms,
        "barrier_ref_mev": float(ref.max()) * 1e3,
        "barrier_pred_mev": float(pred.max()) * 1e3,
        "barrier_error_mev": float(pred.max() - ref.max()) * 1e3,
        "frames": int(len(ref)),
    }

"""Campaign decisions that do not depend on Prefect or the database: splits and stopping."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def is_validation(content_hash: str, valid_fraction: float) -> bool:
    """Whether a labelled structure is held out for early stopping.

    The choice hashes the structure's content, so it is the same on every run and resume,
    and about ``valid_fraction`` of labelled structures end up in the validation split.
    """
    return int(content_hash[:8], 16) / 16**8 < valid_fraction


def split_labelled(content_hashes: list[str], valid_fraction: float) -> list[str]:
    """``"valid"`` or ``"train"`` for each newly selected structure.

    At least one structure of a batch of two or more goes to training, and when
    ``valid_fraction > 0`` and nothing was chosen for validation, the last one goes there, so
    early stopping always has data.
    """
    splits = ["valid" if is_validation(h, valid_fraction) else "train" for h in content_hashes]
    if len(splits) >= 2 and all(s == "valid" for s in splits):
        splits[0] = "train"
    if len(splits) >= 2 and valid_fraction > 0 and "valid" not in splits:
        splits[-1] = "valid"
    return splits


def draw(ids: list[int], size: int, seed: int, salt: int) -> list[int]:
    """A reproducible random subset of ``ids`` (sorted input, so database order never matters)."""
    ordered = sorted(ids)
    rng = np.random.default_rng([seed, salt])
    picked = rng.choice(len(ordered), size=min(size, len(ordered)), replace=False)
    return [ordered[i] for i in sorted(picked)]


@dataclass(frozen=True)
class StopDecision:
    """Why a campaign stops: ``status`` is ``targets_met`` or ``budget_exhausted``."""

    status: str
    reason: str


def stop_decision(
    *,
    energy_mae: float,
    force_mae: float,
    targets,
    labels_used: int,
    rounds_done: int,
    wall_time_s: float,
    budgets,
    pool_remaining: int | None = None,
) -> StopDecision | None:
    """Decide whether to stop after an evaluated round (targets first, then budgets).

    Parameters
    ----------
    energy_mae, force_mae
        Test-set errors of the current model (meV/atom, meV/Å).
    targets
        :class:`tangentlab.config.Targets`.
    labels_used, rounds_done, wall_time_s
        What the campaign has spent: training/validation labels, acquisition rounds after the
        initial set, and wall time over all runs.
    budgets
        :class:`tangentlab.config.Budgets`.
    pool_remaining
        Candidates still unlabelled and not failed; zero stops the campaign.
    """
    if energy_mae <= targets.energy_mae_mev_per_atom and force_mae <= targets.force_mae_mev_per_a:
        return StopDecision(
            "targets_met",
            f"targets met: energy MAE {energy_mae:.1f} <= {targets.energy_mae_mev_per_atom} meV/atom "
            f"and force MAE {force_mae:.1f} <= {targets.force_mae_mev_per_a} meV/Å",
        )
    missed = (
        f"energy MAE {energy_mae:.1f} meV/atom (target {targets.energy_mae_mev_per_atom}), "
        f"force MAE {force_mae:.1f} meV/Å (target {targets.force_mae_mev_per_a})"
    )
    if labels_used >= budgets.max_labels:
        return StopDecision("budget_exhausted", f"label budget used ({labels_used}/{budgets.max_labels}); {missed}")
    if rounds_done >= budgets.max_rounds:
        return StopDecision("budget_exhausted", f"round budget used ({rounds_done}/{budgets.max_rounds}); {missed}")
    if pool_remaining == 0:
        return StopDecision("budget_exhausted", f"candidate pool exhausted; {missed}")
    if wall_time_s >= budgets.max_wall_time_s:
        return StopDecision(
            "budget_exhausted", f"wall-time budget used ({wall_time_s:.0f}/{budgets.max_wall_time_s:.0f} s); {missed}"
        )
    return None

"""When a campaign stops: error targets first, then the label, round, pool and wall-time budgets."""

from __future__ import annotations

from dataclasses import dataclass


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

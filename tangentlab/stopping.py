"""When a campaign stops: error targets first, then the label, round, pool and wall-time budgets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Which budget stopped a campaign (``None``: the targets were met).
Budget = Literal["labels", "rounds", "pool", "wall_time"]
BUDGETS: tuple[Budget, ...] = ("labels", "rounds", "pool", "wall_time")

# The start of each budget's stop reason: the reason is written from these, and a stored
# reason is read back with them (:func:`stored_budget`), so the two cannot drift apart.
REASON_PREFIX: dict[Budget, str] = {
    "labels": "label budget used",
    "rounds": "round budget used",
    "pool": "candidate pool exhausted",
    "wall_time": "wall-time budget used",
}


@dataclass(frozen=True)
class StopDecision:
    """Why a campaign stops.

    ``status`` is ``targets_met`` or ``budget_exhausted`` (the campaign status stored in the
    database); ``budget`` names the budget that stopped it (``labels``, ``rounds``, ``pool``,
    ``wall_time``; ``None`` when the targets were met); ``reason`` is the sentence for people.
    """

    status: str
    reason: str
    budget: Budget | None = None

    def __post_init__(self) -> None:
        if self.status == "targets_met" and self.budget is not None:
            raise ValueError(f"a campaign that met its targets has no exhausted budget, got {self.budget!r}")
        if self.status == "budget_exhausted" and self.budget not in BUDGETS:
            raise ValueError(f"budget_exhausted needs one of {', '.join(BUDGETS)}, got {self.budget!r}")


def stored_budget(status: str, reason: str | None) -> Budget | None:
    """The budget of a stop stored as ``status`` and ``reason`` (the database keeps no more).

    ``None`` for any status but ``budget_exhausted``, and for a reason that starts with none of
    :data:`REASON_PREFIX` (one written before it existed).
    """
    if str(getattr(status, "value", status)) != "budget_exhausted":
        return None
    text = (reason or "").lower()
    return next((budget for budget, prefix in REASON_PREFIX.items() if text.startswith(prefix)), None)


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

    def spent(budget: Budget, detail: str = "") -> StopDecision:
        return StopDecision("budget_exhausted", f"{REASON_PREFIX[budget]}{detail}; {missed}", budget)

    if labels_used >= budgets.max_labels:
        return spent("labels", f" ({labels_used}/{budgets.max_labels})")
    if rounds_done >= budgets.max_rounds:
        return spent("rounds", f" ({rounds_done}/{budgets.max_rounds})")
    if pool_remaining == 0:
        return spent("pool")
    if wall_time_s >= budgets.max_wall_time_s:
        return spent("wall_time", f" ({wall_time_s:.0f}/{budgets.max_wall_time_s:.0f} s)")
    return None

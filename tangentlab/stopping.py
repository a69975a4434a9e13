"""When a campaign stops: error targets first, then the label, round, pool and wall-time
budgets, then targets the learning curve shows cannot be met within what is left.

With a confidence level (``targets.confidence``), a target is met only when the upper end of
the test error's interval (:mod:`tangentlab.confidence`) is at or below it, and it is out of
reach when even the lower end, lowered by the learning curve's recent gain per label (and per
round) over what the budgets leave, stays above it. Without one, the point estimates decide,
and no target is called out of reach.

:func:`stop_decision` is a pure function of what the caller measured: the round loop calls it
after every evaluation, whichever way the rounds are scheduled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

# Which budget stopped a campaign (``None``: the targets were met). ``unreachable``: a target
# cannot be met within the budgets that are left.
Budget = Literal["labels", "rounds", "pool", "wall_time", "unreachable"]
BUDGETS: tuple[Budget, ...] = ("labels", "rounds", "pool", "wall_time", "unreachable")
#: Evaluated rounds (the latest and those before it) whose trend says how fast errors fall.
CURVE_POINTS = 3

# The start of each budget's stop reason: the reason is written from these, and a stored
# reason is read back with them (:func:`stored_budget`), so the two cannot drift apart.
REASON_PREFIX: dict[Budget, str] = {
    "labels": "label budget used",
    "rounds": "round budget used",
    "pool": "candidate pool exhausted",
    "wall_time": "wall-time budget used",
    "unreachable": "targets cannot be met within the budget",
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


@dataclass(frozen=True)
class Measured:
    """One test error against its target: the point estimate and its interval (or None)."""

    name: str
    unit: str
    value: float
    target: float
    interval: Sequence[float] | None = None

    def shown(self) -> str:
        interval = "" if self.interval is None else f" [{self.interval[0]:.1f}, {self.interval[1]:.1f}]"
        return f"{self.name} MAE {self.value:.1f}{interval} {self.unit}"


def learning_rate(labels: Sequence[float], values: Sequence[float]) -> tuple[float, float] | None:
    """How fast an error falls over the last `CURVE_POINTS` evaluated rounds: ``(per label, per
    round)`` from a least-squares line (0 when it does not fall); None with fewer points or
    labels that did not grow."""
    if len(values) < CURVE_POINTS:
        return None
    x = np.asarray(labels[-CURVE_POINTS:], dtype=np.float64)
    y = np.asarray(values[-CURVE_POINTS:], dtype=np.float64)
    if np.ptp(x) == 0:
        return None
    per_label = max(0.0, -float(np.polyfit(x, y, 1)[0]))
    per_round = max(0.0, -float(np.polyfit(np.arange(CURVE_POINTS), y, 1)[0]))
    return per_label, per_round


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
    energy_interval: Sequence[float] | None = None,
    force_interval: Sequence[float] | None = None,
    curve: Sequence[tuple[int, float, float]] | None = None,
) -> StopDecision | None:
    """Decide whether to stop after an evaluated round (targets first, then budgets, then
    targets out of reach).

    Parameters
    ----------
    energy_mae, force_mae
        Test-set errors of the current model (meV/atom, meV/Å).
    targets
        :class:`tangentlab.config.Targets`; its ``confidence`` (None: point estimates) says
        whether the intervals decide.
    labels_used, rounds_done, wall_time_s
        What the campaign has spent: training/validation labels, acquisition rounds after the
        initial set, and wall time over all runs.
    budgets
        :class:`tangentlab.config.Budgets`.
    pool_remaining
        Candidates still unlabelled and not failed; zero stops the campaign.
    energy_interval, force_interval
        ``[low, high]`` of each MAE at the level ``targets.confidence``
        (:func:`tangentlab.confidence.mae_interval`); None: the point estimate decides.
    curve
        ``(training labels, energy MAE, force MAE)`` of every evaluated round, oldest first,
        the current one last: with a confidence level, a target whose interval lies above it
        is out of reach when the curve's recent fall, carried over the labels and rounds left,
        would not bring the interval's low end to it.
    """
    confident = getattr(targets, "confidence", None) is not None
    measured = [
        Measured("energy", "meV/atom", energy_mae, targets.energy_mae_mev_per_atom,
                 energy_interval if confident else None),
        Measured("force", "meV/Å", force_mae, targets.force_mae_mev_per_a,
                 force_interval if confident else None),
    ]
    if all((m.value if m.interval is None else m.interval[1]) <= m.target for m in measured):
        level = (f" at {targets.confidence:.0%} confidence (upper ends of the intervals)"
                 if any(m.interval is not None for m in measured) else "")
        return StopDecision(
            "targets_met",
            f"targets met{level}: " + " and ".join(f"{m.shown()} <= {m.target:g}" for m in measured),
        )
    missed = ", ".join(f"{m.shown()} (target {m.target:g})" for m in measured)

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
    if confident and curve:
        out_of_reach = _out_of_reach(measured, curve, budgets.max_labels - labels_used,
                                     budgets.max_rounds - rounds_done)
        if out_of_reach:
            return spent("unreachable", f" at {targets.confidence:.0%} confidence: {out_of_reach}")
    return None


def _out_of_reach(measured: list[Measured], curve, labels_left: int, rounds_left: int) -> str:
    """Why a target is out of reach (empty: none is): its interval lies above it and the
    learning curve's recent fall, carried over what is left, ends above it too."""
    labels = [point[0] for point in curve]
    reasons = []
    for column, m in enumerate(measured, start=1):
        if m.interval is None or m.interval[0] <= m.target:
            continue
        rate = learning_rate(labels, [point[column] for point in curve])
        if rate is None:
            continue
        best = m.interval[0] - min(rate[0] * labels_left, rate[1] * rounds_left)
        if best > m.target:
            reasons.append(
                f"{m.name} MAE's lower end {m.interval[0]:.1f} > {m.target:g} {m.unit} and the "
                f"learning curve has flattened (the last {CURVE_POINTS} rounds fell "
                f"{rate[0]:.2g} {m.unit} per label, {rate[1]:.2g} per round: {labels_left} labels "
                f"and {rounds_left} rounds left would bring it to {best:.1f} at best)"
            )
    return "; ".join(reasons)

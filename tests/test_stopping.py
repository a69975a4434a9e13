from __future__ import annotations

import pytest

from tangentlab.config import Budgets, Targets
from tangentlab.stopping import BUDGETS, REASON_PREFIX, StopDecision, stop_decision, stored_budget


def test_stop_targets_before_budgets():
    targets, budgets = Targets(energy_mae_mev_per_atom=10, force_mae_mev_per_a=100), Budgets(max_labels=5)
    met = stop_decision(energy_mae=9, force_mae=99, targets=targets, labels_used=50, rounds_done=1,
                        wall_time_s=0, budgets=budgets)
    assert met.status == "targets_met" and met.budget is None
    spent = stop_decision(energy_mae=11, force_mae=99, targets=targets, labels_used=5, rounds_done=1,
                          wall_time_s=0, budgets=budgets)
    assert spent.status == "budget_exhausted" and spent.budget == "labels" and "label budget" in spent.reason
    assert stop_decision(energy_mae=11, force_mae=99, targets=targets, labels_used=4, rounds_done=1,
                         wall_time_s=0, budgets=budgets) is None


def test_exhausted_pool_stops():
    decision = stop_decision(energy_mae=50, force_mae=500, targets=Targets(), labels_used=1, rounds_done=1,
                             wall_time_s=0, budgets=Budgets(), pool_remaining=0)
    assert decision.status == "budget_exhausted" and decision.budget == "pool" and "pool exhausted" in decision.reason


@pytest.mark.parametrize(("spent", "budget"), [
    ({"labels_used": 5}, "labels"),
    ({"rounds_done": 3}, "rounds"),
    ({"pool_remaining": 0}, "pool"),
    ({"wall_time_s": 100.0}, "wall_time"),
])
def test_each_budget_is_named_and_read_back_from_the_stored_reason(spent, budget):
    budgets = Budgets(max_labels=5, max_rounds=3, max_wall_time_s=100.0)
    kwargs = {"labels_used": 1, "rounds_done": 1, "wall_time_s": 0.0, "pool_remaining": 4, **spent}
    decision = stop_decision(energy_mae=50, force_mae=500, targets=Targets(), budgets=budgets, **kwargs)
    assert (decision.status, decision.budget) == ("budget_exhausted", budget)
    assert decision.reason.startswith(REASON_PREFIX[budget])
    # the database stores only status and reason: the overview reads the budget back from them
    assert stored_budget(decision.status, decision.reason) == budget


def test_stored_budget_and_decision_checks():
    assert set(REASON_PREFIX) == set(BUDGETS)
    assert stored_budget("targets_met", "round budget used (1/1)") is None
    assert stored_budget("budget_exhausted", "some older wording") is None
    with pytest.raises(ValueError, match="budget_exhausted needs one of"):
        StopDecision("budget_exhausted", "spent")
    with pytest.raises(ValueError, match="no exhausted budget"):
        StopDecision("targets_met", "met", "rounds")

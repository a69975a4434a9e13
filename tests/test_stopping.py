from __future__ import annotations

from tangentlab.config import Budgets, Targets
from tangentlab.stopping import stop_decision


def test_stop_targets_before_budgets():
    targets, budgets = Targets(energy_mae_mev_per_atom=10, force_mae_mev_per_a=100), Budgets(max_labels=5)
    met = stop_decision(energy_mae=9, force_mae=99, targets=targets, labels_used=50, rounds_done=1,
                        wall_time_s=0, budgets=budgets)
    assert met.status == "targets_met"
    spent = stop_decision(energy_mae=11, force_mae=99, targets=targets, labels_used=5, rounds_done=1,
                          wall_time_s=0, budgets=budgets)
    assert spent.status == "budget_exhausted" and "label budget" in spent.reason
    assert stop_decision(energy_mae=11, force_mae=99, targets=targets, labels_used=4, rounds_done=1,
                         wall_time_s=0, budgets=budgets) is None


def test_exhausted_pool_stops():
    decision = stop_decision(energy_mae=50, force_mae=500, targets=Targets(), labels_used=1, rounds_done=1,
                             wall_time_s=0, budgets=Budgets(), pool_remaining=0)
    assert decision.status == "budget_exhausted" and "pool exhausted" in decision.reason

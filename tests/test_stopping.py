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


def _decide(targets, **kwargs):
    spent = {"labels_used": 30, "rounds_done": 3, "wall_time_s": 0.0, "budgets": Budgets(max_labels=90, max_rounds=8)}
    return stop_decision(targets=targets, **{**spent, **kwargs})


def test_targets_met_only_when_the_upper_end_is_below_them():
    targets = Targets(energy_mae_mev_per_atom=20, force_mae_mev_per_a=450)
    assert targets.confidence == 0.9
    # point estimate below the target, upper end above: not met at 90 % confidence
    assert _decide(targets, energy_mae=10, force_mae=426, energy_interval=[8, 12],
                   force_interval=[380, 471]) is None
    met = _decide(targets, energy_mae=10, force_mae=400, energy_interval=[8, 12], force_interval=[370, 440])
    assert met.status == "targets_met" and "90% confidence" in met.reason and "[370.0, 440.0]" in met.reason
    # confidence None keeps the point estimate (intervals are shown, they do not decide)
    point = Targets(energy_mae_mev_per_atom=20, force_mae_mev_per_a=450, confidence=None)
    assert _decide(point, energy_mae=10, force_mae=426, energy_interval=[8, 12],
                   force_interval=[380, 471]).status == "targets_met"
    # no interval (fewer than two test structures, or metrics without one): the point estimate
    assert _decide(targets, energy_mae=10, force_mae=426).status == "targets_met"


def test_out_of_reach_needs_a_lower_end_above_the_target_and_a_flat_curve():
    targets = Targets(energy_mae_mev_per_atom=20, force_mae_mev_per_a=450)
    flat = [(20, 12.0, 620.0), (25, 11.0, 612.0), (30, 10.0, 605.0)]
    stop = _decide(targets, energy_mae=10, force_mae=605, energy_interval=[8, 12], force_interval=[560, 650],
                   curve=flat)
    assert (stop.status, stop.budget) == ("budget_exhausted", "unreachable")
    assert stop.reason.startswith(REASON_PREFIX["unreachable"])
    assert "force MAE's lower end 560.0 > 450" in stop.reason and "energy MAE's" not in stop.reason
    assert stored_budget(stop.status, stop.reason) == "unreachable"
    # a steep curve could still get there within the budget: go on
    steep = [(20, 12.0, 900.0), (25, 11.0, 750.0), (30, 10.0, 605.0)]
    assert _decide(targets, energy_mae=10, force_mae=605, energy_interval=[8, 12], force_interval=[560, 650],
                   curve=steep) is None
    # the interval reaches down to the target: not sure it cannot be met
    assert _decide(targets, energy_mae=10, force_mae=605, energy_interval=[8, 12], force_interval=[440, 650],
                   curve=flat) is None
    # too few rounds to see a trend, or no confidence level: never called out of reach
    assert _decide(targets, energy_mae=10, force_mae=605, energy_interval=[8, 12], force_interval=[560, 650],
                   curve=flat[1:]) is None
    point = Targets(energy_mae_mev_per_atom=20, force_mae_mev_per_a=450, confidence=None)
    assert _decide(point, energy_mae=10, force_mae=605, energy_interval=[8, 12], force_interval=[560, 650],
                   curve=flat) is None
    # a spent budget is named first
    spent = _decide(targets, energy_mae=10, force_mae=605, energy_interval=[8, 12], force_interval=[560, 650],
                    curve=flat, labels_used=90)
    assert spent.budget == "labels"


def test_confidence_level_is_checked():
    from tangentlab.config import ConfigError, make_config

    with pytest.raises(ConfigError, match=r"targets\.confidence"):
        make_config({"targets": {"confidence": 1.5}})
    assert make_config({"targets": {"confidence": None}}).targets.confidence is None


def _evaluated_rounds(tmp_path, curve):
    """A campaign whose rounds 0.. were evaluated with ``curve``'s (labels, metrics)."""
    import ase.io
    from conftest import write_pool

    from db import campaigns, init_db, make_engine, registry, rounds, session_scope, structures
    from tangentlab.structures import content_hash

    url = f"sqlite:///{tmp_path / 'stop.db'}"
    engine = make_engine(url)
    init_db(engine)
    model_file = tmp_path / "model.weights"  # the registry only hashes the file
    model_file.write_bytes(b"weights")
    pool = ase.io.read(write_pool(tmp_path / "pool.extxyz", 24, seed=4), ":")
    for atoms in pool:
        atoms.info.update(charge=0, multiplicity=1 if sum(atoms.numbers) % 2 == 0 else 2)
    with session_scope(engine) as session:
        camp = campaigns.create_campaign(session, "stop", {})
        structures.import_atoms(session, camp, pool, [content_hash(a) for a in pool], origin="pool")
        for number, (labels_used, metrics) in enumerate(curve):
            found = rounds.create_round(session, camp, number, method="initial-random", pool_size=8,
                                        selected=[])
            rounds.advance_round(session, found, "labelled")
            model = registry.register_model(session, camp, model_file, round_number=number,
                                            label_ids=list(range(labels_used)), metrics={"test": metrics})
            rounds.advance_round(session, found, "trained", trained_model_id=model.id)
            rounds.advance_round(session, found, "evaluated", metrics={"test": metrics})
        return url, camp.id


def _metrics(force, interval, level=0.9):
    return {"energy_mae_mev_per_atom": 5.0, "energy_mae_interval_mev_per_atom": [4.0, 6.0],
            "force_mae_mev_per_a": force, "force_mae_interval_mev_per_a": interval, "interval_level": level}


def test_the_campaign_decides_on_the_stored_intervals_at_its_level(tmp_path, no_run_logger):
    from tangentlab.config import make_config
    from tasks.steps import decide

    url, campaign_id = _evaluated_rounds(tmp_path, [(20, _metrics(430.0, [390.0, 470.0]))])
    config = make_config({"name": "stop", "targets": {"energy_mae_mev_per_atom": 20, "force_mae_mev_per_a": 450}})
    assert decide.fn(url, campaign_id, config, 0.0) is None  # the upper end 470 > 450
    point = make_config({"name": "stop", "targets": {"energy_mae_mev_per_atom": 20, "force_mae_mev_per_a": 450,
                                                     "confidence": None}})
    assert decide.fn(url, campaign_id, point, 0.0).status == "targets_met"
    # intervals stored at another level than the configuration's do not decide
    other = make_config({"name": "stop", "targets": {"energy_mae_mev_per_atom": 20, "force_mae_mev_per_a": 450,
                                                     "confidence": 0.8}})
    assert decide.fn(url, campaign_id, other, 0.0).status == "targets_met"


def test_the_campaign_stops_a_target_out_of_reach_from_its_learning_curve(tmp_path, no_run_logger):
    from tangentlab.config import make_config
    from tasks.steps import decide

    curve = [(20, _metrics(620.0, [580.0, 660.0])), (25, _metrics(612.0, [570.0, 650.0])),
             (30, _metrics(605.0, [560.0, 650.0]))]
    url, campaign_id = _evaluated_rounds(tmp_path, curve)
    config = make_config({"name": "stop", "targets": {"energy_mae_mev_per_atom": 20, "force_mae_mev_per_a": 450}})
    decision = decide.fn(url, campaign_id, config, 0.0)
    assert (decision.status, decision.budget) == ("budget_exhausted", "unreachable")
    assert "learning curve has flattened" in decision.reason


def test_the_test_set_grows_only_when_its_intervals_cannot_decide(tmp_path, no_run_logger):
    from db import make_engine, session_scope, structures
    from tangentlab.config import make_config
    from tasks.testset import evaluation_is_stale, grow_test_set

    straddling = {**_metrics(430.0, [390.0, 470.0]), "n_structures": 2}
    url, campaign_id = _evaluated_rounds(tmp_path, [(20, straddling)])
    engine = make_engine(url)
    with session_scope(engine) as session:
        pool = [s.id for s in structures.campaign_structures(session, campaign_id, split="pool")]
        structures.set_split(session, pool[:2], "test")
    config = make_config({"name": "stop", "test_size": 2, "test_max_size": 6, "test_step": 1,
                          "acquisition": {"signal": "random"},
                          "targets": {"energy_mae_mev_per_atom": 20, "force_mae_mev_per_a": 450}})
    # 2 structures with an upper half-width of 40 at a gap of 20: 8 would decide, more than 6 may
    assert grow_test_set.fn(url, campaign_id, config, 0, None) == []
    roomy = config.model_copy(update={"test_max_size": 20})
    added = grow_test_set.fn(url, campaign_id, roomy, 0, None)
    assert len(added) == 8  # to 2 · (40/20)² · 1.25 = 10 structures
    with session_scope(engine) as session:
        test = {s.id for s in structures.campaign_structures(session, campaign_id, split="test")}
    assert set(added) <= test and len(test) == 10 and not set(added) & set(pool[:2])
    # the round's errors were measured on 2 labelled structures: a resumed run measures again
    assert evaluation_is_stale(url, campaign_id)
    with pytest.raises(Exception, match="test_max_size needs targets.confidence"):
        make_config({"test_max_size": 60, "targets": {"confidence": None}})
    with pytest.raises(Exception, match="leave out test_file"):
        make_config({"test_max_size": 60, "test_file": "t.extxyz"})


@pytest.mark.parametrize(("estimate", "interval", "size"), [
    (400.0, [370.0, 440.0], 30),  # met: nothing to decide
    (500.0, [460.0, 540.0], 30),  # missed for sure
    (445.0, [400.0, 490.0], 30),  # undecided, but the estimate is at the target: more labels confirm a miss
])
def test_planned_test_size_leaves_decided_and_hopeless_cases_alone(estimate, interval, size):
    from tangentlab.confidence import planned_test_size

    assert planned_test_size([(estimate, interval, 450.0)], size, 100, 10) == size

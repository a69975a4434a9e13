from __future__ import annotations

import numpy as np
import pytest

from benchmarks.confidence import exact_coverage, split_coverage, split_population


def test_split_is_disjoint_uniform_and_keeps_the_independent_set_large():
    rng = np.random.default_rng(0)
    seen = np.zeros(820)
    for _ in range(400):
        test, rest = split_population(100, 820, rng, 500)
        assert len(test) == 100 and len(rest) == 720
        assert not set(test) & set(rest)
        assert sorted(np.r_[test, rest]) == list(range(820))
        seen[test] += 1
    # every structure is as likely to land in the test set (100/820 of 400 splits ≈ 49)
    assert seen.min() > 25 and seen.max() < 75
    with pytest.raises(ValueError, match="fewer than 500"):
        split_population(100, 550, rng, 500)


def test_a_finite_independent_set_lowers_the_coverage_an_exact_interval_can_reach():
    assert exact_coverage(10, 10**9) == pytest.approx(0.9, abs=1e-6)
    assert exact_coverage(100, 500) == pytest.approx(0.867, abs=0.001)
    assert exact_coverage(30, 500) > exact_coverage(100, 500) > exact_coverage(100, 220)


def _rounds(rng, population: int, reserves: int):
    """A replayed campaign's rounds as split_coverage reads them: normal per-structure errors
    (mean 10) on the reserves and the independent set; the campaign's own candidates (after
    the reserves in the pool) far off, as the structures acquisition chose against can be."""
    rounds = [{"round": "start"}]
    for number in range(2):
        pool_energy = np.r_[rng.normal(10, 2, reserves), np.full(50, 1000.0)]
        big_energy = rng.normal(10, 2, population - reserves)
        rounds.append(
            {
                "round": number,
                "pool": {
                    "energy": pool_energy,
                    "force": 3 * pool_energy,
                    "counts": np.full(pool_energy.size, 3.0),
                },
                "big": {
                    "energy": big_energy,
                    "force": 3 * big_energy,
                    "counts": np.full(big_energy.size, 3.0),
                },
            }
        )
    return rounds


def test_split_coverage_counts_the_never_trained_on_structures_only():
    rounds = _rounds(np.random.default_rng(1), 700, 200)
    found = split_coverage(rounds, 200, splits=50, seed=0, methods=("studentized",))
    entry = found["force n=30 studentized"]
    assert entry["of"] == 100 and entry["independent_size"] == 670
    # normal errors: the stated 90 % is about what the splits find; had the far-off
    # candidates entered the population, no interval of 30 would cover its MAE
    assert 0.8 <= entry["fraction"] <= 0.98
    assert entry["exact_interval_would_cover"] == pytest.approx(exact_coverage(30, 670))


def test_adaptive_test_set_grows_from_within_the_fixed_100():
    # One round, a force target the first 10 test structures cannot decide: the adaptive set
    # grows to 100. Drawn from the fixed 100's structures it then holds exactly them and
    # measures the same MAE (and decides alike); drawn from the whole reserve of 120 it holds
    # others, and here decides otherwise.
    import argparse
    import re

    from benchmarks.confidence import decide
    from tangentlab.config import Budgets, Targets

    rng = np.random.default_rng(3)
    force = rng.lognormal(0, 0.6, 120) * 30
    pool = {
        "energy": 1.0 + rng.uniform(0, 0.1, 120),
        "force": force,
        "counts": np.full(120, 3.0),
    }
    rounds = [
        {"round": "start"},
        {"round": 0, "labels": 20, "sigma": rng.uniform(size=120), "pool": pool},
    ]
    order = rng.permutation(120)
    args = argparse.Namespace(reserve=120, max_test=100, step=10)
    budgets = Budgets(max_labels=20, max_rounds=1)
    targets = Targets(energy_mae_mev_per_atom=5.0, force_mae_mev_per_a=14.0, confidence=0.9)

    def force_mae(found):
        return re.search(r"force MAE (\d+\.\d)", found["reason"]).group(1)

    fixed = decide(rounds, targets, budgets, order[:100], False, args)
    nested = decide(rounds, targets, budgets, order[:10], True, args, grow_from=order[:100])
    anywhere = decide(rounds, targets, budgets, order[:10], True, args)
    assert nested["test_labels"] == anywhere["test_labels"] == 100
    assert nested["training_labels"] == fixed["training_labels"] == 20  # the round it stopped at
    assert force_mae(nested) == force_mae(fixed) and nested["status"] == fixed["status"]
    assert force_mae(anywhere) != force_mae(fixed) and anywhere["status"] != fixed["status"]


def test_verdict_judges_a_decision_against_the_rounds_the_truth_meets_the_targets():
    from benchmarks.confidence import verdict

    met = {"start": None, 0: False, 1: True, 2: False, 3: True}
    met.pop("start")

    def stop(round_, status="targets_met"):
        return {"round": round_, "status": status, "budget": None}

    assert verdict(stop(1), met) == "met_on_time"
    assert verdict(stop(3), met) == "met_late"
    assert verdict(stop(0), met) == "met_wrong"
    assert verdict(stop(2), met) == "met_wrong"
    assert verdict(stop(3, "budget_exhausted"), met) == "missed"
    assert verdict(stop(None, "running"), met) == "missed"
    never = dict.fromkeys(met, False)
    assert verdict(stop(1, "budget_exhausted"), never) == "right_no_met"
    with pytest.raises(KeyError):
        verdict(stop(4), met)


def test_second_fixed_100_is_judged_against_the_rest_of_the_independent_set():
    # Two rounds. The reserve (and so every test set drawn from it) and the rest of the
    # independent set have small errors; the second fixed 100 (drawn from the independent set)
    # holds large ones. Every target (factors of the whole independent set's MAE, which the
    # second 100 pulls up) is met at round 0 by the reserve's sets and by the truth (the rest):
    # they are right and on time, the second 100 never says "met" (missed), and no rule agrees
    # with it. Against the whole independent set (second 100 included), the lowest target is
    # not met: there the same "met" counts as wrong.
    import argparse
    from types import SimpleNamespace

    from benchmarks.confidence import (
        RULES,
        TARGET_FACTORS,
        decision_rows,
        floor_summary,
        second_test_set,
    )

    rng = np.random.default_rng(5)
    second = second_test_set(300, seed=2)
    assert len(second[0]) == 100 and len(second[1]) == 200
    assert not set(second[0]) & set(second[1])
    assert np.array_equal(second_test_set(300, seed=2)[0], second[0])

    def errors(energy, force, size):
        spread = rng.uniform(0.98, 1.02, size)
        return {
            "energy": energy * spread,
            "force": 3 * force * spread,
            "counts": np.full(size, 3.0),
        }

    rounds = [{"round": "start"}]
    for number, labels in ((0, 20), (1, 35)):
        big = errors(0.5, 10.0, 300)
        high = errors(1.5, 30.0, 100)
        for key in big:
            big[key][second[0]] = high[key]
        rounds.append(
            {"round": number, "labels": labels, "pool": errors(0.5, 10.0, 120), "big": big}
        )
    order = rng.permutation(120)
    args = argparse.Namespace(reserve=120, max_test=100, step=10, start=10)
    spec = SimpleNamespace(budget=35, rounds=1)
    rows = decision_rows(
        rounds, order, spec, args, second=second, neighbour=(rounds, order[:100])
    )
    assert len(rows) == 2 * len(TARGET_FACTORS)
    for row in rows:
        assert row["fixed100"]["status"] == "targets_met" and row["fixed100"]["round"] == 0
        assert row["fixed100b"]["status"] == "budget_exhausted"
        assert row["truth_met_rounds"] == [0, 1]
    found = floor_summary(rows)
    assert found["count"] == 8 and found["truth_met_at_some_round"] == 8
    for rule in ("fixed100", "fixed50", "fixed30", "adaptive"):
        assert found[f"{rule}_same_as_fixed100b"] == 0
    assert found["fixed100c_same_as_fixed100"] == 8
    rest = found["against_rest_of_independent_set"]
    assert set(rest) == set(RULES)
    for rule in ("fixed100", "fixed100c", "fixed50", "fixed30", "adaptive"):
        assert rest[rule]["met_on_time"] == rest[rule]["met"] == 8
    assert rest["fixed100b"]["missed"] == 8 and rest["fixed100b"]["met"] == 0
    # the whole set's MAE is above the 0.9 target (both anchors): those "met" are wrong there
    whole = found["against_whole_independent_set"]
    assert whole["fixed100"]["met_wrong"] == 2
    assert floor_summary([{k: v for k, v in row.items() if k != "fixed100b"} for row in rows]) is None


def test_decisions_read_the_products_prediction_powered_interval():
    # A round whose test structures (the reserve) are near ones and whose independent set holds
    # a tail of far-off structures that σ sees: with --interval ppi the decision reads the
    # product's interval of the independent set's MAE (calibrated on the validation structures,
    # picked from the whole pool before the draw's view), which reaches above the bootstrap's;
    # with fewer than two validation structures it falls back to the bootstrap, as the product.
    import argparse

    from benchmarks.confidence import decision_intervals, intervals, with_valid_set
    from tangentlab.prediction_powered import predicted_error_intervals

    rng = np.random.default_rng(7)
    sigma = rng.uniform(0.5, 1.5, 160)  # 120 reserve structures, then 40 candidates
    counts = np.full(160, 9.0)
    pool = {"energy": 2 * sigma * rng.uniform(0.8, 1.2, 160), "counts": counts}
    pool["force"] = 30 * sigma * counts * rng.uniform(0.8, 1.2, 160)
    sigma_big = np.concatenate([rng.uniform(0.5, 1.5, 450), rng.uniform(8, 12, 50)])
    big = {"energy": 2 * sigma_big, "force": 30 * sigma_big * 9, "counts": np.full(500, 9.0)}
    r = {"round": 0, "labels": 20, "pool": pool, "sigma": sigma, "sigma_big": sigma_big,
         "big": big, "valid_ids": [150, 151, 152, 153]}
    which = np.arange(30)
    ppi = argparse.Namespace(interval="ppi")
    found = decision_intervals(with_valid_set(r), which, ppi)
    boot = intervals(pool, which)
    truth = big["force"].sum() / big["counts"].sum()  # the tail the test set lacks
    assert boot["force"][1] < truth and found["force"][0] <= truth <= found["force"][1]
    valid = {k: pool[k][r["valid_ids"]] for k in ("energy", "force", "counts")}
    direct = predicted_error_intervals(
        {k: pool[k][which] for k in ("energy", "force", "counts")} | {"sigma": sigma[which]},
        valid | {"sigma": sigma[r["valid_ids"]]},
        {"sigma": sigma_big, "counts": big["counts"]},
        level=0.9,
    )
    assert found["force"] == list(direct["force"]["interval"])
    assert decision_intervals(with_valid_set(r), which, argparse.Namespace(interval="bootstrap")) == boot
    few = {**r, "valid_ids": [150]}
    assert decision_intervals(with_valid_set(few), which, ppi) == boot
    t = decision_intervals(with_valid_set(r), which, argparse.Namespace(interval="ppi-t"))
    assert t["force"] != found["force"]


def test_labels_at_stop_add_the_stopping_rounds_training_labels_to_the_test_labels():
    from benchmarks.confidence import labels_at_stop

    def stop(training, test):
        return {"round": 0, "status": "targets_met", "budget": None, "training_labels": training,
                "test_labels": test}

    rows = [{"fixed100": stop(20, 100), "adaptive": stop(35, 10)},
            {"fixed100": stop(35, 100), "adaptive": stop(50, 30)}]
    found = labels_at_stop(rows)
    assert set(found) == {"fixed100", "adaptive"}  # rules missing from the rows are left out
    assert found["fixed100"] == {"training": 27.5, "test": 100.0, "total": 127.5}
    assert found["adaptive"] == {"training": 42.5, "test": 20.0, "total": 62.5}

"""Confidence of the test errors: do the intervals cover, and how few test labels decide?

For a preset's data (its pool files), per seed: a pool, a test reserve drawn from the pool and
an independent set of ``--big`` structures from the same files (never labelled by the
campaign). A campaign is replayed in process: the initial random set, then rounds of the
product's acquisition (its scorer and batch rule) and a warm-started fine-tune, the validation
split kept as a campaign keeps it. After every round:

- **coverage**: the structures the campaign never trained on and never chose against (the test
  reserves and the independent sets) are one population. Per seed and round, ``--splits``
  random splits of it into a test set (10, 30 or 100 structures) and an independent set (all
  the rest, at least ``MIN_INDEPENDENT``): the stated interval of the test set (each bootstrap
  method of :func:`tangentlab.confidence.mae_interval`, and the prediction-powered intervals of
  :func:`tangentlab.prediction_powered.ppi_interval` from σ of every structure) against the
  independent set's MAE, and against the whole population's; a σ-stratified test set on
  splits of its own (:func:`split_coverage`);
- **predicted MAE**: the MAE over the unlabelled pool predicted from σ with the validation
  labels (:func:`tangentlab.confidence.predicted_mae`), against the independent set's;
- **stop decisions**: for a grid of targets around the seed's learning curve,
  :func:`tangentlab.stopping.stop_decision` on a fixed 100-, 50- and 30-structure test set
  and on an adaptive one that starts at ``--start`` and adds ``--step`` structures (stratified
  by σ, :func:`tangentlab.confidence.stratified_pick`, from the fixed 100's structures, so that
  the two differ only by the labels the adaptive set did not take) only when the interval is
  too wide to decide and growing can decide (:func:`tangentlab.confidence.planned_test_size`);
- **noise floor and accuracy of the decisions**: the same on a second fixed 100-structure test
  set drawn from the independent set (:func:`second_test_set`), how often each rule agrees
  with it, and each rule's decision judged against the MAE of the rest of the independent set
  (:func:`verdict`). ``--decisions-only`` skips the coverage splits. The decisions read the
  studentized bootstrap interval, or with ``--interval ppi`` (``ppi-t``, ``ppi-pool``) the
  product's prediction-powered one with the draw's independent set as its target
  (:func:`decision_intervals`).

    python -m benchmarks.confidence h2combustion --seeds 0 1 2 3 4 --out result.json
    python -m benchmarks.confidence acac --from-raw raw/acac-c0.npz raw/acac-c1.npz --out ...
    python -m benchmarks.confidence acac --from-raw raw/acac-c*.npz --decisions-only --out ...
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.data import even_draw, read_labelled
from benchmarks.finetune_spread import emit
from benchmarks.methods import method_acquisition
from benchmarks.spec import make_spec, preset
from tangentlab.confidence import (
    METHODS,
    mae_interval,
    planned_test_size,
    predicted_mae,
    stratified_pick,
)
from tangentlab.prediction_powered import PPI_METHODS as PRODUCT_PPI
from tangentlab.prediction_powered import ppi_interval, predicted_error_intervals
from tangentlab.config import Acquisition, Budgets, FineTune, Targets

SIZES = (10, 30, 100)
LEVEL = 0.9
#: Fewest structures of the independent set a coverage split leaves.
MIN_INDEPENDENT = 500
#: Fixed test sets the adaptive one is compared with (the first of them is the reference).
FIXED = (100, 50, 30)
TARGET_FACTORS = (0.9, 1.0, 1.1, 1.25)
#: The second fixed test set (the noise floor of the decisions): this many structures of the
#: draw's independent set, drawn with a generator fixed per draw; the rest of the independent
#: set is the truth the decisions are judged against.
SECOND = 100
#: What a rule's decision is, judged against the truth (see :func:`verdict`).
VERDICTS = ("met_on_time", "met_late", "met_wrong", "missed", "right_no_met")
#: The rules judged: the reference, the second fixed set, its prefixes and the adaptive set;
#: ``fixed100c``: the first 100 of the next draw's reserve (a second 100 from the reserves'
#: population rather than the independent set's).
RULES = ("fixed100", "fixed100b", "fixed100c", "fixed50", "fixed30", "adaptive")


def draw(frames: list[list], pool_size: int, big_size: int, seed: int):
    """``pool_size + big_size`` frames drawn evenly from the files' ``frames``, split at random
    into the campaign's pool and the independent set."""
    offsets = np.cumsum([0] + [len(f) for f in frames])
    rng = np.random.default_rng(1000 + seed)
    picks = even_draw(
        [list(range(offsets[i], offsets[i + 1])) for i in range(len(frames))],
        pool_size + big_size,
        rng,
    )
    every = [a for group in frames for a in group]
    chosen = [every[i] for group in picks for i in group]
    order = rng.permutation(len(chosen))
    return [chosen[i] for i in order[:pool_size]], [chosen[i] for i in order[pool_size:]]


def structure_errors(model, atoms_list) -> dict[str, np.ndarray]:
    """Per structure: |energy error| per atom (meV/atom), sum of |force component errors|
    (meV/Å) and the number of components."""
    from tangentlab.mace_model import predict

    preds = predict(model, atoms_list)
    energy = (
        np.array(
            [
                abs(e - a.info["energy"]) / len(a)
                for (e, _), a in zip(preds, atoms_list, strict=True)
            ]
        )
        * 1e3
    )
    force = (
        np.array(
            [
                np.abs(f - a.arrays["forces"]).sum()
                for (_, f), a in zip(preds, atoms_list, strict=True)
            ]
        )
        * 1e3
    )
    counts = np.array([3.0 * len(a) for a in atoms_list])
    return {"energy": energy, "force": force, "counts": counts}


def mae(errors: dict[str, np.ndarray], which: np.ndarray | None = None) -> dict[str, float]:
    pick = slice(None) if which is None else which
    return {
        "energy": float(errors["energy"][pick].mean()),
        "force": float(errors["force"][pick].sum() / errors["counts"][pick].sum()),
    }


def intervals(
    errors: dict[str, np.ndarray], which, method: str = "studentized"
) -> dict[str, list | None]:
    return {
        "energy": mae_interval(errors["energy"][which], level=LEVEL, method=method),
        "force": mae_interval(
            errors["force"][which], errors["counts"][which], level=LEVEL, method=method
        ),
    }


def replay(spec, pool, big, seed: int, work: Path, args) -> list[dict]:
    """The campaign's rounds: per round its model's errors on the pool and the independent
    set, σ of the pool, and the predicted MAE."""
    from tangentlab.acquisition.policy import fit_policy_scorer, reference_structures
    from tangentlab.acquisition.select import select_batch
    from tangentlab.finetune import FineTuneHyperparameters, finetune
    from tangentlab.mace_model import load_model
    from tangentlab.model_files import starting_weights

    settings = Acquisition(
        **{
            **method_acquisition(args.method),
            "batch_size": spec.batch_size,
            **({"regularization": spec.regularization} if spec.regularization else {}),
        }
    )
    hyper = FineTune(
        **{**spec.finetune, **({"max_epochs": args.max_epochs} if args.max_epochs else {})}
    )
    rng = np.random.default_rng(seed)
    candidates = list(range(args.reserve, len(pool)))
    first = [int(i) for i in rng.choice(candidates, spec.initial_size, replace=False)]
    train_ids, valid_ids = [], []

    def split(ids: list[int]) -> None:
        n_valid = round(spec.valid_fraction * len(ids))
        valid_ids.extend(ids[:n_valid])
        train_ids.extend(ids[n_valid:])

    split(first)
    parent, _ = starting_weights(spec.model, work / "models")
    rounds = []
    start_model = load_model(parent)
    rounds.append(
        {
            "round": "start",
            "labels": 0,
            "pool": structure_errors(start_model, pool),
            "big": structure_errors(start_model, big),
        }
    )
    for number in range(spec.rounds + 1):
        tick = time.perf_counter()
        train = [pool[i] for i in train_ids]
        valid = [pool[i] for i in valid_ids]
        result = finetune(
            parent,
            train,
            valid,
            work / f"s{seed}-r{number}.model",
            hyper=FineTuneHyperparameters(**hyper.hyperparameters(), seed=seed),
        )
        parent = result.path
        model = load_model(parent)
        finetune_s = time.perf_counter() - tick
        labelled = set(train_ids) | set(valid_ids)
        unlabelled = [i for i in candidates if i not in labelled]
        scorer = fit_policy_scorer(
            model, train, reference_structures([pool[i] for i in candidates]), settings
        )
        sigma_pool = np.sqrt(scorer.variance(pool))
        # σ of the independent set too: a prediction-powered interval needs the predicted
        # error of every structure of the population it estimates the MAE over.
        sigma_big = np.sqrt(scorer.variance(big))
        pool_errors = structure_errors(model, pool)
        prediction = predicted_mae(
            sigma_pool[valid_ids],
            pool_errors["force"][valid_ids] / pool_errors["counts"][valid_ids],
            sigma_pool[unlabelled],
            weights_valid=pool_errors["counts"][valid_ids],
            weights_target=pool_errors["counts"][unlabelled],
            level=LEVEL,
        )
        rounds.append(
            {
                "round": number,
                "labels": len(labelled),
                "pool": pool_errors,
                "big": structure_errors(model, big),
                "sigma": sigma_pool,
                "sigma_big": sigma_big,
                "valid_ids": np.array(valid_ids, dtype=np.int64),
                "train_ids": np.array(train_ids, dtype=np.int64),
                "predicted_force": prediction,
                "finetune_s": finetune_s,
            }
        )
        if number < spec.rounds:
            picked, _, _ = select_batch(
                scorer,
                [pool[i] for i in unlabelled],
                batch_size=spec.batch_size,
                rule=settings.rule,
                seed=seed * 1000 + number + 1,
            )
            split([unlabelled[int(i)] for i in picked])
    return rounds


def split_population(size: int, population: int, rng: np.random.Generator, min_rest: int):
    """A random test set of ``size`` of ``population`` structures and the independent set of
    all the rest (disjoint, both uniform draws of the same population)."""
    if population - size < min_rest:
        raise ValueError(
            f"a test set of {size} leaves {population - size} independent structures, "
            f"fewer than {min_rest}"
        )
    order = rng.permutation(population)
    return np.sort(order[:size]), np.sort(order[size:])


def exact_coverage(size: int, independent: int, level: float = LEVEL) -> float:
    """Coverage an exact interval for the distribution's MAE has against the MAE of a finite
    independent set (normal approximation): the independent set's own sampling noise adds
    ``size / independent`` to the variance of the difference, so a perfect 90 % interval from
    100 structures covers the MAE of 500 others in 86.7 % of the splits, not 90 %."""
    from statistics import NormalDist

    normal = NormalDist()
    z = normal.inv_cdf(0.5 + level / 2)
    return 2 * normal.cdf(z / np.sqrt(1 + size / independent)) - 1


def predicted_errors(r: dict, reserves: int) -> dict[str, np.ndarray] | None:
    """Per structure of the population (the reserves, then the independent set), the error
    predicted from σ with the round's validation labels: ``scale · σ`` with the scale a ratio of
    sums over the validation structures (as :func:`tangentlab.confidence.predicted_mae`), as a
    predicted absolute energy error per atom and a predicted sum of absolute force component
    errors (the predicted component error times the components). None without σ of the
    independent set or fewer than two validation structures."""
    if "sigma_big" not in r or len(r.get("valid_ids", ())) < 2:
        return None
    valid = np.asarray(r["valid_ids"], dtype=int)
    sigma = np.concatenate([r["sigma"][:reserves], r["sigma_big"]])
    counts = np.concatenate([r["pool"]["counts"][:reserves], r["big"]["counts"]])
    pool = r["pool"]
    energy_scale = pool["energy"][valid].sum() / r["sigma"][valid].sum()
    force_scale = pool["force"][valid].sum() / (r["sigma"][valid] * pool["counts"][valid]).sum()
    return {"energy": energy_scale * sigma, "force": force_scale * sigma * counts, "sigma": sigma}


#: Interval methods that use the predicted errors of the independent set (prediction-powered
#: inference, :func:`tangentlab.prediction_powered.ppi_interval`) on the same random splits.
#: ``ppi``: bootstrap-t with the σ-scaled variance (the product's ``targets.interval: ppi``,
#: chosen on acac); ``ppi-t``: Student t with it; ``ppi-pool``: bootstrap-t of test sets drawn
#: from the targets, with it; ``ppi-sample``: Student t with the test set's own residual
#: variance (the textbook PPI++ interval).
PPI_METHODS = {
    "ppi": {"method": "studentized", "variance": "scaled"},
    "ppi-t": {"method": "normal", "variance": "scaled"},
    "ppi-pool": {"method": "pool", "variance": "scaled"},
    "ppi-sample": {"method": "normal", "variance": "sample"},
}
#: The σ-stratified design: the top ``TOP_FRACTION`` of the population by σ is one stratum,
#: ``TOP_SHARE`` of the test set is drawn from it, the rest from the others; the stratified
#: ratio estimator with a Student t interval.
TOP_FRACTION = 0.1
TOP_SHARE = 1 / 3
#: Every interval whose coverage :func:`split_coverage` can measure (``--coverage-methods``).
COVERAGE_METHODS = (*METHODS, *PPI_METHODS, "stratified")


def stratified_interval(
    population: dict[str, np.ndarray], strata_test, strata_rest, quantity: str
) -> tuple[float, float]:
    """90 % interval of the MAE over ``strata_rest`` (a list of index arrays, one per
    stratum) from the test structures ``strata_test`` drawn per stratum: each stratum's ratio
    weighted by its share of the rest's errors (components for forces), the variance
    ``Σ W² s²(1/n_h + 1/N_h)`` (delta method per stratum), Student t with n − strata degrees of
    freedom."""
    from scipy.stats import t

    sums = population[quantity]
    weights = population["counts"] if quantity == "force" else np.ones_like(sums)
    total = sum(weights[rest].sum() for rest in strata_rest)
    estimate = variance = 0.0
    for test, rest in zip(strata_test, strata_rest, strict=True):
        share = weights[rest].sum() / total
        ratio = sums[test].sum() / weights[test].sum()
        influence = (sums[test] - ratio * weights[test]) / weights[test].mean()
        estimate += share * ratio
        variance += share**2 * influence.var(ddof=1) * (1 / len(test) + 1 / len(rest))
    size = sum(len(test) for test in strata_test)
    half = float(t.ppf(0.5 + LEVEL / 2, size - len(strata_test))) * np.sqrt(variance)
    return max(0.0, estimate - half), estimate + half


def stratified_split(sigma: np.ndarray, size: int, rng: np.random.Generator):
    """A σ-stratified test set of ``size`` (``TOP_SHARE`` of it from the top ``TOP_FRACTION``
    by σ) and the rest, per stratum."""
    order = np.argsort(sigma, kind="stable")
    cut = len(order) - int(round(TOP_FRACTION * len(order)))
    strata = [order[cut:], order[:cut]]
    top = max(2, int(round(TOP_SHARE * size)))
    tests, rests = [], []
    for stratum, count in zip(strata, (top, size - top), strict=True):
        picked = rng.permutation(len(stratum))
        tests.append(np.sort(stratum[picked[:count]]))
        rests.append(np.sort(stratum[picked[count:]]))
    return tests, rests


def split_coverage(
    rounds: list[dict],
    reserves: int,
    splits: int,
    seed: int,
    methods: tuple[str, ...] = COVERAGE_METHODS,
    min_rest: int = MIN_INDEPENDENT,
    resamples: int = 500,
) -> dict:
    """Coverage of the stated intervals over random splits of the never-trained-on structures
    (the test reserves, ``pool[:reserves]``, and the independent sets): per round (the starting
    model left out) and test size, ``splits`` test sets, each interval against the MAE of the
    rest of the population (``independent``) and of the whole population (``population``).
    The prediction-powered methods (`PPI_METHODS`) see the predicted errors of the rest on the
    same splits; ``"stratified"`` draws its own σ-stratified splits (another generator, so the
    random splits stay those of the other methods); both only where the rounds hold σ of the
    independent set (:func:`predicted_errors`)."""
    rng = np.random.default_rng(seed)
    strata_rng = np.random.default_rng(seed + 10_000)
    hits: dict = {}
    sizes: dict = {}

    def count(key, size, total, found, truth, whole):
        for quantity, (low, high) in found.items():
            full = f"{quantity} n={size} {key}"
            sizes[full] = (size, total - size)
            entry = hits.setdefault(
                full, {"independent": [], "population": [], "above": [], "width": []}
            )
            entry["independent"].append(low <= truth[quantity] <= high)
            entry["population"].append(low <= whole[quantity] <= high)
            entry["above"].append(truth[quantity] > high)
            entry["width"].append((high - low) / whole[quantity])

    for r in rounds[1:]:
        population = {k: np.concatenate([r["pool"][k][:reserves], r["big"][k]]) for k in r["big"]}
        predicted = predicted_errors(r, reserves)
        whole = mae(population)
        total = len(population["counts"])
        for size in SIZES:
            for _ in range(splits):
                test, rest = split_population(size, total, rng, min_rest)
                truth = mae({k: v[rest] for k, v in population.items()})
                for method in methods:
                    if method in METHODS:
                        found = {
                            "energy": mae_interval(
                                population["energy"][test],
                                level=LEVEL,
                                method=method,
                                resamples=resamples,
                            ),
                            "force": mae_interval(
                                population["force"][test],
                                population["counts"][test],
                                level=LEVEL,
                                method=method,
                                resamples=resamples,
                            ),
                        }
                    elif method in PPI_METHODS and predicted is not None:
                        found = {}
                        for quantity in ("energy", "force"):
                            weights = (
                                population["counts"]
                                if quantity == "force"
                                else np.ones(total)
                            )
                            found[quantity] = ppi_interval(
                                population[quantity][test],
                                predicted[quantity][test],
                                predicted[quantity][rest],
                                weights[test],
                                weights[rest],
                                level=LEVEL,
                                resamples=resamples,
                                **PPI_METHODS[method],
                            )["interval"]
                    else:
                        continue
                    count(method, size, total, found, truth, whole)
                if "stratified" in methods and predicted is not None:
                    tests, rests = stratified_split(predicted["sigma"], size, strata_rng)
                    rest = np.concatenate(rests)
                    truth = mae({k: v[rest] for k, v in population.items()})
                    found = {
                        q: stratified_interval(population, tests, rests, q)
                        for q in ("energy", "force")
                    }
                    count("stratified", size, total, found, truth, whole)
    return {
        key: {
            "covered": int(sum(v["independent"])),
            "of": len(v["independent"]),
            "fraction": float(np.mean(v["independent"])),
            "fraction_population": float(np.mean(v["population"])),
            "misses_above": int(sum(v["above"])),
            "width_relative_median": float(np.median(v["width"])),
            "independent_size": sizes[key][1],
            "exact_interval_would_cover": exact_coverage(*sizes[key]),
        }
        for key, v in hits.items()
    }


def decision_intervals(r: dict, which, args) -> dict[str, list | None]:
    """The intervals a replayed stop decision reads for test structures ``which`` of round
    ``r``'s (viewed) pool: the studentized bootstrap, or with ``args.interval`` 'ppi'/'ppi-t'
    the product's prediction-powered interval
    (:func:`tangentlab.prediction_powered.predicted_error_intervals`; σ calibrated on the
    round's validation labels, the target the draw's independent set), falling back to the
    bootstrap where the product does (fewer than two validation labels)."""
    interval = getattr(args, "interval", "bootstrap")
    found = None
    if interval != "bootstrap" and r.get("valid_set") is not None:
        pool, which = r["pool"], np.asarray(which)
        test = {k: pool[k][which] for k in ("energy", "force", "counts")} | {
            "sigma": r["sigma"][which]
        }
        target = {"sigma": r["sigma_big"], "counts": r["big"]["counts"]}
        found = predicted_error_intervals(
            test, r["valid_set"], target, level=LEVEL, method=PRODUCT_PPI[interval]
        )
    if found is None or found["energy"] is None or found["force"] is None:
        return intervals(r["pool"], which)
    return {quantity: list(found[quantity]["interval"]) for quantity in ("energy", "force")}


def with_valid_set(r: dict) -> dict:
    """Round ``r`` with its validation structures' errors and σ (``valid_set``, None with fewer
    than two or without σ), taken from the whole pool before a draw's view slices it."""
    ids = np.asarray(r.get("valid_ids", ()), dtype=int)
    if "sigma" not in r or "sigma_big" not in r or ids.size < 2:
        return {**r, "valid_set": None}
    valid = {k: r["pool"][k][ids] for k in ("energy", "force", "counts")}
    return {**r, "valid_set": valid | {"sigma": r["sigma"][ids]}}


def decide(
    rounds: list[dict],
    targets: Targets,
    budgets: Budgets,
    first_test,
    growth: bool,
    args,
    grow_from=None,
) -> dict:
    """Replay the stop decisions of one campaign on the test reserve's ``first_test``. With
    ``growth``, the test set grows (stratified by σ) when too wide to decide, drawing from
    ``grow_from`` (None: the whole reserve)."""
    from tangentlab.stopping import stop_decision

    reserve = np.arange(args.reserve) if grow_from is None else np.asarray(grow_from)
    test = [int(i) for i in first_test]
    curve = []
    for r in rounds[1:]:
        while True:
            which = np.asarray(test)
            found = decision_intervals(r, which, args)
            point = mae(r["pool"], which)
            planned = (
                len(test)
                if not growth
                else planned_test_size(
                    [
                        (point["energy"], found["energy"], targets.energy_mae_mev_per_atom),
                        (point["force"], found["force"], targets.force_mae_mev_per_a),
                    ],
                    len(test),
                    args.max_test,
                    args.step,
                )
            )
            if planned <= len(test):
                break
            rest = np.setdiff1d(reserve, which)
            picked = stratified_pick(r["sigma"][rest], planned - len(test), seed=len(test))
            test.extend(int(rest[i]) for i in picked)
        curve.append((r["labels"], point["energy"], point["force"]))
        decision = stop_decision(
            energy_mae=point["energy"],
            force_mae=point["force"],
            targets=targets,
            labels_used=r["labels"],
            rounds_done=r["round"],
            wall_time_s=0.0,
            budgets=budgets,
            energy_interval=found["energy"],
            force_interval=found["force"],
            curve=curve,
        )
        if decision is not None:
            return {
                "round": r["round"],
                "status": decision.status,
                "budget": decision.budget,
                "test_labels": len(test),
                "training_labels": r["labels"],
                "reason": decision.reason,
            }
    return {
        "round": None,
        "status": "running",
        "budget": None,
        "test_labels": len(test),
        "training_labels": rounds[-1]["labels"],
        "reason": "",
    }


def _same(a: dict, b: dict) -> bool:
    """Two replayed campaigns stopped in the same round, with the same outcome and budget."""
    return (a["round"], a["status"], a["budget"]) == (b["round"], b["status"], b["budget"])


def _same_outcome(a: dict, b: dict) -> bool:
    """The same outcome and budget, in whichever round."""
    return (a["status"], a["budget"]) == (b["status"], b["budget"])


def _reserve_order(seed: int, reserve: int) -> np.ndarray:
    """The order in which draw ``seed`` takes its reserve's structures into its test sets."""
    return np.random.default_rng(seed + 7).permutation(reserve)


def second_test_set(big: int, seed: int, size: int = SECOND) -> tuple[np.ndarray, np.ndarray]:
    """The second fixed test set (``size`` of the draw's ``big`` independent structures, the
    same for every campaign analysed with draw ``seed``) and the rest of the independent set."""
    order = np.random.default_rng(seed + 20_000).permutation(big)
    return np.sort(order[:size]), np.sort(order[size:])


def truth_met(rounds: list[dict], targets: Targets, which=None) -> dict:
    """Per round, whether the independent set's MAE (of ``which`` of its structures; None: all)
    of that round's model is at or below both targets."""
    met = {}
    for r in rounds[1:]:
        found = mae(r["big"], which)
        met[r["round"]] = bool(
            found["energy"] <= targets.energy_mae_mev_per_atom
            and found["force"] <= targets.force_mae_mev_per_a
        )
    return met


def verdict(decision: dict, met: dict) -> str:
    """A replayed decision against the truth ``met`` (:func:`truth_met`; rounds in order):

    - ``met_wrong``: "met" at a round whose truth is above a target;
    - ``met_on_time``: "met" at the first round the truth meets both targets;
    - ``met_late``: "met" at a later round whose truth meets them;
    - ``missed``: no "met" (a budget, out of reach, or still running) though the truth meets
      the targets at some round within the budget;
    - ``right_no_met``: no "met", and the truth meets them at no round.
    """
    first = next((number for number, ok in met.items() if ok), None)
    if decision["status"] == "targets_met":
        if not met[decision["round"]]:
            return "met_wrong"
        return "met_on_time" if decision["round"] == first else "met_late"
    return "right_no_met" if first is None else "missed"


def decision_rows(
    rounds: list[dict], reserve_order: np.ndarray, spec, args, second=None, neighbour=None
) -> list[dict]:
    """Per target, the stop decisions of the fixed test sets and the adaptive one. With
    ``second`` (:func:`second_test_set`), also a second fixed 100 from the independent set
    (``fixed100b``), the agreements with it, and each decision's :func:`verdict` against the
    rest of the independent set (``verdicts``) and against all of it (``verdicts_whole``).
    With ``neighbour`` (the rounds as another draw sees them, and that draw's fixed 100), also
    its decision (``fixed100c``), the reference's agreement with it, and its verdicts."""
    rows = []
    budgets = Budgets(max_labels=spec.budget, max_rounds=spec.rounds)
    # decide reads the rounds after the first (the starting model's) only
    far = (
        None
        if second is None
        else rounds[:1] + [{**r, "pool": r["big"], "sigma": r.get("sigma_big")} for r in rounds[1:]]
    )
    for anchor in rounds[1:]:
        truth = mae(anchor["big"])
        for factor in TARGET_FACTORS:
            targets = Targets(
                energy_mae_mev_per_atom=factor * truth["energy"],
                force_mae_mev_per_a=factor * truth["force"],
                confidence=LEVEL,
            )
            fixed = {
                size: decide(rounds, targets, budgets, reserve_order[:size], False, args)
                for size in FIXED
            }
            adaptive = decide(
                rounds,
                targets,
                budgets,
                reserve_order[: args.start],
                True,
                args,
                grow_from=reserve_order[: args.max_test],
            )
            reference = fixed[FIXED[0]]
            row = {
                "anchor_round": anchor["round"],
                "factor": factor,
                "targets": [targets.energy_mae_mev_per_atom, targets.force_mae_mev_per_a],
                **{f"fixed{size}": found for size, found in fixed.items()},
                "adaptive": adaptive,
                "adaptive_same_as_fixed100": _same(adaptive, reference),
                "adaptive_same_outcome_as_fixed100": _same_outcome(adaptive, reference),
                **{
                    f"fixed{size}_same_as_fixed100": _same(fixed[size], reference)
                    for size in FIXED[1:]
                },
            }
            if second is not None:
                test, rest = second
                other = decide(far, targets, budgets, test, False, args)
                row["fixed100b"] = other
                if neighbour is not None:
                    row["fixed100c"] = decide(
                        neighbour[0], targets, budgets, neighbour[1], False, args
                    )
                    row["fixed100c_same_as_fixed100"] = _same(row["fixed100c"], reference)
                    row["fixed100c_same_outcome_as_fixed100"] = _same_outcome(
                        row["fixed100c"], reference
                    )
                for rule in ("fixed100", "fixed50", "fixed30", "adaptive"):
                    row[f"{rule}_same_as_fixed100b"] = _same(row[rule], other)
                    row[f"{rule}_same_outcome_as_fixed100b"] = _same_outcome(row[rule], other)
                met = {"verdicts": truth_met(rounds, targets, rest),
                       "verdicts_whole": truth_met(rounds, targets)}
                for key, truth_of_rounds in met.items():
                    row[key] = {
                        rule: verdict(row[rule], truth_of_rounds) for rule in RULES if rule in row
                    }
                row["truth_met_rounds"] = [n for n, ok in met["verdicts"].items() if ok]
            rows.append(row)
    return rows


def floor_summary(decisions: list[dict]) -> dict | None:
    """Agreement with the second fixed 100 and each rule's verdicts (:func:`verdict`) over
    ``decisions`` (rows of :func:`decision_rows` with a second set); None without them."""
    rows = [d for d in decisions if "fixed100b" in d]
    if not rows:
        return None
    rules = ("fixed100", "fixed50", "fixed30", "adaptive")
    judged = {}
    for key in ("verdicts", "verdicts_whole"):
        judged[key] = {
            rule: {
                **{v: sum(d[key][rule] == v for d in rows) for v in VERDICTS},
                "met": sum(d[key][rule].startswith("met_") for d in rows),
            }
            for rule in RULES
            if all(rule in d[key] for d in rows)
        }
    neighbours = [d for d in rows if "fixed100c" in d]
    return {
        "count": len(rows),
        **(
            {
                "fixed100c_same_as_fixed100": sum(
                    d["fixed100c_same_as_fixed100"] for d in neighbours
                ),
                "fixed100c_same_outcome_as_fixed100": sum(
                    d["fixed100c_same_outcome_as_fixed100"] for d in neighbours
                ),
                "fixed100c_count": len(neighbours),
            }
            if neighbours
            else {}
        ),
        **{f"{rule}_same_as_fixed100b": sum(d[f"{rule}_same_as_fixed100b"] for d in rows)
           for rule in rules},
        **{
            f"{rule}_same_outcome_as_fixed100b": sum(
                d[f"{rule}_same_outcome_as_fixed100b"] for d in rows
            )
            for rule in rules
        },
        "truth_met_at_some_round": sum(bool(d["truth_met_rounds"]) for d in rows),
        "against_rest_of_independent_set": judged["verdicts"],
        "against_whole_independent_set": judged["verdicts_whole"],
    }


def labels_at_stop(decisions: list[dict]) -> dict:
    """Per rule, the mean labels a campaign has spent when it stops on that rule's decision:
    its training labels at the stopping round (the last round's when it runs to the end) and
    the test labels the decision was read from."""
    found = {}
    for rule in RULES:
        rows = [d[rule] for d in decisions if rule in d and "training_labels" in d[rule]]
        if rows and len(rows) == len(decisions):
            training = float(np.mean([x["training_labels"] for x in rows]))
            test = float(np.mean([x["test_labels"] for x in rows]))
            found[rule] = {"training": training, "test": test, "total": training + test}
    return found


def summarise(seeds: list[dict]) -> dict:
    coverage: dict = {}
    for s in seeds:
        for key, found in s["coverage"].items():
            entry = coverage.setdefault(
                key,
                {
                    "covered": 0,
                    "of": 0,
                    "population_covered": 0.0,
                    "per_seed": [],
                    "misses_above": 0,
                    "widths": [],
                    "exact_interval_would_cover": found["exact_interval_would_cover"],
                    "independent_size": found["independent_size"],
                },
            )
            entry["covered"] += found["covered"]
            entry["of"] += found["of"]
            entry["population_covered"] += found["fraction_population"] * found["of"]
            entry["per_seed"].append(round(found["fraction"], 3))
            entry["misses_above"] += found["misses_above"]
            entry["widths"].append(found["width_relative_median"])
    for entry in coverage.values():
        entry["fraction"] = entry["covered"] / entry["of"]
        # the median over the draws of each draw's median width (relative to the population MAE)
        entry["width_relative_median"] = float(np.median(entry.pop("widths")))
        entry["fraction_population"] = entry.pop("population_covered") / entry["of"]
    predicted = [r for s in seeds for r in s["predicted"] if r["interval"] is not None]
    decisions = [d for s in seeds for d in s["decisions"]]
    return {
        "coverage_of_90pct_intervals_rounds_0_on": coverage,
        "predicted_force_mae_coverage": {
            "covered": sum(r["covered"] for r in predicted),
            "of": len(predicted),
        },
        "decisions": {
            "count": len(decisions),
            "adaptive_same_as_fixed100": sum(d["adaptive_same_as_fixed100"] for d in decisions),
            "adaptive_same_outcome_as_fixed100": sum(
                d["adaptive_same_outcome_as_fixed100"] for d in decisions
            ),
            **{
                f"fixed{size}_same_as_fixed100": sum(
                    d[f"fixed{size}_same_as_fixed100"] for d in decisions
                )
                for size in FIXED[1:]
            },
            "adaptive_test_labels_mean": float(
                np.mean([d["adaptive"]["test_labels"] for d in decisions])
            ),
            "adaptive_test_labels_max": int(max(d["adaptive"]["test_labels"] for d in decisions)),
            "labels_at_stop": labels_at_stop(decisions),
        },
        **({"decision_floor": floor} if (floor := floor_summary(decisions)) else {}),
    }


def _view(r: dict, index: int, reserve: int, big: int) -> dict:
    """Round ``r`` as test draw ``index`` sees it: its slice of the reserve and of the
    independent set."""
    cut = slice(index * reserve, (index + 1) * reserve)
    far = slice(index * big, (index + 1) * big) if len(r["big"]["counts"]) > big else slice(0, big)
    view = {
        **r,
        "pool": {k: v[cut] for k, v in r["pool"].items()},
        "big": {k: v[far] for k, v in r["big"].items()},
    }
    if "sigma" in r:
        view["sigma"] = r["sigma"][cut]
    if "sigma_big" in r:
        view["sigma_big"] = r["sigma_big"][far]
    return view


def test_draw(rounds: list[dict], spec, index: int, seed: int, args) -> dict:
    """Coverage, predicted MAE and stop decisions for one draw of the test reserve and the
    independent set."""
    rounds = [with_valid_set(r) for r in rounds]
    views = [_view(r, index, args.reserve, args.big) for r in rounds]
    reserve_order = _reserve_order(seed, args.reserve)
    neighbour = None
    if len(args.seeds) > 1:
        # the next draw's reference 100: another draw of the reserves' population
        other = (index + 1) % len(args.seeds)
        neighbour = (
            [_view(r, other, args.reserve, args.big) for r in rounds],
            _reserve_order(args.seeds[other], args.reserve)[: FIXED[0]],
        )
    predicted = []
    for r in views[1:]:
        p, truth = r["predicted_force"], mae(r["big"])["force"]
        predicted.append(
            {
                "round": r["round"],
                "valid": None if p is None else p["n_valid"],
                "predicted": None if p is None else p["mae"],
                "interval": None if p is None else p["interval"],
                "mae_big": truth,
                "covered": None
                if p is None
                else bool(p["interval"][0] <= truth <= p["interval"][1]),
            }
        )
    return {
        "seed": seed,
        "curve": [
            {"round": r["round"], "labels": r["labels"], "mae_big": mae(r["big"])} for r in views
        ],
        "coverage": {}
        if args.decisions_only
        else split_coverage(
            rounds, len(args.seeds) * args.reserve, args.splits, seed, tuple(args.coverage_methods)
        ),
        "predicted": predicted,
        "decisions": decision_rows(
            views,
            reserve_order,
            spec,
            args,
            second=second_test_set(len(views[1]["big"]["counts"]), seed),
            neighbour=neighbour,
        ),
    }


#: Per-round arrays besides the errors that --raw keeps: σ of the pool and of the independent
#: set, and the campaign's validation and training indices into the pool (the calibration of σ
#: into a predicted error is fitted on the validation structures).
RAW_ARRAYS = ("sigma", "sigma_big", "valid_ids", "train_ids")


def load_raw(path: Path) -> list[dict]:
    """The rounds :func:`save_raw` wrote."""
    raw = np.load(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    rounds = []
    for index, extra in enumerate(meta):
        r = {**extra, "labels": int(raw["labels"][index])}
        for where in ("pool", "big"):
            r[where] = {key: raw[f"{index}_{where}_{key}"] for key in ("energy", "force", "counts")}
        for key in RAW_ARRAYS:
            if f"{index}_{key}" in raw:
                r[key] = raw[f"{index}_{key}"]
        rounds.append(r)
    return rounds


def save_raw(rounds: list[dict], path: Path) -> None:
    """Every round's per-structure errors and σ, for analyses without the models."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(
        json.dumps(
            [{k: r.get(k) for k in ("round", "finetune_s", "predicted_force")} for r in rounds],
            default=float,
        )
    )
    raw = {"labels": np.array([r["labels"] for r in rounds])}
    for index, r in enumerate(rounds):
        for where in ("pool", "big"):
            for key, values in r[where].items():
                raw[f"{index}_{where}_{key}"] = values
        for key in RAW_ARRAYS:
            if key in r:
                raw[f"{index}_{key}"] = r[key]
    np.savez_compressed(path, **raw)


def main(argv: list[str] | None = None) -> dict:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset")
    parser.add_argument(
        "--data-root", help="folder holding h2combustion/ and acac/ (default $TANGENTLAB_DATA)"
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[0, 1, 2, 3, 4],
        help="test draws: each its own test reserve and independent set",
    )
    parser.add_argument(
        "--campaign-seed", type=int, default=0, help="seed of the one campaign replayed"
    )
    parser.add_argument(
        "--method", default="default", help="acquisition method (benchmarks.methods)"
    )
    parser.add_argument(
        "--pool", type=int, default=180, help="the campaign's candidates (test reserves apart)"
    )
    parser.add_argument(
        "--reserve", type=int, default=120, help="test candidates per seed (drawn from the pool)"
    )
    parser.add_argument(
        "--big", type=int, default=500, help="independent structures of the same files"
    )
    parser.add_argument("--start", type=int, default=10, help="adaptive test set: first size")
    parser.add_argument(
        "--step", type=int, default=10, help="adaptive test set: structures added at a time"
    )
    parser.add_argument("--max-test", type=int, default=100, help="adaptive test set: largest size")
    parser.add_argument(
        "--interval",
        choices=("bootstrap", *PRODUCT_PPI),
        default="bootstrap",
        help="the interval the replayed stop decisions read (targets.interval; 'auto' is 'ppi' here)",
    )
    parser.add_argument("--max-epochs", type=int, help="instead of the preset's")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--shared-big",
        action="store_true",
        help="one independent set for every test draw (fewer predictions)",
    )
    parser.add_argument(
        "--from-raw",
        type=Path,
        nargs="+",
        help="analyse rounds saved by --raw (no models); several files: one campaign each",
    )
    parser.add_argument(
        "--splits",
        type=int,
        default=80,
        help="coverage: random splits per seed, round and test size",
    )
    parser.add_argument(
        "--coverage-methods",
        nargs="+",
        choices=COVERAGE_METHODS,
        default=list(COVERAGE_METHODS),
        help="the intervals whose coverage the splits measure (default: all)",
    )
    parser.add_argument(
        "--raw", type=Path, help="folder for each seed's per-structure errors (.npz)"
    )
    parser.add_argument(
        "--decisions-only",
        action="store_true",
        help="skip the coverage splits (the slow part): predicted MAE and stop decisions only",
    )
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    spec = make_spec(preset(args.preset, args.data_root))
    started = time.perf_counter()
    draws = len(args.seeds)
    if not args.from_raw:
        frames = [read_labelled(path) for path in spec.data.pool_files]
        # One campaign; every seed draws its own test reserve and independent set (disjoint).
        bigs = 1 if args.shared_big else draws
        pool, big = draw(
            frames, draws * args.reserve + args.pool, bigs * args.big, args.campaign_seed
        )
    replay_args = argparse.Namespace(**{**vars(args), "reserve": draws * args.reserve})
    if args.from_raw:
        campaigns = [load_raw(path) for path in args.from_raw]
    else:
        with tempfile.TemporaryDirectory() as work:
            campaigns = [replay(spec, pool, big, args.campaign_seed, Path(work), replay_args)]
        if args.raw:
            save_raw(campaigns[0], args.raw / f"{args.preset}-c{args.campaign_seed}.npz")
    seeds, summaries = [], []
    for rounds in campaigns:
        found = [
            test_draw(rounds, spec, index, seed, args) for index, seed in enumerate(args.seeds)
        ]
        seeds.extend(found)
        summaries.append(
            {
                "rounds": [
                    {
                        "round": r["round"],
                        "labels": r["labels"],
                        "finetune_s": r.get("finetune_s"),
                        "predicted_force": r.get("predicted_force"),
                    }
                    for r in rounds
                ],
                "summary": summarise(found),
                "seeds": found,
            }
        )
    results = {
        "preset": args.preset,
        "arguments": {k: str(v) for k, v in vars(args).items()},
        "level": LEVEL,
        "summary": summarise(seeds),
        "campaigns": summaries,
        "wall_s": time.perf_counter() - started,
        "torch_threads": args.threads,
        "data_root_variable": bool(os.environ.get("TANGENTLAB_DATA")),
    }
    return emit(json.loads(json.dumps(results, default=float)), args.out)


if __name__ == "__main__":
    main()

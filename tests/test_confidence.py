from __future__ import annotations

import numpy as np
import pytest

from tangentlab.confidence import METHODS, interval_text, mae_interval, predicted_mae
from tangentlab.prediction_powered import ppi_interval
from tangentlab.metrics import error_metrics


def test_interval_is_reproducible_and_brackets_the_mae():
    errors = np.random.default_rng(3).lognormal(0, 0.8, size=30)
    first, again = mae_interval(errors), mae_interval(errors)
    assert first == again  # fixed seed: the same errors give the same interval
    assert first[0] < errors.mean() < first[1]
    assert mae_interval(errors, seed=1) != first
    wider = mae_interval(errors, level=0.99)
    assert wider[0] < first[0] and wider[1] > first[1]
    # fewer structures: a wider interval around the same kind of errors
    few = mae_interval(errors[:8])
    assert few[1] - few[0] > first[1] - first[0]


def test_no_interval_from_one_structure_and_none_from_equal_errors():
    assert mae_interval([3.0]) is None
    assert mae_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)
    with pytest.raises(ValueError, match="level"):
        mae_interval([1.0, 2.0], level=90)
    with pytest.raises(ValueError, match="equally long"):
        mae_interval([1.0, 2.0], [1.0])


def test_stated_coverage_is_kept_on_skewed_errors():
    # 90 % intervals from 20 skewed errors cover the true mean in about 90 % of draws; the
    # percentile interval covers less (why the studentized one is the default).
    rng = np.random.default_rng(0)
    truth = np.exp(0.8**2 / 2)
    hits = {"studentized": 0, "percentile": 0}
    for trial in range(200):
        sample = rng.lognormal(0, 0.8, size=20)
        for method in hits:
            low, high = mae_interval(sample, method=method, resamples=500, seed=trial)
            hits[method] += low <= truth <= high
    assert hits["studentized"] / 200 >= 0.85
    assert hits["studentized"] > hits["percentile"]


def test_force_errors_are_resampled_by_structure_not_by_atom():
    # Two structures, one perfect, one far off, with many atoms each: counted atom by atom
    # the MAE would look certain; by structure it is not.
    rng = np.random.default_rng(1)
    preds, refs = [], []
    for offset in (0.0, 1.0, 0.0, 1.0):
        ref = rng.normal(size=(50, 3))
        refs.append((0.0, ref))
        preds.append((0.0, ref + offset))
    metrics = error_metrics(preds, refs, [50] * 4)
    low, high = metrics["force_mae_interval_mev_per_a"]
    assert metrics["force_mae_mev_per_a"] == pytest.approx(500.0)
    by_atom = mae_interval(
        np.concatenate([np.abs(p[1] - r[1]).ravel() for p, r in zip(preds, refs)]) * 1e3
    )
    assert low < 300 and high > 700
    assert high - low > 5 * (by_atom[1] - by_atom[0])
    assert metrics["interval_level"] == 0.9
    assert "interval" in " ".join(k for k in metrics if isinstance(metrics[k], list))


def test_error_metrics_interval_keys_and_level():
    rng = np.random.default_rng(2)
    refs = [(float(rng.normal()), rng.normal(size=(3, 3))) for _ in range(12)]
    preds = [(e + 0.01 * rng.normal(), f + 0.1 * rng.normal(size=f.shape)) for e, f in refs]
    narrow = error_metrics(preds, refs, [3] * 12, level=0.5)
    wide = error_metrics(preds, refs, [3] * 12, level=0.95)
    for key, mae in (
        ("energy_mae_interval_mev_per_atom", "energy_mae_mev_per_atom"),
        ("force_mae_interval_mev_per_a", "force_mae_mev_per_a"),
    ):
        assert wide[key][0] <= narrow[key][0] <= narrow[mae] <= narrow[key][1] <= wide[key][1]
    assert error_metrics(preds[:1], refs[:1], [3])["force_mae_interval_mev_per_a"] is None
    assert interval_text(narrow["force_mae_interval_mev_per_a"]).startswith("[")


def test_predicted_mae_scales_sigma_and_widens_with_fewer_validation_labels():
    rng = np.random.default_rng(4)
    sigma_valid = rng.uniform(0.5, 2.0, size=40)
    errors = 100.0 * sigma_valid * rng.uniform(0.5, 1.5, size=40)
    sigma_target = rng.uniform(0.5, 2.0, size=500)
    full = predicted_mae(sigma_valid, errors, sigma_target)
    assert full["scale"] == pytest.approx(errors.sum() / sigma_valid.sum())
    assert full["mae"] == pytest.approx(full["scale"] * sigma_target.mean())
    assert full["interval"][0] < full["mae"] < full["interval"][1]
    few = predicted_mae(sigma_valid[:5], errors[:5], sigma_target)
    assert few["interval"][1] - few["interval"][0] > full["interval"][1] - full["interval"][0]
    assert predicted_mae(sigma_valid[:1], errors[:1], sigma_target) is None


def test_every_method_brackets_the_mae_and_log_scale_stays_positive():
    errors = np.random.default_rng(5).lognormal(0, 1.0, size=12)
    counts = np.full(12, 9.0)
    for method in METHODS:
        low, high = mae_interval(errors, counts, method=method)
        assert 0 < low < errors.sum() / counts.sum() < high, method
    # the log-scale interval is a ratio around the estimate: never below zero, even for a
    # sample whose plain studentized low end is clipped at zero
    skewed = np.array([0.01, 0.01, 0.02, 0.01, 5.0])
    assert mae_interval(skewed)[0] == 0.0
    assert mae_interval(skewed, method="log-studentized")[0] > 0.0
    with pytest.raises(ValueError, match="method"):
        mae_interval(errors, method="normal")


def test_bca_moves_the_percentile_interval_toward_the_long_tail():
    # On right-skewed errors the bias correction and the acceleration are both positive: the
    # BCa interval lies above the percentile interval of the same resamples, at both ends.
    for seed in range(5):
        sample = np.random.default_rng(seed).lognormal(0, 0.8, size=20)
        bca = mae_interval(sample, method="bca")
        percentile = mae_interval(sample, method="percentile")
        assert bca[0] > percentile[0] and bca[1] > percentile[1]
    # symmetric errors: no correction to speak of
    flat = np.random.default_rng(7).uniform(1, 2, size=200)
    assert mae_interval(flat, method="bca") == pytest.approx(
        mae_interval(flat, method="percentile"), rel=0.01
    )


def _tailed_population(seed: int, size: int = 2000):
    """Force errors of a population whose 2 % far-off structures carry about a fifth of the
    error, with a predicted error per component that foresees them (as a calibrated σ can):
    per structure the sum of absolute component errors, its components and the predicted sum."""
    rng = np.random.default_rng(seed)
    far = rng.random(size) < 0.02
    predicted = np.where(far, 10.0, 1.0) * rng.lognormal(0, 0.3, size)
    actual = predicted * rng.lognormal(0, 0.4, size)
    counts = rng.integers(2, 7, size) * 3.0
    return actual * counts, counts, predicted * counts


def test_ppi_with_a_perfect_prediction_is_the_targets_mae():
    sums, counts, _ = _tailed_population(0)
    test, target = np.arange(20), np.arange(20, 2000)
    found = ppi_interval(sums[test], sums[test], sums[target], counts[test], counts[target])
    truth = sums[target].sum() / counts[target].sum()
    assert found["lambda"] == pytest.approx(1.0)
    assert found["mae"] == pytest.approx(truth)
    low, high = found["interval"]
    assert low == pytest.approx(truth) and high == pytest.approx(truth)


def test_ppi_without_a_usable_prediction_is_the_test_mae():
    # a predicted error that is the same for every structure (per component) says nothing:
    # λ = 0 and the estimate is the test set's own MAE
    sums, counts, _ = _tailed_population(1)
    test, target = np.arange(30), np.arange(30, 2000)
    found = ppi_interval(sums[test], 5 * counts[test], 5 * counts[target], counts[test], counts[target])
    assert found["lambda"] == 0.0
    assert found["mae"] == pytest.approx(sums[test].sum() / counts[test].sum())
    assert found["n"] == 30 and found["n_target"] == 1970
    # no predicted error at all: the pool bootstrap has no ratio to draw, and falls back to the
    # Student t interval of the test MAE
    blind = {method: ppi_interval(sums[test], 0 * counts[test], 0 * counts[target], counts[test],
                                  counts[target], method=method) for method in ("pool", "normal")}
    assert blind["pool"] == blind["normal"] and blind["pool"]["lambda"] == 0.0
    assert ppi_interval([1.0], [1.0], [1.0, 2.0]) is None
    with pytest.raises(ValueError, match="equally long"):
        ppi_interval([1.0, 2.0], [1.0], [1.0])
    with pytest.raises(ValueError, match="unknown method"):
        ppi_interval([1.0, 2.0], [1.0, 2.0], [1.0], method="bca")


def test_ppi_covers_the_far_off_structures_a_small_test_set_lacks():
    # 150 test sets of 20 from the tailed population, each interval against the MAE of all the
    # other structures: most test sets hold none of the 2 % far off, and the bootstrap over the
    # test set cannot see them (it covers about 2 in 3). The prediction-powered interval sees
    # them through their predicted errors: with the σ-scaled variance it covers far more often
    # (bootstrap-t, the default) or about as often as it states (Student t); with the test
    # set's own residual variance (the textbook PPI) less. The bootstrap-t of test sets drawn
    # from the targets' predicted errors (pool) covers too, and its upper end is the one
    # missed least (the end a stop rule reads)
    sums, counts, predicted = _tailed_population(2)
    rng = np.random.default_rng(3)
    variants = {
        "ppi": {"resamples": 400},
        "ppi-t": {"method": "normal"},
        "ppi-sample": {"method": "normal", "variance": "sample"},
        "ppi-pool": {"method": "pool", "resamples": 400},
    }
    hits = dict.fromkeys(["bootstrap", *variants], 0)
    above = dict.fromkeys(hits, 0)
    for trial in range(150):
        order = rng.permutation(sums.size)
        test, target = order[:20], order[20:]
        truth = sums[target].sum() / counts[target].sum()
        found = {"bootstrap": mae_interval(sums[test], counts[test], resamples=400, seed=trial)}
        for name, options in variants.items():
            found[name] = ppi_interval(
                sums[test], predicted[test], predicted[target], counts[test], counts[target],
                seed=trial, **options,
            )["interval"]
        for name, (low, high) in found.items():
            hits[name] += low <= truth <= high
            above[name] += truth > high
    coverage = {name: count / 150 for name, count in hits.items()}
    assert coverage["bootstrap"] <= 0.7
    assert coverage["ppi"] >= coverage["bootstrap"] + 0.15
    assert coverage["ppi-t"] >= 0.87
    assert coverage["ppi-sample"] < coverage["ppi"] <= coverage["ppi-t"]
    assert coverage["ppi-pool"] >= 0.85
    assert above["ppi-pool"] < min(above[name] for name in hits if name != "ppi-pool")

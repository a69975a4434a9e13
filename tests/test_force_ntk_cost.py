"""The force NTK cost benchmark's intervals and per-subset summary (benchmarks/force_ntk_cost.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from benchmarks import force_ntk_cost as bench


def test_spearman_rows_matches_scipy_row_by_row_with_ties():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 5, size=(6, 9)).astype(float)  # ties on purpose
    b = a + rng.normal(scale=2.0, size=a.shape)
    got = bench.spearman_rows(a, b)
    want = [spearmanr(x, y).statistic for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert np.isnan(bench.spearman_rows(np.ones((1, 4)), np.arange(4.0)[None]))[0]


def test_fisher_interval_is_tanh_of_atanh_plus_minus_the_spearman_standard_error():
    low, high = bench.fisher_interval(0.9, 48)
    half = 1.959964 * np.sqrt(1.06 / 45)
    assert low == pytest.approx(np.tanh(np.arctanh(0.9) - half))
    assert high == pytest.approx(np.tanh(np.arctanh(0.9) + half))
    assert low == pytest.approx(0.8245, abs=1e-3) and high == pytest.approx(0.9442, abs=1e-3)
    narrow = bench.fisher_interval(0.9, 480)
    assert low < narrow[0] < 0.9 < narrow[1] < high


def test_bootstrap_intervals_and_the_paired_difference():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=40)
    same = bench.bootstrap_spearman(reference, [reference], 200, baseline=reference)
    assert same["spearman_bootstrap_95"] == [1.0, 1.0]
    assert same["minus_exact_seed1_bootstrap_95"] == [0.0, 0.0]
    reversed_ = bench.bootstrap_spearman(reference, [-reference], 200)
    assert reversed_["spearman_bootstrap_95"] == [-1.0, -1.0]
    assert "minus_exact_seed1_bootstrap_95" not in reversed_
    noisy = [reference + rng.normal(scale=0.7, size=40) for _ in range(3)]
    point = np.mean([spearmanr(reference, v).statistic for v in noisy])
    out = bench.bootstrap_spearman(reference, noisy, 500, baseline=reference)
    low, high = out["spearman_bootstrap_95"]
    assert low < point < high < 1.0
    # the baseline ranks perfectly: the difference is the noisy mean minus 1, always below 0
    d_low, d_high = out["minus_exact_seed1_bootstrap_95"]
    assert d_low < point - 1 < d_high < 0
    assert (d_low, d_high) == pytest.approx((low - 1, high - 1))


def test_subset_summary_groups_the_seeds_and_takes_every_timing():
    rng = np.random.default_rng(1)
    reference = rng.normal(size=12)
    scored, costs = {}, {}
    sigma = {"exact-seed0": reference, "exact-seed1": reference,
             "exact-readouts-d16-chunk1-seed1": reference,
             "exact-readouts-d16-chunk1-seed2": -reference,
             "exact-readouts-d8-chunk1-seed1": reference[::-1].copy(),
             "probes1-seed1": reference}
    batches = {"exact-seed0": [0, 1, 2, 3], "exact-seed1": [0, 1, 2, 3],
               "exact-readouts-d16-chunk1-seed1": [0, 1, 2, 5],
               "exact-readouts-d16-chunk1-seed2": [6, 7, 8, 9],
               "exact-readouts-d8-chunk1-seed1": [0, 7, 8, 9], "probes1-seed1": [0, 1, 2, 3]}
    for signal in bench.SIGNALS:
        for key, s2 in sigma.items():
            scored[(signal, key)] = {"sigma2": s2, "batch": batches[key]}
    for key in sigma:
        costs[key] = {"energy_force_ntk_x_inference": 100.0}
    costs["exact-readouts-d16-chunk1-seed1"] = {
        "energy_force_ntk_x_inference": 9.0, "energy_force_ntk_x_inference_repeats": [9.0, 12.0]}
    costs["exact-readouts-d16-chunk1-seed2"] = {
        "energy_force_ntk_x_inference": 8.0, "energy_force_ntk_x_inference_repeats": [8.0, 10.0]}
    costs["exact-readouts-d8-chunk1-seed1"] = {"energy_force_ntk_x_inference": 5.0}
    summary = bench.subset_summary(scored, costs, 4, 100, 64)
    assert set(summary) == set(bench.SIGNALS)
    rows = summary["force_ntk"]
    assert set(rows) == {"exact-all-d64-seed1", "readouts-d16-chunk1", "readouts-d8-chunk1"}
    d16 = rows["readouts-d16-chunk1"]
    assert d16["seeds"] == [1, 2]
    assert d16["spearman_sigma2"] == pytest.approx([1.0, -1.0])
    assert d16["spearman_sigma2_mean"] == pytest.approx(0.0)
    assert d16["greedy_batch_overlap"] == [0.75, 0.0]
    assert d16["greedy_batch_overlap_mean"] == pytest.approx(0.375)
    assert d16["cost_timings"] == 4 and d16["cost_x_inference_median"] == pytest.approx(9.5)
    assert (d16["cost_x_inference_min"], d16["cost_x_inference_max"]) == (8.0, 12.0)
    # seed 1 ranks like the reference, seed 2 reversed: the seeds' mean is 0 on every resample
    assert d16["spearman_bootstrap_95"] == pytest.approx([0.0, 0.0])
    assert d16["minus_exact_seed1_bootstrap_95"] == pytest.approx([-1.0, -1.0])
    assert rows["readouts-d8-chunk1"]["cost_x_inference_median"] == 5.0
    exact = rows["exact-all-d64-seed1"]
    assert exact["spearman_sigma2"] == pytest.approx([1.0]) and exact["cost_timings"] == 1
    assert "minus_exact_seed1_bootstrap_95" not in exact


def test_parse_subset_and_bad_subsets_stop_before_any_model_is_loaded(capsys):
    assert bench.parse_subset("readouts:16:1", [1, 2]) == ("readouts", 16, 1, [1, 2])
    assert bench.parse_subset("last_layer:32:8:4,5", [1]) == ("last_layer", 32, 8, [4, 5])
    for bad in ("readouts:16", "readouts:x:1", "readouts:16:1:", "readouts:0:1"):
        with pytest.raises(ValueError, match="subset"):
            bench.parse_subset(bad, [1])
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--subsets", "readouts:x:1", "--systems", "slab"])
    assert stopped.value.code == 2
    assert "error: subset 'readouts:x:1'" in capsys.readouterr().err

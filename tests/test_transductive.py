"""Target-aware selection, LCMD and the outlier guard, checked against brute-force algebra."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from scipy.linalg import cholesky

from tangentlab.acquisition import fit_scorer, select_batch
from tangentlab.acquisition.diversity import lcmd_selection
from tangentlab.acquisition.transductive import (
    TargetCovariance,
    transductive_gain,
    transductive_selection,
)

NAMES = ["H2O", "CH4", "CO2", "CH3OH", "NH3", "HCN", "H2CO"]


def _pool(n: int, seed: int = 0, scale: float = 0.08) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    pool = []
    for i in range(n):
        atoms = molecule(NAMES[i % len(NAMES)])
        atoms.positions += rng.normal(scale=scale, size=atoms.positions.shape)
        pool.append(atoms)
    return pool


def _unit(rows: np.ndarray, counts) -> np.ndarray:
    """Each structure's rows scaled to unit Frobenius norm (every target structure counts once)."""
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    return np.vstack([rows[a:b] / np.linalg.norm(rows[a:b]) for a, b in zip(starts[:-1], starts[1:])])


def _mean_target_variance(labelled: np.ndarray, target_rows, target_counts, lam: float) -> float:
    """Mean over target structures of λ · Σ_r φ_r A⁻¹ φ_rᵀ (unit-norm rows), A formed explicitly."""
    d = target_rows.shape[1]
    covariance = lam * np.linalg.inv(labelled.T @ labelled + lam * np.eye(d))
    row_variance = np.einsum("ij,jk,ik->i", target_rows, covariance, target_rows)
    starts = np.concatenate([[0], np.cumsum(target_counts)[:-1]])
    return float(np.mean(np.add.reduceat(row_variance, starts)))


@pytest.mark.parametrize("rows_per_structure", [1, 3])
def test_gain_is_the_drop_of_the_mean_target_variance(rows_per_structure):
    rng = np.random.default_rng(0)
    d, lam = 5, 0.3
    labelled = rng.normal(size=(4, d))
    target_counts = np.full(6, rows_per_structure)
    target_rows = _unit(rng.normal(size=(int(target_counts.sum()), d)), target_counts)
    candidates = rng.normal(size=(4 * rows_per_structure, d))
    counts = np.full(4, rows_per_structure)
    covariance = TargetCovariance(d)
    covariance.add(target_rows[:rows_per_structure * 2], target_counts[:2])  # streamed in parts
    covariance.add(target_rows[rows_per_structure * 2 :], target_counts[2:])
    scaled = TargetCovariance(d)  # scaling a target structure changes nothing
    scaled.add(target_rows * np.repeat(rng.uniform(0.1, 10, 6), rows_per_structure)[:, None], target_counts)
    np.testing.assert_allclose(scaled.matrix, covariance.matrix, rtol=1e-10)
    chol = cholesky(labelled.T @ labelled + lam * np.eye(d), lower=True)
    gains = transductive_gain(chol, covariance.matrix, candidates, counts, lam)
    before = _mean_target_variance(labelled, target_rows, target_counts, lam)
    for index in range(4):
        block = candidates[index * rows_per_structure : (index + 1) * rows_per_structure]
        after = _mean_target_variance(np.vstack([labelled, block]), target_rows, target_counts, lam)
        assert gains[index] == pytest.approx(before - after, rel=1e-9)


def test_greedy_transductive_batch_equals_brute_force():
    rng = np.random.default_rng(1)
    d, lam = 4, 0.1
    labelled = rng.normal(size=(3, d))
    target_rows = _unit(rng.normal(size=(20, d)) @ np.diag([3.0, 1.0, 0.3, 0.1]), np.ones(20, int))
    candidates = rng.normal(size=(12, d))
    covariance = TargetCovariance(d)
    covariance.add(target_rows, np.ones(20, int))
    chol = cholesky(labelled.T @ labelled + lam * np.eye(d), lower=True)
    picks, gains = transductive_selection(chol, covariance.matrix, candidates, np.ones(12, int), 4, lam)
    chosen = labelled
    for pick, gain in zip(picks, gains):
        before = _mean_target_variance(chosen, target_rows, np.ones(20, int), lam)
        drops = [
            before - _mean_target_variance(np.vstack([chosen, c]), target_rows, np.ones(20, int), lam)
            if i not in picks[: list(picks).index(pick)] else -np.inf
            for i, c in enumerate(candidates)
        ]
        assert pick == int(np.argmax(drops))
        assert gain == pytest.approx(max(drops), rel=1e-9)
        chosen = np.vstack([chosen, candidates[pick]])
    assert len(set(picks)) == 4


def test_transductive_prefers_the_dense_region_over_the_outlier():
    """Max variance takes the lone far point; the pool-as-target rule takes the cluster
    (it would take the outlier too if target structures were not scaled to unit norm)."""
    rng = np.random.default_rng(2)
    cluster = rng.normal(scale=0.3, size=(30, 2)) + [1.0, 0.0]
    outlier = np.array([[0.0, 6.0]])
    rows = np.vstack([cluster, outlier])
    lam = 0.1
    chol = cholesky(lam * np.eye(2), lower=True)
    covariance = TargetCovariance(2)
    covariance.add(rows, np.ones(31, int))
    picks, _ = transductive_selection(chol, covariance.matrix, rows, np.ones(31, int), 1, lam)
    assert picks[0] < 30
    variance = np.einsum("ij,ij->i", rows, rows)
    assert int(np.argmax(variance)) == 30


def test_lcmd_picks_the_farthest_point_of_the_widest_cluster():
    labelled = np.array([[0.0, 0.0], [10.0, 0.0]])
    # around centre 0: three points close by; around centre 1: two points far out
    rows = np.array([[0.5, 0.0], [0.0, 0.6], [0.4, 0.4], [10.0, 3.0], [10.0, -2.0]])
    picks = lcmd_selection(rows, np.ones(5, int), labelled, np.ones(2, int), 2)
    assert picks[0] == 3  # the widest cluster is centre 1's (9 + 4 > 0.25 + 0.36 + 0.32)
    assert picks[1] == 4  # the new centre took point 3; centre 1 still holds point 4
    multi = lcmd_selection(
        np.repeat(rows, 2, axis=0), np.full(5, 2), np.repeat(labelled, 2, axis=0), np.full(2, 2), 3
    )
    assert len(set(multi)) == 3


def test_select_batch_transductive_with_pool_or_file_target(model):
    pool = _pool(16)
    labelled = _pool(3, seed=5)
    scorer = fit_scorer(model, labelled, reference_atoms=pool[:8])
    picks, scores, info = select_batch(scorer, pool, rule="transductive", batch_size=3)
    rows, counts = scorer.rows(pool)
    covariance = TargetCovariance(scorer.feature_dim)
    covariance.add(rows, counts)
    expected, gains = transductive_selection(
        scorer.chol, covariance.matrix, rows, counts, 3, scorer.regularization
    )
    np.testing.assert_array_equal(picks, expected)
    np.testing.assert_allclose(info["conditional_scores"], gains, rtol=1e-8)
    np.testing.assert_allclose(scores, scorer.variance(pool)[picks], rtol=1e-8)
    # no row cache: the scoring pass recomputes the rows and picks the same
    uncached, _, _ = select_batch(scorer, lambda: iter(pool), rule="transductive", batch_size=3, row_cache_mb=0,
                                  chunk_size=5)
    np.testing.assert_array_equal(uncached, picks)
    # a separate target: the first four pool structures
    targeted, _, _ = select_batch(scorer, pool, rule="transductive", target=pool[:4], batch_size=3)
    covariance = TargetCovariance(scorer.feature_dim)
    covariance.add(*scorer.rows(pool[:4]))
    expected, _ = transductive_selection(
        scorer.chol, covariance.matrix, rows, counts, 3, scorer.regularization
    )
    np.testing.assert_array_equal(targeted, expected)


def test_sigma_guard_keeps_the_outliers_out(model):
    pool = _pool(20)
    for index in (3, 11):  # two wildly distorted frames
        pool[index].positions *= 1.6
    labelled = _pool(3, seed=5)
    scorer = fit_scorer(model, labelled, reference_atoms=pool)
    variance = scorer.variance(pool)
    top_two = set(np.argsort(-variance)[:2].tolist())
    unguarded, _, _ = select_batch(scorer, pool, rule="top", batch_size=2)
    assert set(unguarded.tolist()) == top_two
    guarded, _, info = select_batch(scorer, pool, rule="top", batch_size=2, sigma_quantile=0.85)
    assert info["guarded"] >= 2 and info["sigma_bound"] < variance.max()
    assert not set(guarded.tolist()) & top_two
    assert np.all(variance[guarded] <= info["sigma_bound"])


def test_lcmd_rule_in_select_batch(model):
    pool = _pool(12)
    labelled = _pool(3, seed=5)
    picks, _, info = select_batch(fit_scorer(model, labelled, reference_atoms=pool), pool, rule="lcmd",
                                  batch_size=4)
    assert len(set(picks.tolist())) == 4 and info["rule"] == "lcmd"
    multi, _, _ = select_batch(fit_scorer(model, labelled, signal="force_ntk", reference_atoms=pool, sketch_dim=4),
                               pool, rule="lcmd", batch_size=3)
    assert len(set(multi.tolist())) == 3

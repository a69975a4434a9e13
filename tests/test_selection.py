from __future__ import annotations

import itertools

import numpy as np
import pytest

from tangentlab.acquisition.diversity import kmeans_pp_selection
from tangentlab.acquisition.posterior import (
    TIE_TOLERANCE,
    grouped_variance_from_cholesky,
    posterior_variance,
    precision_cholesky,
    variance_from_cholesky,
)
from tangentlab.acquisition.rules import greedy_grouped_posterior_variance, random_selection


def greedy_posterior_variance(phi_train, phi_cand, batch_size, lam, exclude=None):
    """The greedy rule with one row per structure, A built from phi_train."""
    phi_cand = np.asarray(phi_cand, dtype=float)
    chol = precision_cholesky(phi_train, lam, phi_cand.shape[1])
    ones = np.ones(len(phi_cand), dtype=int)
    return greedy_grouped_posterior_variance(chol, phi_cand, ones, batch_size, lam, exclude=exclude)


def _gp_variance(phi_train: np.ndarray, phi_cand: np.ndarray, lam: float) -> np.ndarray:
    """Kernel-space GP posterior variance with k = φφᵀ: k(x,x) - k_xL (K_LL + λI)⁻¹ k_Lx."""
    k_xx = np.einsum("ij,ij->i", phi_cand, phi_cand)
    if len(phi_train) == 0:
        return k_xx
    k_ll = phi_train @ phi_train.T
    k_xl = phi_cand @ phi_train.T
    solved = np.linalg.solve(k_ll + lam * np.eye(len(phi_train)), k_xl.T)
    return k_xx - np.einsum("ij,ji->i", k_xl, solved)


def _naive_greedy(phi_train, phi_cand, batch_size, lam, exclude=()):
    """Recompute the posterior variance from scratch before every pick."""
    picked: list[int] = []
    scores: list[float] = []
    for _ in range(batch_size):
        labelled = np.vstack([phi_train, phi_cand[picked]])
        variance = np.linalg.inv(labelled.T @ labelled + lam * np.eye(phi_cand.shape[1]))
        sigma2 = lam * np.einsum("ij,jk,ik->i", phi_cand, variance, phi_cand)
        sigma2[list(exclude) + picked] = -np.inf
        best = sigma2.max()
        pick = int(np.flatnonzero(sigma2 >= best - TIE_TOLERANCE * abs(best))[0])
        picked.append(pick)
        scores.append(sigma2[pick])
    return np.array(picked), np.array(scores)


@pytest.mark.parametrize(("n_train", "d", "lam"), [(5, 8, 0.1), (30, 6, 1.0), (3, 12, 1e-3)])
def test_feature_space_equals_gp_variance(n_train, d, lam):
    rng = np.random.default_rng(n_train)
    phi_train = rng.normal(size=(n_train, d))
    phi_cand = rng.normal(size=(40, d))
    np.testing.assert_allclose(
        posterior_variance(phi_train, phi_cand, lam),
        _gp_variance(phi_train, phi_cand, lam),
        rtol=1e-9,
        atol=1e-12,
    )


def test_empty_training_set_gives_prior_variance():
    phi_cand = np.random.default_rng(0).normal(size=(7, 5))
    expected = np.sum(phi_cand**2, axis=1)
    for empty in (np.zeros((0, 5)), np.array([]), None):
        np.testing.assert_allclose(posterior_variance(empty, phi_cand, 0.3), expected)


def test_factor_reuse_over_chunks():
    rng = np.random.default_rng(1)
    phi_train, phi_cand = rng.normal(size=(10, 4)), rng.normal(size=(25, 4))
    chol = precision_cholesky(phi_train, 0.5, 4)
    chunked = np.concatenate(
        [variance_from_cholesky(chol, phi_cand[i : i + 10], 0.5) for i in range(0, 25, 10)]
    )
    np.testing.assert_allclose(chunked, posterior_variance(phi_train, phi_cand, 0.5))


def test_input_validation():
    phi = np.ones((3, 4))
    with pytest.raises(ValueError, match="positive"):
        posterior_variance(phi, phi, 0.0)
    with pytest.raises(ValueError, match="columns"):
        posterior_variance(np.ones((3, 5)), phi, 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        posterior_variance(phi, np.full((2, 4), np.nan), 1.0)
    with pytest.raises(ValueError, match="exclude"):
        greedy_posterior_variance(phi, phi, 1, 1.0, exclude=[3])


@pytest.mark.parametrize(("n_train", "lam"), [(0, 0.5), (4, 0.05), (20, 2.0)])
def test_greedy_equals_naive_recomputation(n_train, lam):
    rng = np.random.default_rng(7 + n_train)
    phi_train = rng.normal(size=(n_train, 6))
    phi_cand = rng.normal(size=(60, 6)) * rng.uniform(0.2, 2.0, size=(60, 1))
    exclude = [3, 17]
    indices, scores = greedy_posterior_variance(phi_train, phi_cand, 12, lam, exclude=exclude)
    naive_indices, naive_scores = _naive_greedy(phi_train, phi_cand, 12, lam, exclude)
    np.testing.assert_array_equal(indices, naive_indices)
    np.testing.assert_allclose(scores, naive_scores, rtol=1e-9)
    assert not set(indices) & set(exclude)
    assert len(set(indices)) == len(indices)


def test_scores_are_variance_at_pick_time():
    rng = np.random.default_rng(3)
    phi_train, phi_cand = rng.normal(size=(5, 4)), rng.normal(size=(30, 4))
    indices, scores = greedy_posterior_variance(phi_train, phi_cand, 6, 0.2)
    for step, (index, score) in enumerate(zip(indices, scores)):
        labelled = np.vstack([phi_train, phi_cand[indices[:step]]])
        assert score == pytest.approx(posterior_variance(labelled, phi_cand[[index]], 0.2)[0])
    assert scores[0] == pytest.approx(posterior_variance(phi_train, phi_cand, 0.2).max())


def test_picked_variance_drops_and_duplicates_are_not_picked_next():
    rng = np.random.default_rng(5)
    phi_cand = rng.normal(size=(20, 5))
    phi_cand[7] *= 3.0  # clearly the most uncertain
    phi_cand = np.vstack([phi_cand, phi_cand[7], phi_cand[7]])  # duplicates: 20, 21
    lam = 0.01
    before = posterior_variance(None, phi_cand, lam)
    indices, _ = greedy_posterior_variance(None, phi_cand, 3, lam)
    assert indices[0] == 7
    assert not {20, 21} & set(indices[:2])
    after = posterior_variance(phi_cand[[7]], phi_cand, lam)
    assert after[7] < 0.01 * before[7]
    assert after[20] == pytest.approx(after[7])


def test_ties_go_to_lowest_index_and_batch_larger_than_pool():
    phi_cand = np.tile(np.array([[1.0, 0.0]]), (4, 1))
    indices, _ = greedy_posterior_variance(None, phi_cand, 2, 1.0)
    np.testing.assert_array_equal(indices, [0, 1])
    indices, scores = greedy_posterior_variance(None, phi_cand, 10, 1.0, exclude=[0])
    np.testing.assert_array_equal(indices, [1, 2, 3])
    assert np.all(np.diff(scores) < 0)


def test_random_selection_reproducible_and_excludes():
    first = random_selection(100, 10, seed=42, exclude=range(50))
    again = random_selection(100, 10, seed=42, exclude=range(50))
    other = random_selection(100, 10, seed=43, exclude=range(50))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert len(set(first)) == 10
    assert first.min() >= 50
    assert sorted(random_selection(5, 10, seed=0, exclude=[2])) == [0, 1, 3, 4]


def _grouped(rng, counts, d, scale=1.0):
    counts = np.asarray(counts)
    return rng.normal(size=(int(counts.sum()), d)) * scale, counts


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_grouped_variance_equals_gp_kernel_formula(reduce):
    """λ r(diag Φ_x A⁻¹ Φ_xᵀ) is the GP posterior variance of each row, reduced."""
    rng = np.random.default_rng(11)
    phi_train = rng.normal(size=(9, 5))
    rows, counts = _grouped(rng, [1, 3, 6, 2], 5)
    lam = 0.3
    chol = precision_cholesky(phi_train, lam, 5)
    per_row = _gp_variance(phi_train, rows, lam)
    starts = np.concatenate([[0], np.cumsum(counts)])
    expected = [per_row[a:b].sum() for a, b in itertools.pairwise(starts)]
    if reduce == "mean":
        expected = np.array(expected) / counts
    np.testing.assert_allclose(
        grouped_variance_from_cholesky(chol, rows, counts, lam, reduce), expected, rtol=1e-9
    )


def test_grouped_functions_reduce_to_single_row_versions():
    rng = np.random.default_rng(12)
    phi_train, phi_cand = rng.normal(size=(6, 4)), rng.normal(size=(30, 4))
    chol = precision_cholesky(phi_train, 0.2, 4)
    ones = np.ones(30, dtype=int)
    np.testing.assert_allclose(
        grouped_variance_from_cholesky(chol, phi_cand, ones, 0.2),
        variance_from_cholesky(chol, phi_cand, 0.2),
    )


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_grouped_greedy_equals_naive_rank_k_recomputation(reduce):
    rng = np.random.default_rng(13)
    d, lam = 6, 0.1
    phi_train = rng.normal(size=(4, d))
    counts = rng.integers(1, 5, size=25)
    n_rows = int(counts.sum())
    rows = rng.normal(size=(n_rows, d)) * rng.uniform(0.3, 2.0, size=(n_rows, 1))
    starts = np.concatenate([[0], np.cumsum(counts)])
    indices, scores = greedy_grouped_posterior_variance(
        precision_cholesky(phi_train, lam, d), rows, counts, 7, lam, reduce, exclude=[0]
    )
    picked: list[int] = []
    for index, score in zip(indices, scores, strict=True):
        labelled = np.vstack([phi_train, *[rows[starts[p] : starts[p + 1]] for p in picked]])
        variance = grouped_variance_from_cholesky(
            precision_cholesky(labelled, lam, d), rows, counts, lam, reduce
        )
        variance[[0, *picked]] = -np.inf
        assert index == int(np.argmax(variance))
        assert score == pytest.approx(variance[index], rel=1e-9)
        picked.append(int(index))
    assert len(set(indices)) == 7


def test_grouped_input_validation():
    chol = precision_cholesky(None, 1.0, 3)
    with pytest.raises(ValueError, match="add up"):
        grouped_variance_from_cholesky(chol, np.ones((4, 3)), [1, 2], 1.0)
    with pytest.raises(ValueError, match="positive row counts"):
        grouped_variance_from_cholesky(chol, np.ones((4, 3)), [4, 0], 1.0)
    with pytest.raises(ValueError, match="reduce"):
        grouped_variance_from_cholesky(chol, np.ones((4, 3)), [4], 1.0, "max")
    with pytest.raises(ValueError, match="one row per structure"):
        kmeans_pp_selection(chol, np.ones((4, 3)), [2, 2], 1, seed=0)


@pytest.mark.parametrize(("embedding", "counts"), [("linear", [1] * 40), ("outer", [2, 3] * 20)])
def test_kmeans_pp_is_seeded_diverse_and_starts_at_max_variance(embedding, counts):
    rng = np.random.default_rng(14)
    rows, counts = _grouped(rng, counts, 5)
    chol = precision_cholesky(rng.normal(size=(3, 5)), 0.5, 5)
    first = kmeans_pp_selection(chol, rows, counts, 6, seed=1, embedding=embedding, exclude=[7])
    again = kmeans_pp_selection(chol, rows, counts, 6, seed=1, embedding=embedding, exclude=[7])
    np.testing.assert_array_equal(first, again)
    assert len(set(first)) == 6 and 7 not in first
    variance = grouped_variance_from_cholesky(chol, rows, counts, 0.5)
    variance[7] = -np.inf
    assert first[0] == np.argmax(variance)
    seeds = {
        tuple(kmeans_pp_selection(chol, rows, counts, 6, seed=s, embedding=embedding))
        for s in range(5)
    }
    assert len(seeds) > 1


def test_kmeans_pp_never_picks_a_duplicate_of_a_pick_while_others_remain():
    rng = np.random.default_rng(15)
    rows = rng.normal(size=(6, 3))
    rows = np.vstack([rows, rows[[0, 0, 0]]])  # 6, 7, 8 duplicate 0
    rows[0] *= 5.0  # the first pick
    rows[6:] = rows[0]
    chol = precision_cholesky(None, 1.0, 3)
    for seed in range(10):
        picks = kmeans_pp_selection(chol, rows, np.ones(9, dtype=int), 7, seed=seed)
        assert picks[0] == 0
        assert not {6, 7, 8} & set(picks[:6])

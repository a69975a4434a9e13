"""Posterior variance in feature space and batch selection.

Bayesian linear model on feature rows φ (prior weight variance 1, noise variance λ):
with the labelled rows stacked in Φ_L, ``A = Φ_Lᵀ Φ_L + λ I`` and a candidate's
posterior variance is ``σ²(x) = λ φ_x A⁻¹ φ_xᵀ``. This equals the GP posterior variance
``k(x,x) - k_xL (K_LL + λI)⁻¹ k_Lx`` with the kernel ``k = φ φᵀ`` (push-through identity),
but costs O(d³ + n d²) and never forms candidate-by-candidate or candidate-by-train kernels.

One feature row per structure (energy / activation kernel). Everything is float64.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np
from scipy.linalg import cholesky, solve_triangular

#: Scores within this relative distance of the maximum count as tied; ties go to the
#: lowest index, so picks do not depend on the last bits of BLAS rounding.
TIE_TOLERANCE = 1e-12


def _as_rows(phi: np.ndarray | None, name: str, d: int | None = None) -> np.ndarray:
    if phi is None and d is not None:
        return np.zeros((0, d))
    phi = np.asarray(phi, dtype=np.float64)
    if phi.size == 0 and d is not None:
        return phi.reshape(0, d)
    if phi.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of feature rows, got shape {phi.shape}")
    if d is not None and phi.shape[1] != d:
        raise ValueError(f"{name} has {phi.shape[1]} columns, expected {d}")
    if not np.all(np.isfinite(phi)):
        raise ValueError(f"{name} contains non-finite values")
    return phi


def _check_lam(lam: float) -> float:
    if not lam > 0:
        raise ValueError(f"lam (noise variance) must be positive, got {lam}")
    return float(lam)


def precision_cholesky(phi_train: np.ndarray, lam: float, d: int) -> np.ndarray:
    """
    Lower Cholesky factor L of ``A = Φ_Lᵀ Φ_L + λ I``.

    Parameters
    ----------
    phi_train
        Labelled feature rows (n_train, d); may be empty or None.
    lam
        Noise variance λ > 0.
    d
        Feature dimension.

    Returns
    -------
    np.ndarray
        L (d, d) with ``L Lᵀ = A``.
    """
    lam = _check_lam(lam)
    phi_train = _as_rows(phi_train, "phi_train", d)
    precision = phi_train.T @ phi_train
    precision[np.diag_indices(d)] += lam
    return cholesky(precision, lower=True)


def _whitened(chol: np.ndarray, phi_cand: np.ndarray) -> np.ndarray:
    """Columns z_x = L⁻¹ φ_xᵀ (d, n), so that φ_x A⁻¹ φ_xᵀ = ||z_x||²."""
    return solve_triangular(chol, phi_cand.T, lower=True, check_finite=False)


def variance_from_cholesky(chol: np.ndarray, phi_cand: np.ndarray, lam: float) -> np.ndarray:
    """
    Posterior variance of candidates given the Cholesky factor of A.

    Lets a caller factor A once and stream the pool through in chunks.

    Parameters
    ----------
    chol
        Lower Cholesky factor of A (see `precision_cholesky`).
    phi_cand
        Candidate feature rows (n, d).
    lam
        Noise variance λ (the same as in A).

    Returns
    -------
    np.ndarray
        σ² per candidate (n,).
    """
    lam = _check_lam(lam)
    phi_cand = _as_rows(phi_cand, "phi_cand", chol.shape[0])
    z = _whitened(chol, phi_cand)
    return lam * np.einsum("ij,ij->j", z, z)


def posterior_variance(phi_train: np.ndarray, phi_cand: np.ndarray, lam: float) -> np.ndarray:
    """
    Posterior variance ``σ²(x) = λ φ_x (Φ_Lᵀ Φ_L + λ I)⁻¹ φ_xᵀ`` of each candidate.

    Parameters
    ----------
    phi_train
        Labelled feature rows (n_train, d); may be empty (then σ² = ||φ_x||²).
    phi_cand
        Candidate feature rows (n, d).
    lam
        Noise variance λ > 0.

    Returns
    -------
    np.ndarray
        σ² per candidate (n,).
    """
    phi_cand = _as_rows(phi_cand, "phi_cand")
    chol = precision_cholesky(phi_train, lam, phi_cand.shape[1])
    return variance_from_cholesky(chol, phi_cand, lam)


def _available_mask(n_candidates: int, exclude: Iterable[int] | None) -> np.ndarray:
    available = np.ones(n_candidates, dtype=bool)
    if exclude is not None:
        excluded = np.asarray(list(exclude), dtype=np.int64)
        if excluded.size and (excluded.min() < 0 or excluded.max() >= n_candidates):
            raise ValueError(f"exclude holds indices outside 0..{n_candidates - 1}")
        available[excluded] = False
    return available


def _argmax_lowest_index(scores: np.ndarray, available: np.ndarray) -> int:
    masked = np.where(available, scores, -np.inf)
    best = masked.max()
    return int(np.flatnonzero(masked >= best - TIE_TOLERANCE * abs(best))[0])


def greedy_posterior_variance(
    phi_train: np.ndarray,
    phi_cand: np.ndarray,
    batch_size: int,
    lam: float,
    exclude: Iterable[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """
    Greedy batch selection by posterior variance (greedy max-determinant).

    Picks the candidate with the highest σ², adds its row to A as if it were labelled,
    rescores, and repeats. A candidate is picked at most once.

    With the candidates whitened once, ``z_x = L⁻¹ φ_xᵀ`` (``L Lᵀ = A``), the posterior
    covariance after k picks is ``λ k_k(x, y)`` with ``k_0(x, y) = z_x·z_y`` and, by
    Sherman–Morrison for the added row φ_s,
    ``k_k(x, y) = k_{k-1}(x, y) - c_k(x) c_k(y)``,
    ``c_k(x) = k_{k-1}(x, s) / √(1 + k_{k-1}(s, s))``, so
    ``σ²_k(x) = σ²_{k-1}(x) - λ c_k(x)²`` and
    ``k_{k-1}(x, s) = z_x·z_s - Σ_{j<k} c_j(x) c_j(s)``. A pick costs one pass over the
    whitened candidates, O(n d + n k); A is never inverted (a pivoted Cholesky of the
    posterior covariance).

    Parameters
    ----------
    phi_train
        Labelled feature rows (n_train, d); may be empty.
    phi_cand
        Candidate feature rows (n, d).
    batch_size
        Number of picks; fewer when fewer candidates are available.
    lam
        Noise variance λ > 0.
    exclude
        Candidate indices never to pick (e.g. test structures).

    Returns
    -------
    indices
        Picked candidate indices in the order picked (int64).
    scores
        σ² of each pick at the moment it was picked (given the labelled rows and the
        earlier picks).
    """
    if batch_size < 0:
        raise ValueError(f"batch_size must be non-negative, got {batch_size}")
    lam = _check_lam(lam)
    phi_cand = _as_rows(phi_cand, "phi_cand")
    available = _available_mask(phi_cand.shape[0], exclude)
    n_picks = min(batch_size, int(available.sum()))
    z = _whitened(precision_cholesky(phi_train, lam, phi_cand.shape[1]), phi_cand).T
    variances = lam * np.einsum("ij,ij->i", z, z)
    corrections = np.empty((phi_cand.shape[0], n_picks), order="F")
    indices = np.empty(n_picks, dtype=np.int64)
    scores = np.empty(n_picks, dtype=np.float64)
    for step in range(n_picks):
        pick = _argmax_lowest_index(variances, available)
        indices[step], scores[step] = pick, variances[pick]
        available[pick] = False
        covariance = z @ z[pick] - corrections[:, :step] @ corrections[pick, :step]
        corrections[:, step] = covariance / np.sqrt(1.0 + variances[pick] / lam)
        variances = np.maximum(variances - lam * corrections[:, step] ** 2, 0.0)
    return indices, scores


def random_selection(
    n_candidates: int, batch_size: int, seed: int, exclude: Iterable[int] | None = None
) -> np.ndarray:
    """
    Uniformly random batch without replacement (the baseline).

    Parameters
    ----------
    n_candidates
        Number of candidates.
    batch_size
        Number of picks; fewer when fewer candidates are available.
    seed
        Seed of ``numpy.random.default_rng``; the same seed gives the same picks.
    exclude
        Candidate indices never to pick.

    Returns
    -------
    np.ndarray
        Picked indices (int64), in the order drawn.
    """
    if batch_size < 0:
        raise ValueError(f"batch_size must be non-negative, got {batch_size}")
    available = np.flatnonzero(_available_mask(n_candidates, exclude))
    rng = np.random.default_rng(seed)
    size = min(batch_size, available.size)
    return rng.choice(available, size=size, replace=False).astype(np.int64)


# --- structures with several feature rows (force and energy-force NTK) -------------------
#
# A structure x owns k_x consecutive rows Φ_x (k_x x d) of a row array; ``counts`` holds
# k_x per structure, in order. Its posterior variance is the reduced trace
# ``σ²(x) = λ · r(diag(Φ_x A⁻¹ Φ_xᵀ))`` with r = mean (default) or sum over its rows.

REDUCTIONS = ("mean", "sum")


def _check_groups(rows: np.ndarray, counts: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    rows = _as_rows(rows, "rows", d)
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or (counts.size and counts.min() < 1):
        raise ValueError("counts must be a 1-D array of positive row counts per structure")
    if int(counts.sum()) != rows.shape[0]:
        raise ValueError(f"counts add up to {int(counts.sum())} rows, got {rows.shape[0]} rows")
    return rows, counts


def _check_reduce(reduce: str) -> str:
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    return reduce


def _reduce_rows(row_values: np.ndarray, counts: np.ndarray, reduce: str) -> np.ndarray:
    if counts.size == 0:
        return np.zeros(0)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sums = np.add.reduceat(row_values, starts)
    return sums / counts if reduce == "mean" else sums


def grouped_variance_from_cholesky(
    chol: np.ndarray, rows: np.ndarray, counts: np.ndarray, lam: float, reduce: str = "mean"
) -> np.ndarray:
    """
    Posterior variance of structures that own several feature rows each.

    ``σ²(x) = λ · r(diag(Φ_x A⁻¹ Φ_xᵀ))``, r the mean (or sum) over the structure's rows;
    with one row per structure this is `variance_from_cholesky`.

    Parameters
    ----------
    chol
        Lower Cholesky factor of A (see `precision_cholesky`).
    rows
        Feature rows of all structures, structure after structure (R, d).
    counts
        Rows per structure (n,), each at least 1, summing to R.
    lam
        Noise variance λ (the same as in A).
    reduce
        ``"mean"`` or ``"sum"`` over a structure's rows.

    Returns
    -------
    np.ndarray
        σ² per structure (n,).
    """
    lam = _check_lam(lam)
    reduce = _check_reduce(reduce)
    rows, counts = _check_groups(rows, counts, chol.shape[0])
    z = _whitened(chol, rows)
    return _reduce_rows(lam * np.einsum("ij,ij->j", z, z), counts, reduce)


def greedy_grouped_posterior_variance(
    chol: np.ndarray,
    rows: np.ndarray,
    counts: np.ndarray,
    batch_size: int,
    lam: float,
    reduce: str = "mean",
    exclude: Iterable[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """
    Greedy batch selection by posterior variance for structures with several rows.

    Picks the structure with the highest σ², adds all its k rows to A as if they were
    labelled (a rank-k update), rescores, and repeats. With whitened rows
    ``z_r = L⁻¹ φ_rᵀ`` and the row kernel ``C(r, r') = z_r·z_r'`` (the posterior
    covariance over λ), adding the rows ``s`` of a pick gives (Woodbury)
    ``C' = C - C[:, s] (I + C[s, s])⁻¹ C[s, :] = C - c cᵀ`` with
    ``c = C[:, s] R⁻ᵀ``, ``R Rᵀ = I + C[s, s]``; ``C[:, s]`` is recovered from the
    whitened rows and the stored corrections c of the earlier picks. A pick costs
    O(R k (d + K)) for R candidate rows and K rows picked so far; A is never inverted.
    With one row per structure this is `greedy_posterior_variance` (given L).

    Parameters
    ----------
    chol
        Lower Cholesky factor of A built from the labelled rows (`precision_cholesky`).
    rows
        Candidate feature rows, structure after structure (R, d).
    counts
        Rows per candidate structure (n,).
    batch_size
        Number of picks; fewer when fewer candidates are available.
    lam
        Noise variance λ > 0 (the same as in A).
    reduce
        ``"mean"`` or ``"sum"`` over a structure's rows.
    exclude
        Candidate (structure) indices never to pick.

    Returns
    -------
    indices
        Picked structure indices in the order picked (int64).
    scores
        σ² of each pick at the moment it was picked (given the labelled rows and the
        earlier picks).
    """
    if batch_size < 0:
        raise ValueError(f"batch_size must be non-negative, got {batch_size}")
    lam = _check_lam(lam)
    reduce = _check_reduce(reduce)
    rows, counts = _check_groups(rows, counts, chol.shape[0])
    available = _available_mask(counts.size, exclude)
    n_picks = min(batch_size, int(available.sum()))
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    z = _whitened(chol, rows).T
    row_variance = np.einsum("ij,ij->i", z, z)
    picked_rows = int(np.sort(counts[available])[::-1][:n_picks].sum()) if n_picks else 0
    corrections = np.empty((rows.shape[0], picked_rows), order="F")
    used = 0
    indices = np.empty(n_picks, dtype=np.int64)
    scores = np.empty(n_picks, dtype=np.float64)
    for step in range(n_picks):
        variances = lam * _reduce_rows(row_variance, counts, reduce)
        pick = _argmax_lowest_index(variances, available)
        indices[step], scores[step] = pick, variances[pick]
        available[pick] = False
        block = slice(starts[pick], starts[pick + 1])
        k = block.stop - block.start
        covariance = z @ z[block].T - corrections[:, :used] @ corrections[block, :used].T
        inner = covariance[block] + np.eye(k)
        factor = cholesky(0.5 * (inner + inner.T), lower=True)
        new = solve_triangular(factor, covariance.T, lower=True, check_finite=False).T
        corrections[:, used : used + k] = new
        used += k
        row_variance = np.maximum(row_variance - np.einsum("ij,ij->i", new, new), 0.0)
    return indices, scores


def kmeans_pp_selection(
    chol: np.ndarray,
    rows: np.ndarray,
    counts: np.ndarray,
    batch_size: int,
    seed: int,
    embedding: str = "linear",
    exclude: Iterable[int] | None = None,
) -> np.ndarray:
    """
    Distance-based diverse batch: k-means++ seeding in the whitened feature space.

    Distances are taken between whitened rows ``z = L⁻¹ φᵀ`` (the metric ``A⁻¹``), so
    directions the labelled rows already cover count little. The first pick is the
    structure of highest posterior variance (the farthest from the labelled set in this
    metric); each further pick is drawn with probability proportional to its squared
    distance to the nearest pick so far (D² sampling, ``numpy.random.default_rng(seed)``).

    Embeddings of a structure x with whitened rows ``Z_x`` (k_x x d):

    - ``"linear"`` (one row per structure): ``ψ(x) = z_x``, the plain feature space.
    - ``"outer"`` (any number of rows): ``ψ(x) = (1/k_x) Σ_r z_r z_rᵀ``, the mean outer
      product, which does not depend on the order of the rows (atoms) and whose trace is
      the mean-reduced σ²/λ. Inner products ``⟨ψ(x), ψ(y)⟩ = ||Z_x Z_yᵀ||²_F/(k_x k_y)``
      are computed without forming the d x d matrices.

    Parameters
    ----------
    chol
        Lower Cholesky factor of A built from the labelled rows.
    rows
        Candidate feature rows, structure after structure (R, d).
    counts
        Rows per candidate structure (n,).
    batch_size
        Number of picks; fewer when fewer candidates are available.
    seed
        Seed of the D² sampling.
    embedding
        ``"linear"`` or ``"outer"``.
    exclude
        Candidate indices never to pick.

    Returns
    -------
    np.ndarray
        Picked structure indices in the order picked (int64).
    """
    if batch_size < 0:
        raise ValueError(f"batch_size must be non-negative, got {batch_size}")
    if embedding not in ("linear", "outer"):
        raise ValueError(f"embedding must be 'linear' or 'outer', got {embedding!r}")
    rows, counts = _check_groups(rows, counts, chol.shape[0])
    if embedding == "linear" and np.any(counts != 1):
        raise ValueError("the 'linear' embedding needs one row per structure; use 'outer'")
    available = _available_mask(counts.size, exclude)
    n_picks = min(batch_size, int(available.sum()))
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    z = _whitened(chol, rows).T
    if embedding == "linear":
        self_kernel = np.einsum("ij,ij->i", z, z)
    else:
        self_kernel = np.array(
            [np.sum((z[a:b] @ z[a:b].T) ** 2) / (b - a) ** 2 for a, b in itertools.pairwise(starts)]
        )

    def kernel_to(center: int) -> np.ndarray:
        block = z[starts[center] : starts[center + 1]]
        if embedding == "linear":
            return z @ block[0]
        return _reduce_rows(np.sum((z @ block.T) ** 2, axis=1), counts, "mean") / len(block)

    rng = np.random.default_rng(seed)
    indices = np.empty(n_picks, dtype=np.int64)
    nearest = np.full(counts.size, np.inf)
    for step in range(n_picks):
        if step == 0:
            prior = _reduce_rows(np.einsum("ij,ij->i", z, z), counts, "mean")
            pick = _argmax_lowest_index(prior, available)
        else:
            weights = np.where(available, nearest, 0.0)
            total = weights.sum()
            if total > 0:
                pick = int(rng.choice(counts.size, p=weights / total))
            else:  # every remaining candidate coincides with a pick: take the lowest index
                pick = int(np.flatnonzero(available)[0])
        indices[step] = pick
        available[pick] = False
        distance = self_kernel + self_kernel[pick] - 2.0 * kernel_to(pick)
        nearest = np.minimum(nearest, np.maximum(distance, 0.0))
    return indices

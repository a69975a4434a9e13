"""Batch rules: how a batch is chosen from the shortlisted candidates' feature rows.

Every rule takes a `Shortlist` (the candidates' normalised rows, the factor of
``A = Φ_Lᵀ Φ_L + λ I``, the labelled rows and, for target-aware rules, the target
covariance) and returns the picked candidates in order. `RULES` is the registry; adding a
rule is one function plus one entry.

=================  =============================================================
rule               picks
=================  =============================================================
``greedy``         highest posterior variance σ², then adds the pick's rows to A
                   (rank-k update) and rescores: greedy max-determinant
``transductive``   largest reduction of the posterior variance over a target
                   distribution (`tangentlab.acquisition.transductive`)
``lcmd``           largest-cluster maximum-distance (bmdal_reg): the farthest
                   candidate of the cluster with the largest spread
``kmeans++``       D²-sampling in the whitened feature space
``top``            the highest σ² (no batch diversity)
=================  =============================================================
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from scipy.linalg import cholesky, solve_triangular

from tangentlab.acquisition.posterior import (
    _check_groups,
    _check_lam,
    _check_reduce,
    _reduce_rows,
    _whitened,
)
from tangentlab.acquisition.transductive import transductive_selection

#: Scores within this relative distance of the maximum count as tied; ties go to the
#: lowest index, so picks do not depend on the last bits of BLAS rounding.
TIE_TOLERANCE = 1e-12

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


def _structure_kernel(a_rows, a_counts, b_rows, b_counts) -> np.ndarray:
    """
    Kernel between structures (n_a, n_b): ``φ_a·φ_b`` for one row each, else the mean-outer-
    product embedding ``||Φ_a Φ_bᵀ||²_F / (k_a k_b)`` (independent of the atom order).
    """
    if np.all(a_counts == 1) and np.all(b_counts == 1):
        return a_rows @ b_rows.T
    squared = (a_rows @ b_rows.T) ** 2
    per_a = np.add.reduceat(squared, np.concatenate([[0], np.cumsum(a_counts)[:-1]]), axis=0)
    per_ab = np.add.reduceat(per_a, np.concatenate([[0], np.cumsum(b_counts)[:-1]]), axis=1)
    return per_ab / np.outer(a_counts, b_counts)


def _self_kernel(rows, counts) -> np.ndarray:
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    if np.all(counts == 1):
        return np.einsum("ij,ij->i", rows, rows)
    return np.array(
        [np.sum((rows[a:b] @ rows[a:b].T) ** 2) / (b - a) ** 2 for a, b in itertools.pairwise(starts)]
    )


def lcmd_selection(
    rows: np.ndarray,
    counts: np.ndarray,
    labelled_rows: np.ndarray,
    labelled_counts: np.ndarray,
    batch_size: int,
    exclude: Iterable[int] | None = None,
    chunk: int = 512,
) -> np.ndarray:
    """
    Largest-cluster maximum-distance batch (LCMD, Holzmüller et al., JMLR 2023; bmdal_reg).

    The labelled structures and the picks so far are cluster centres; every candidate
    belongs to its nearest centre. Each step takes the cluster whose members have the
    largest sum of squared distances to their centre, and picks its member farthest from
    the centre. Distances are those of the feature kernel (`_structure_kernel`).

    Parameters
    ----------
    rows, counts
        Candidate rows (R, d) and rows per candidate.
    labelled_rows, labelled_counts
        Rows of the labelled structures (the initial centres); may be empty.
    batch_size
        Number of picks.
    exclude
        Candidate indices never to pick.
    chunk
        Labelled structures compared at a time.

    Returns
    -------
    np.ndarray
        Picked candidate indices in the order picked (int64).
    """
    if batch_size < 0:
        raise ValueError(f"batch_size must be non-negative, got {batch_size}")
    counts = np.asarray(counts, dtype=np.int64)
    labelled_counts = np.asarray(labelled_counts, dtype=np.int64)
    available = _available_mask(counts.size, exclude)
    n_picks = min(batch_size, int(available.sum()))
    self_kernel = _self_kernel(rows, counts)
    nearest = np.full(counts.size, np.inf)
    owner = np.full(counts.size, -1, dtype=np.int64)  # centre: labelled j -> j, pick p -> n_L + p
    starts = np.concatenate([[0], np.cumsum(labelled_counts)]).astype(np.int64)
    labelled_self = _self_kernel(labelled_rows, labelled_counts) if labelled_counts.size else []
    for first in range(0, labelled_counts.size, chunk):
        last = min(first + chunk, labelled_counts.size)
        kernel = _structure_kernel(
            rows, counts, labelled_rows[starts[first] : starts[last]], labelled_counts[first:last]
        )
        distance = self_kernel[:, None] + labelled_self[None, first:last] - 2.0 * kernel
        best = np.argmin(distance, axis=1)
        closer = distance[np.arange(counts.size), best] < nearest
        nearest[closer] = distance[np.arange(counts.size), best][closer]
        owner[closer] = first + best[closer]
    cand_starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    indices = np.empty(n_picks, dtype=np.int64)
    for step in range(n_picks):
        spread = np.where(available, np.maximum(nearest, 0.0), 0.0)
        if not np.isfinite(spread).all():  # no centre yet: the largest self-kernel first
            pick = _argmax_lowest_index(self_kernel, available)
        else:
            sizes = np.bincount(owner + 1, weights=spread)
            largest = int(np.argmax(sizes)) - 1
            pick = _argmax_lowest_index(np.where(owner == largest, spread, -np.inf), available)
        indices[step] = pick
        available[pick] = False
        block = slice(cand_starts[pick], cand_starts[pick + 1])
        kernel = _structure_kernel(rows, counts, rows[block], counts[pick : pick + 1])[:, 0]
        distance = self_kernel + self_kernel[pick] - 2.0 * kernel
        closer = distance < nearest
        nearest[closer] = distance[closer]
        owner[closer] = labelled_counts.size + step
    return indices


@dataclass
class Shortlist:
    """
    What a batch rule sees: the shortlisted candidates and the state of the posterior.

    Attributes
    ----------
    chol
        Lower Cholesky factor of ``A = Φ_Lᵀ Φ_L + λ I``.
    rows, counts
        Normalised candidate rows (R, d) and rows per candidate.
    prior
        σ² of each candidate given the labelled set.
    regularization
        λ.
    reduce
        ``"mean"`` or ``"sum"`` over a structure's rows.
    labelled_rows, labelled_counts
        Normalised rows of the labelled structures.
    target
        C_T (d × d) of the target distribution, for target-aware rules.
    seed
        Seed of randomised rules.
    """

    chol: np.ndarray
    rows: np.ndarray
    counts: np.ndarray
    prior: np.ndarray
    regularization: float
    reduce: str
    labelled_rows: np.ndarray
    labelled_counts: np.ndarray
    target: np.ndarray | None = None
    seed: int = 0


def _greedy(s: Shortlist, batch_size: int):
    return greedy_grouped_posterior_variance(
        s.chol, s.rows, s.counts, batch_size, s.regularization, s.reduce
    )


def _transductive(s: Shortlist, batch_size: int):
    if s.target is None:
        raise ValueError("the transductive rule needs a target covariance")
    return transductive_selection(
        s.chol, s.target, s.rows, s.counts, batch_size, s.regularization
    )


def _kmeans_pp(s: Shortlist, batch_size: int):
    embedding = "linear" if np.all(s.counts == 1) else "outer"
    return kmeans_pp_selection(s.chol, s.rows, s.counts, batch_size, s.seed, embedding), None


def _lcmd(s: Shortlist, batch_size: int):
    return lcmd_selection(s.rows, s.counts, s.labelled_rows, s.labelled_counts, batch_size), None


def _top(s: Shortlist, batch_size: int):
    return np.lexsort((np.arange(s.prior.size), -s.prior))[:batch_size], None


@dataclass(frozen=True)
class Rule:
    """
    One batch rule of the registry.

    Attributes
    ----------
    name
        Registry name.
    select
        ``select(shortlist, batch_size) -> (indices, scores at pick time or None)``.
    needs_target
        The rule scores against a target distribution (C_T must be computed).
    """

    name: str
    select: Callable[[Shortlist, int], tuple[np.ndarray, np.ndarray | None]]
    needs_target: bool = False


RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule("greedy", _greedy),
        Rule("transductive", _transductive, needs_target=True),
        Rule("lcmd", _lcmd),
        Rule("kmeans++", _kmeans_pp),
        Rule("top", _top),
    )
}


def get_rule(name: str) -> Rule:
    """The registry entry of a batch rule; a ValueError lists the known ones."""
    if name not in RULES:
        raise ValueError(f"unknown batch rule {name!r}; choose from {sorted(RULES)}")
    return RULES[name]

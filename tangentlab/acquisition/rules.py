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

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from scipy.linalg import cholesky, solve_triangular

from tangentlab.acquisition.diversity import kmeans_pp_selection, lcmd_selection
from tangentlab.acquisition.posterior import (
    argmax_lowest_index,
    available_mask,
    check_noise_variance,
    check_reduction,
    check_row_groups,
    reduce_rows,
    whiten,
)
from tangentlab.acquisition.transductive import transductive_selection


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
    available = np.flatnonzero(available_mask(n_candidates, exclude))
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
    lam = check_noise_variance(lam)
    reduce = check_reduction(reduce)
    rows, counts = check_row_groups(rows, counts, chol.shape[0])
    available = available_mask(counts.size, exclude)
    n_picks = min(batch_size, int(available.sum()))
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    z = whiten(chol, rows).T
    row_variance = np.einsum("ij,ij->i", z, z)
    picked_rows = int(np.sort(counts[available])[::-1][:n_picks].sum()) if n_picks else 0
    corrections = np.empty((rows.shape[0], picked_rows), order="F")
    used = 0
    indices = np.empty(n_picks, dtype=np.int64)
    scores = np.empty(n_picks, dtype=np.float64)
    for step in range(n_picks):
        variances = lam * reduce_rows(row_variance, counts, reduce)
        pick = argmax_lowest_index(variances, available)
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

"""Distance-based batch rules: k-means++ seeding and LCMD (largest cluster, maximum distance).

Both spread a batch over the feature space instead of ranking by variance alone; LCMD is the
rule of bmdal_reg (Holzmüller et al., JMLR 2023) that did best there on regression benchmarks.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np

from tangentlab.acquisition.posterior import (
    argmax_lowest_index,
    available_mask,
    check_row_groups,
    reduce_rows,
    whiten,
)


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
    rows, counts = check_row_groups(rows, counts, chol.shape[0])
    if embedding == "linear" and np.any(counts != 1):
        raise ValueError("the 'linear' embedding needs one row per structure; use 'outer'")
    available = available_mask(counts.size, exclude)
    n_picks = min(batch_size, int(available.sum()))
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    z = whiten(chol, rows).T
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
        return reduce_rows(np.sum((z @ block.T) ** 2, axis=1), counts, "mean") / len(block)

    rng = np.random.default_rng(seed)
    indices = np.empty(n_picks, dtype=np.int64)
    nearest = np.full(counts.size, np.inf)
    for step in range(n_picks):
        if step == 0:
            prior = reduce_rows(np.einsum("ij,ij->i", z, z), counts, "mean")
            pick = argmax_lowest_index(prior, available)
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
    available = available_mask(counts.size, exclude)
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
            pick = argmax_lowest_index(self_kernel, available)
        else:
            sizes = np.bincount(owner + 1, weights=spread)
            largest = int(np.argmax(sizes)) - 1
            pick = argmax_lowest_index(np.where(owner == largest, spread, -np.inf), available)
        indices[step] = pick
        available[pick] = False
        block = slice(cand_starts[pick], cand_starts[pick + 1])
        kernel = _structure_kernel(rows, counts, rows[block], counts[pick : pick + 1])[:, 0]
        distance = self_kernel + self_kernel[pick] - 2.0 * kernel
        closer = distance < nearest
        nearest[closer] = distance[closer]
        owner[closer] = labelled_counts.size + step
    return indices

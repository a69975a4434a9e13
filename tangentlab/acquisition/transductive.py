"""Target-aware (transductive) selection: reduce the posterior variance where it matters.

Maximum-variance selection chases outliers: the structures the model knows least about are
often ones it never has to predict (on reactive data, AIMD frames with twice the pool's
mean maximum force). Transductive active learning (Hübotter et al., NeurIPS 2024, "VTL")
instead picks the candidate whose label most reduces the posterior variance over a
*target* distribution T: the pool itself (density-aware selection) or structures the
application needs (MD frames, a NEB guess).

In the Bayesian linear model of `tangentlab.acquisition.posterior` (weights ~ N(0, I),
noise variance λ, ``A = Φ_Lᵀ Φ_L + λ I``, posterior covariance ``λ A⁻¹``), observing the
k rows Φ_x of a candidate lowers the mean target variance by

``gain(x) = λ · tr(C_T A⁻¹ Φ_xᵀ (I_k + Φ_x A⁻¹ Φ_xᵀ)⁻¹ Φ_x A⁻¹)``,

which for one row is ``λ φ_xᵀ A⁻¹ C_T A⁻¹ φ_x / (1 + φ_xᵀ A⁻¹ φ_x)``. The target enters
only through ``C_T = mean_t Φ_tᵀ Φ_t / ||Φ_t||²_F`` (d × d, streamed), so neither a candidate × target nor a target × target kernel is ever
formed and memory is flat in both sizes. With whitened rows ``Z = L⁻¹ Φᵀ`` (``L Lᵀ = A``)
and ``M = L⁻¹ C_T L⁻ᵀ``: ``gain = λ tr((I + ZᵀZ)⁻¹ Zᵀ M Z)``.

**Every target structure counts once.** Each target structure's rows are scaled to unit
Frobenius norm before they enter C_T. Without this, a far-out target structure carries its
own huge prior variance ``||φ_t||²`` into the mean, and the rule again chases the outliers
(measured: one frame six units out along its own direction outweighed a cluster of thirty).
With it, the gain is the share of the target's *directions* a label explains, weighted by
how many target structures need them.

The greedy batch adds each pick's rows to A and rescores (the rank-k update is a new
Cholesky factor of the d × d matrix A; d is at most a few hundred).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy.linalg import cholesky, solve_triangular

from tangentlab.acquisition.posterior import (
    argmax_lowest_index,
    available_mask,
    check_noise_variance,
    check_row_groups,
)


class TargetCovariance:
    """
    Streamed second moment of unit-norm target structures, ``C_T = mean_t Φ_tᵀ Φ_t / ||Φ_t||²_F``.

    Parameters
    ----------
    dim
        Feature dimension d.
    """

    def __init__(self, dim: int) -> None:
        self.sum = np.zeros((dim, dim))
        self.count = 0

    def add(self, rows: np.ndarray, counts: np.ndarray) -> None:
        """
        Add target structures.

        Parameters
        ----------
        rows
            Their normalised rows (R, d), structure after structure.
        counts
            Rows per structure.
        """
        rows, counts = check_row_groups(rows, counts, self.sum.shape[0])
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        norms = np.add.reduceat(np.einsum("ij,ij->i", rows, rows), starts) if counts.size else counts
        weights = np.repeat(np.divide(1.0, norms, out=np.zeros(counts.size), where=norms > 0), counts)
        self.sum += (rows * weights[:, None]).T @ rows
        self.count += int(counts.size)

    @property
    def matrix(self) -> np.ndarray:
        """C_T (d × d)."""
        if self.count == 0:
            raise ValueError("the target holds no structure")
        return self.sum / self.count


def _whitened_target(chol: np.ndarray, target: np.ndarray) -> np.ndarray:
    """M = L⁻¹ C_T L⁻ᵀ."""
    half = solve_triangular(chol, target, lower=True, check_finite=False)
    whitened = solve_triangular(chol, half.T, lower=True, check_finite=False)
    return 0.5 * (whitened + whitened.T)


def _gains(z: np.ndarray, m: np.ndarray, counts: np.ndarray, lam: float) -> np.ndarray:
    """gain per structure from whitened rows z (R, d) and the whitened target M."""
    projected = z @ m
    if np.all(counts == 1):
        return lam * np.einsum("ij,ij->i", z, projected) / (1.0 + np.einsum("ij,ij->i", z, z))
    gains = np.empty(counts.size)
    start = 0
    for index, k in enumerate(counts):
        block, image = z[start : start + k], projected[start : start + k]
        inner = np.eye(k) + block @ block.T
        gains[index] = lam * np.trace(np.linalg.solve(inner, block @ image.T))
        start += k
    return gains


def transductive_gain(
    chol: np.ndarray, target: np.ndarray, rows: np.ndarray, counts: np.ndarray, lam: float
) -> np.ndarray:
    """
    Reduction of the mean target variance that labelling each structure alone would give.

    Parameters
    ----------
    chol
        Lower Cholesky factor of A.
    target
        C_T (d × d), see `TargetCovariance`.
    rows
        Candidate rows (R, d), structure after structure.
    counts
        Rows per candidate.
    lam
        Noise variance λ (the same as in A).

    Returns
    -------
    np.ndarray
        gain per candidate (n,), non-negative.
    """
    lam = check_noise_variance(lam)
    rows, counts = check_row_groups(rows, counts, chol.shape[0])
    z = solve_triangular(chol, rows.T, lower=True, check_finite=False).T
    return np.maximum(_gains(z, _whitened_target(chol, target), counts, lam), 0.0)


def transductive_selection(
    chol: np.ndarray,
    target: np.ndarray,
    rows: np.ndarray,
    counts: np.ndarray,
    batch_size: int,
    lam: float,
    exclude: Iterable[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """
    Greedy batch that most reduces the mean posterior variance over the target.

    Parameters
    ----------
    chol
        Lower Cholesky factor of A built from the labelled rows.
    target
        C_T (d × d).
    rows
        Candidate rows (R, d), structure after structure.
    counts
        Rows per candidate.
    batch_size
        Number of picks; fewer when fewer candidates are available.
    lam
        Noise variance λ.
    exclude
        Candidate indices never to pick.

    Returns
    -------
    indices
        Picked candidates in the order picked (int64).
    gains
        Each pick's gain at the moment it was picked (given the labelled rows and the
        earlier picks).
    """
    if batch_size < 0:
        raise ValueError(f"batch_size must be non-negative, got {batch_size}")
    lam = check_noise_variance(lam)
    rows, counts = check_row_groups(rows, counts, chol.shape[0])
    available = available_mask(counts.size, exclude)
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    precision = chol @ chol.T
    n_picks = min(batch_size, int(available.sum()))
    indices = np.empty(n_picks, dtype=np.int64)
    gains = np.empty(n_picks)
    for step in range(n_picks):
        factor = chol if step == 0 else cholesky(precision, lower=True)
        z = solve_triangular(factor, rows.T, lower=True, check_finite=False).T
        scores = _gains(z, _whitened_target(factor, target), counts, lam)
        pick = argmax_lowest_index(scores, available)
        indices[step], gains[step] = pick, max(float(scores[pick]), 0.0)
        available[pick] = False
        block = rows[starts[pick] : starts[pick + 1]]
        precision = precision + block.T @ block
    return indices, gains

"""Posterior variance in feature space: σ² of structures given the labelled rows.

Bayesian linear model on feature rows φ (prior weight variance 1, noise variance λ):
with the labelled rows stacked in Φ_L, ``A = Φ_Lᵀ Φ_L + λ I`` and a candidate's
posterior variance is ``σ²(x) = λ φ_x A⁻¹ φ_xᵀ``. This equals the GP posterior variance
``k(x,x) - k_xL (K_LL + λI)⁻¹ k_Lx`` with the kernel ``k = φ φᵀ`` (push-through identity),
but costs O(d³ + n d²) and never forms candidate-by-candidate or candidate-by-train kernels.

A structure may own several rows (force NTK: 3N); its σ² is then the mean (or sum) over
its rows. Everything is float64. `PosteriorScorer` ties a feature map, its row
normalisation and the factor of A together (`tangentlab.acquisition.scorer`). The checks and
the tie-breaking argmax at the end are shared by the greedy rules (`rules`, `diversity`,
`transductive`).
"""

from __future__ import annotations

from collections.abc import Iterable

import mace  # noqa: F401  (mace must be imported before e3nn)
import numpy as np
from scipy.linalg import cholesky, solve_triangular


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


def check_noise_variance(lam: float) -> float:
    """λ as a float; a ValueError unless it is positive."""
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
    lam = check_noise_variance(lam)
    phi_train = _as_rows(phi_train, "phi_train", d)
    precision = phi_train.T @ phi_train
    precision[np.diag_indices(d)] += lam
    return cholesky(precision, lower=True)


def whiten(chol: np.ndarray, phi_cand: np.ndarray) -> np.ndarray:
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
    lam = check_noise_variance(lam)
    phi_cand = _as_rows(phi_cand, "phi_cand", chol.shape[0])
    z = whiten(chol, phi_cand)
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


# --- structures with several feature rows (force and energy-force NTK) -------------------
#
# A structure x owns k_x consecutive rows Φ_x (k_x x d) of a row array; ``counts`` holds
# k_x per structure, in order. Its posterior variance is the reduced trace
# ``σ²(x) = λ · r(diag(Φ_x A⁻¹ Φ_xᵀ))`` with r = mean (default) or sum over its rows.

REDUCTIONS = ("mean", "sum")


def check_row_groups(rows: np.ndarray, counts: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows (R, d) as float64 and ``counts`` (rows per structure, summing to R) as int64;
    a ValueError when they do not fit together."""
    rows = _as_rows(rows, "rows", d)
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or (counts.size and counts.min() < 1):
        raise ValueError("counts must be a 1-D array of positive row counts per structure")
    if int(counts.sum()) != rows.shape[0]:
        raise ValueError(f"counts add up to {int(counts.sum())} rows, got {rows.shape[0]} rows")
    return rows, counts


def check_reduction(reduce: str) -> str:
    """``reduce`` if it is one of `REDUCTIONS`, else a ValueError."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    return reduce


def reduce_rows(row_values: np.ndarray, counts: np.ndarray, reduce: str) -> np.ndarray:
    """Per structure, the mean (or sum) of its consecutive ``counts`` row values."""
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
    lam = check_noise_variance(lam)
    reduce = check_reduction(reduce)
    rows, counts = check_row_groups(rows, counts, chol.shape[0])
    z = whiten(chol, rows)
    return reduce_rows(lam * np.einsum("ij,ij->j", z, z), counts, reduce)


#: Scores within this relative distance of the maximum count as tied; ties go to the
#: lowest index, so picks do not depend on the last bits of BLAS rounding.
TIE_TOLERANCE = 1e-12


def available_mask(n_candidates: int, exclude: Iterable[int] | None) -> np.ndarray:
    """A boolean mask of the candidates not in ``exclude`` (indices checked against the range)."""
    available = np.ones(n_candidates, dtype=bool)
    if exclude is not None:
        excluded = np.asarray(list(exclude), dtype=np.int64)
        if excluded.size and (excluded.min() < 0 or excluded.max() >= n_candidates):
            raise ValueError(f"exclude holds indices outside 0..{n_candidates - 1}")
        available[excluded] = False
    return available


def argmax_lowest_index(scores: np.ndarray, available: np.ndarray) -> int:
    """The best available candidate; scores within `TIE_TOLERANCE` of the best count as tied
    and the lowest index wins."""
    masked = np.where(available, scores, -np.inf)
    best = masked.max()
    return int(np.flatnonzero(masked >= best - TIE_TOLERANCE * abs(best))[0])

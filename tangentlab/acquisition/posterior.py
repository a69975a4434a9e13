"""Posterior variance in feature space: σ² of structures given the labelled rows.

Bayesian linear model on feature rows φ (prior weight variance 1, noise variance λ):
with the labelled rows stacked in Φ_L, ``A = Φ_Lᵀ Φ_L + λ I`` and a candidate's
posterior variance is ``σ²(x) = λ φ_x A⁻¹ φ_xᵀ``. This equals the GP posterior variance
``k(x,x) - k_xL (K_LL + λI)⁻¹ k_Lx`` with the kernel ``k = φ φᵀ`` (push-through identity),
but costs O(d³ + n d²) and never forms candidate-by-candidate or candidate-by-train kernels.

A structure may own several rows (force NTK: 3N); its σ² is then the mean (or sum) over
its rows. Everything is float64. `PosteriorScorer` ties a feature map, its row
normalisation and the factor of A together; `fit_scorer` builds one.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import mace  # noqa: F401  (mace must be imported before e3nn)
import numpy as np
import torch
from ase import Atoms
from scipy.linalg import cholesky, solve_triangular

from tangentlab.acquisition.activations import Standardizer
from tangentlab.acquisition.signals import Featurizer, Rows, get_signal, make_featurizer


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


@dataclass(frozen=True)
class RowScaling:
    """
    Affine normalisation of feature rows: ``(rows - mean) / scale``.

    Attributes
    ----------
    mean
        Column centre (zeros for NTK rows, which are not centred).
    scale
        Column divisor.
    """

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, rows: np.ndarray, standardize: bool) -> RowScaling:
        """
        Fit on reference rows so that their mean squared norm becomes 1.

        Parameters
        ----------
        rows
            Reference rows (n, d), n >= 1.
        standardize
            Centre and scale each column first (`tangentlab.features.Standardizer`).

        Returns
        -------
        RowScaling
            The fitted scaling.
        """
        rows = np.asarray(rows, dtype=np.float64)
        if standardize:
            fitted = Standardizer.fit(rows)
            mean, scale = fitted.mean, fitted.std
        else:
            mean, scale = np.zeros(rows.shape[1]), np.ones(rows.shape[1])
        norm = float(np.sqrt(np.mean(np.sum(((rows - mean) / scale) ** 2, axis=1))))
        return cls(mean=mean, scale=scale * (norm if norm > 0 else 1.0))

    def apply(self, rows: np.ndarray) -> np.ndarray:
        """
        Normalise rows.

        Parameters
        ----------
        rows
            Raw rows (n, d).

        Returns
        -------
        np.ndarray
            Normalised rows.
        """
        return (np.asarray(rows, dtype=np.float64) - self.mean) / self.scale


@dataclass
class PosteriorScorer:
    """
    A fitted feature map with the Cholesky factor of A: scores any structures.

    Build with `fit_scorer`. The same scorer gives the pool scores in `select_batch` and
    the sigma of validation structures for `calibrate_uncertainty`.

    Attributes
    ----------
    signal
        The signal's name.
    featurizer
        Raw feature map ``atoms_list -> (rows, counts)``.
    scaling
        Row normalisation.
    chol
        Lower Cholesky factor of ``A = Φ_Lᵀ Φ_L + λ I`` (normalised labelled rows).
    regularization
        λ.
    reduce
        ``"mean"`` or ``"sum"`` over a structure's rows.
    n_labelled
        Number of labelled structures in A.
    labelled_rows
        Their normalised rows (for rules that measure distances to them).
    labelled_counts
        Rows per labelled structure.
    """

    signal: str
    featurizer: Featurizer
    scaling: RowScaling
    chol: np.ndarray
    regularization: float
    reduce: str
    n_labelled: int
    labelled_rows: np.ndarray
    labelled_counts: np.ndarray

    @property
    def feature_dim(self) -> int:
        """Feature dimension d."""
        return int(self.chol.shape[0])

    def rows(self, atoms_list: Sequence[Atoms]) -> Rows:
        """
        Normalised feature rows of structures.

        Parameters
        ----------
        atoms_list
            Structures.

        Returns
        -------
        rows
            (R, d) normalised rows, structure after structure.
        counts
            Rows per structure.
        """
        rows, counts = self.featurizer(atoms_list)
        return self.scaling.apply(rows), counts

    def variance_of_rows(self, rows: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """
        σ² of structures from their normalised rows.

        Parameters
        ----------
        rows
            Normalised rows (R, d).
        counts
            Rows per structure.

        Returns
        -------
        np.ndarray
            σ² per structure.
        """
        return grouped_variance_from_cholesky(
            self.chol, rows, counts, self.regularization, self.reduce
        )

    def variance(self, atoms_list: Sequence[Atoms], chunk_size: int = 256) -> np.ndarray:
        """
        Posterior variance σ² of structures given the labelled set.

        Parameters
        ----------
        atoms_list
            Structures.
        chunk_size
            Structures featurised at a time.

        Returns
        -------
        np.ndarray
            σ² per structure.
        """
        parts = [
            self.variance_of_rows(*self.rows(atoms_list[start : start + chunk_size]))
            for start in range(0, len(atoms_list), chunk_size)
        ]
        return np.concatenate(parts) if parts else np.zeros(0)


def featurize_in_chunks(
    featurizer: Featurizer, atoms_list: Sequence[Atoms], chunk_size: int
) -> Rows:
    rows, counts = [], []
    for start in range(0, len(atoms_list), chunk_size):
        chunk_rows, chunk_counts = featurizer(atoms_list[start : start + chunk_size])
        rows.append(chunk_rows)
        counts.append(chunk_counts)
    if not rows:
        return np.zeros((0, 0)), np.zeros(0, dtype=np.int64)
    return np.concatenate(rows), np.concatenate(counts)


def fit_scorer(
    model: torch.nn.Module,
    labelled_atoms: Sequence[Atoms],
    *,
    signal: str = "activation",
    reference_atoms: Sequence[Atoms] = (),
    regularization: float = 1e-2,
    reduce: str = "mean",
    chunk_size: int = 256,
    device: str | torch.device | None = None,
    **signal_kwargs,
) -> PosteriorScorer:
    """
    Fit the row normalisation and factor A on the labelled structures.

    Parameters
    ----------
    model
        A MACE model.
    labelled_atoms
        Structures whose labels the model is (or will be) trained on.
    signal
        Signal name (not ``random``).
    reference_atoms
        Extra unlabelled structures for the row normalisation (e.g. a pool sample).
    regularization
        λ, relative to the mean prior variance of the reference rows.
    reduce
        ``"mean"`` or ``"sum"`` over a structure's rows.
    chunk_size
        Structures featurised at a time.
    device
        Torch device for the features; the model's device when None (a copy of the
        model is moved when they differ).
    **signal_kwargs
        `make_featurizer` keywords.

    Returns
    -------
    PosteriorScorer
        The scorer.

    Raises
    ------
    ValueError
        If there is neither a labelled nor a reference structure to fit the
        normalisation on, or the signal is unknown.
    """
    signal = get_signal(signal).name
    if regularization <= 0:
        raise ValueError(f"regularization must be positive, got {regularization}")
    if len(labelled_atoms) + len(reference_atoms) == 0:
        raise ValueError("need labelled or reference structures to normalise the feature rows")
    featurizer = make_featurizer(on_device(model, device), signal, **signal_kwargs)
    labelled = featurize_in_chunks(featurizer, labelled_atoms, chunk_size)
    reference_rows, _ = featurize_in_chunks(featurizer, list(reference_atoms), chunk_size)
    return fit_rows(signal, featurizer, labelled, reference_rows, regularization, reduce)


def fit_rows(
    signal: str,
    featurizer: Featurizer,
    labelled: Rows,
    reference_rows: np.ndarray,
    regularization: float,
    reduce: str,
) -> PosteriorScorer:
    """Fit the scaling on labelled + reference raw rows and factor A on the labelled ones."""
    labelled_rows, labelled_counts = labelled
    if labelled_rows.size + reference_rows.size == 0:
        raise ValueError("need labelled or reference structures to normalise the feature rows")
    reference = np.concatenate([r for r in (labelled_rows, reference_rows) if r.size])
    scaling = RowScaling.fit(reference, standardize=get_signal(signal).standardize)
    d = reference.shape[1]
    normalised = scaling.apply(labelled_rows) if labelled_rows.size else np.zeros((0, d))
    precision = normalised.T @ normalised
    precision[np.diag_indices(d)] += regularization
    return PosteriorScorer(
        signal=signal,
        featurizer=featurizer,
        scaling=scaling,
        chol=cholesky(precision, lower=True),
        regularization=float(regularization),
        reduce=reduce,
        n_labelled=int(len(labelled_counts)),
        labelled_rows=normalised,
        labelled_counts=np.asarray(labelled_counts, dtype=np.int64),
    )


def on_device(model: torch.nn.Module, device: str | torch.device | None) -> torch.nn.Module:
    if device is None:
        return model
    current, wanted = next(model.parameters()).device, torch.device(device)
    if current.type == wanted.type and wanted.index in (None, current.index):
        return model
    return copy.deepcopy(model).to(wanted)

"""A fitted scorer: a signal's feature map, its row normalisation and the factor of A.

`fit_scorer` builds one from labelled (and unlabelled reference) structures; the same scorer
gives the pool scores in `tangentlab.acquisition.select_batch` and the σ of validation
structures for `tangentlab.acquisition.calibration`.

Every scorer follows the `Scorer` protocol: the signal's name and σ² of any structures. The
feature signals' scorer is `PosteriorScorer`; the committee baseline's is
`tangentlab.acquisition.committee.CommitteeScorer` (`fit_committee`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import mace  # noqa: F401  (mace must be imported before e3nn)
import numpy as np
import torch
from ase import Atoms
from scipy.linalg import cholesky

from tangentlab.acquisition.activations import Standardizer
from tangentlab.acquisition.posterior import grouped_variance_from_cholesky
from tangentlab.acquisition.signals import Featurizer, Rows, get_signal, make_featurizer


class Scorer(Protocol):
    """What acquisition and calibration ask of a fitted scorer."""

    signal: str

    def variance(self, atoms_list: Sequence[Atoms], chunk_size: int = 256) -> np.ndarray:
        """σ² per structure: a posterior variance, or a committee's squared disagreement."""
        ...


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
            Centre and scale each column first (`tangentlab.acquisition.activations.Standardizer`).

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

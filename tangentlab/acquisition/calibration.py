"""Residual uncertainty: σ scaled on labelled validation data is a predicted error.

`calibrate_uncertainty` fits the scale, `uncertainty_quality` says how well σ ranks and
calibrates real errors, `spearman` is the one rank correlation the product uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import spearmanr


def spearman(predicted: Sequence[float], actual: Sequence[float]) -> float:
    """
    Spearman rank correlation; NaN for fewer than two finite pairs or a constant input.
    """
    predicted = np.asarray(predicted, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    finite = np.isfinite(predicted) & np.isfinite(actual)
    if finite.sum() < 2 or np.ptp(predicted[finite]) == 0 or np.ptp(actual[finite]) == 0:
        return float("nan")
    return float(spearmanr(predicted[finite], actual[finite]).statistic)


def calibrate_uncertainty(sigma_valid: np.ndarray, errors_valid: np.ndarray) -> float:
    """
    Scale that turns sigma into a predicted error: ``predicted = scale * sigma``.

    Maximum likelihood for errors ``e ~ N(0, (scale * sigma)**2)``:
    ``scale = sqrt(mean(e**2 / sigma**2))`` over validation structures with sigma > 0. Use the same
    kind of error the prediction should stand for (e.g. per-atom energy error in eV/atom,
    or a structure's force RMSE in eV/Å).

    Parameters
    ----------
    sigma_valid
        Posterior standard deviations sigma (square roots of `PosteriorScorer.variance`) of labelled
        validation structures.
    errors_valid
        The current model's errors on them (signed or absolute).

    Returns
    -------
    float
        The scale.

    Raises
    ------
    ValueError
        If the arrays differ in length or no sigma is positive.
    """
    sigma = np.asarray(sigma_valid, dtype=np.float64)
    errors = np.asarray(errors_valid, dtype=np.float64)
    if sigma.shape != errors.shape:
        raise ValueError(f"sigma has shape {sigma.shape}, errors {errors.shape}")
    usable = np.isfinite(sigma) & np.isfinite(errors) & (sigma > 0)
    if not usable.any():
        raise ValueError("need at least one validation structure with a positive, finite sigma")
    return float(np.sqrt(np.mean((errors[usable] / sigma[usable]) ** 2)))


def uncertainty_quality(
    sigma: np.ndarray, errors: np.ndarray, scale: float | None = None
) -> dict[str, float]:
    """
    How well sigma ranks and calibrates real errors.

    Parameters
    ----------
    sigma
        Posterior standard deviations.
    errors
        Real errors of the same structures.
    scale
        Calibration scale (fitted here with `calibrate_uncertainty` when None; then the
        numbers are in-sample).

    Returns
    -------
    dict
        ``spearman`` (rank correlation of sigma and |error|), ``scale``,
        ``coverage_1sigma`` (fraction with |error| <= scale * sigma; 0.683 when calibrated and
        Gaussian), ``rms_ratio`` (RMS error over RMS predicted error; 1 when calibrated).
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    magnitude = np.abs(np.asarray(errors, dtype=np.float64))
    scale = calibrate_uncertainty(sigma, magnitude) if scale is None else float(scale)
    predicted = scale * sigma
    rank = spearman(sigma, magnitude)
    return {
        "spearman": float(rank),
        "scale": scale,
        "coverage_1sigma": float(np.mean(magnitude <= predicted)),
        "rms_ratio": float(np.sqrt(np.mean(magnitude**2)) / np.sqrt(np.mean(predicted**2))),
    }

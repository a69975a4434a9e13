"""Prediction-powered intervals of an MAE (``targets.interval: ppi``, docs/confidence.md).

A test set of a few dozen structures can miss the rare, far-off structures that carry much of
a reactive pool's force error; the bootstrap over the test set cannot see what the test set
lacks. Every pool structure has a predicted error (the calibrated σ of the acquisition's
scorer). `ppi_interval` uses them (prediction-powered inference, Angelopoulos et al. 2023, with
PPI++'s tuned λ): the predicted MAE over the target structures, corrected by how far the
prediction is off on the labelled test structures. `predicted_error_intervals` calibrates σ into
predicted energy and force errors on the validation labels and returns both intervals.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tangentlab.confidence import DEFAULT_LEVEL, MIN_STRUCTURES, RESAMPLES, SEED

#: ``targets.interval`` values that are prediction-powered, and the :func:`ppi_interval` method
#: each uses: ``ppi`` the bootstrap-t, ``ppi-t`` a Student t interval, ``ppi-pool`` the
#: bootstrap-t of test sets drawn from the targets (all with the σ-scaled variance;
#: docs/confidence.md).
PPI_METHODS = {"ppi": "studentized", "ppi-t": "normal", "ppi-pool": "pool"}


def _ppi_parts(sums, weights, predicted, target_mae, target_square, scaled_variance=True):
    """Along the last axis: the prediction-powered estimate of the MAE of a target set, its
    λ and the variance of its linearised residuals (see :func:`ppi_interval`)."""
    n = sums.shape[-1]
    mean_weight = weights.mean(axis=-1, keepdims=True)
    ratio, guess = (np.sum(x, axis=-1) / np.sum(weights, axis=-1) for x in (sums, predicted))
    # Influence values of the two ratios (delta method): the measured and the predicted MAE.
    measured = (sums - ratio[..., None] * weights) / mean_weight
    foreseen = (predicted - guess[..., None] * weights) / mean_weight
    spread = np.sum(foreseen**2, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = np.where(spread > 0, np.sum(measured * foreseen, axis=-1) / spread, 0.0)
        lam = np.clip(lam, 0.0, 1.0)
        estimate = ratio + lam * (target_mae - guess)
        residual = measured - lam[..., None] * foreseen
        plain = np.sum(residual**2, axis=-1) / (n - 1)
        # The residuals grow with the predicted error: their mean square per squared predicted
        # error, times the targets' mean squared predicted error, is the variance a test set
        # holding the targets' share of large predicted errors would show.
        scaled = (predicted / mean_weight) ** 2
        per_square = np.sum(residual**2, axis=-1) / np.sum(scaled, axis=-1)
        modelled = np.where(np.isfinite(per_square), per_square, 0.0) * target_square * n / (n - 1)
    return estimate, lam, np.maximum(plain, modelled) if scaled_variance else plain


def _pool_pivots(sums, guess, target, target_weights, target_mae, target_square, scaled, resamples,
                 rng):
    """Bootstrap-t pivots of test sets drawn from the targets (``method="pool"``).

    The test set's measured-to-predicted ratios ``sums / guess`` are taken as independent of
    the predicted error (the σ-scaled variance assumes the same). In a synthetic world each
    target's measured sum is its predicted sum times a ratio drawn from them, so its MAE is
    the mean ratio times the targets' predicted MAE. Each resample draws a test set of the same
    size from the targets (their predicted sums and counts) and its ratios, and studentizes the
    estimate against that MAE. Empty where no test structure has a positive predicted error.
    """
    usable = guess > 0
    ratios = sums[usable] / guess[usable]
    n = sums.size
    if ratios.size == 0:
        return ratios
    picks = rng.integers(0, target.size, size=(resamples, n))
    predicted, weights = target[picks], target_weights[picks]
    measured = predicted * ratios[rng.integers(0, ratios.size, size=(resamples, n))]
    truth = float(ratios.mean()) * target_mae
    again, _, spreads = _ppi_parts(measured, weights, predicted, target_mae, target_square, scaled)
    keep = (spreads > 0) & (weights.sum(axis=-1) > 0)
    return (again[keep] - truth) / np.sqrt(spreads[keep] / n)


def ppi_interval(
    abs_sums: Sequence[float],
    predicted: Sequence[float],
    predicted_target: Sequence[float],
    counts: Sequence[float] | None = None,
    counts_target: Sequence[float] | None = None,
    *,
    level: float = DEFAULT_LEVEL,
    method: str = "studentized",
    variance: str = "scaled",
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> dict[str, float | int | tuple[float, float]] | None:
    """
    Prediction-powered interval (PPI++, Angelopoulos et al. 2023) of the MAE over a target set.

    The estimand is the model's MAE over the *target* structures (the pool or target set:
    unlabelled, with a predicted error each, e.g. the calibrated σ). Test structures drawn
    from the same structures measure how far the prediction is off:
    ``estimate = λ · predicted MAE(targets) + [measured − λ · predicted MAE](test)``, λ in
    [0, 1] chosen on the test set to make the variance smallest (λ = 0: the test MAE). Each
    MAE is a ratio ``Σ sums / Σ counts``; the variance is the delta method's times
    ``1/n + 1/N`` (the targets are a finite sample of the same structures).

    ``variance="scaled"`` (the default) guards against a test set that lacks the rare, far-off
    structures: the residuals grow with the predicted error, so their variance is also
    estimated as (mean square residual per squared predicted error on the test set) × (mean
    squared predicted error of the targets), and the larger of that and the test set's own
    residual variance is used. ``"sample"`` is the textbook test-set variance.

    Parameters
    ----------
    abs_sums, counts
        Per test structure, the sum of its absolute errors and how many errors it holds, as in
        :func:`mae_interval`.
    predicted
        Per test structure, the predicted sum of absolute errors (predicted error × counts).
    predicted_target, counts_target
        The same for the target structures.
    level, resamples, seed
        As in :func:`tangentlab.confidence.mae_interval`.
    method
        ``"studentized"`` (bootstrap-t over test structures, λ tuned anew in each resample;
        the default, chosen on acac: docs/benchmarks/confidence.md), ``"normal"`` (Student t
        with n − 1 degrees of freedom) or ``"pool"`` (bootstrap-t whose resampled test sets
        are drawn from the *targets*: each drawn target's measured sum is its predicted sum
        times the measured-to-predicted ratio of a random test structure, so that the pivots
        see the targets' far-off structures that the test set lacks; :func:`_pool_pivots`).
    variance
        ``"scaled"`` or ``"sample"`` (above).

    Returns
    -------
    dict or None
        ``mae`` (the estimate), ``interval`` (``(low, high)``, the low end never below 0),
        ``lambda``, ``n``, ``n_target``; None for fewer than `MIN_STRUCTURES` test structures
        or no target.
    """
    sums, guess = (np.asarray(x, dtype=np.float64) for x in (abs_sums, predicted))
    weights = np.ones_like(sums) if counts is None else np.asarray(counts, dtype=np.float64)
    target = np.asarray(predicted_target, dtype=np.float64)
    target_weights = (
        np.ones_like(target) if counts_target is None else np.asarray(counts_target, np.float64)
    )
    if sums.ndim != 1 or not sums.shape == weights.shape == guess.shape:
        raise ValueError("need equally long 1-D sums, predictions and counts for the test set")
    if target.shape != target_weights.shape:
        raise ValueError("need as many target counts as target predictions")
    if method not in ("normal", "studentized", "pool") or variance not in ("scaled", "sample"):
        raise ValueError(f"unknown method {method!r} or variance {variance!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie between 0 and 1, got {level}")
    keep = weights > 0
    sums, weights, guess = sums[keep], weights[keep], guess[keep]
    if sums.size < MIN_STRUCTURES or target_weights.sum() <= 0:
        return None
    n, size = sums.size, int(target.size)
    target_mae = float(target.sum() / target_weights.sum())
    target_square = float(np.mean((target / target_weights.mean()) ** 2))
    scaled = variance == "scaled"
    estimate, lam, spread = _ppi_parts(sums, weights, guess, target_mae, target_square, scaled)
    se = float(np.sqrt(spread * (1 / n + 1 / size)))
    tail = (1 - level) / 2
    if se == 0:
        low = high = float(estimate)
    elif method == "normal":
        from scipy.stats import t

        half = float(t.ppf(1 - tail, n - 1)) * se
        low, high = float(estimate) - half, float(estimate) + half
    else:
        rng = np.random.default_rng(seed)
        if method == "pool":
            pivots = _pool_pivots(
                sums, guess, target, target_weights, target_mae, target_square, scaled, resamples,
                rng,
            )
        else:
            picks = rng.integers(0, n, size=(resamples, n))
            again, _, spreads = _ppi_parts(
                sums[picks], weights[picks], guess[picks], target_mae, target_square, scaled
            )
            usable = spreads > 0
            pivots = (again[usable] - estimate) / np.sqrt(spreads[usable] / n)
        if pivots.size:
            upper_pivot, lower_pivot = np.quantile(pivots, [1 - tail, tail])
        else:  # no resample to studentize (no test structure with a predicted error): Student t
            from scipy.stats import t

            upper_pivot = float(t.ppf(1 - tail, n - 1))
            lower_pivot = -upper_pivot
        low, high = float(estimate - upper_pivot * se), float(estimate - lower_pivot * se)
    return {
        "mae": float(estimate),
        "interval": (max(0.0, low), high),
        "lambda": float(lam),
        "n": int(n),
        "n_target": size,
    }


def predicted_error_intervals(
    test: dict[str, np.ndarray],
    valid: dict[str, np.ndarray],
    target: dict[str, np.ndarray],
    *,
    level: float = DEFAULT_LEVEL,
    method: str = "studentized",
) -> dict[str, dict] | None:
    """
    Prediction-powered intervals of the energy and force MAE over target structures.

    σ is calibrated into a predicted error on the validation structures, as
    :func:`tangentlab.confidence.predicted_mae` does (``scale = Σ errors / Σ σ · counts``: a
    ratio of sums, so that it predicts an MAE), separately for energies per atom and force
    components. λ absorbs a scale that is too large; one too small caps λ at 1. What counts
    most is that σ ranks the errors.

    Parameters
    ----------
    test, valid
        Labelled structures: ``sigma``, ``energy`` (absolute energy error per atom),
        ``force`` (sum of absolute force component errors) and ``counts`` (force components
        scored), one entry per structure.
    target
        ``sigma`` and ``counts`` of the structures whose MAE is estimated.
    level
        Coverage of the intervals.
    method
        :func:`ppi_interval`'s ``method`` (a value of `PPI_METHODS`).

    Returns
    -------
    dict or None
        ``energy`` and ``force``: the :func:`ppi_interval` results (None where it gives none);
        None with fewer than `MIN_STRUCTURES` usable validation structures or no target.
    """
    usable = (valid["sigma"] > 0) & np.isfinite(valid["sigma"]) & (valid["counts"] > 0)
    if usable.sum() < MIN_STRUCTURES or len(target["sigma"]) == 0:
        return None
    sigma = valid["sigma"][usable]
    energy_scale = valid["energy"][usable].sum() / sigma.sum()
    force_scale = valid["force"][usable].sum() / (sigma * valid["counts"][usable]).sum()
    return {
        "energy": ppi_interval(
            test["energy"], energy_scale * test["sigma"], energy_scale * target["sigma"],
            level=level, method=method,
        ),
        "force": ppi_interval(
            test["force"], force_scale * test["sigma"] * test["counts"],
            force_scale * target["sigma"] * target["counts"], test["counts"], target["counts"],
            level=level, method=method,
        ),
    }

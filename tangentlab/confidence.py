"""How sure a test-set error is: bootstrap intervals over structures.

A test-set MAE is an average over a few dozen structures; another draw of the test set would
give another number. `mae_interval` says how far: it resamples the *structures* (a structure's
force components are never split up, so correlated errors within a structure are not counted
as independent evidence) and returns the studentized bootstrap interval of the MAE at the
requested level. The seed is fixed, so the same errors give the
same interval on every run.

The interval covers the MAE the same model would have on the distribution the test set was
drawn from (the pool, or the ``test_file``'s source); it says nothing about structures outside
it, and with fewer than a handful of structures it is too narrow (see docs/confidence.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: The level of the intervals when the campaign states none (``targets.confidence: null``).
DEFAULT_LEVEL = 0.9
#: Bootstrap resamples of the test structures.
RESAMPLES = 2000
#: Seed of the resampling: a fixed one, so that intervals are reproducible.
SEED = 0
#: Fewest structures an interval is given for.
MIN_STRUCTURES = 2
#: The bootstrap intervals `mae_interval` computes.
METHODS = ("studentized", "percentile", "log-studentized", "bca")


def _ratio_and_se(sums: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ratio ``Σ sums / Σ weights`` along the last axis and its delta-method standard error."""
    n = sums.shape[-1]
    total = weights.sum(axis=-1)
    ratio = sums.sum(axis=-1) / total
    residuals = sums - ratio[..., None] * weights
    se = np.sqrt(n / (n - 1) * np.sum(residuals**2, axis=-1)) / total
    return ratio, se


def mae_interval(
    abs_sums: Sequence[float],
    counts: Sequence[float] | None = None,
    *,
    level: float = DEFAULT_LEVEL,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    method: str = "studentized",
) -> tuple[float, float] | None:
    """
    Bootstrap interval of a mean absolute error, resampling whole structures.

    The MAE is the ratio ``sum(abs_sums) / sum(counts)``: for energies per atom, ``abs_sums``
    are the structures' absolute errors per atom and ``counts`` ones; for forces, each
    structure's sum of absolute component errors and its number of components.

    The default interval is the studentized (bootstrap-t) one: errors are skewed (a few
    structures far off), and on skewed samples of 10-60 the plain percentile interval covers
    less than it states (about 84 % for a stated 90 % at 30 log-normal errors, against 88 %
    studentized).

    Parameters
    ----------
    abs_sums
        Per structure, the sum of its absolute errors.
    counts
        Per structure, how many errors that sum holds (None: one each).
    level
        Coverage of the interval (0.9: a 90 % interval, 5 % on each side).
    resamples
        Bootstrap resamples.
    seed
        Seed of the resampling.
    method
        ``"studentized"`` (bootstrap-t, the default), ``"percentile"``, ``"log-studentized"``
        (bootstrap-t of log(MAE), never below zero) or ``"bca"`` (bias-corrected and
        accelerated percentile). Measured against independent sets (docs/benchmarks/
        confidence.md), the default covers at least as often as the others.

    Returns
    -------
    tuple of float or None
        ``(low, high)`` in the unit of ``abs_sums / counts`` (the low end never below 0);
        None for fewer than `MIN_STRUCTURES` structures.
    """
    sums = np.asarray(abs_sums, dtype=np.float64)
    weights = np.ones_like(sums) if counts is None else np.asarray(counts, dtype=np.float64)
    if sums.ndim != 1 or sums.shape != weights.shape:
        raise ValueError(
            f"need equally long 1-D sums and counts, got {sums.shape} and {weights.shape}"
        )
    if not 0 < level < 1:
        raise ValueError(f"level must lie between 0 and 1, got {level}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    keep = weights > 0
    sums, weights = sums[keep], weights[keep]
    if sums.size < MIN_STRUCTURES:
        return None
    picks = np.random.default_rng(seed).integers(0, sums.size, size=(resamples, sums.size))
    replicates, replicate_se = _ratio_and_se(sums[picks], weights[picks])
    tail = (1 - level) / 2
    if method == "percentile":
        low, high = np.quantile(replicates, [tail, 1 - tail])
        return max(0.0, float(low)), float(high)
    estimate, se = _ratio_and_se(sums, weights)
    if se == 0:
        return float(estimate), float(estimate)
    if method == "bca":
        return _bca(sums, weights, estimate, replicates, tail)
    if method == "log-studentized":
        # The pivot of log(MAE): its standard error is se / MAE (delta method).
        usable = (replicate_se > 0) & (replicates > 0)
        pivots = (np.log(replicates[usable]) - np.log(estimate)) / (
            replicate_se[usable] / replicates[usable]
        )
        upper_pivot, lower_pivot = np.quantile(pivots, [1 - tail, tail])
        log_se = se / estimate
        return (
            float(estimate * np.exp(-upper_pivot * log_se)),
            float(estimate * np.exp(-lower_pivot * log_se)),
        )
    usable = replicate_se > 0
    pivots = (replicates[usable] - estimate) / replicate_se[usable]
    upper_pivot, lower_pivot = np.quantile(pivots, [1 - tail, tail])
    return max(0.0, float(estimate - upper_pivot * se)), float(estimate - lower_pivot * se)


def _bca(
    sums: np.ndarray, weights: np.ndarray, estimate: float, replicates: np.ndarray, tail: float
) -> tuple[float, float]:
    """Bias-corrected and accelerated percentile interval (Efron 1987) of the ratio
    ``Σ sums / Σ weights``; the acceleration from the jackknife over structures."""
    from statistics import NormalDist

    normal = NormalDist()
    below = np.mean(replicates < estimate) + 0.5 * np.mean(replicates == estimate)
    bias = normal.inv_cdf(float(np.clip(below, 1e-6, 1 - 1e-6)))
    jackknife = (sums.sum() - sums) / (weights.sum() - weights)
    spread = jackknife.mean() - jackknife
    denominator = 6 * np.sum(spread**2) ** 1.5
    acceleration = float(np.sum(spread**3) / denominator) if denominator > 0 else 0.0
    levels = []
    for z in (normal.inv_cdf(tail), normal.inv_cdf(1 - tail)):
        shifted = bias + (bias + z) / (1 - acceleration * (bias + z))
        levels.append(normal.cdf(shifted))
    low, high = np.quantile(replicates, levels)
    return max(0.0, float(low)), float(high)


def rounded(interval: tuple[float, float] | None, digits: int = 1) -> list[float] | None:
    """An interval as a JSON-ready ``[low, high]`` list, rounded (None stays None)."""
    return None if interval is None else [round(float(v), digits) for v in interval]


def interval_text(interval: Sequence[float] | None, spec: str = ".1f") -> str:
    """``[412.0, 447.3]``; empty for None (an error measured on too few structures)."""
    if interval is None:
        return ""
    low, high = interval
    return f"[{format(low, spec)}, {format(high, spec)}]"


def predicted_mae(
    sigma_valid: Sequence[float],
    errors_valid: Sequence[float],
    sigma_target: Sequence[float],
    *,
    weights_valid: Sequence[float] | None = None,
    weights_target: Sequence[float] | None = None,
    level: float = DEFAULT_LEVEL,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> dict[str, float | list[float] | int] | None:
    """
    The MAE a model should have on unlabelled structures, predicted from their σ.

    The residual calibration (`tangentlab.acquisition.calibration`) says a structure's error
    grows with its posterior σ. Here the proportion ``error ≈ scale · σ`` is fitted on labelled
    validation structures as a ratio of sums (``scale = Σ w e / Σ w σ``, weights = force
    components per structure, so that it predicts an MAE over components), and the predicted
    MAE of the targets is ``scale · Σ w σ / Σ w`` over them. Its interval resamples the
    validation structures: the targets' σ are known, the scale is what a few validation labels
    leave uncertain.

    Parameters
    ----------
    sigma_valid, errors_valid
        σ and per-structure error (e.g. force MAE, meV/Å) of labelled validation structures.
    sigma_target
        σ of the structures whose MAE is predicted (target set or pool).
    weights_valid, weights_target
        Per-structure weights (force components; None: equal).
    level, resamples, seed
        As in :func:`mae_interval` (here a percentile interval of the scale).

    Returns
    -------
    dict or None
        ``mae``, ``interval`` (``[low, high]``), ``scale``, ``n_valid``, ``n_target``; None with
        fewer than `MIN_STRUCTURES` usable validation structures or no target.
    """
    sigma_v = np.asarray(sigma_valid, dtype=np.float64)
    errors = np.asarray(errors_valid, dtype=np.float64)
    sigma_t = np.asarray(sigma_target, dtype=np.float64)
    w_v = (
        np.ones_like(sigma_v)
        if weights_valid is None
        else np.asarray(weights_valid, dtype=np.float64)
    )
    w_t = (
        np.ones_like(sigma_t)
        if weights_target is None
        else np.asarray(weights_target, dtype=np.float64)
    )
    if sigma_v.shape != errors.shape or sigma_v.shape != w_v.shape or sigma_t.shape != w_t.shape:
        raise ValueError("σ, errors and weights must have matching shapes")
    usable = np.isfinite(sigma_v) & np.isfinite(errors) & (sigma_v > 0) & (w_v > 0)
    sigma_v, errors, w_v = sigma_v[usable], np.abs(errors[usable]), w_v[usable]
    if sigma_v.size < MIN_STRUCTURES or sigma_t.size == 0 or w_t.sum() <= 0:
        return None
    target_sigma = float(np.sum(w_t * sigma_t) / np.sum(w_t))
    scale = float(np.sum(w_v * errors) / np.sum(w_v * sigma_v))
    picks = np.random.default_rng(seed).integers(0, sigma_v.size, size=(resamples, sigma_v.size))
    scales = np.sum((w_v * errors)[picks], axis=1) / np.sum((w_v * sigma_v)[picks], axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(scales * target_sigma, [tail, 1 - tail])
    return {
        "mae": scale * target_sigma,
        "interval": [float(low), float(high)],
        "scale": scale,
        "n_valid": int(sigma_v.size),
        "n_target": int(sigma_t.size),
    }


def planned_test_size(
    measured: Sequence[tuple[float, Sequence[float] | None, float]],
    size: int,
    max_size: int,
    step: int = 1,
    margin: float = 1.25,
) -> int:
    """
    How large the test set should be to decide whether targets are met.

    Targets are met when every interval's upper end is at or below its target, and missed for
    sure when some lower end is above it. In between, the test set grows only if growing can
    decide: the upper half-width of an interval shrinks as ``1/sqrt(size)``, so reaching the
    gap between the estimate and the target takes ``size · (half-width / gap)²`` structures.
    Returns ``size`` (no growth) when the errors are decided, when an undecided estimate lies
    at or above its target (more labels would most likely confirm a miss), or when even
    ``max_size`` structures would not decide; otherwise that size times ``margin``, rounded up
    to a multiple of ``step`` and at most ``max_size``. One planned jump instead of many small
    ones keeps the number of looks at the same errors, and so the chance of a lucky "met",
    small.

    Parameters
    ----------
    measured
        ``(estimate, interval, target)`` per error; an error without an interval is left out.
    size
        Labelled test structures now.
    max_size
        The largest the test set may become.
    step
        Test structures are added in multiples of this.
    margin
        Factor on the size the half-width rule asks for.
    """
    needed = size
    for estimate, interval, target in measured:
        if interval is None:
            continue
        low, high = interval
        if low > target:
            return size
        if high <= target:
            continue
        if estimate >= target:
            return size
        needed = max(needed, size * ((high - estimate) / (target - estimate)) ** 2)
    if needed <= size or needed > max_size:
        return size
    planned = int(np.ceil(margin * needed / step) * step)
    return int(min(max_size, max(planned, size + step)))


def stratified_pick(scores: Sequence[float], count: int, seed: int = SEED) -> list[int]:
    """
    ``count`` indices drawn so that every range of ``scores`` is represented.

    The candidates are sorted by score (e.g. the predicted error σ) and cut into ``count``
    equally large strata; one candidate is drawn at random from each. Every candidate has the
    same chance ``count / len(scores)`` to be drawn, so the test set stays a fair sample of the
    candidates (its MAE is unbiased), while the spread of the draw is smaller than a plain
    random draw's when the score says something about the error.

    Parameters
    ----------
    scores
        One score per candidate.
    count
        How many to draw (all candidates when there are fewer).
    seed
        Seed of the draw within strata.
    """
    values = np.asarray(scores, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    if count >= order.size:
        return sorted(int(i) for i in order)
    rng = np.random.default_rng(seed)
    edges = np.linspace(0, order.size, count + 1).round().astype(int)
    return sorted(int(order[rng.integers(lo, hi)]) for lo, hi in zip(edges[:-1], edges[1:]))


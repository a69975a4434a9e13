"""The acquisition engine: feature rows → posterior → chunked shortlist → batch rule.

The scorer (`tangentlab.acquisition.scorer.fit_scorer`; campaigns fit theirs with
`tangentlab.acquisition.policy.fit_policy_scorer`) normalises rows on a reference set (the
labelled structures plus the first pool structures) so that the mean squared row norm is 1 there
(activation and descriptor rows are first standardised column by column); the
regularisation λ is then a noise variance relative to the average prior variance, the
same for every signal. With the labelled rows Φ_L, ``A = Φ_Lᵀ Φ_L + λ I`` is factored
once; a structure's posterior variance is ``σ²(x) = λ · mean_r (Φ_x A⁻¹ Φ_xᵀ)_rr``.

`select_batch` streams the pool chunk by chunk, keeps the ``shortlist_size`` best-scored
structures (with their rows) in a bounded heap, and runs the batch rule on the shortlist.
The shortlist score is σ², or the transductive gain for target-aware rules. Those need the
target covariance C_T first: a survey pass streams the target (the pool itself by
default) before the scoring pass; the survey also gives the pool's σ² quantiles for the
outlier guard. Rows computed in the survey are kept for the scoring pass while they fit
in ``row_cache_mb``; beyond that they are recomputed. Memory is
O(d² + chunk·rows·d + shortlist·rows·d + row cache), independent of the pool size; time
is linear in it.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import mace  # noqa: F401  (mace must be imported before e3nn)
import numpy as np
from ase import Atoms

from tangentlab.acquisition.rules import Shortlist, get_rule
from tangentlab.acquisition.scorer import (
    PosteriorScorer,
    Rows,
)
from tangentlab.acquisition.transductive import TargetCovariance, transductive_gain

PoolSource = Sequence[Atoms] | Iterable[Atoms | Sequence[Atoms]] | Callable[[], Iterable]
#: Pool σ² values kept (a uniform reservoir sample) for the outlier guard's quantile.
SIGMA_SAMPLE = 20_000


def iter_structure_files(paths: Iterable[str | Path]) -> Iterator[Atoms]:
    """
    Structures of ASE-readable files, one at a time (for a pool too big for memory).

    Parameters
    ----------
    paths
        Files, read in order with ``ase.io.iread``.

    Yields
    ------
    ase.Atoms
        One structure.
    """
    import ase.io

    for path in paths:
        yield from ase.io.iread(str(path), index=":")


def iter_pool_chunks(pool_atoms: PoolSource, chunk_size: int) -> Iterator[list[Atoms]]:
    """
    The pool as consecutive chunks of ``chunk_size`` structures (the last may be shorter).

    Parameters
    ----------
    pool_atoms
        A sequence of structures; an iterable yielding structures or sequences of
        structures (``ase.io.iread(...)``, a database query, a generator); or a callable
        returning such an iterable.
    chunk_size
        Structures per chunk.

    Yields
    ------
    list[ase.Atoms]
        One chunk; the chunks do not depend on how the source groups its structures.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    source = pool_atoms() if callable(pool_atoms) else pool_atoms
    chunk: list[Atoms] = []
    for item in source:
        for atoms in [item] if isinstance(item, Atoms) else item:
            chunk.append(atoms)
            if len(chunk) == chunk_size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _take_chunks(
    chunks: Iterator[list[Atoms]], size: int
) -> tuple[list[list[Atoms]], Iterator[list[Atoms]]]:
    """The first chunks of the stream that hold at least ``size`` structures, and the rest."""
    taken: list[list[Atoms]] = []
    count = 0
    while count < size:
        chunk = next(chunks, None)
        if chunk is None:
            break
        taken.append(chunk)
        count += len(chunk)
    return taken, chunks


class _RowCache:
    """Normalised rows of the survey's chunks, kept while they fit in a byte budget."""

    def __init__(self, budget_bytes: float) -> None:
        self.budget = budget_bytes
        self.used = 0
        self.chunks: list[Rows | None] = []

    def add(self, rows: np.ndarray, counts: np.ndarray) -> None:
        if self.used + rows.nbytes <= self.budget:
            self.chunks.append((rows, counts))
            self.used += rows.nbytes
        else:
            self.chunks.append(None)

    def take(self, number: int) -> Rows | None:
        if number >= len(self.chunks):
            return None
        cached, self.chunks[number] = self.chunks[number], None
        return cached


def _survey(scorer, chunks, target_is_pool, cache, rng, timings):
    """Pass 1 over the pool: C_T (when the pool is the target) and a σ² sample."""
    target = TargetCovariance(scorer.feature_dim) if target_is_pool else None
    sample: list[float] = []
    seen = 0
    for chunk in chunks:
        tick = time.perf_counter()
        rows, counts = scorer.rows(chunk)
        timings["features_s"] += time.perf_counter() - tick
        tick = time.perf_counter()
        cache.add(rows, counts)
        if target is not None:
            target.add(rows, counts)
        for value in scorer.variance_of_rows(rows, counts):
            seen += 1
            if len(sample) < SIGMA_SAMPLE:
                sample.append(float(value))
            elif (slot := rng.integers(seen)) < SIGMA_SAMPLE:
                sample[slot] = float(value)
        timings["scoring_s"] += time.perf_counter() - tick
    return target, np.asarray(sample)


def _target_from_source(scorer, source, chunk_size, timings) -> TargetCovariance:
    target = TargetCovariance(scorer.feature_dim)
    for chunk in iter_pool_chunks(source, chunk_size):
        tick = time.perf_counter()
        target.add(*scorer.rows(chunk))
        timings["target_s"] = timings.get("target_s", 0.0) + time.perf_counter() - tick
    if target.count == 0:
        raise ValueError("the acquisition target holds no structure")
    return target


def select_batch(
    scorer: PosteriorScorer,
    pool_atoms: PoolSource,
    *,
    batch_size: int = 10,
    rule: str = "greedy",
    target: PoolSource | None = None,
    sigma_quantile: float | None = None,
    shortlist_size: int | None = None,
    exclude: Iterable[int] | None = None,
    seed: int = 0,
    chunk_size: int = 256,
    row_cache_mb: float = 512.0,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """
    Choose the next structures to label from a pool.

    Parameters
    ----------
    scorer
        The round's fitted `PosteriorScorer` (`fit_scorer`; campaigns:
        `tangentlab.acquisition.policy.fit_policy_scorer`): its signal, λ, row normalisation
        and labelled rows.
    pool_atoms
        Candidates: a sequence of structures, an iterable of structures or of chunks of
        structures, or a callable returning one (see `iter_pool_chunks`). Target-aware
        rules and the outlier guard read it twice: pass a sequence or a callable then.
    batch_size
        Number of structures to pick.
    rule
        A `tangentlab.acquisition.rules.RULES` name: ``greedy``, ``transductive``,
        ``lcmd``, ``kmeans++`` or ``top``.
    target
        For a target-aware rule (``transductive``): the structures (a sequence, an iterable
        or a callable, like ``pool_atoms``) the potential must serve; None: the pool
        (density-aware). Refused for the other rules, which have no target.
    sigma_quantile
        Outlier guard: candidates whose σ² lies above this quantile of the pool's σ²
        are never picked (the upper trust level of DP-GEN, applied to the kernel). None:
        no guard.
    shortlist_size
        Best-scored structures kept for the batch rule; None: max(10 * batch_size, 1000).
    exclude
        Pool indices never to pick.
    seed
        Seed of randomised rules and of the guard's σ² sample.
    chunk_size
        Pool structures featurised and scored at a time.
    row_cache_mb
        Rows of the survey pass kept for the scoring pass (MiB).

    Returns
    -------
    indices
        Picked pool indices (int64), in the order picked.
    scores
        σ² of each pick given the labelled set alone (the current model's uncertainty,
        for a predicted error ``scale · √σ²``).
    info
        JSON-serialisable: signal, rule, pool_size, feature_dim, n_labelled,
        shortlist_size, regularization, reduce, sigma_bound, guarded (candidates the
        guard removed), conditional_scores (each pick's σ² or gain at pick time, for
        ``greedy`` and ``transductive``), and timings (features_s, scoring_s,
        selection_s, total_s, and target_s for a separate target).
    """
    chosen_rule = get_rule(rule)
    if batch_size < 0:
        raise ValueError(f"batch_size must be non-negative, got {batch_size}")
    if sigma_quantile is not None and not 0 < sigma_quantile <= 1:
        raise ValueError(f"sigma_quantile must lie in (0, 1], got {sigma_quantile}")
    if isinstance(target, str):
        raise ValueError(f"target must be structures (None: the pool), got {target!r}")
    if target is not None and not chosen_rule.needs_target:
        raise ValueError(f"rule {chosen_rule.name!r} has no target: give target only to a target-aware rule")
    started = time.perf_counter()
    excluded = set() if exclude is None else {int(i) for i in exclude}
    timings = {"features_s": 0.0, "scoring_s": 0.0}
    chunks = iter_pool_chunks(pool_atoms, chunk_size)
    if shortlist_size is None:
        shortlist_size = max(10 * batch_size, 1000)
    shortlist_size = max(shortlist_size, batch_size)
    target_is_pool = chosen_rule.needs_target and target is None
    cache = _RowCache(row_cache_mb * 2**20)
    covariance, sigma_bound = None, None
    if target_is_pool or sigma_quantile is not None:
        covariance, sample = _survey(scorer, chunks, target_is_pool, cache, np.random.default_rng(seed), timings)
        if sigma_quantile is not None and sample.size:
            sigma_bound = float(np.quantile(sample, sigma_quantile))
        chunks = iter_pool_chunks(pool_atoms, chunk_size)
    if chosen_rule.needs_target and covariance is None:
        covariance = _target_from_source(scorer, target, chunk_size, timings)
    whitened_target = None if covariance is None else covariance.matrix

    heap: list[tuple[float, int, float, np.ndarray]] = []
    pool_size, guarded = 0, 0
    for number, chunk in enumerate(chunks):
        tick = time.perf_counter()
        cached = cache.take(number)
        rows, counts = cached if cached is not None else scorer.rows(chunk)
        tock = time.perf_counter()
        variances = scorer.variance_of_rows(rows, counts)
        keys = (
            transductive_gain(scorer.chol, whitened_target, rows, counts, scorer.regularization)
            if chosen_rule.needs_target else variances
        )
        starts = np.concatenate([[0], np.cumsum(counts)])
        for offset, (variance, key) in enumerate(zip(variances, keys)):
            index = pool_size + offset
            if index in excluded:
                continue
            if sigma_bound is not None and variance > sigma_bound:
                guarded += 1
                continue
            entry = (float(key), -index, float(variance), rows[starts[offset] : starts[offset + 1]].copy())
            if len(heap) < shortlist_size:
                heapq.heappush(heap, entry)
            elif entry[:2] > heap[0][:2]:
                heapq.heapreplace(heap, entry)
        pool_size += len(chunk)
        timings["features_s"] += tock - tick
        timings["scoring_s"] += time.perf_counter() - tock

    tick = time.perf_counter()
    entries = sorted(heap, key=lambda entry: -entry[1])  # by pool index
    pool_index = np.array([-entry[1] for entry in entries], dtype=np.int64)
    prior = np.array([entry[2] for entry in entries])
    counts = np.array([len(entry[3]) for entry in entries], dtype=np.int64)
    rows = np.concatenate([e[3] for e in entries]) if entries else np.zeros((0, scorer.feature_dim))
    shortlist = Shortlist(
        chol=scorer.chol, rows=rows, counts=counts, prior=prior,
        regularization=scorer.regularization, reduce=scorer.reduce,
        labelled_rows=scorer.labelled_rows, labelled_counts=scorer.labelled_counts,
        target=whitened_target, seed=seed,
    )
    local, conditional = chosen_rule.select(shortlist, batch_size)
    timings["selection_s"] = time.perf_counter() - tick
    timings["total_s"] = time.perf_counter() - started
    info = {
        "signal": scorer.signal,
        "rule": chosen_rule.name,
        "pool_size": pool_size,
        "feature_dim": scorer.feature_dim,
        "n_labelled": scorer.n_labelled,
        "shortlist_size": len(entries),
        "regularization": scorer.regularization,
        "reduce": scorer.reduce,
        "sigma_bound": sigma_bound,
        "guarded": guarded,
        "timings": timings,
    }
    if conditional is not None:
        info["conditional_scores"] = np.asarray(conditional, dtype=float).tolist()
    return pool_index[local], prior[local], info

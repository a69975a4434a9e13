"""One round's exploration: walkers from the seeds, σ for every sampled frame, candidates kept.

`explore` runs an engine of `tangentlab.exploration.engines.ENGINES` with a judge that gives
each sampled frame its σ (the acquisition scorer's) and stops a trajectory when σ passes the
upper bound or the frame is unphysical (`tangentlab.exploration.guards`). When a walker ends,
its candidates -- frames between the bounds, deduplicated, at most
``ceil(max_candidates / walkers)`` per walker, spread evenly over the trajectory -- go to
``on_trajectory`` at once, so the caller can store them before the next walker ends.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms

from tangentlab.exploration.engines import ENGINES, Frame, Trajectory, Walker
from tangentlab.exploration.guards import fragments as count_fragments
from tangentlab.exploration.guards import unphysical
from tangentlab.mace_model import model_cutoff
from tangentlab.structures import content_hash


@dataclass(frozen=True)
class Bounds:
    """σ bounds of a round: frames with ``lower ≤ σ ≤ upper`` are candidates; above ``upper`` a
    trajectory stops."""

    lower: float
    upper: float


def resolve_bounds(settings: Any, labelled_sigma: np.ndarray) -> Bounds:
    """
    The round's σ bounds from the settings (`tangentlab.config.Exploration`).

    Parameters
    ----------
    settings
        The exploration settings (``sigma_lower``, ``sigma_upper``).
    labelled_sigma
        σ of the campaign's labelled structures under the current scorer (for quantile bounds).

    Returns
    -------
    Bounds
        Absolute bounds; an upper bound not above the lower one raises ValueError.
    """
    def value(bound) -> float:
        if bound.value is not None:
            return float(bound.value)
        if len(labelled_sigma) == 0:
            raise ValueError("quantile σ bounds need labelled structures")
        return bound.factor * float(np.quantile(labelled_sigma, bound.quantile))

    bounds = Bounds(lower=value(settings.sigma_lower), upper=value(settings.sigma_upper))
    if not bounds.upper > bounds.lower:
        raise ValueError(f"exploration σ bounds are empty this round: lower {bounds.lower:.4g} ≥ upper "
                         f"{bounds.upper:.4g} ({settings.sigma_lower.describe()}, {settings.sigma_upper.describe()})")
    return bounds


def candidates(trajectory: Trajectory, bounds: Bounds, cap: int) -> list[Frame]:
    """A trajectory's candidate frames: fine frames with σ in the bounds, one per content hash,
    at most ``cap``, evenly spread over the trajectory when there are more."""
    seen, kept = set(), []
    for frame in trajectory.frames:
        if frame.reason is None and bounds.lower <= frame.sigma <= bounds.upper:
            key = content_hash(frame.atoms)
            if key not in seen:
                seen.add(key)
                kept.append(frame)
    if len(kept) > cap:
        kept = [kept[int(i)] for i in np.unique(np.linspace(0, len(kept) - 1, cap).round().astype(int))]
    return kept


def plan_walkers(seeds: Sequence[tuple[int | None, Atoms]], settings: Any, seed: int) -> list[Walker]:
    """The round's walkers, all of them, numbered across the engines in the order they are
    named (the same for the same ``seed``, so a resume knows which ones it stored)."""
    walkers: list[Walker] = []
    for k, name in enumerate(settings.engine):
        for walker in ENGINES[name].walkers(settings, seeds, np.random.default_rng([seed, 0, k])):
            walker.index, walker.engine = len(walkers), name
            walkers.append(walker)
    return walkers


def explore(
    model: Any,
    seeds: Sequence[tuple[int | None, Atoms]],
    settings: Any,
    sigma: Callable[[Sequence[Atoms]], np.ndarray],
    bounds: Bounds,
    *,
    seed: int,
    on_trajectory: Callable[[Trajectory, list[Frame]], None],
    skip: set[int] = frozenset(),
) -> list[Walker]:
    """
    Run one round's exploration.

    Parameters
    ----------
    model
        The current model (`tangentlab.mace_model.load_model`).
    seeds
        ``(structure_id or None, atoms)`` to start from.
    settings
        `tangentlab.config.Exploration`.
    sigma
        σ of structures (the campaign's fitted acquisition scorer).
    bounds
        The round's σ bounds (:func:`resolve_bounds`).
    seed
        Seeds the walker list and the dynamics; the same seed gives the same walkers, so a
        resume can ``skip`` the ones it stored.
    on_trajectory
        Called with each finished trajectory and its candidates.
    skip
        Walker indices already stored (a resumed round).

    Returns
    -------
    list[Walker]
        The walkers run this time.
    """
    every = plan_walkers(seeds, settings, seed)
    walkers = [w for w in every if w.index not in skip]
    if not walkers:
        return []
    cutoff = settings.fragment_cutoff or model_cutoff(model)
    fragments = {w.index: count_fragments(w.atoms, cutoff, settings.desorbing_atoms) for w in walkers}
    cap = math.ceil(settings.max_candidates / len(every))

    def judge(frames: Sequence[Atoms], owners: Sequence[Walker]) -> list[tuple[float, str | None]]:
        reasons = [unphysical(frame, min_distance=settings.min_distance, fragment_cutoff=cutoff,
                              seed_fragments=fragments[owner.index], desorbing_atoms=settings.desorbing_atoms)
                   for frame, owner in zip(frames, owners)]
        fine = [k for k, reason in enumerate(reasons) if reason is None]
        values = np.full(len(frames), np.nan)
        if fine:
            values[fine] = sigma([frames[k] for k in fine])
        out = []
        for value, reason in zip(values, reasons):
            if reason is None and not np.isfinite(value):
                reason = "non_finite"
            elif reason is None and value > bounds.upper:
                reason = "sigma"
            out.append((float(value), reason))
        return out

    def on_end(trajectory: Trajectory) -> None:
        on_trajectory(trajectory, candidates(trajectory, bounds, cap))

    rng = np.random.default_rng([seed, 1])
    for name in settings.engine:
        mine = [w for w in walkers if w.engine == name]
        if mine:
            ENGINES[name].run(mine, model, settings, judge, on_end, rng)
    return walkers

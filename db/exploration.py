"""Exploration trajectories and the candidates they add to a campaign's pool.

`store_trajectory` writes one finished walker's candidates (pool structures with their
provenance) and its trajectory row in the caller's transaction: either both are stored or
neither, so a resumed exploration runs exactly the walkers without a row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ase import Atoms
from sqlalchemy import select
from sqlalchemy.orm import Session

from db._query import campaign_id_of
from db.leases import fence
from db.models import Campaign, ExplorationTrajectory, Split, Structure
from db.structures import import_atoms


def store_trajectory(
    session: Session,
    campaign: Campaign | int,
    round_number: int,
    *,
    walker: int,
    engine: str,
    candidates: Sequence[Atoms],
    content_hashes: Sequence[str],
    provenance: Sequence[dict[str, Any]],
    seed_structure_id: int | None,
    temperature_k: float | None,
    steps_run: int,
    frames_scored: int,
    stop_reason: str,
    sigma: Sequence[float],
    wall_s: float,
) -> ExplorationTrajectory:
    """
    Store one finished walker: its candidates as pool structures, and its trajectory row.

    Candidates already in the campaign (same content hash) are not added again; the row
    counts only the new ones in ``candidates_added``.

    Returns
    -------
    ExplorationTrajectory
        The stored row (flushed).
    """
    campaign_id = campaign_id_of(campaign)
    fence(session, campaign_id)
    known = set(session.scalars(select(Structure.id).where(
        Structure.campaign_id == campaign_id, Structure.content_hash.in_(set(content_hashes))))) \
        if content_hashes else set()
    report = import_atoms(session, campaign_id, list(candidates), list(content_hashes),
                          origin=f"exploration round {round_number} walker {walker} ({engine})",
                          split="pool")
    new_ids = set(report.structure_ids) - known
    by_id = {s.id: s for s in session.scalars(select(Structure).where(Structure.id.in_(new_ids)))} if new_ids else {}
    for structure_id, info in zip(report.structure_ids, provenance, strict=True):
        stored = by_id.get(structure_id)
        if stored is not None and "round" not in (stored.provenance or {}):  # the first of repeats
            stored.provenance = {**(stored.provenance or {}), **info}  # keeps its constraints
    row = ExplorationTrajectory(
        campaign_id=campaign_id, round_number=round_number, walker=walker, engine=engine,
        seed_structure_id=seed_structure_id, temperature_k=temperature_k, steps_run=steps_run,
        frames_scored=frames_scored, frames_kept=len(candidates), candidates_added=report.added,
        stop_reason=stop_reason, sigma=[float(s) for s in sigma], wall_s=float(wall_s),
    )
    session.add(row)
    session.flush()
    return row


def round_trajectories(session: Session, campaign: Campaign | int, round_number: int) -> list[ExplorationTrajectory]:
    """The finished trajectories of a round, by walker."""
    return list(session.scalars(
        select(ExplorationTrajectory).where(
            ExplorationTrajectory.campaign_id == campaign_id_of(campaign),
            ExplorationTrajectory.round_number == round_number,
        ).order_by(ExplorationTrajectory.walker)
    ))


def explored_structures(session: Session, campaign: Campaign | int, round_number: int,
                        split: str | None = None) -> list[Structure]:
    """Structures that the exploration of ``round_number`` added (optionally of one split)."""
    query = select(Structure).where(Structure.campaign_id == campaign_id_of(campaign),
                                    Structure.provenance.is_not(None)).order_by(Structure.id)
    if split is not None:
        query = query.where(Structure.split == Split(split))
    return [s for s in session.scalars(query) if (s.provenance or {}).get("round") == round_number]


def exploration_summary(trajectories: Sequence[ExplorationTrajectory]) -> dict[str, Any]:
    """Frames run, scored and kept, candidates added, stops by reason and the σ quantiles."""
    import numpy as np

    sigma = np.array([s for t in trajectories for s in t.sigma], dtype=float)
    stops: dict[str, int] = {}
    for t in trajectories:
        stops[t.stop_reason] = stops.get(t.stop_reason, 0) + 1
    return {
        "trajectories": len(trajectories),
        "steps_run": int(sum(t.steps_run for t in trajectories)),
        "frames_scored": int(sum(t.frames_scored for t in trajectories)),
        "frames_kept": int(sum(t.frames_kept for t in trajectories)),
        "candidates_added": int(sum(t.candidates_added for t in trajectories)),
        "stops": dict(sorted(stops.items())),
        "sigma": ({q: float(np.quantile(sigma, float(q[1:]) / 100)) for q in ("q10", "q50", "q90")}
                  | {"max": float(sigma.max())}) if sigma.size else {},
        "wall_s": float(sum(t.wall_s for t in trajectories)),
    }

"""Explore with the current model: store each finished trajectory's candidates as pool structures.

The round's exploration is resumable: every finished walker is stored in one transaction (its
candidates and its `db.models.ExplorationTrajectory` row), so a run killed during exploration
keeps them, and a resume runs only the walkers without a row (the walker list is seeded) and
adds no candidate twice (candidates are unique by content hash). When all walkers are stored
the round is recorded ``explored`` with the summary that `status` and the UI show.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from db import exploration, labels, rounds, session_scope
from tangentlab.config import FEATURELESS_METHODS, CampaignConfig
from tangentlab.exploration import STOP_REASONS, explore, plan_walkers, resolve_bounds
from tangentlab.mace_model import load_model
from tangentlab.structures import content_hash, read_structures
from tasks._db import engine_for
from tasks.context import round_context
from tasks.interrupt import check_stop
from tasks.progress import Progress, artifact_key

FALLBACK_SIGNAL = "activation"  # σ of exploration when the acquisition has no feature signal


def exploration_signal(config: CampaignConfig) -> str:
    """The feature signal that gives exploration frames their σ: the acquisition's own, or the
    activation kernel when the acquisition is a baseline without features (random, committee)."""
    signal = config.acquisition.signal
    return FALLBACK_SIGNAL if signal in FEATURELESS_METHODS else signal


def _seeds(session, campaign_id: int, config: CampaignConfig) -> list[tuple[int | None, object]]:
    settings = config.exploration
    if settings.seeds == "labelled":
        return [(int(a.info["structure_id"]), a) for a in labels.labelled_atoms(session, campaign_id, ["train", "valid"])]
    return [(None, atoms) for atoms in read_structures(settings.seeds)]


@task(name="explore", cache_policy=NO_CACHE)
def explore_round(url: str, campaign_id: int, config: CampaignConfig, round_number: int,
                  model_version_id: int) -> dict:
    """Run round ``round_number``'s exploration with model ``model_version_id``; return its summary.

    σ comes from the round's scorer (:func:`tasks.context.round_context`, which the
    acquisition after it uses too); quantile bounds are taken over σ of the labelled (train and
    validation) structures. An ``explored`` round is not explored again.
    """
    logger = get_run_logger()
    settings = config.exploration
    engine = engine_for(url)
    start = time.perf_counter()
    with session_scope(engine) as session:
        existing = rounds.get_round(session, campaign_id, round_number)
        if existing is not None:
            return (existing.parameters or {}).get("exploration", {})
        done = {t.walker for t in exploration.round_trajectories(session, campaign_id, round_number)}
        seeds = _seeds(session, campaign_id, config)
    round_seed = config.seed * 1000 + round_number  # the same walkers on a resume
    total = len(plan_walkers(seeds, settings, round_seed))
    if done:
        logger.info("round %d: resuming exploration: %d of %d walkers are stored and do not run again",
                    round_number, len(done), total)
    context = round_context(url, campaign_id, config, round_number, model_version_id)  # σ in float64
    # The dynamics in float32: 1.5x the steps per second of float64 for 16 batched walkers on CPU
    # (docs/benchmarks/exploration-speed.md); the frames are only candidates, scored in float64.
    dynamics_model = load_model(context.model_path, device=config.device, dtype=torch.float32)
    signal = exploration_signal(config)
    scorer = context.scorer(signal)
    bounds = resolve_bounds(settings, np.sqrt(scorer.variance(context.train + context.valid)))
    progress = Progress(artifact_key("campaign", config.name, "round", round_number, "exploration"),
                        f"Campaign {config.name}, round {round_number}: exploration ({settings.engines()}, "
                        f"{total} walkers, σ bounds {bounds.lower:.3g}–{bounds.upper:.3g})")
    finished = [len(done)]

    def store(trajectory, frames) -> None:
        walker = trajectory.walker
        provenance = [{"round": round_number, "engine": walker.engine, "walker": walker.index,
                       "seed_structure_id": walker.seed_structure_id, "temperature_K": walker.temperature_K,
                       "step": frame.step, "sigma": frame.sigma} for frame in frames]
        with session_scope(engine) as session:
            row = exploration.store_trajectory(
                session, campaign_id, round_number, walker=walker.index, engine=walker.engine,
                candidates=[f.atoms for f in frames], content_hashes=[content_hash(f.atoms) for f in frames],
                provenance=provenance, seed_structure_id=walker.seed_structure_id,
                temperature_k=walker.temperature_K, steps_run=trajectory.steps_run,
                frames_scored=len(trajectory.frames), stop_reason=trajectory.stop_reason,
                sigma=[f.sigma for f in trajectory.frames if np.isfinite(f.sigma)],  # JSON: no NaN
                wall_s=trajectory.wall_s)
            added = row.candidates_added
        finished[0] += 1
        progress.update(100.0 * finished[0] / total,
                        f"Round {round_number}: walker {walker.index} ({walker.atoms.get_chemical_formula()}"
                        + (f", {walker.temperature_K:g} K" if walker.temperature_K else "")
                        + f") {STOP_REASONS[trajectory.stop_reason]} after {trajectory.steps_run} steps; "
                        f"{added} candidates; {finished[0]}/{total} walkers done")
        check_stop(config.name)  # Ctrl-C: this walker is stored, the others run on resume

    explore(dynamics_model, seeds, settings, lambda frames: np.sqrt(scorer.variance(frames)), bounds,
            seed=round_seed, on_trajectory=store, skip=done)
    with session_scope(engine) as session:
        summary = exploration.exploration_summary(
            exploration.round_trajectories(session, campaign_id, round_number))
        summary.update(engine=settings.engines(), signal=signal,
                       bounds={"lower": bounds.lower, "upper": bounds.upper,
                               "lower_rule": settings.sigma_lower.describe(),
                               "upper_rule": settings.sigma_upper.describe()})
        rounds.create_explored_round(session, campaign_id, round_number, parameters={"exploration": summary},
                                     model_version_id=model_version_id,
                                     timings={"explore_s": time.perf_counter() - start})
    logger.info("round %d: explored %d trajectories (%d steps, %d frames scored): %d candidates added; stops: %s; "
                "σ bounds %.3g–%.3g", round_number, summary["trajectories"], summary["steps_run"],
                summary["frames_scored"], summary["candidates_added"],
                ", ".join(f"{k} {v}" for k, v in summary["stops"].items()), bounds.lower, bounds.upper)
    return summary


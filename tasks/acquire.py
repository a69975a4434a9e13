"""Choose the next batch of structures to label and store it as an acquisition round."""

from __future__ import annotations

import time

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from db import ModelVersion, repository, session_scope
from tangentlab.config import CampaignConfig
from tangentlab.features import Standardizer, activation_features
from tangentlab.mace_model import load_model
from tangentlab.selection import greedy_posterior_variance, random_selection
from tasks._db import engine_for
from tasks.setup import assign_splits


@task(name="acquire", cache_policy=NO_CACHE)
def acquire(url: str, campaign_id: int, config: CampaignConfig, round_number: int, model_version_id: int) -> int:
    """Score the pool with the current model, select a batch, store the round; return its size.

    Failed structures are never candidates. The round, the selected structures with their
    scores and the structures' new splits are written in one transaction.
    """
    logger = get_run_logger()
    settings = config.acquisition
    engine = engine_for(url)
    with session_scope(engine) as session:
        failed = repository.failed_structure_ids(session, campaign_id)
        pool = [s for s in repository.structures(session, campaign_id, split="pool") if s.id not in failed]
        labelled = repository.structures(session, campaign_id, split=["train", "valid"])
        pool_atoms = [repository.structure_atoms(s) for s in pool]
        labelled_atoms = [repository.structure_atoms(s) for s in labelled]
        model_path = session.get_one(ModelVersion, model_version_id).path
        pool_ids = [s.id for s in pool]
    timings: dict[str, float] = {}
    start = time.perf_counter()
    if settings.method == "random":
        picked = random_selection(len(pool_ids), settings.batch_size, seed=config.seed * 1000 + round_number)
        scores = [None] * len(picked)
    else:
        model = load_model(model_path, device=config.device)
        phi = activation_features(model, labelled_atoms + pool_atoms, batch_size=settings.feature_batch_size)
        timings["features_s"] = time.perf_counter() - start
        phi = Standardizer.fit(phi).transform(phi) / np.sqrt(phi.shape[1])
        picked, scores = greedy_posterior_variance(
            phi[: len(labelled_atoms)], phi[len(labelled_atoms):], settings.batch_size, settings.regularization
        )
        scores = [float(s) for s in scores]
    timings["acquire_s"] = time.perf_counter() - start
    selected = [pool_ids[int(i)] for i in picked]
    with session_scope(engine) as session:
        assign_splits(session, selected, config.valid_fraction)
        repository.create_round(
            session, campaign_id, round_number, method=settings.method,
            parameters=settings.model_dump(), model_version_id=model_version_id,
            pool_size=len(pool_ids), selected=[(i, s, None) for i, s in zip(selected, scores)],
            timings=timings,
        )
    logger.info("round %d: %s selected %d of %d pool structures in %.1f s", round_number,
                settings.method, len(selected), len(pool_ids), timings["acquire_s"])
    return len(selected)

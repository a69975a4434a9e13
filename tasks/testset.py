"""A test set that grows only when its intervals cannot decide the stop (``test_max_size``).

After a round is evaluated, :func:`grow_test_set` plans the test set's size from the round's
stored test errors (:func:`tangentlab.confidence.planned_test_size`) and, when it should grow,
moves that many pool structures to the test split in one transaction, stratified by the
round's σ (:func:`tangentlab.confidence.stratified_pick`). The campaign flow then labels them
through the same claim-and-label machinery as every other label (so a killed run labels none
twice), and :func:`tasks.evaluate.reevaluate_round` measures the round's model again on the
larger set. :func:`evaluation_is_stale` tells a resumed run that a grown set was never
measured.
"""

from __future__ import annotations

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from db import labels, reports, rounds, session_scope, structures
from tangentlab.config import FEATURELESS_METHODS, CampaignConfig
from tangentlab.confidence import planned_test_size, stratified_pick
from tasks._db import engine_for
from tasks.context import release_context, round_context

#: Pool candidates scored for a stratified draw at most (a uniform sample of a larger pool).
CANDIDATES = 2000


def evaluation_is_stale(url: str, campaign_id: int) -> bool:
    """Whether the latest round's test errors were measured on fewer test labels than the
    campaign now has (its test set grew after the evaluation)."""
    with session_scope(engine_for(url)) as session:
        last = rounds.campaign_rounds(session, campaign_id)[-1]
        measured = ((last.metrics or {}).get("test") or {}).get("n_structures")
        done = reports.test_set_counts(session, campaign_id)["done"]
    return measured is not None and measured != done


def _planned(config: CampaignConfig, metrics: dict) -> int:
    targets = config.targets
    return planned_test_size(
        [
            (
                metrics["energy_mae_mev_per_atom"],
                metrics.get("energy_mae_interval_mev_per_atom"),
                targets.energy_mae_mev_per_atom,
            ),
            (
                metrics["force_mae_mev_per_a"],
                metrics.get("force_mae_interval_mev_per_a"),
                targets.force_mae_mev_per_a,
            ),
        ],
        metrics["n_structures"],
        config.test_max_size,
        config.test_step,
    )


def _sigma(
    url: str, campaign_id: int, config: CampaignConfig, number: int, model_id: int, atoms
) -> np.ndarray:
    """σ of ``atoms`` from the scorer the next round's acquisition fits (zeros for signals
    without features: the draw is then spread evenly over the candidates' order)."""
    if config.acquisition.signal in FEATURELESS_METHODS:
        return np.zeros(len(atoms))
    scorer = round_context(url, campaign_id, config, number + 1, model_id).scorer()
    # The draw changes the pool: the next acquisition builds its context afresh, as a resumed
    # run would.
    release_context()
    return np.sqrt(scorer.variance(atoms))


@task(name="grow test set", cache_policy=NO_CACHE)
def grow_test_set(
    url: str, campaign_id: int, config: CampaignConfig, number: int, model_id: int
) -> list[int]:
    """Move pool structures to the test split when round ``number``'s intervals are too wide to
    decide and a larger test set (at most ``test_max_size``) could; return their ids (none: the
    test set stays as it is)."""
    if config.test_max_size is None:
        return []
    with session_scope(engine_for(url)) as session:
        metrics = (rounds.get_round(session, campaign_id, number).metrics or {}).get("test") or {}
        if not metrics.get("n_structures"):
            return []
        planned = _planned(config, metrics)
        if planned <= metrics["n_structures"]:
            return []
        failed = labels.failed_structure_ids(session, campaign_id)
        pool = [
            s
            for s in structures.campaign_structures(session, campaign_id, split="pool")
            if s.id not in failed
        ]
        seed = config.seed * 1000 + number
        if len(pool) > CANDIDATES:
            keep = np.random.default_rng(seed).choice(len(pool), CANDIDATES, replace=False)
            pool = [pool[i] for i in sorted(keep)]
        ids = [s.id for s in pool]
        atoms = [structures.structure_atoms(s) for s in pool]
    if not ids:
        return []
    sigma = _sigma(url, campaign_id, config, number, model_id, atoms)
    picked = [ids[i] for i in stratified_pick(sigma, planned - metrics["n_structures"], seed=seed)]
    with session_scope(engine_for(url)) as session:
        structures.set_split(session, picked, "test")
    get_run_logger().info(
        "round %d: test errors measured on %d structures cannot decide the targets at %.0f%% confidence: "
        "%d pool structures (stratified by σ) join the test set",
        number,
        metrics["n_structures"],
        100 * config.targets.confidence,
        len(picked),
    )
    return picked

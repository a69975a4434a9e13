"""Asynchronous rounds (``schedule: async``): the label queue and the trainer's rounds.

QM workers label a queue of picks (:mod:`db.queue`) while the campaign fine-tunes. The
database holds every piece of that state, so a run killed at any point resumes from it:

- :func:`top_up` keeps ``streaming.jobs_per_worker`` picks per worker queued or running. New
  picks come from the newest model; their posterior variance is conditioned on every pending
  pick (a structure's features need no label), so a batch in flight is never picked twice.
  With ``streaming.max_ahead`` it picks only while fewer picks than that are beyond the newest
  model's training set (:func:`ahead_room`).
- :func:`start_round` opens a round when ``streaming.train_every`` labels arrived that the
  newest model has not seen: the round's ``selected`` lists them and the round is ``labelled``
  at once; the synchronous round's tasks then fine-tune and evaluate it (each model version
  stores the exact label ids it was trained on).
- :func:`rerank_queue` orders the picks no worker has started by the new model.
- :func:`cancel_queue` removes those picks when the campaign stops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from db import RoundStatus, labels, queue, registry, reports, rounds, session_scope, structures
from tangentlab.acquisition import random_selection, select_batch
from tangentlab.acquisition.policy import fit_policy_scorer, reference_structures
from tangentlab.config import CampaignConfig
from tangentlab.mace_model import load_model
from tasks._db import engine_for
from tasks.acquire import target_atoms
from db.leases import as_utc
from tasks.label import oracle_for
from tasks.setup import assign_splits

STREAM_METHOD = "async"


@dataclass(frozen=True)
class Stream:
    """The label queue and the trainer's position, as the database has them."""

    model_id: int  # the newest model version
    open: int  # picks queued or running
    running: int
    done: int  # training and validation labels done
    new: int  # of those, not in the newest model's training set


def _open_picks(session, campaign_id: int, key: str) -> list[queue.Pick]:
    return queue.picks(session, campaign_id, key)


def stream_state(url: str, campaign_id: int, config: CampaignConfig) -> Stream:
    """Where the asynchronous campaign stands."""
    key = labels.level_key(oracle_for(config).level)
    with session_scope(engine_for(url)) as session:
        latest = registry.model_versions(session, campaign_id)[-1]
        trained = set(latest.training_label_ids or [])
        done = [label.id for _, label in labels.labelled(session, campaign_id, ["train", "valid"])]
        picks = _open_picks(session, campaign_id, key)
    return Stream(
        latest.id,
        len(picks),
        sum(p.status == "running" for p in picks),
        len(done),
        sum(i not in trained for i in done),
    )


def ahead_room(config: CampaignConfig, new: int, open_: int) -> int | None:
    """How many more picks ``streaming.max_ahead`` allows: the cap less the picks beyond the
    newest model's training set (``new`` labels it has not seen, ``open_`` picks queued or
    running; a failed pick no longer counts); None: no cap."""
    cap = config.streaming.max_ahead
    return None if cap is None else max(0, cap - new - open_)


def needs_picks(stream: Stream, config: CampaignConfig) -> bool:
    """Whether fewer than ``jobs_per_worker`` picks per worker are open, within the budget and
    ``streaming.max_ahead``."""
    wanted = config.streaming.jobs_per_worker * config.qm.max_parallel
    room = ahead_room(config, stream.new, stream.open)
    return (
        stream.open < wanted
        and stream.done + stream.open < config.budgets.max_labels
        and room != 0
    )


def train_due(stream: Stream, config: CampaignConfig) -> bool:
    """Whether enough new labels arrived for a fine-tune (all of them once none is open and
    the label budget is picked)."""
    every = config.streaming.train_every or config.acquisition.batch_size
    finished = stream.open == 0 and stream.done >= config.budgets.max_labels
    return stream.new >= every or (finished and stream.new > 0)


def initial_finished(
    url: str, campaign_id: int, config: CampaignConfig, structure_ids: list[int]
) -> bool:
    """Whether every label of round 0 (the initial set) is done or failed for good."""
    key = labels.level_key(oracle_for(config).level)
    with session_scope(engine_for(url)) as session:
        counts = reports.label_counts(session, campaign_id, key, structure_ids)
    return counts["pending"] + counts["running"] == 0 and counts["done"] + counts["failed"] > 0


_MODELS: dict[tuple[str, int], object] = {}  # the newest model this process loaded


def _model(url: str, session, version_id: int, device: str):
    key = (url, version_id)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = load_model(registry.verified_model_path(session, version_id), device=device)
    return _MODELS[key]


def _scorer(session, url, campaign_id, config, model_id, conditioned_ids):
    """The model's posterior scorer, conditioned on the training labels and ``conditioned_ids``
    (picks without labels yet: only their features enter)."""
    failed = labels.failed_structure_ids(session, campaign_id)
    pool = [
        s
        for s in structures.campaign_structures(session, campaign_id, split="pool")
        if s.id not in failed
    ]
    train = labels.labelled_atoms(session, campaign_id, ["train"])
    pending = [
        structures.structure_atoms(s)
        for s in structures.structures_by_id(session, conditioned_ids)
        if str(getattr(s.split, "value", s.split)) == "train"
    ]
    reference = [structures.structure_atoms(s) for s in reference_structures(pool)]
    model = _model(url, session, model_id, config.device)
    scorer = fit_policy_scorer(model, train + pending, reference, config.acquisition, config.device)
    return scorer, pool


def _test_atoms(session, campaign_id: int, config: CampaignConfig) -> list | None:
    test = [
        structures.structure_atoms(s)
        for s in structures.campaign_structures(session, campaign_id, split="test")
    ]
    return target_atoms(config, test if config.acquisition.target == "test" else [])


def _rank(scorer, candidates, count: int, config: CampaignConfig, target, seed: int) -> np.ndarray:
    settings = config.acquisition
    if settings.signal == "random":
        return random_selection(len(candidates), count, seed)
    picked, _, _ = select_batch(
        scorer,
        candidates,
        batch_size=count,
        rule=settings.rule,
        target=target,
        sigma_quantile=settings.sigma_quantile,
        seed=seed,
    )
    return picked


@task(name="top up the label queue", cache_policy=NO_CACHE)
def top_up(url: str, campaign_id: int, config: CampaignConfig, model_id: int) -> int:
    """Pick new structures with model ``model_id`` (the newest) until ``jobs_per_worker`` picks
    per worker are open, within the label budget and ``streaming.max_ahead``; return how many
    were picked."""
    oracle = oracle_for(config)
    key = labels.level_key(oracle.level)
    with session_scope(engine_for(url)) as session:
        open_ids = [p.structure_id for p in _open_picks(session, campaign_id, key)]
        done_labels = labels.labelled(session, campaign_id, ["train", "valid"])
        done = len(done_labels)
        want = config.streaming.jobs_per_worker * config.qm.max_parallel - len(open_ids)
        count = min(want, config.budgets.max_labels - done - len(open_ids))
        picker = next(v for v in registry.model_versions(session, campaign_id) if v.id == model_id)
        trained = set(picker.training_label_ids or [])
        room = ahead_room(
            config, sum(label.id not in trained for _, label in done_labels), len(open_ids)
        )
        if room is not None:
            count = min(count, room)
        if count <= 0:
            return 0
        scorer, pool = _scorer(session, url, campaign_id, config, model_id, open_ids)
        count = min(count, len(pool))
        if count <= 0:
            return 0
        atoms = [structures.structure_atoms(s) for s in pool]
        seed = config.seed * 1000 + done + len(open_ids)
        order = _rank(scorer, atoms, count, config, _test_atoms(session, campaign_id, config), seed)
        picked = [pool[int(i)].id for i in order]
        assign_splits(session, picked, config.valid_fraction)
        queue.queue_picks(session, campaign_id, picked, oracle.level, picked_by=model_id)
    get_run_logger().info(
        "queued %d picks of model %d (%d open)", len(picked), model_id, len(open_ids) + len(picked)
    )
    return len(picked)


@task(name="re-rank the label queue", cache_policy=NO_CACHE)
def rerank_queue(url: str, campaign_id: int, config: CampaignConfig, model_id: int) -> dict:
    """Order the picks no worker has started by model ``model_id`` (conditioned on the
    training labels and the running picks); returns the structure order before and after."""
    key = labels.level_key(oracle_for(config).level)
    with session_scope(engine_for(url)) as session:
        picks = _open_picks(session, campaign_id, key)
        queued = [p for p in picks if p.status == "pending" and p.priority is not None]
        if len(queued) < 2 or config.acquisition.signal == "random":
            return {
                "before": [p.structure_id for p in queued],
                "after": [p.structure_id for p in queued],
            }
        running = [p.structure_id for p in picks if p.status == "running"]
        scorer, _ = _scorer(session, url, campaign_id, config, model_id, running)
        by_id = {
            s.id: s for s in structures.structures_by_id(session, [p.structure_id for p in queued])
        }
        atoms = [structures.structure_atoms(by_id[p.structure_id]) for p in queued]
        order = _rank(
            scorer,
            atoms,
            len(queued),
            config,
            _test_atoms(session, campaign_id, config),
            config.seed * 1000 + model_id,
        )
        ranked = [queued[int(i)] for i in order]
        queue.rerank(session, campaign_id, [p.label_id for p in ranked])
        before, after = [p.structure_id for p in queued], [p.structure_id for p in ranked]
        trained = rounds.campaign_rounds(session, campaign_id)[-1]  # the round that made the model
        trained.parameters = {
            **(trained.parameters or {}),
            "rerank": {"before": before, "after": after},
        }
    get_run_logger().info(
        "model %d re-ranked %d queued picks (%s)",
        model_id,
        len(queued),
        "order changed" if before != after else "order kept",
    )
    return {"before": before, "after": after}


def _arrival(label) -> tuple:
    return (as_utc(label.updated_at), label.id)  # a done label's last change: its completion


@task(name="start an asynchronous round", cache_policy=NO_CACHE)
def start_round(url: str, campaign_id: int, config: CampaignConfig, number: int) -> int:
    """Round ``number``: the labels that arrived since the newest model (``streaming.train_on:
    batches``: the oldest ``train_every`` of them), ``labelled`` at once; returns how many."""
    with session_scope(engine_for(url)) as session:
        latest = registry.model_versions(session, campaign_id)[-1]
        trained = set(latest.training_label_ids or [])
        new = [
            (s.id, label)
            for s, label in labels.labelled(session, campaign_id, ["train", "valid"])
            if label.id not in trained
        ]
        if config.streaming.train_on == "batches":
            every = config.streaming.train_every or config.acquisition.batch_size
            new = sorted(new, key=lambda pair: _arrival(pair[1]))[:every]
        pool_size = len(structures.campaign_structures(session, campaign_id, split="pool"))
        round_ = rounds.create_round(
            session,
            campaign_id,
            number,
            method=STREAM_METHOD,
            parameters={
                **config.acquisition.model_dump(),
                "schedule": "async",
                "picked_by": {str(s): label.picked_by_model_id for s, label in new},
            },
            model_version_id=latest.id,
            pool_size=pool_size,
            selected=[(s, None, None) for s, _ in new],
        )
        rounds.advance_round(session, round_, RoundStatus.LABELLED)
    return len(new)


@task(name="cancel the label queue", cache_policy=NO_CACHE)
def cancel_queue(url: str, campaign_id: int, config: CampaignConfig) -> int:
    """Remove the picks no worker started (the campaign stopped); they return to the pool."""
    key = labels.level_key(oracle_for(config).level)
    with session_scope(engine_for(url)) as session:
        return len(queue.cancel_pending(session, campaign_id, key))


__all__ = [
    "Stream",
    "ahead_room",
    "cancel_queue",
    "initial_finished",
    "needs_picks",
    "rerank_queue",
    "start_round",
    "stream_state",
    "top_up",
    "train_due",
]

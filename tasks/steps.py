"""The round state machine: which task moves a round to which status, and the small steps
around it.

A round moves ``(explored ->) selected -> labelled -> trained -> evaluated``, each transition
committed by the task that did the work, in the same transaction as its result:

=====================  ==========================================  ===========================
status reached         task                                        stored with it
=====================  ==========================================  ===========================
``explored``           :func:`tasks.explore.explore_round`          the exploration summary
``selected``           :func:`tasks.acquire.acquire`                the selection, new splits
``labelled``           :func:`mark_labelled`                        (the labels are stored by
                                                                    the label workers)
``trained``            :func:`tasks.train.finetune_round`           the new model version
``evaluated``          :func:`tasks.evaluate.evaluate_round`        its test errors, round time
=====================  ==========================================  ===========================

After ``evaluated``, :func:`decide` says whether the campaign stops (:func:`finish` stores the
outcome) or the next round is explored and acquired. The campaign flow
(:mod:`flows.campaign`) only runs the task the current status names; every read and write of
the database happens here and in the tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from db import (
    CampaignStatus,
    RoundStatus,
    campaigns,
    init_db,
    labels,
    leases,
    queue,
    registry,
    reports,
    rounds,
    session_scope,
    structures,
)
from db.leases import Holder, Lease, LeaseHeldError, LeaseLostError
from tangentlab.config import CampaignConfig
from tangentlab.stopping import StopDecision, stop_decision
from tasks._db import engine_for
from tasks.setup import starting_model

__all__ = ["Holder", "Lease", "LeaseHeldError", "LeaseLostError", "RoundStatus"]


@contextmanager
def campaign_lease(
    url: str, name: str, *, flow_run_id: str | None, wait: bool, on_wait: Callable[[Holder], None]
) -> Iterator[Lease]:
    """Hold campaign ``name``'s lease (:func:`db.leases.hold`) on the database at ``url``,
    whose schema (the lease table too) is made or upgraded first."""
    init_db(engine_for(url))
    with leases.hold(
        engine_for(url), name, flow_run_id=flow_run_id, wait=wait, on_wait=on_wait
    ) as lease:
        yield lease


@dataclass(frozen=True)
class Where:
    """The campaign's latest round: its number, status, selected structures and models."""

    number: int
    status: RoundStatus
    selected: list[int]
    model_version_id: int | None  # the model it was explored and acquired with
    trained_model_id: int | None


@dataclass(frozen=True)
class Opened:
    """What a run finds when it opens a campaign."""

    stale_labels: int
    test_ids: list[int]
    where: Where
    previous_wall_s: float


def _where(session, campaign_id: int) -> Where:
    current = rounds.campaign_rounds(session, campaign_id)[-1]
    return Where(
        current.number,
        current.status,
        [e["structure_id"] for e in current.selected or []],
        current.model_version_id,
        current.trained_model_id,
    )


def current_round(url: str, campaign_id: int) -> Where:
    """The campaign's latest round."""
    with session_scope(engine_for(url)) as session:
        return _where(session, campaign_id)


def open_campaign(url: str, campaign_id: int, claim_timeout_s: float) -> Opened:
    """Mark the campaign running; labels left ``running`` by a killed run for longer than
    ``claim_timeout_s`` go back to pending (finished labels are kept)."""
    with session_scope(engine_for(url)) as session:
        stale = labels.reset_stale_running(session, campaign_id, claim_timeout_s)
        campaigns.set_campaign_status(session, campaign_id, CampaignStatus.RUNNING)
        test_ids = [
            s.id for s in structures.campaign_structures(session, campaign_id, split="test")
        ]
        done = rounds.campaign_rounds(session, campaign_id)
        previous_wall = sum((r.timings or {}).get("round_wall_s", 0.0) for r in done)
        return Opened(stale, test_ids, _where(session, campaign_id), previous_wall)


def starting_model_version(
    url: str, campaign_id: int, config: CampaignConfig
) -> tuple[int, dict | None]:
    """Register the starting model once (weights-only, with the named file's path and sha256);
    return its version id and stored test errors."""
    with session_scope(engine_for(url)) as session:
        versions = registry.model_versions(session, campaign_id)
        if not versions:
            path, source = starting_model(config)
            versions = [
                registry.register_model(
                    session,
                    campaign_id,
                    path,
                    hyperparameters={"source": "starting model", **source},
                )
            ]
        return versions[0].id, (versions[0].metrics or {}).get("test")


def count_test_set(url: str, campaign_id: int) -> dict[str, int]:
    """Structures of the test set and their labels per status."""
    with session_scope(engine_for(url)) as session:
        return reports.test_set_counts(session, campaign_id)


@task(name="labelled", cache_policy=NO_CACHE)
def mark_labelled(url: str, campaign_id: int, number: int) -> None:
    """Round ``number``'s labelling finished (done or failed for good): ``selected -> labelled``."""
    with session_scope(engine_for(url)) as session:
        rounds.advance_round(
            session, rounds.get_round(session, campaign_id, number), RoundStatus.LABELLED
        )


@task(name="decide", cache_policy=NO_CACHE)
def decide(
    url: str, campaign_id: int, config: CampaignConfig, wall_time_s: float
) -> StopDecision | None:
    """Whether the campaign stops after its latest (evaluated) round: targets met, a budget
    used or a target out of reach (:func:`tangentlab.stopping.stop_decision`); None: the next
    round runs."""
    with session_scope(engine_for(url)) as session:
        last = rounds.campaign_rounds(session, campaign_id)[-1]
        labels_used = len(labels.labelled(session, campaign_id, split=["train", "valid"]))
        waiting = 0  # asynchronous rounds: picks in flight and labels no model has trained on yet
        if config.schedule == "async":  # labels still arriving count once a model trained on them
            trained = len(registry.model_versions(session, campaign_id)[-1].training_label_ids or [])
            waiting = labels_used - trained + len(queue.picks(session, campaign_id, None))
            labels_used = trained
        metrics = (last.metrics or {})["test"]
        curve = [
            (row["labels"], row["energy_mae_meV_atom"], row["force_mae_meV_A"])
            for row in reports.round_rows(session, campaign_id)
            if row["status"] == RoundStatus.EVALUATED.value and row["labels"] is not None
            and row["force_mae_meV_A"] is not None
        ]
        failed = labels.failed_structure_ids(session, campaign_id)
        # With exploration the pool grows every round: an empty pool is no reason to stop.
        pool_remaining = (
            None
            if config.exploration is not None
            else sum(
                1
                for s in structures.campaign_structures(session, campaign_id, split="pool")
                if s.id not in failed
            )
            + waiting
        )
    # Intervals measured at another level (a configuration changed between runs) do not decide.
    at_level = metrics.get("interval_level") == config.targets.confidence
    decision = stop_decision(
        energy_mae=metrics["energy_mae_mev_per_atom"],
        force_mae=metrics["force_mae_mev_per_a"],
        targets=config.targets,
        labels_used=labels_used,
        rounds_done=last.number,
        wall_time_s=wall_time_s,
        budgets=config.budgets,
        pool_remaining=pool_remaining,
        energy_interval=metrics.get("energy_mae_interval_mev_per_atom") if at_level else None,
        force_interval=metrics.get("force_mae_interval_mev_per_a") if at_level else None,
        curve=curve,
    )
    if decision is None:
        targets, budgets = config.targets, config.budgets
        get_run_logger().info(
            "round %d: continuing: targets not met (energy MAE %.1f vs %g meV/atom, force MAE %.1f vs %g meV/Å); "
            "budgets left: %d labels, %d rounds, %.0f s wall time, %s candidates",
            last.number,
            metrics["energy_mae_mev_per_atom"],
            targets.energy_mae_mev_per_atom,
            metrics["force_mae_mev_per_a"],
            targets.force_mae_mev_per_a,
            budgets.max_labels - labels_used,
            budgets.max_rounds - last.number,
            budgets.max_wall_time_s - wall_time_s,
            "explored" if pool_remaining is None else pool_remaining,
        )
    return decision


@task(name="finish", cache_policy=NO_CACHE)
def finish(url: str, campaign_id: int, decision: StopDecision) -> None:
    """Store the campaign's outcome (its status and stop reason)."""
    with session_scope(engine_for(url)) as session:
        campaigns.set_campaign_status(session, campaign_id, decision.status, decision.reason)


def summary(url: str, campaign_id: int) -> dict:
    """Status, stop reason, label counts and the test errors of every model version."""
    with session_scope(engine_for(url)) as session:
        camp = campaigns.campaign_by_id(session, campaign_id)
        versions = [
            {
                "id": v.id,
                "round": v.round_number,
                "path": v.path,
                "test": (v.metrics or {}).get("test"),
            }
            for v in registry.model_versions(session, campaign_id)
        ]
        return {
            "name": camp.name,
            "status": str(camp.status.value if hasattr(camp.status, "value") else camp.status),
            "reason": camp.stop_reason,
            "labels": reports.label_counts(session, campaign_id),
            "models": versions,
        }

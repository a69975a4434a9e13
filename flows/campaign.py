"""The campaign flow: initial set -> (acquire -> label -> fine-tune -> evaluate) until done.

The flow only orchestrates. Its state lives in the database: each round moves through
``selected -> labelled -> trained -> evaluated``, and running the flow again for the same
campaign continues from the first step that has not finished, so a killed run repeats no
finished QM job or fine-tune.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from db import Campaign, CampaignStatus, RoundStatus, repository, session_scope
from db.models import AcquisitionRound
from tangentlab.campaign_rules import stop_decision
from tangentlab.config import CampaignConfig, make_config
from tasks._db import engine_for
from tasks.acquire import acquire
from tasks.evaluate import evaluate_model
from tasks.label import label_worker, queue_labels
from tasks.setup import setup_campaign, stored_config
from tasks.train import finetune_round


def default_database_url() -> str:
    import os

    return os.environ.get("TANGENTLAB_DATABASE_URL", "sqlite:///tangentlab.db")


def _label_all(url: str, campaign_id: int, config: CampaignConfig, structure_ids: list[int]) -> None:
    queue_labels(url, config, structure_ids)
    workers = [label_worker.submit(url, campaign_id, config, worker=w) for w in range(config.qm.max_parallel)]
    for future in workers:
        future.result()


def _starting_model(url: str, campaign_id: int, config: CampaignConfig) -> tuple[int, dict | None]:
    """Register the starting model once; return its version id and stored test errors."""
    with session_scope(engine_for(url)) as session:
        versions = repository.model_versions(session, campaign_id)
        if not versions:
            versions = [repository.register_model(session, campaign_id, config.model,
                                                  hyperparameters={"source": "starting model"})]
        return versions[0].id, (versions[0].metrics or {}).get("test")


def _round_row(r: AcquisitionRound, metrics: dict | None, labels: int) -> dict:
    return {
        "round": r.number,
        "method": r.method,
        "selected": len(r.selected or []),
        "labels": labels,
        "energy_mae_meV_atom": None if not metrics else round(metrics["energy_mae_mev_per_atom"], 1),
        "force_mae_meV_A": None if not metrics else round(metrics["force_mae_mev_per_a"], 1),
        "model_version": r.trained_model_id,
        "acquire_s": round((r.timings or {}).get("acquire_s", 0.0), 2),
    }


def _report(url: str, campaign_id: int, name: str) -> None:
    with session_scope(engine_for(url)) as session:
        rows, labels = [], 0
        for r in repository.rounds(session, campaign_id):
            labels += len(r.selected or [])
            rows.append(_round_row(r, (r.metrics or {}).get("test"), labels))
    create_table_artifact(rows, key=f"campaign-{name}".lower().replace("_", "-"),
                          description=f"Rounds of campaign {name}: test errors after each fine-tune")


@flow(name="campaign", log_prints=True)
def campaign(config: dict | None = None, name: str | None = None, database_url: str | None = None) -> dict:
    """Run (or resume) an active-learning campaign until its targets or a budget stop it.

    Parameters
    ----------
    config
        Campaign configuration (see :class:`tangentlab.config.CampaignConfig`); used when the
        campaign is created. Leave out to resume the campaign ``name`` with its stored one.
    name
        Name of a campaign to resume.
    database_url
        SQLAlchemy URL; default ``TANGENTLAB_DATABASE_URL`` or ``sqlite:///tangentlab.db``.

    Returns
    -------
    dict
        ``status``, ``reason``, and the test errors of every model version.
    """
    logger = get_run_logger()
    url = database_url or default_database_url()
    if config is None and name is None:
        raise ValueError("give a campaign configuration or the name of a campaign to resume")
    cfg = stored_config(url, name) if config is None else make_config(config)
    campaign_id = setup_campaign(url, cfg)
    cfg = stored_config(url, cfg.name)
    engine = engine_for(url)
    run_start = time.perf_counter()
    with session_scope(engine) as session:
        stale = repository.reset_stale_running(session, campaign_id)
        repository.set_campaign_status(session, campaign_id, CampaignStatus.RUNNING)
        test_ids = [s.id for s in repository.structures(session, campaign_id, split="test")]
        previous_wall = sum((r.timings or {}).get("round_wall_s", 0.0) for r in repository.rounds(session, campaign_id))
    if stale:
        logger.info("reset %d labels left running by a killed run", stale)

    _label_all(url, campaign_id, cfg, test_ids)
    baseline_id, baseline_metrics = _starting_model(url, campaign_id, cfg)
    if baseline_metrics is None:
        baseline_metrics = evaluate_model(url, campaign_id, baseline_id, cfg.device)
    logger.info("starting model: energy MAE %.1f meV/atom, force MAE %.1f meV/Å",
                    baseline_metrics["energy_mae_mev_per_atom"], baseline_metrics["force_mae_mev_per_a"])

    while True:
        round_start = time.perf_counter()
        with session_scope(engine) as session:
            current = repository.rounds(session, campaign_id)[-1]
            number, status = current.number, current.status
            selected = [e["structure_id"] for e in current.selected or []]
        if status == RoundStatus.SELECTED:
            _label_all(url, campaign_id, cfg, selected)
            _set_status(url, campaign_id, number, RoundStatus.LABELLED)
            status = RoundStatus.LABELLED
        if status == RoundStatus.LABELLED:
            finetune_round(url, campaign_id, cfg, number)
            status = RoundStatus.TRAINED
        with session_scope(engine) as session:
            current = repository.get_round(session, campaign_id, number)
            trained_id = current.trained_model_id
        if status == RoundStatus.TRAINED:
            metrics = evaluate_model(url, campaign_id, trained_id, cfg.device)
            with session_scope(engine) as session:
                current = repository.get_round(session, campaign_id, number)
                timings = {**(current.timings or {}),
                           "round_wall_s": (current.timings or {}).get("round_wall_s", 0.0)
                           + time.perf_counter() - round_start}
                repository.update_round(session, current, status=RoundStatus.EVALUATED,
                                        metrics={"test": metrics}, timings=timings)
            logger.info("round %d: energy MAE %.1f meV/atom, force MAE %.1f meV/Å (model %d)", number,
                        metrics["energy_mae_mev_per_atom"], metrics["force_mae_mev_per_a"], trained_id)
            _report(url, campaign_id, cfg.name)
        decision = _decide(url, campaign_id, cfg, previous_wall + time.perf_counter() - run_start)
        if decision is not None:
            with session_scope(engine) as session:
                repository.set_campaign_status(session, campaign_id, decision.status, decision.reason)
            logger.info("campaign %r stopped: %s", cfg.name, decision.reason)
            return summary(url, campaign_id)
        acquire(url, campaign_id, cfg, number + 1, trained_id)


def _set_status(url: str, campaign_id: int, number: int, status: RoundStatus) -> None:
    with session_scope(engine_for(url)) as session:
        repository.update_round(session, repository.get_round(session, campaign_id, number), status=status)


def _decide(url: str, campaign_id: int, cfg: CampaignConfig, wall_time_s: float):
    with session_scope(engine_for(url)) as session:
        rounds = repository.rounds(session, campaign_id)
        last = rounds[-1]
        labels_used = len(repository.labelled(session, campaign_id, split=["train", "valid"]))
        metrics = (last.metrics or {})["test"]
        failed = repository.failed_structure_ids(session, campaign_id)
        pool_remaining = sum(1 for s in repository.structures(session, campaign_id, split="pool") if s.id not in failed)
    return stop_decision(
        energy_mae=metrics["energy_mae_mev_per_atom"], force_mae=metrics["force_mae_mev_per_a"],
        targets=cfg.targets, labels_used=labels_used, rounds_done=last.number,
        wall_time_s=wall_time_s, budgets=cfg.budgets, pool_remaining=pool_remaining,
    )


def summary(url: str, campaign_id: int) -> dict:
    """Status, stop reason, label counts and the test errors of every model version."""
    with session_scope(engine_for(url)) as session:
        camp = session.get_one(Campaign, campaign_id)
        versions = [
            {"id": v.id, "round": v.round_number, "path": v.path, "test": (v.metrics or {}).get("test")}
            for v in repository.model_versions(session, campaign_id)
        ]
        return {
            "name": camp.name,
            "status": str(camp.status.value if hasattr(camp.status, "value") else camp.status),
            "reason": camp.stop_reason,
            "labels": repository.label_counts(session, campaign_id),
            "models": versions,
        }

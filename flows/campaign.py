"""The campaign flow: initial set -> ((explore ->) acquire -> label -> fine-tune -> evaluate) until done.

The flow only orchestrates. Its state lives in the database: each round moves through
``(explored ->) selected -> labelled -> trained -> evaluated`` (``explored`` only with an
``exploration`` section), and running the flow again for the same
campaign continues from the first step that has not finished, so a killed run repeats no
finished QM job or fine-tune. One run at a time: the flow holds the campaign's lease
(:mod:`db.leases`) from before it touches the campaign until it ends, so a second run exits
naming the first (or waits for it), and only the holder resets what a killed run left behind.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from db import (
    CampaignStatus,
    RoundStatus,
    campaigns,
    init_db,
    labels,
    leases,
    registry,
    reports,
    rounds,
    session_scope,
    structures,
)
from flows.label import dispatch_labels
from flows.monitoring import close_killed_runs, final_state, publish_overview, publish_selection
from tangentlab.config import CampaignConfig, make_config
from tangentlab.stopping import StopDecision, stop_decision
from tasks._db import database_url, engine_for, has_password, redact_url
from tasks.acquire import acquire
from tasks.evaluate import evaluate_model
from tasks.explore import explore_round
from tasks.interrupt import Interrupted, check_stop
from tasks.label import claim_timeout_s
from tasks.setup import setup_campaign, starting_model, stored_config
from tasks.train import finetune_round

NEXT_STEP = {
    RoundStatus.EXPLORED: "acquisition from the explored candidates",
    RoundStatus.SELECTED: "labelling",
    RoundStatus.LABELLED: "fine-tuning",
    RoundStatus.TRAINED: "evaluation",
    RoundStatus.EVALUATED: "the stop decision, then the next round's acquisition",
}


def default_database_url() -> str:
    """``TANGENTLAB_DATABASE_URL``, else the Prefect Secret block named by
    ``TANGENTLAB_DATABASE_SECRET``, else ``sqlite:///tangentlab.db``."""
    return database_url()


def _label_all(url: str, name: str, config: CampaignConfig, structure_ids: list[int], purpose: str) -> None:
    dispatch_labels(url, name, config, structure_ids, purpose=purpose)


def _starting_model(url: str, campaign_id: int, config: CampaignConfig) -> tuple[int, dict | None]:
    """Register the starting model once (weights-only, with the named file's path and sha256);
    return its version id and stored test errors."""
    with session_scope(engine_for(url)) as session:
        versions = registry.model_versions(session, campaign_id)
        if not versions:
            path, source = starting_model(config)
            versions = [registry.register_model(session, campaign_id, path,
                                                hyperparameters={"source": "starting model", **source})]
        return versions[0].id, (versions[0].metrics or {}).get("test")


def _publish(url: str, campaign_id: int, cfg: CampaignConfig, error: str | None = None,
             decision: StopDecision | None = None) -> None:
    """The campaign overview artifact (monitoring never stops the campaign: a failure is a warning)."""
    try:
        publish_overview(url, campaign_id, cfg, error=error, decision=decision)
    except Exception as exc:
        get_run_logger().warning("campaign overview artifact not published: %s", exc)


def _publish_selection(url: str, campaign_id: int, cfg: CampaignConfig, number: int, *, log: bool = True) -> None:
    try:
        rows = publish_selection(url, campaign_id, cfg.name, number)
    except Exception as exc:
        get_run_logger().warning("selection artifact of round %d not published: %s", number, exc)
        return
    scored = [] if not log else [r for r in rows if r["score"] is not None]
    if scored:
        get_run_logger().info(
            "round %d selected %s", number,
            ", ".join(f"{r['formula']} (structure {r['structure_id']}, score {r['score']:.3g}"
                      + ("" if r["predicted_force_error_meV_A"] is None
                         else f", predicted force error {r['predicted_force_error_meV_A']:.0f} meV/Å") + ")"
                      for r in scored))


def _run_name() -> str:
    parameters = flow_run.parameters
    name = parameters.get("name") or (parameters.get("config") or {}).get("name") or "quickstart"
    return f"campaign {name}"


@flow(name="campaign", flow_run_name=_run_name, log_prints=True)
def campaign(config: dict | None = None, name: str | None = None, database_url: str | None = None,
             wait: bool = False) -> dict:
    """Run (or resume) an active-learning campaign until its targets or a budget stop it.

    Parameters
    ----------
    config
        Campaign configuration (see :class:`tangentlab.config.CampaignConfig`); used when the
        campaign is created. Leave out to resume the campaign ``name`` with its stored one.
    name
        Name of a campaign to resume.
    database_url
        SQLAlchemy URL without a password (flow parameters are stored by the Prefect server);
        default :func:`default_database_url` (environment or Prefect Secret block).
    wait
        If another run holds the campaign's lease, wait for it instead of failing with
        :class:`db.leases.LeaseHeldError`.

    Returns
    -------
    dict
        ``status``, ``reason``, and the test errors of every model version. The flow run ends
        in a ``Completed`` state named by the outcome ("Targets met", "Round budget
        exhausted", ...: :func:`flows.monitoring.final_state` of the stop decision's ``budget``)
        with the stop reason as its message, which the UI's runs list shows.
    """
    logger = get_run_logger()
    if database_url is not None and has_password(database_url):
        raise ValueError(f"database_url {redact_url(database_url)} carries a password: flow parameters are "
                         "stored in the clear, so pass it as TANGENTLAB_DATABASE_URL or a Prefect Secret block "
                         "named by TANGENTLAB_DATABASE_SECRET")
    url = database_url or default_database_url()
    if config is None and name is None:
        raise ValueError("give a campaign configuration or the name of a campaign to resume")
    logger.info("database: %s", redact_url(url))
    cfg = stored_config(url, name) if config is None else make_config(config)

    def waiting(holder: leases.Holder) -> None:
        logger.info("waiting for the run of campaign %r by %s to end", cfg.name, holder.describe())

    init_db(engine_for(url))  # the lease table too, on a database no run has used yet
    with leases.hold(engine_for(url), cfg.name, flow_run_id=flow_run.id, wait=wait,
                     on_wait=waiting) as lease:
        return _run(url, cfg, lease)


def _run(url: str, cfg: CampaignConfig, lease: leases.Lease):
    """The campaign's steps, run while this process holds its lease; the flow's final state
    is named by the outcome (:func:`flows.monitoring.final_state`) and holds the summary."""
    campaign_id = setup_campaign.with_options(task_run_name=f"set up {cfg.name}")(url, cfg)
    try:
        return _steps(url, campaign_id, cfg, lease)
    except (Interrupted, leases.LeaseLostError):
        raise  # not the campaign's outcome: it continues on resume
    except Exception as exc:
        _publish(url, campaign_id, cfg, error=f"{type(exc).__name__}: {exc}")
        raise


def _steps(url: str, campaign_id: int, cfg: CampaignConfig, lease: leases.Lease):
    """The campaign's steps, run while this process holds its lease."""
    logger = get_run_logger()
    cfg = stored_config(url, cfg.name)
    engine = engine_for(url)
    run_start = time.perf_counter()
    with session_scope(engine) as session:
        stale = labels.reset_stale_running(session, campaign_id, claim_timeout_s())
        campaigns.set_campaign_status(session, campaign_id, CampaignStatus.RUNNING)
        test_ids = [s.id for s in structures.campaign_structures(session, campaign_id, split="test")]
        done = rounds.campaign_rounds(session, campaign_id)
        previous_wall = sum((r.timings or {}).get("round_wall_s", 0.0) for r in done)
        last = done[-1]
        where = (last.number, last.status)
    if stale:
        logger.info("reset %d labels left running by a killed run to pending: they run again, "
                    "finished labels are kept (labels whose workers still run are left to them)", stale)
    if where != (0, RoundStatus.SELECTED):
        logger.info("resuming campaign %r at round %d, which is %s: next step is %s", cfg.name, where[0],
                    where[1].value, NEXT_STEP[where[1]])
    # Only the run whose dead or expired lease this one took over can be left Running by a
    # killed process; a run starting beside this one or waiting for the lease is alive.
    replaced = lease.previous.flow_run_id if lease.previous is not None else None
    closed = []
    if replaced:
        closed = close_killed_runs(cfg.name, in_process_labelling=cfg.qm.deployment is None,
                                   flow_run_ids=[replaced])
    if closed:
        logger.info("marked %d flow runs left Running by a killed process as Crashed: %s", len(closed),
                    ", ".join(closed))

    _checkpoint(lease, cfg.name)
    _label_all(url, cfg.name, cfg, test_ids, "test set")
    _checkpoint(lease, cfg.name)
    baseline_id, baseline_metrics = _starting_model(url, campaign_id, cfg)
    if baseline_metrics is None:
        baseline_metrics = evaluate_model.with_options(task_run_name="evaluate starting model")(
            url, campaign_id, baseline_id, cfg.device)
    logger.info("starting model: energy MAE %.1f meV/atom, force MAE %.1f meV/Å",
                baseline_metrics["energy_mae_mev_per_atom"], baseline_metrics["force_mae_mev_per_a"])
    with session_scope(engine) as session:
        test_set = reports.test_set_counts(session, campaign_id)
    if test_set["failed"]:
        logger.warning("%d of %d test structures failed QM: the test errors are measured on the %d labelled",
                       test_set["failed"], test_set["structures"], test_set["done"])
    _publish(url, campaign_id, cfg)

    while True:
        _checkpoint(lease, cfg.name)  # and before each step below: no new step after a lost
        # lease or a Ctrl-C
        round_start = time.perf_counter()
        with session_scope(engine) as session:
            current = rounds.campaign_rounds(session, campaign_id)[-1]
            number, status = current.number, current.status
            selected = [e["structure_id"] for e in current.selected or []]
            explored_with = current.model_version_id
        if status == RoundStatus.EXPLORED:  # a run stopped between exploration and acquisition
            _acquire(url, campaign_id, cfg, number, explored_with, lease)
            with session_scope(engine) as session:
                selected = [e["structure_id"] for e in rounds.get_round(session, campaign_id, number).selected]
            status = RoundStatus.SELECTED
        if status == RoundStatus.SELECTED:
            if number == 0:
                _publish_selection(url, campaign_id, cfg, 0)
            _label_all(url, cfg.name, cfg, selected, f"round {number}")
            _publish_selection(url, campaign_id, cfg, number, log=False)  # now with the labels' outcomes
            _checkpoint(lease, cfg.name)
            _advance_round(url, campaign_id, number, RoundStatus.LABELLED)
            status = RoundStatus.LABELLED
        if status == RoundStatus.LABELLED:
            _checkpoint(lease, cfg.name)
            finetune_round.with_options(task_run_name=f"fine-tune round {number}")(url, campaign_id, cfg, number)
            status = RoundStatus.TRAINED
        with session_scope(engine) as session:
            current = rounds.get_round(session, campaign_id, number)
            trained_id = current.trained_model_id
        if status == RoundStatus.TRAINED:
            metrics = evaluate_model.with_options(task_run_name=f"evaluate round {number} (model {trained_id})")(
                url, campaign_id, trained_id, cfg.device)
            _checkpoint(lease, cfg.name)
            with session_scope(engine) as session:
                current = rounds.get_round(session, campaign_id, number)
                timings = {**(current.timings or {}),
                           "round_wall_s": (current.timings or {}).get("round_wall_s", 0.0)
                           + time.perf_counter() - round_start}
                rounds.advance_round(session, current, RoundStatus.EVALUATED,
                                     metrics={"test": metrics}, timings=timings)
            logger.info("round %d: energy MAE %.1f meV/atom, force MAE %.1f meV/Å (model %d)", number,
                        metrics["energy_mae_mev_per_atom"], metrics["force_mae_mev_per_a"], trained_id)
            _publish(url, campaign_id, cfg)
        decision = _decide(url, campaign_id, cfg, previous_wall + time.perf_counter() - run_start)
        _checkpoint(lease, cfg.name)
        if decision is not None:
            with session_scope(engine) as session:
                campaigns.set_campaign_status(session, campaign_id, decision.status, decision.reason)
            logger.info("campaign %r stopped (%s): %s", cfg.name, decision.status, decision.reason)
            _publish(url, campaign_id, cfg, decision=decision)
            return final_state(decision, data=summary(url, campaign_id))
        if cfg.exploration is not None:
            explore_round.with_options(task_run_name=f"explore round {number + 1} ({cfg.exploration.engines()})")(
                url, campaign_id, cfg, number + 1, trained_id)
            _checkpoint(lease, cfg.name)
        _acquire(url, campaign_id, cfg, number + 1, trained_id, lease)


def _acquire(url: str, campaign_id: int, cfg: CampaignConfig, number: int, model_id: int,
             lease: leases.Lease) -> None:
    acquire.with_options(task_run_name=f"acquire round {number} ({cfg.acquisition.signal})")(
        url, campaign_id, cfg, number, model_id)
    _checkpoint(lease, cfg.name)
    _publish_selection(url, campaign_id, cfg, number)


def _checkpoint(lease: leases.Lease, name: str) -> None:
    """Stop here if another run took the lease over, or the user pressed Ctrl-C."""
    lease.check()
    check_stop(name)


def _advance_round(url: str, campaign_id: int, number: int, status: RoundStatus) -> None:
    with session_scope(engine_for(url)) as session:
        rounds.advance_round(session, rounds.get_round(session, campaign_id, number), status)


def _decide(url: str, campaign_id: int, cfg: CampaignConfig, wall_time_s: float) -> StopDecision | None:
    with session_scope(engine_for(url)) as session:
        last = rounds.campaign_rounds(session, campaign_id)[-1]
        labels_used = len(labels.labelled(session, campaign_id, split=["train", "valid"]))
        metrics = (last.metrics or {})["test"]
        failed = labels.failed_structure_ids(session, campaign_id)
        # With exploration the pool grows every round: an empty pool is no reason to stop.
        pool_remaining = None if cfg.exploration is not None else sum(
            1 for s in structures.campaign_structures(session, campaign_id, split="pool") if s.id not in failed)
    decision = stop_decision(
        energy_mae=metrics["energy_mae_mev_per_atom"], force_mae=metrics["force_mae_mev_per_a"],
        targets=cfg.targets, labels_used=labels_used, rounds_done=last.number,
        wall_time_s=wall_time_s, budgets=cfg.budgets, pool_remaining=pool_remaining,
    )
    if decision is None:
        targets, budgets = cfg.targets, cfg.budgets
        get_run_logger().info(
            "round %d: continuing: targets not met (energy MAE %.1f vs %g meV/atom, force MAE %.1f vs %g meV/Å); "
            "budgets left: %d labels, %d rounds, %.0f s wall time, %s candidates",
            last.number, metrics["energy_mae_mev_per_atom"], targets.energy_mae_mev_per_atom,
            metrics["force_mae_mev_per_a"], targets.force_mae_mev_per_a, budgets.max_labels - labels_used,
            budgets.max_rounds - last.number, budgets.max_wall_time_s - wall_time_s,
            "explored" if pool_remaining is None else pool_remaining)
    return decision


def summary(url: str, campaign_id: int) -> dict:
    """Status, stop reason, label counts and the test errors of every model version."""
    with session_scope(engine_for(url)) as session:
        camp = campaigns.campaign_by_id(session, campaign_id)
        versions = [
            {"id": v.id, "round": v.round_number, "path": v.path, "test": (v.metrics or {}).get("test")}
            for v in registry.model_versions(session, campaign_id)
        ]
        return {
            "name": camp.name,
            "status": str(camp.status.value if hasattr(camp.status, "value") else camp.status),
            "reason": camp.stop_reason,
            "labels": reports.label_counts(session, campaign_id),
            "models": versions,
        }

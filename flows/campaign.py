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
from collections.abc import Callable
from dataclasses import dataclass, field

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.label import dispatch_labels
from flows.monitoring import close_killed_runs, final_state, publish_overview, publish_selection
from flows.stream import await_initial, keep_labelling, rerank, run_stream, stop_labelling
from tangentlab.config import CampaignConfig, interval_level, make_config
from tangentlab.stopping import StopDecision
from tasks._db import redact_url, run_database_url
from tasks.acquire import acquire
from tasks.evaluate import evaluate_model, evaluate_round, reevaluate_round
from tasks.explore import explore_round
from tasks.interrupt import Interrupted, check_stop
from tasks.label import claim_timeout_s
from tasks.setup import set_up, stored_config
from tasks.steps import (
    Holder,
    Lease,
    LeaseLostError,
    RoundStatus,
    Where,
    campaign_lease,
    count_test_set,
    current_round,
    decide,
    finish,
    mark_labelled,
    open_campaign,
    starting_model_version,
    summary,
)
from tasks.testset import evaluation_is_stale, grow_test_set
from tasks.train import finetune_round

NEXT_STEP = {
    RoundStatus.EXPLORED: "acquisition from the explored candidates",
    RoundStatus.SELECTED: "labelling",
    RoundStatus.LABELLED: "fine-tuning",
    RoundStatus.TRAINED: "evaluation",
    RoundStatus.EVALUATED: "the stop decision, then the next round's acquisition",
}


@dataclass
class Run:
    """One run of a campaign: where it is stored, its configuration, the lease it holds and
    its clocks (the wall time of earlier runs, this run's start, the current round's start)."""

    url: str
    campaign_id: int
    cfg: CampaignConfig
    lease: Lease
    previous_wall_s: float = 0.0
    test_ids: list[int] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    round_start: float = field(default_factory=time.perf_counter)

    def checkpoint(self) -> None:
        """Stop here if another run took the lease over, or the user pressed Ctrl-C."""
        self.lease.check()
        check_stop(self.cfg.name)

    def wall_time_s(self) -> float:
        return self.previous_wall_s + time.perf_counter() - self.started

    def publish(self, error: str | None = None, decision: StopDecision | None = None) -> None:
        """The campaign overview artifact (monitoring never stops the campaign: a failure is a warning)."""
        try:
            publish_overview(self.url, self.campaign_id, self.cfg, error=error, decision=decision)
        except Exception as exc:
            get_run_logger().warning("campaign overview artifact not published: %s", exc)

    def publish_selection(self, number: int, *, log: bool = True) -> None:
        """Round ``number``'s selection artifact; with ``log``, the picks in the log too."""
        try:
            rows = publish_selection(self.url, self.campaign_id, self.cfg.name, number)
        except Exception as exc:
            get_run_logger().warning(
                "selection artifact of round %d not published: %s", number, exc
            )
            return
        scored = [r for r in rows if r["score"] is not None] if log else []
        if scored:
            get_run_logger().info(
                "round %d selected %s", number, ", ".join(_pick_text(r) for r in scored)
            )

    def label(self, structure_ids: list[int], purpose: str) -> None:
        dispatch_labels(self.url, self.cfg.name, self.cfg, structure_ids, purpose=purpose)


def _pick_text(row: dict) -> str:
    predicted = row["predicted_force_error_meV_A"]
    return (
        f"{row['formula']} (structure {row['structure_id']}, score {row['score']:.3g}"
        + ("" if predicted is None else f", predicted force error {predicted:.0f} meV/Å")
        + ")"
    )


def _run_name() -> str:
    parameters = flow_run.parameters
    name = parameters.get("name") or (parameters.get("config") or {}).get("name") or "quickstart"
    return f"campaign {name}"


@flow(name="campaign", flow_run_name=_run_name, log_prints=True)
def campaign(
    config: dict | None = None,
    name: str | None = None,
    database_url: str | None = None,
    wait: bool = False,
) -> dict:
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
        default :func:`db.settings.database_url` (environment or Prefect Secret block).
    wait
        If another run holds the campaign's lease, wait for it instead of failing with
        :class:`tasks.steps.LeaseHeldError`.

    Returns
    -------
    dict
        ``status``, ``reason``, and the test errors of every model version. The flow run ends
        in a ``Completed`` state named by the outcome ("Targets met", "Round budget
        exhausted", ...: :func:`flows.monitoring.final_state` of the stop decision's ``budget``)
        with the stop reason as its message, which the UI's runs list shows.
    """
    logger = get_run_logger()
    url = run_database_url(database_url)
    if config is None and name is None:
        raise ValueError("give a campaign configuration or the name of a campaign to resume")
    logger.info("database: %s", redact_url(url))
    cfg = stored_config(url, name) if config is None else make_config(config)

    def waiting(holder: Holder) -> None:
        logger.info("waiting for the run of campaign %r by %s to end", cfg.name, holder.describe())

    with campaign_lease(
        url, cfg.name, flow_run_id=flow_run.id, wait=wait, on_wait=waiting
    ) as lease:
        return _run(url, cfg, lease)


def _run(url: str, cfg: CampaignConfig, lease: Lease):
    """The campaign's steps, run while this process holds its lease; the flow's final state
    is named by the outcome (:func:`flows.monitoring.final_state`) and holds the summary."""
    campaign_id, cfg = set_up.with_options(task_run_name=f"set up {cfg.name}")(url, cfg)
    run = Run(url, campaign_id, cfg, lease)
    try:
        return _steps(run)
    except (Interrupted, LeaseLostError):
        raise  # not the campaign's outcome: it continues on resume
    except Exception as exc:
        run.publish(error=f"{type(exc).__name__}: {exc}")
        raise


def _steps(run: Run):
    """Open the campaign, label its test set, evaluate its starting model, then run the step
    that the latest round's status names (:data:`STEPS`) until one returns the outcome."""
    _open(run)
    _start(run)
    run.round_start = time.perf_counter()
    if run.cfg.schedule == "async":
        return run_stream(run, STREAM_STEPS)
    while True:
        run.checkpoint()  # and before each step below: no new step after a lost lease or a Ctrl-C
        where = current_round(run.url, run.campaign_id)
        outcome = STEPS[where.status](run, where)
        if outcome is not None:
            return outcome


def _open(run: Run) -> None:
    """Mark the campaign running, reset labels a killed run left running, close its flow runs."""
    logger, cfg = get_run_logger(), run.cfg
    opened = open_campaign(run.url, run.campaign_id, claim_timeout_s())
    run.previous_wall_s, run.test_ids, where = opened.previous_wall_s, opened.test_ids, opened.where
    if opened.stale_labels:
        logger.info(
            "reset %d labels left running by a killed run to pending: they run again, finished "
            "labels are kept (labels whose workers still run are left to them)",
            opened.stale_labels,
        )
    if (where.number, where.status) != (0, RoundStatus.SELECTED):
        logger.info(
            "resuming campaign %r at round %d, which is %s: next step is %s",
            cfg.name,
            where.number,
            where.status.value,
            NEXT_STEP[where.status],
        )
    # Only the run whose dead or expired lease this one took over can be left Running by a
    # killed process; a run starting beside this one or waiting for the lease is alive.
    previous = run.lease.previous
    closed = (
        []
        if previous is None or not previous.flow_run_id
        else close_killed_runs(
            cfg.name,
            in_process_labelling=cfg.qm.deployment is None,
            flow_run_ids=[previous.flow_run_id],
        )
    )
    if closed:
        logger.info(
            "marked %d flow runs left Running by a killed process as Crashed: %s",
            len(closed),
            ", ".join(closed),
        )


def _start(run: Run) -> None:
    """Label the test set and evaluate the starting model (each once)."""
    logger = get_run_logger()
    run.checkpoint()
    run.label(run.test_ids, "test set")
    run.checkpoint()
    baseline_id, metrics = starting_model_version(run.url, run.campaign_id, run.cfg)
    if metrics is None:
        metrics = evaluate_model.with_options(task_run_name="evaluate starting model")(
            run.url, run.campaign_id, baseline_id, run.cfg.device, run.cfg.targets.force_atoms,
            level=interval_level(run.cfg),
        )
    logger.info(
        "starting model: energy MAE %.1f meV/atom, force MAE %.1f meV/Å",
        metrics["energy_mae_mev_per_atom"],
        metrics["force_mae_mev_per_a"],
    )
    test_set = count_test_set(run.url, run.campaign_id)
    if test_set["failed"]:
        logger.warning(
            "%d of %d test structures failed QM: the test errors are measured on the %d labelled",
            test_set["failed"],
            test_set["structures"],
            test_set["done"],
        )
    run.publish()


def _acquire_explored(run: Run, where: Where) -> None:
    """``explored``: a run stopped between exploration and acquisition."""
    _acquire(run, where.number, where.model_version_id)


def _label(run: Run, where: Where) -> None:
    """``selected -> labelled``: the round's QM jobs, then its selection artifact with their outcomes."""
    if where.number == 0:
        run.publish_selection(0)
    run.label(where.selected, f"round {where.number}")
    run.publish_selection(where.number, log=False)  # now with the labels' outcomes
    run.checkpoint()
    mark_labelled.with_options(task_run_name=f"round {where.number} labelled")(
        run.url, run.campaign_id, where.number
    )


def _train(run: Run, where: Where) -> None:
    """``labelled -> trained``."""
    finetune_round.with_options(task_run_name=f"fine-tune round {where.number}")(
        run.url, run.campaign_id, run.cfg, where.number
    )


def _evaluate(run: Run, where: Where) -> None:
    """``trained -> evaluated``: the round's model on the test set, then the overview."""
    evaluate_round.with_options(
        task_run_name=f"evaluate round {where.number} (model {where.trained_model_id})"
    )(
        run.url, run.campaign_id, where.number, run.cfg.device, run.round_start,
        run.cfg.targets.force_atoms, level=interval_level(run.cfg), config=run.cfg,
    )
    run.publish()


def _grow_test_set(run: Run, where: Where) -> None:
    """``evaluated``, with ``test_max_size``: measure the round's model again on a test set that
    grew since its evaluation (also after a resume), and grow the test set while its intervals
    are too wide to decide (:mod:`tasks.testset`)."""
    if run.cfg.test_max_size is None:
        return
    while True:
        if evaluation_is_stale(run.url, run.campaign_id):
            reevaluate_round.with_options(task_run_name=f"re-evaluate round {where.number}")(
                run.url, run.campaign_id, where.number, run.cfg.device, run.cfg.targets.force_atoms,
                level=interval_level(run.cfg), config=run.cfg,
            )
            run.publish()
        run.checkpoint()
        added = grow_test_set.with_options(task_run_name=f"grow test set after round {where.number}")(
            run.url, run.campaign_id, run.cfg, where.number, where.trained_model_id
        )
        if not added:
            return
        run.label(added, f"test set after round {where.number}")
        run.checkpoint()


def _decide(run: Run, where: Where) -> StopDecision | None:
    decision = decide.with_options(task_run_name=f"decide after round {where.number}")(
        run.url, run.campaign_id, run.cfg, run.wall_time_s()
    )
    run.checkpoint()
    return decision


def _finish(run: Run, decision: StopDecision):
    """Store the outcome, publish it and return the flow's final state."""
    finish.with_options(task_run_name=f"finish: {decision.status}")(
        run.url, run.campaign_id, decision
    )
    get_run_logger().info(
        "campaign %r stopped (%s): %s", run.cfg.name, decision.status, decision.reason
    )
    run.publish(decision=decision)
    return final_state(decision, data=summary(run.url, run.campaign_id))


def _next_round(run: Run, where: Where):
    """``evaluated``: grow the test set if it cannot decide (``test_max_size``), then stop with
    the outcome, or explore (with an ``exploration`` section) and acquire the next round."""
    _grow_test_set(run, where)
    decision = _decide(run, where)
    if decision is not None:
        return _finish(run, decision)
    cfg, number = run.cfg, where.number + 1
    if cfg.exploration is not None:
        explore_round.with_options(
            task_run_name=f"explore round {number} ({cfg.exploration.engines()})"
        )(run.url, run.campaign_id, cfg, number, where.trained_model_id)
        run.checkpoint()
    _acquire(run, number, where.trained_model_id)
    run.round_start = time.perf_counter()
    return None


def _acquire(run: Run, number: int, model_id: int) -> None:
    acquire.with_options(task_run_name=f"acquire round {number} ({run.cfg.acquisition.signal})")(
        run.url, run.campaign_id, run.cfg, number, model_id
    )
    run.checkpoint()
    run.publish_selection(number)


#: The step each status of the latest round calls for (:mod:`tasks.steps`).
STEPS: dict[RoundStatus, Callable] = {
    RoundStatus.EXPLORED: _acquire_explored,
    RoundStatus.SELECTED: _label,
    RoundStatus.LABELLED: _train,
    RoundStatus.TRAINED: _evaluate,
    RoundStatus.EVALUATED: _next_round,
}


def _stream_evaluate(run: Run, where: Where) -> None:
    """``trained -> evaluated`` of an asynchronous round: re-rank the queue by the new model,
    then evaluate it."""
    rerank(run, where)
    _evaluate(run, where)


def _stream_next(run: Run, where: Where):
    """``evaluated`` of an asynchronous round: stop (the queue's unstarted picks go back to
    the pool), or keep labelling and start the next round when enough labels arrived."""
    _grow_test_set(run, where)
    decision = _decide(run, where)
    if decision is not None:
        stop_labelling(run)
        return _finish(run, decision)
    keep_labelling(run, where)
    return None


#: Asynchronous rounds (``schedule: async``, :mod:`flows.stream`): labelling runs in the
#: background, so a round is opened already labelled and ``selected`` is only round 0's.
STREAM_STEPS: dict[RoundStatus, Callable] = {
    RoundStatus.SELECTED: await_initial,
    RoundStatus.LABELLED: _train,
    RoundStatus.TRAINED: _stream_evaluate,
    RoundStatus.EVALUATED: _stream_next,
}

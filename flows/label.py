"""The labelling flow: run a campaign's pending QM jobs on workers, watching their progress.

The campaign flow calls it as a subflow for every batch (test set, initial set, each round),
or, with ``qm.deployment`` set, runs it as a deployment on a CPU work pool (``label-cpu`` in
``deployments/prefect.yaml``). The label workers run on the task runner that
``qm.task_runner`` names: threads of this process, or Dask workers (a LocalCluster, a running
scheduler at ``qm.dask_address``, or a ``dask_jobqueue`` cluster for Slurm/PBS).
Every job claims its label atomically in the database, so any number of workers, on any
number of machines, never run one label twice.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from db import campaigns, labels, reports, session_scope
from tangentlab.config import CampaignConfig, QMSettings, make_config
from tasks._db import database_url as environment_database_url
from tasks._db import engine_for, has_password, redact_url
from tasks.interrupt import stop_requested
from tasks.label import claim_timeout_s, label_worker, oracle_for, queue_labels
from tasks.progress import Progress, artifact_key

POLL_S = 0.2  # how often the flow checks whether its workers finished
PROGRESS_S = 2.0  # how often it updates the progress artifact


def qm_task_runner(settings: QMSettings) -> TaskRunner:
    """The task runner the label workers run on (see :class:`tangentlab.config.QMSettings`).

    For Dask, worker processes are made non-daemonic: a QM job with a timeout runs in a child
    process, which a daemonic process may not start. On a cluster started elsewhere (``dask
    worker``, ``dask_jobqueue``) set ``DASK_DISTRIBUTED__WORKER__DAEMON=False`` in the
    workers' environment for the same reason.
    """
    if settings.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=settings.max_parallel)
    import dask
    from prefect_dask import DaskTaskRunner

    dask.config.set({"distributed.worker.daemon": False})
    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    kwargs = dict(settings.dask_cluster_kwargs)
    if settings.dask_cluster_class is None:
        for key, value in (("n_workers", settings.max_parallel), ("threads_per_worker", 1), ("processes", True)):
            kwargs.setdefault(key, value)
    try:
        return DaskTaskRunner(cluster_class=settings.dask_cluster_class, cluster_kwargs=kwargs,
                              adapt_kwargs=settings.dask_adapt_kwargs or None)
    except (ImportError, AttributeError, ValueError) as exc:
        name = settings.dask_cluster_class
        hint = " (pip install -e '.[hpc]' for dask_jobqueue)" if "jobqueue" in str(name) else ""
        raise ImportError(f"qm.dask_cluster_class {name!r} cannot be imported: {exc}{hint}") from exc


def _config(url: str, name: str) -> tuple[int, CampaignConfig]:
    with session_scope(engine_for(url)) as session:
        campaign = campaigns.get_campaign(session, name)
        return campaign.id, make_config(campaign.config, source=f"of campaign {name!r}")


def _label_counts(url: str, campaign_id: int, key: str, structure_ids: list[int] | None) -> dict[str, int]:
    """Labels per status at the campaign's level, for ``structure_ids`` (None: all of the campaign)."""
    with session_scope(engine_for(url)) as session:
        return reports.label_counts(session, campaign_id, key, structure_ids)


def _open_structure_ids(url: str, campaign_id: int, key: str) -> list[int]:
    with session_scope(engine_for(url)) as session:
        return labels.open_structure_ids(session, campaign_id, key)


def _run_name() -> str:
    from prefect.runtime import flow_run

    parameters = flow_run.parameters
    return run_name(parameters.get("name"), parameters.get("structure_ids"), parameters.get("purpose"))


def run_name(name: str, structure_ids: list[int] | None, purpose: str | None) -> str:
    """``label <campaign>: <purpose> (<n> structures)``, e.g. ``label h2: round 2 (5 structures)``."""
    count = "all pending" if structure_ids is None else (
        f"{len(structure_ids)} structure{'s' if len(structure_ids) != 1 else ''}")
    return f"label {name}: {purpose} ({count})" if purpose else f"label {name} ({count})"


@flow(name="label", flow_run_name=_run_name, log_prints=True)
def label(name: str, structure_ids: list[int] | None = None, database_url: str | None = None,
          purpose: str | None = None) -> dict[str, Any]:
    """Label structures of campaign ``name`` with its oracle until none of them is pending.

    Parameters
    ----------
    name
        Campaign name (its stored configuration gives the oracle and the QM settings).
    structure_ids
        Structures to label (labels are created for those that have none); None: every
        pending label of the campaign.
    database_url
        SQLAlchemy URL without a password; default from the environment or a Prefect Secret
        block (see :func:`tasks._db.database_url`).
    purpose
        What these labels are for (``"test set"``, ``"round 2"``): names the flow run and its
        progress artifact (``campaign-<name>-<purpose>-labelling``).

    Returns
    -------
    dict
        Label counts per status for these structures, and ``failed_labels``: those that failed
        for good, with their reasons and run directories.
    """
    logger = get_run_logger()
    url = database_url or environment_database_url()
    campaign_id, cfg = _config(url, name)
    key = labels.level_key(oracle_for(cfg).level)
    if structure_ids is not None:
        created = queue_labels.with_options(task_run_name=f"queue {len(structure_ids)} labels")(
            url, cfg, list(structure_ids))
        if created:
            logger.info("queued %d new labels", created)
    ids = list(structure_ids) if structure_ids is not None else _open_structure_ids(url, campaign_id, key)
    wanted = set(ids)
    before = _label_counts(url, campaign_id, key, ids)
    failed_before = [row for row in _failed(url, campaign_id) if row["structure_id"] in wanted]
    todo = before["pending"] + before["running"]
    if todo == 0:
        logger.info("all %d labels already finished (%d done, %d failed): no QM job to run",
                    len(ids), before["done"], before["failed"])
        return {**before, "failed_labels": failed_before}
    logger.info("%d labels to run (%d already done) on up to %d %s worker(s), oracle %s", todo, before["done"],
                min(cfg.qm.max_parallel, todo), cfg.qm.task_runner, oracle_for(cfg).level)
    progress = Progress(artifact_key("campaign", name, purpose or "", "labelling"),
                        f"Campaign {name}{' · ' + purpose if purpose else ''}: labelling {todo} structures")
    counts, waiting = before, False
    while True:
        if counts["pending"]:
            _run_workers(url, campaign_id, cfg, min(cfg.qm.max_parallel, counts["pending"]),
                         lambda: _show(progress, _label_counts(url, campaign_id, key, ids), before, todo))
            counts = _label_counts(url, campaign_id, key, ids)
        if not counts["running"] or stop_requested():
            break
        # Labels still running belong to workers of another run (a killed campaign's labelling
        # on a work pool, say): wait for them rather than run their jobs twice; a claim whose
        # worker dies (no heartbeat for claim_timeout_s) returns to pending and runs here.
        if not waiting:
            waiting = True
            logger.info("waiting for %d labels being computed by workers of another run (a claim without "
                        "a heartbeat for %.0f s is taken over)", counts["running"], claim_timeout_s())
        time.sleep(max(POLL_S, min(PROGRESS_S, claim_timeout_s() / 3)))
        with session_scope(engine_for(url)) as session:
            taken = labels.reset_stale_running(session, campaign_id, claim_timeout_s(), ids)
        if taken:
            logger.info("took over %d labels whose workers stopped: they run here", taken)
        counts = _label_counts(url, campaign_id, key, ids)
        _show(progress, counts, before, todo)
    after = counts
    _show(progress, after, before, todo)
    failed = [row for row in _failed(url, campaign_id) if row["structure_id"] in wanted]
    known = {row["label_id"] for row in failed_before}
    new_failures = [row for row in failed if row["label_id"] not in known]
    logger.info("labelling finished: %d done, %d failed for good", after["done"] - before["done"], len(new_failures))
    for row in new_failures:
        logger.warning("label %d (%s, structure %d) failed after %d attempts: %s (run dir %s); the structure "
                       "is never selected again", row["label_id"], row["formula"], row["structure_id"],
                       row["attempts"], row["reason"], row["run_dir"])
    return {**after, "failed_labels": failed}


def _run_workers(url: str, campaign_id: int, cfg: CampaignConfig, workers: int, show) -> None:
    """Run ``workers`` label workers on the campaign's task runner until none finds a pending
    label; ``show()`` updates the progress every ``PROGRESS_S``."""
    runner = qm_task_runner(cfg.qm)
    with runner:
        futures = [runner.submit(label_worker.with_options(task_run_name=f"label worker {w}"),
                                 parameters={"url": url, "campaign_id": campaign_id, "config": cfg, "worker": w})
                   for w in range(workers)]
        shown = time.monotonic()
        while not all(f.wrapped_future.done() for f in futures):
            time.sleep(POLL_S)
            if time.monotonic() - shown >= PROGRESS_S:
                show()
                shown = time.monotonic()
        for future in futures:
            future.result()


def _failed(url: str, campaign_id: int) -> list[dict[str, Any]]:
    with session_scope(engine_for(url)) as session:
        return reports.failed_label_rows(session, campaign_id)


def _show(progress: Progress, counts: dict[str, int], before: dict[str, int], todo: int) -> None:
    finished = counts["done"] + counts["failed"] - before["done"] - before["failed"]
    progress.update(100.0 * finished / todo, f"{finished}/{todo} QM jobs finished "
                    f"({counts['done'] - before['done']} done, {counts['failed'] - before['failed']} failed, "
                    f"{counts['running']} running)")


def dispatch_labels(url: str, name: str, config: CampaignConfig, structure_ids: list[int],
                    purpose: str | None = None) -> None:
    """Label ``structure_ids``: in a ``label`` subflow, or on the deployment ``qm.deployment``;
    ``purpose`` (``"test set"``, ``"round 2"``) names the run.

    A URL with a password is never passed on as a flow parameter (the Prefect server stores
    parameters); the subflow, or the deployment's workers, read it from their environment.

    Raises
    ------
    RuntimeError
        If the labelling deployment's run does not complete.
    """
    passed_url = None if has_password(url) else url
    if config.qm.deployment is None:
        label(name=name, structure_ids=structure_ids, database_url=passed_url, purpose=purpose)
        return
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    logger.info("labelling %d structures on deployment %r (database %s)", len(structure_ids),
                config.qm.deployment, redact_url(url) if passed_url else "from the workers' environment")
    run = run_deployment(config.qm.deployment, parameters={"name": name, "structure_ids": structure_ids,
                                                           "database_url": passed_url, "purpose": purpose},
                         flow_run_name=run_name(name, structure_ids, purpose),
                         timeout=None, poll_interval=PROGRESS_S)
    if not run.state.is_completed():
        raise RuntimeError(f"labelling deployment {config.qm.deployment!r}: flow run {run.name} ended "
                           f"{run.state.name}: {run.state.message}")

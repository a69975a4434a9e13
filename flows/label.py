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

from tangentlab.config import CampaignConfig, QMSettings, config_json, read_stored_config
from tasks._db import has_password, redact_url, run_database_url
from tasks.interrupt import stop_requested
from tasks.label import (
    campaign_config,
    campaign_id_of,
    claim_timeout_s,
    failed_labels,
    label_counts,
    label_level_key,
    label_worker,
    open_structure_ids,
    oracle_for,
    queue_labels,
    take_over_stale,
)
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
        for key, value in (
            ("n_workers", settings.max_parallel),
            ("threads_per_worker", 1),
            ("processes", True),
        ):
            kwargs.setdefault(key, value)
    try:
        return DaskTaskRunner(
            cluster_class=settings.dask_cluster_class,
            cluster_kwargs=kwargs,
            adapt_kwargs=settings.dask_adapt_kwargs or None,
        )
    except (ImportError, AttributeError, ValueError) as exc:
        name = settings.dask_cluster_class
        hint = " (pip install -e '.[hpc]' for dask_jobqueue)" if "jobqueue" in str(name) else ""
        raise ImportError(
            f"qm.dask_cluster_class {name!r} cannot be imported: {exc}{hint}"
        ) from exc


def _run_name() -> str:
    from prefect.runtime import flow_run

    parameters = flow_run.parameters
    if parameters.get("stream"):
        return f"label {parameters.get('name')}: {parameters.get('purpose') or 'stream'} (streaming)"
    return run_name(
        parameters.get("name"), parameters.get("structure_ids"), parameters.get("purpose")
    )


def run_name(name: str, structure_ids: list[int] | None, purpose: str | None) -> str:
    """``label <campaign>: <purpose> (<n> structures)``, e.g. ``label h2: round 2 (5 structures)``."""
    count = (
        "all pending"
        if structure_ids is None
        else (f"{len(structure_ids)} structure{'s' if len(structure_ids) != 1 else ''}")
    )
    return f"label {name}: {purpose} ({count})" if purpose else f"label {name} ({count})"


@flow(name="label", flow_run_name=_run_name, log_prints=True)
def label(
    name: str,
    structure_ids: list[int] | None = None,
    database_url: str | None = None,
    purpose: str | None = None,
    config: dict | None = None,
    stream: str | None = None,
) -> dict[str, Any]:
    """Label structures of campaign ``name`` with its oracle until none of them is pending.

    Parameters
    ----------
    name
        Campaign name.
    structure_ids
        Structures to label (labels are created for those that have none); None: every
        pending label of the campaign.
    database_url
        SQLAlchemy URL without a password; default from the environment or a Prefect Secret
        block (see :func:`db.settings.database_url`).
    purpose
        What these labels are for (``"test set"``, ``"round 2"``): names the flow run and its
        progress artifact (``campaign-<name>-<purpose>-labelling``).
    config
        The campaign's configuration (its oracle and QM settings), as the campaign flow
        passes it down; None (a deployment run): the stored one.
    stream
        Asynchronous rounds: the token of the campaign's label stream. ``qm.max_parallel``
        workers claim the campaign's queued picks while that stream is open in the database
        (the campaign run closes it when it stops), instead of labelling ``structure_ids``.

    Returns
    -------
    dict
        Label counts per status for these structures, and ``failed_labels``: those that failed
        for good, with their reasons and run directories; with ``stream``, the jobs this run
        finished (``done``, ``failed``).
    """
    url = run_database_url(database_url)
    if config is None:
        campaign_id, cfg = campaign_config(url, name)
    else:
        campaign_id, cfg = (
            campaign_id_of(url, name),
            read_stored_config(config, source=f"of campaign {name!r}"),
        )
    if stream is not None:
        return _stream(url, campaign_id, cfg, stream)
    job = _Job(url, campaign_id, cfg, label_level_key(cfg), purpose)
    return job.run(structure_ids)


def _stream(url: str, campaign_id: int, cfg: CampaignConfig, stream: str) -> dict[str, int]:
    """Streaming label workers on the campaign's task runner until its stream closes."""
    logger = get_run_logger()
    logger.info("labelling the queue of asynchronous rounds on %d %s worker(s), oracle %s",
                cfg.qm.max_parallel, cfg.qm.task_runner, oracle_for(cfg).level)
    counts = _run_workers(url, campaign_id, cfg, cfg.qm.max_parallel, lambda: None, stream=stream)
    logger.info("the stream closed: %d done, %d failed for good here", counts["done"], counts["failed"])
    return counts


class _Job:
    """One labelling run: the campaign, its level's key and what the labels are for."""

    def __init__(
        self, url: str, campaign_id: int, cfg: CampaignConfig, key: str, purpose: str | None
    ) -> None:
        self.url, self.campaign_id, self.cfg, self.key, self.purpose = (
            url,
            campaign_id,
            cfg,
            key,
            purpose,
        )
        self.logger = get_run_logger()

    def counts(self, ids: list[int]) -> dict[str, int]:
        return label_counts(self.url, self.campaign_id, self.key, ids)

    def run(self, structure_ids: list[int] | None) -> dict[str, Any]:
        """Queue the labels, run the workers until none is pending, report new failures."""
        if structure_ids is not None:
            created = queue_labels.with_options(task_run_name=f"queue {len(structure_ids)} labels")(
                self.url, self.cfg, list(structure_ids)
            )
            if created:
                self.logger.info("queued %d new labels", created)
        ids = (
            list(structure_ids)
            if structure_ids is not None
            else open_structure_ids(self.url, self.campaign_id, self.key)
        )
        before = self.counts(ids)
        failed_before = failed_labels(self.url, self.campaign_id, set(ids))
        todo = before["pending"] + before["running"]
        if todo == 0:
            self.logger.info(
                "all %d labels already finished (%d done, %d failed): no QM job to run",
                len(ids),
                before["done"],
                before["failed"],
            )
            return {**before, "failed_labels": failed_before}
        self.logger.info(
            "%d labels to run (%d already done) on up to %d %s worker(s), oracle %s",
            todo,
            before["done"],
            min(self.cfg.qm.max_parallel, todo),
            self.cfg.qm.task_runner,
            oracle_for(self.cfg).level,
        )
        after = self.work(ids, before, todo)
        return {**after, "failed_labels": self.report(ids, before, after, failed_before)}

    def work(self, ids: list[int], before: dict[str, int], todo: int) -> dict[str, int]:
        """Run workers while labels are pending; wait for labels other runs' workers hold."""
        name, purpose = self.cfg.name, self.purpose
        progress = Progress(
            artifact_key("campaign", name, purpose or "", "labelling"),
            f"Campaign {name}{' · ' + purpose if purpose else ''}: labelling {todo} structures",
        )
        counts, waiting = before, False
        while True:
            if counts["pending"]:
                _run_workers(
                    self.url,
                    self.campaign_id,
                    self.cfg,
                    min(self.cfg.qm.max_parallel, counts["pending"]),
                    lambda: _show(progress, self.counts(ids), before, todo),
                )
                counts = self.counts(ids)
            if not counts["running"] or stop_requested():
                break
            # Labels still running belong to workers of another run (a killed campaign's labelling
            # on a work pool, say): wait for them rather than run their jobs twice; a claim whose
            # worker dies (no heartbeat for claim_timeout_s) returns to pending and runs here.
            if not waiting:
                waiting = True
                self.logger.info(
                    "waiting for %d labels being computed by workers of another run (a claim "
                    "without a heartbeat for %.0f s is taken over)",
                    counts["running"],
                    claim_timeout_s(),
                )
            time.sleep(max(POLL_S, min(PROGRESS_S, claim_timeout_s() / 3)))
            taken = take_over_stale(self.url, self.campaign_id, ids)
            if taken:
                self.logger.info("took over %d labels whose workers stopped: they run here", taken)
            counts = self.counts(ids)
            _show(progress, counts, before, todo)
        _show(progress, counts, before, todo)
        return counts

    def report(
        self,
        ids: list[int],
        before: dict[str, int],
        after: dict[str, int],
        failed_before: list[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """Log the labels that failed for good in this run; return all failed ones of ``ids``."""
        failed = failed_labels(self.url, self.campaign_id, set(ids))
        known = {row["label_id"] for row in failed_before}
        new_failures = [row for row in failed if row["label_id"] not in known]
        self.logger.info(
            "labelling finished: %d done, %d failed for good",
            after["done"] - before["done"],
            len(new_failures),
        )
        for row in new_failures:
            self.logger.warning(
                "label %d (%s, structure %d) failed after %d attempts: %s (run dir %s); the "
                "structure is never selected again",
                row["label_id"],
                row["formula"],
                row["structure_id"],
                row["attempts"],
                row["reason"],
                row["run_dir"],
            )
        return failed


def _run_workers(url: str, campaign_id: int, cfg: CampaignConfig, workers: int, show,
                 stream: str | None = None) -> dict[str, int]:
    """Run ``workers`` label workers on the campaign's task runner until none finds a pending
    label (with ``stream``: until that stream closes); ``show()`` updates the progress every
    ``PROGRESS_S``. Returns the jobs they finished (``done``, ``failed``)."""
    runner = qm_task_runner(cfg.qm)
    with runner:
        futures = [
            runner.submit(
                label_worker.with_options(task_run_name=f"label worker {w}"),
                parameters={"url": url, "campaign_id": campaign_id, "config": cfg, "worker": w,
                            "stream": stream},
            )
            for w in range(workers)
        ]
        shown = time.monotonic()
        while not all(f.wrapped_future.done() for f in futures):
            time.sleep(POLL_S)
            if time.monotonic() - shown >= PROGRESS_S:
                show()
                shown = time.monotonic()
        results = [future.result() for future in futures]
    return {key: sum(r[key] for r in results) for key in ("done", "failed")}


def _show(progress: Progress, counts: dict[str, int], before: dict[str, int], todo: int) -> None:
    finished = counts["done"] + counts["failed"] - before["done"] - before["failed"]
    progress.update(
        100.0 * finished / todo,
        f"{finished}/{todo} QM jobs finished "
        f"({counts['done'] - before['done']} done, {counts['failed'] - before['failed']} failed, "
        f"{counts['running']} running)",
    )


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
        label(name=name, structure_ids=structure_ids, database_url=passed_url, purpose=purpose,
              config=config_json(config))
        return
    from prefect.deployments import run_deployment

    get_run_logger().info("labelling %d structures on deployment %r (database %s)", len(structure_ids),
                          config.qm.deployment,
                          redact_url(url) if passed_url else "from the workers' environment")
    run = run_deployment(config.qm.deployment, parameters={"name": name, "structure_ids": structure_ids,
                                                           "database_url": passed_url, "purpose": purpose},
                         flow_run_name=run_name(name, structure_ids, purpose),
                         timeout=None, poll_interval=PROGRESS_S)
    if not run.state.is_completed():
        raise RuntimeError(f"labelling deployment {config.qm.deployment!r}: flow run {run.name} ended "
                           f"{run.state.name}: {run.state.message}")


def start_stream_deployment(url: str, config: CampaignConfig, stream: str) -> str:
    """Start a run of the labelling deployment ``qm.deployment`` whose workers claim the
    campaign's queued picks while ``stream`` is open (asynchronous rounds); returns its id
    without waiting for it. The database URL is passed as for :func:`dispatch_labels`."""
    from prefect.deployments import run_deployment

    passed_url = None if has_password(url) else url
    purpose = "asynchronous rounds"
    run = run_deployment(config.qm.deployment,
                         parameters={"name": config.name, "database_url": passed_url,
                                     "purpose": purpose, "stream": stream},
                         flow_run_name=f"label {config.name}: {purpose} (streaming)", timeout=0)
    get_run_logger().info("streaming labels on deployment %r: flow run %s (database %s)",
                          config.qm.deployment, run.name,
                          redact_url(url) if passed_url else "from the workers' environment")
    return str(run.id)


def stream_run_state(flow_run_id: str):
    """The Prefect state of a labelling deployment's run (:func:`start_stream_deployment`)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state

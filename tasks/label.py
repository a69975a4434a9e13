"""Label structures with the campaign's QM oracle; every job claims its label atomically."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from db import campaigns, labels, leases, queue, reports, session_scope
from tangentlab.config import QM_THREADS_ORACLES, CampaignConfig, read_stored_config
from tangentlab.oracles import Oracle, QMFailure, make_oracle
from tangentlab.paths import campaign_dir
from tasks._db import engine_for
from tasks.interrupt import stop_requested


def oracle_for(config: CampaignConfig) -> Oracle:
    """The campaign's oracle, checked (`make_oracle` raises ValueError naming the problem).

    A replay oracle without ``files`` reveals the labels stored in the campaign's own pool
    and test files.
    """
    spec = config.oracle.model_dump()
    if config.qm.num_threads is not None and spec.get("name") in QM_THREADS_ORACLES:
        spec.setdefault("num_threads", config.qm.num_threads)
    if spec.get("name") == "replay" and not spec.get("files"):
        spec["files"] = [*config.pool, *([config.test_file] if config.test_file else [])]
    return make_oracle(spec)


def label_level_key(config: CampaignConfig) -> str:
    """The level-of-theory key of the campaign's labels (:func:`db.labels.level_key`)."""
    return labels.level_key(oracle_for(config).level)


def campaign_config(url: str, name: str) -> tuple[int, CampaignConfig]:
    """Campaign ``name``'s id and stored configuration."""
    with session_scope(engine_for(url)) as session:
        campaign = campaigns.get_campaign(session, name)
        return campaign.id, read_stored_config(campaign.config, source=f"of campaign {name!r}")


def campaign_id_of(url: str, name: str) -> int:
    """Campaign ``name``'s id."""
    with session_scope(engine_for(url)) as session:
        return campaigns.get_campaign(session, name).id


def label_counts(url: str, campaign_id: int, key: str, structure_ids: list[int] | None) -> dict[str, int]:
    """Labels per status at the level ``key``, for ``structure_ids`` (None: all of the campaign)."""
    with session_scope(engine_for(url)) as session:
        return reports.label_counts(session, campaign_id, key, structure_ids)


def open_structure_ids(url: str, campaign_id: int, key: str) -> list[int]:
    """Structures whose label at the level ``key`` is pending or running."""
    with session_scope(engine_for(url)) as session:
        return labels.open_structure_ids(session, campaign_id, key)


def running_labels(url: str, campaign_id: int, config: CampaignConfig) -> int:
    """The campaign's labels some worker is computing now (at its level)."""
    return label_counts(url, campaign_id, label_level_key(config), None)["running"]


def failed_labels(url: str, campaign_id: int, structure_ids: set[int] | None = None) -> list[dict]:
    """Labels that failed for good (:func:`db.reports.failed_label_rows`), of ``structure_ids``
    (None: all)."""
    with session_scope(engine_for(url)) as session:
        rows = reports.failed_label_rows(session, campaign_id)
    return [row for row in rows if structure_ids is None or row["structure_id"] in structure_ids]


def take_over_stale(url: str, campaign_id: int, structure_ids: list[int]) -> int:
    """Return the labels of ``structure_ids`` whose workers stopped heartbeating to pending."""
    with session_scope(engine_for(url)) as session:
        return labels.reset_stale_running(session, campaign_id, claim_timeout_s(), structure_ids)


def claim_timeout_s() -> float:
    """Seconds without a heartbeat after which a label worker's claim counts as dead: the
    campaign lease's (`db.leases.expiry_s`)."""
    return leases.expiry_s()


@contextmanager
def _claim_heartbeat(engine, label_id: int, worker: str) -> Iterator[None]:
    """Renew ``worker``'s claim on ``label_id`` every heartbeat interval while the QM job runs,
    so that a new run of the campaign (or of its labelling) leaves the label to this worker."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(leases.heartbeat_interval()):
            try:
                with session_scope(engine) as session:
                    if not labels.heartbeat_label(session, label_id, worker):
                        return
            except Exception:  # the database is away for a moment: try again next beat
                continue

    thread = threading.Thread(target=beat, name=f"label-{label_id}-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@task(name="queue labels", cache_policy=NO_CACHE)
def queue_labels(url: str, config: CampaignConfig, structure_ids: list[int]) -> int:
    """Create pending labels for structures that have none at the campaign's level."""
    with session_scope(engine_for(url)) as session:
        return len(labels.ensure_labels(session, structure_ids, oracle_for(config).level))


STREAM_POLL_S = 0.2  # how often a streaming worker that found the queue empty looks again


def open_stream(url: str, campaign_id: int) -> str:
    """Open the campaign's label stream (:func:`db.queue.open_stream`); returns its token,
    which the streaming label workers get."""
    with session_scope(engine_for(url)) as session:
        return queue.open_stream(session, campaign_id)


def close_stream(url: str, campaign_id: int, token: str) -> None:
    """Tell the stream's label workers, wherever they run, to stop after their job."""
    with session_scope(engine_for(url)) as session:
        queue.close_stream(session, campaign_id, token)


class StreamClosed(Exception):
    """A streaming worker's claim after its stream closed: rolled back."""


def claim_next(engine, campaign_id: int, key: str, name: str, stream: str | None):
    """Claim the next pending label: ``(label_id, attempt, atoms)``, None if none is pending,
    or :class:`StreamClosed` (nothing claimed) once ``stream`` is closed."""
    try:
        with session_scope(engine) as session:
            claimed = labels.claim_labels(session, campaign_id, key, 1, name)
            if stream is not None and not queue.stream_open(session, campaign_id, stream):
                raise StreamClosed  # checked in the claim's transaction, which rolls back
            if not claimed:
                return None
            (label, atoms), = labels.labels_with_atoms(session, claimed)
            return label.id, label.attempts + 1, atoms
    except StreamClosed as closed:
        return closed


@task(name="label worker", cache_policy=NO_CACHE)
def label_worker(url: str, campaign_id: int, config: CampaignConfig, worker: int = 0,
                 stream: str | None = None) -> dict:
    """Claim pending labels one at a time and run them until none is left.

    A failed job is recorded with its reason and run directory and retried (with the
    oracle's changed strategy) up to ``qm.max_attempts`` times; it never stops the worker.
    Each finished job appends one line to ``<work_dir>/<campaign>/qm_jobs.jsonl``. With a
    ``stream`` token (asynchronous rounds) a worker that finds the queue empty waits for new
    picks, and claims only while that stream is open in the database
    (:func:`db.queue.stream_open`): the campaign run closes it when it stops.
    """
    logger = get_run_logger()
    oracle = oracle_for(config)
    key = labels.level_key(oracle.level)
    engine = engine_for(url)
    name = f"{socket.gethostname()}:{os.getpid()}:{worker}"
    qm_dir = campaign_dir(config.work_dir, config.name, "qm")
    qm_dir.mkdir(parents=True, exist_ok=True)
    counts = {"done": 0, "failed": 0}
    while True:
        if stop_requested():  # Ctrl-C: the job that ran is stored, the next one stays pending
            return counts
        claimed = claim_next(engine, campaign_id, key, name, stream)
        if isinstance(claimed, StreamClosed) or (claimed is None and stream is None):
            return counts
        if claimed is None:
            time.sleep(STREAM_POLL_S)
            continue
        label_id, attempt, atoms = claimed
        results_dir = qm_dir / f"label-{label_id}-attempt-{attempt}"
        results_dir.mkdir(parents=True, exist_ok=True)
        try:
            with _claim_heartbeat(engine, label_id, name):
                result = oracle(atoms, results_dir=results_dir, timeout_s=config.qm.timeout_s, attempt=attempt)
        except QMFailure as failure:
            with session_scope(engine) as session:
                label = labels.fail_label(
                    session, label_id, failure.reason, str(failure.run_dir or results_dir),
                    max_attempts=config.qm.max_attempts,
                )
                final = label.status == "failed"
            counts["failed"] += final
            logger.warning("label %d (%s) attempt %d failed: %s%s", label_id, atoms.get_chemical_formula(),
                           attempt, failure.reason, "; giving up" if final else "; will retry")
            continue
        with session_scope(engine) as session:
            labels.complete_label(session, label_id, result.energy, result.forces,
                                  wall_time=result.wall_time, run_dir=result.run_dir, stress=result.stress)
        with open(qm_dir.parent / "qm_jobs.jsonl", "a") as log:
            log.write(json.dumps({"label_id": label_id, "attempt": attempt, "wall_time": result.wall_time}) + "\n")
        counts["done"] += 1
        logger.info("label %d (%s) done in %.1f s", label_id, atoms.get_chemical_formula(), result.wall_time)

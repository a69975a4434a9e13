"""The replay benchmark flow: every acquisition method × seed as a campaign, then a summary.

One database per benchmark (``<work_dir>/<name>/benchmark.db`` unless a URL is given);
campaigns are named ``<bench>-<method>-s<seed>``. Running the flow again skips finished
campaigns (and, with a warning, campaigns another process is running, so several benchmark
processes can share one database), resumes unfinished ones (the campaign flow's own resume) and evaluates only final
models that have no stored benchmark evaluation yet, so a killed benchmark loses at most the
step it was in.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger

from benchmarks.data import campaign_configs, prepare_data
from benchmarks.evaluation import FINISHED, campaign_status, collect, evaluate_final, open_database
from benchmarks.report import summarize
from benchmarks.spec import make_spec
from flows.campaign import campaign
from tasks.steps import LeaseHeldError


@flow(name="benchmark-replay", log_prints=True)
def benchmark_replay(spec: dict, database_url: str | None = None, run: bool = True) -> dict:
    """Run (or resume) a replay benchmark and return its summary.

    Parameters
    ----------
    spec
        A :class:`benchmarks.spec.BenchmarkSpec` mapping.
    database_url
        SQLAlchemy URL; default ``sqlite:///<work_dir>/<name>/benchmark.db``.
    run
        False: only summarise the campaigns already in the database.

    Returns
    -------
    dict
        See :func:`benchmarks.report.summarize`; plus ``manifest`` (the prepared
        data), ``database_url``, ``initial_sets_identical`` (per seed),
        ``campaign_config_example`` (the first campaign's configuration) and ``this_run_wall_s``
        (wall time of this invocation, preparation and evaluations included).
    """
    started = time.perf_counter()
    bench = make_spec(spec)
    manifest = prepare_data(bench)
    folder = Path(bench.work_dir).resolve() / bench.name
    folder.mkdir(parents=True, exist_ok=True)
    url = database_url or f"sqlite:///{folder / 'benchmark.db'}"
    open_database(url)
    if run:
        _run_campaigns(bench, manifest, url)
    reports, evaluations, initial_check = collect(url, bench)
    results = summarize(bench, reports, evaluations)
    results.update(
        manifest=manifest,
        database_url=url,
        initial_sets_identical=initial_check,
        campaign_config_example=campaign_configs(bench, manifest)[0],
        this_run_wall_s=time.perf_counter() - started,
    )
    return results


def _run_campaigns(bench, manifest: dict, url: str) -> None:
    """Run (or resume) every campaign that has not finished, then evaluate its final model."""
    logger = get_run_logger()
    for config in campaign_configs(bench, manifest):
        if campaign_status(url, config["name"]) not in FINISHED:
            logger.info("benchmark %s: running campaign %s", bench.name, config["name"])
            try:
                campaign(config=config, database_url=url)
            except LeaseHeldError as exc:  # another benchmark process runs it: go on
                logger.warning("benchmark %s: skipped campaign %s here: %s", bench.name, config["name"], exc)
                continue
        evaluate_final(url, config, bench, manifest)

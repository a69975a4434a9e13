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

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from benchmarks.analysis import path_errors, per_structure_errors
from benchmarks.data import campaign_configs, campaign_name, prepare_data
from benchmarks.report import summarize
from benchmarks.spec import BenchmarkSpec, make_spec
from db import campaigns, init_db, labels, leases, registry, rounds, session_scope, structures
from db.reports import campaign_report
from flows.campaign import campaign
from tangentlab.acquisition import spearman
from tangentlab.config import Acquisition
from tasks._db import engine_for

FINISHED = ("budget_exhausted", "targets_met")
REFERENCE_SIZE = 256  # pool structures in the feature normalisation, as in tasks/acquire.py


def _status(url: str, name: str) -> str | None:
    with session_scope(engine_for(url)) as session:
        try:
            camp = campaigns.get_campaign(session, name)
        except LookupError:
            return None
        return str(getattr(camp.status, "value", camp.status))


def _ts_flags(test_file: str) -> dict[str, bool]:
    import ase.io

    from tangentlab.structures import content_hash

    return {
        content_hash(a): bool(a.info.get("ts_region", False)) for a in ase.io.read(test_file, ":")
    }


def _uncertainty(settings: Acquisition, model, config: dict, train, valid, test, pool, device: str):
    """σ of the test and validation structures from the method's own scorer (None for random)."""
    from tangentlab.acquisition import fit_scorer
    from tangentlab.acquisition.committee import committee_disagreement

    if settings.signal == "random":
        return None, None
    if settings.signal == "committee":
        rounds_dir = Path(config["work_dir"]).resolve() / config["name"] / "committee"
        last = sorted(rounds_dir.glob("round-*"))[-1]
        members = sorted(last.glob("member-*.pt"))  # the weights-only files
        _, sigma_test = committee_disagreement(members, test, device=device)
        _, sigma_valid = committee_disagreement(members, valid, device=device)
        return sigma_test, sigma_valid
    signal_options = settings.signal_keywords()
    scorer = fit_scorer(
        model,
        train,
        signal=settings.signal,
        reference_atoms=pool[:REFERENCE_SIZE],
        regularization=settings.regularization,
        device=device,
        **signal_options,
    )
    return np.sqrt(scorer.variance(test)), np.sqrt(scorer.variance(valid))


@task(name="evaluate final model", cache_policy=NO_CACHE)
def evaluate_final(url: str, config: dict, spec: BenchmarkSpec, manifest: dict) -> dict | None:
    """Calibration, transition-state-region errors and path energies of a campaign's final model.

    Stored in the final model version's metrics under ``benchmark`` (computed once).
    Calibration: Spearman rank correlation between the method's predicted error (σ from its
    own scorer refitted on the final training labels with the final model; committee: the
    force std of the last round's members) and the actual per-structure force MAE (and
    per-atom energy error) on the test set; the scale ``predicted = scale·σ`` is fitted on the
    validation split, never on the test set.
    """
    from tangentlab.acquisition import calibrate_uncertainty, uncertainty_quality
    from tangentlab.mace_model import load_model, predict

    engine = engine_for(url)
    with session_scope(engine) as session:
        camp = campaigns.get_campaign(session, config["name"])
        if str(getattr(camp.status, "value", camp.status)) not in FINISHED:
            return None
        final = registry.latest_model(session, camp)
        if "benchmark" in (final.metrics or {}):
            return final.metrics["benchmark"]
        final_id, path = final.id, registry.verified_model_path(session, final.id)
        train = labels.labelled_atoms(session, camp.id, ["train"])
        valid = labels.labelled_atoms(session, camp.id, ["valid"])
        test_pairs = labels.labelled(session, camp.id, "test")
        test = labels.labelled_atoms(session, camp.id, ["test"])
        test_hashes = [s.content_hash for s, _ in test_pairs]
        pool = [
            structures.structure_atoms(s)
            for s in structures.campaign_structures(session, camp.id, split="pool")
        ]
    device = spec.device
    model = load_model(path, device=device)
    energy_err, force_err = per_structure_errors(predict(model, test), test)
    settings = Acquisition(**config["acquisition"])
    sigma_test, sigma_valid = _uncertainty(settings, model, config, train, valid, test, pool, device)
    result: dict = {"method": settings.signal, "rule": settings.rule, "model_version": final_id,
                    "n_test": len(test)}
    if sigma_test is not None:
        _, valid_force = per_structure_errors(predict(model, valid), valid)
        scale = calibrate_uncertainty(sigma_valid, valid_force) if len(valid) >= 2 else None
        quality = uncertainty_quality(sigma_test, force_err, scale)
        result.update(
            force_spearman=spearman(sigma_test, force_err),
            energy_spearman=spearman(sigma_test, energy_err),
            scale_from_valid=scale,
            coverage_1sigma=quality["coverage_1sigma"],
            rms_ratio=quality["rms_ratio"],
        )
    flags = _ts_flags(manifest["test_file"])
    ts = np.array([flags.get(h, False) for h in test_hashes])
    natoms = np.array([len(a) for a in test])
    if ts.any() and (~ts).any():
        # component MAE = atom-weighted mean of per-structure force MAEs
        result["ts_force_mae"] = float(np.average(force_err[ts], weights=natoms[ts]))
        result["other_force_mae"] = float(np.average(force_err[~ts], weights=natoms[~ts]))
        result["ts_frames"] = int(ts.sum())
    if spec.data.path_file:
        import ase.io

        frames = ase.io.read(spec.data.path_file, ":")
        predicted = [e for e, _ in predict(model, frames)]
        reference = [
            float(a.info["energy"]) if "energy" in a.info else a.get_potential_energy()
            for a in frames
        ]
        result["path"] = path_errors(predicted, reference, len(frames[0]))
    with session_scope(engine) as session:
        registry.set_model_metrics(session, final_id, "benchmark", result)
    return result


def collect(url: str, spec: BenchmarkSpec) -> tuple[dict, dict, dict]:
    """Campaign reports, stored final-model evaluations and initial-set check of a benchmark."""
    reports, evaluations, initial = {}, {}, {}
    with session_scope(engine_for(url)) as session:
        for seed in spec.seeds:
            for method in spec.methods:
                name = campaign_name(spec, method, seed)
                try:
                    camp = campaigns.get_campaign(session, name)
                except LookupError:
                    continue
                reports[name] = campaign_report(session, camp)
                final = registry.latest_model(session, camp)
                evaluations[name] = (final.metrics or {}).get("benchmark") if final else None
                first = rounds.campaign_rounds(session, camp)[0]
                ids = [e["structure_id"] for e in first.selected or []]
                hashes = sorted(s.content_hash for s in structures.structures_by_id(session, ids))
                initial.setdefault(seed, set()).add(tuple(hashes))
    check = {str(seed): len(sets) == 1 for seed, sets in initial.items()}
    return reports, evaluations, check


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
    logger = get_run_logger()
    started = time.perf_counter()
    bench = make_spec(spec)
    manifest = prepare_data(bench)
    folder = Path(bench.work_dir).resolve() / bench.name
    folder.mkdir(parents=True, exist_ok=True)
    url = database_url or f"sqlite:///{folder / 'benchmark.db'}"
    init_db(engine_for(url))
    if run:
        for config in campaign_configs(bench, manifest):
            if _status(url, config["name"]) not in FINISHED:
                logger.info("benchmark %s: running campaign %s", bench.name, config["name"])
                try:
                    campaign(config=config, database_url=url)
                except leases.LeaseHeldError as exc:  # another benchmark process runs it: go on
                    logger.warning("benchmark %s: skipped campaign %s here: %s", bench.name,
                                   config["name"], exc)
                    continue
            evaluate_final(url, config, bench, manifest)
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

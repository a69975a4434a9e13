"""The replay benchmark's reads and writes of its database: campaign status, the evaluation
of each campaign's final model (stored with it) and the collected reports.

:mod:`flows.benchmark` runs the campaigns and calls these; they are the only place the
benchmark touches the database directly.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from benchmarks.analysis import path_errors, per_structure_errors
from benchmarks.data import campaign_name
from benchmarks.spec import BenchmarkSpec
from db import campaigns, init_db, labels, make_engine, registry, rounds, session_scope, structures
from db.reports import campaign_report
from tangentlab.acquisition import spearman
from tangentlab.acquisition.policy import fit_policy_scorer, reference_structures
from tangentlab.config import Acquisition

FINISHED = ("budget_exhausted", "targets_met")


@cache
def engine_for(url: str):
    """The engine of the benchmark database at ``url`` in this process."""
    return make_engine(url)


def open_database(url: str) -> None:
    """Make or upgrade the benchmark database's schema."""
    init_db(engine_for(url))


def campaign_status(url: str, name: str) -> str | None:
    """Campaign ``name``'s status (None: no such campaign)."""
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
    from tangentlab.acquisition.committee import CommitteeScorer

    if settings.signal == "random":
        return None, None
    if settings.signal == "committee":
        rounds_dir = Path(config["work_dir"]).resolve() / config["name"] / "committee"
        committee = CommitteeScorer.from_dir(sorted(rounds_dir.glob("round-*"))[-1], device=device)
        return committee.disagreement(test)[1], committee.disagreement(valid)[1]
    scorer = fit_policy_scorer(model, train, reference_structures(pool), settings, device)
    return np.sqrt(scorer.variance(test)), np.sqrt(scorer.variance(valid))


@task(name="evaluate final model", cache_policy=NO_CACHE)
def evaluate_final(url: str, config: dict, spec: BenchmarkSpec, manifest: dict) -> dict | None:
    """Calibration, transition-state-region errors and path energies of a campaign's final model.

    Stored in the final model version's metrics under ``benchmark`` (computed once).
    Calibration: Spearman rank correlation between the method's predicted error (σ from its
    own scorer refitted on the final training labels with the final model, as a campaign fits
    it (:func:`tangentlab.acquisition.policy.fit_policy_scorer`); committee: the
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
        failed = labels.failed_structure_ids(session, camp.id)
        pool = [
            structures.structure_atoms(s)
            for s in structures.campaign_structures(session, camp.id, split="pool")
            if s.id not in failed
        ]
    device = spec.device
    model = load_model(path, device=device)
    energy_err, force_err = per_structure_errors(predict(model, test), test)
    settings = Acquisition(**config["acquisition"])
    sigma_test, sigma_valid = _uncertainty(
        settings, model, config, train, valid, test, pool, device
    )
    result: dict = {
        "method": settings.signal,
        "rule": settings.rule,
        "model_version": final_id,
        "n_test": len(test),
    }
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

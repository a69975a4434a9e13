"""Test-set errors of a model version, stored with it (and, for a round's model, with the round)."""

from __future__ import annotations

import time

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from db import RoundStatus, labels, registry, rounds, session_scope
from tangentlab.confidence import DEFAULT_LEVEL, interval_text
from tangentlab.mace_model import load_model, predict
from tangentlab.metrics import error_metrics
from tangentlab.structures import free_components
from tasks._db import engine_for


def _test_errors(url: str, campaign_id: int, model_version_id: int, device: str, force_atoms: str,
                 level: float = DEFAULT_LEVEL) -> dict:
    """Energy and force errors of a model on the campaign's labelled test set, with their
    bootstrap intervals at ``level``."""
    if force_atoms not in ("free", "all"):
        raise ValueError(f"force_atoms must be 'free' or 'all', got {force_atoms!r}")
    with session_scope(engine_for(url)) as session:
        test = labels.labelled_atoms(session, campaign_id, ["test"])
        path = registry.verified_model_path(session, model_version_id)
    if not test:
        raise RuntimeError("the campaign has no labelled test structures to evaluate on")
    preds = predict(load_model(path, device=device), test)
    refs = [(a.info["energy"], a.arrays["forces"]) for a in test]
    masks = [free_components(a) for a in test]
    scored = masks if force_atoms == "free" else None
    metrics = error_metrics(preds, refs, [len(a) for a in test], scored, level=level)
    metrics["n_fixed_atoms"] = int(sum((~mask.any(axis=1)).sum() for mask in masks))
    get_run_logger().info(
        "model %d on %d test structures: energy MAE %.1f %s meV/atom, force MAE %.1f %s meV/Å "
        "(%.0f %% intervals)", model_version_id, len(test), metrics["energy_mae_mev_per_atom"],
        interval_text(metrics["energy_mae_interval_mev_per_atom"]), metrics["force_mae_mev_per_a"],
        interval_text(metrics["force_mae_interval_mev_per_a"]), 100 * level)
    return metrics


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_model(url: str, campaign_id: int, model_version_id: int, device: str = "cpu",
                   force_atoms: str = "free", level: float = DEFAULT_LEVEL) -> dict:
    """Energy and force errors of a model on the campaign's labelled test set (stored).

    Force errors are over the free atoms (those no ``FixAtoms``/``FixCartesian`` holds, e.g. a
    slab's bottom layers) with ``force_atoms="free"``, over all atoms with ``"all"``; the
    metrics say which (``force_atoms``) and how many test atoms constraints hold
    (``n_fixed_atoms``, summed over the test structures). The MAEs come with bootstrap
    intervals over the test structures at ``level`` (:func:`tangentlab.metrics.error_metrics`).
    """
    metrics = _test_errors(url, campaign_id, model_version_id, device, force_atoms, level)
    with session_scope(engine_for(url)) as session:
        registry.set_model_metrics(session, model_version_id, "test", metrics)
    return metrics


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_round(url: str, campaign_id: int, number: int, device: str, round_start: float,
                   force_atoms: str = "free", level: float = DEFAULT_LEVEL) -> dict:
    """Evaluate round ``number``'s trained model and move the round ``trained -> evaluated``.

    The model's test errors (as :func:`evaluate_model`), the round's metrics and its wall time
    (``round_wall_s`` grows by the time since ``round_start``, a :func:`time.perf_counter` of
    this process) are committed together.
    """
    with session_scope(engine_for(url)) as session:
        trained_id = rounds.get_round(session, campaign_id, number).trained_model_id
    metrics = _test_errors(url, campaign_id, trained_id, device, force_atoms, level)
    with session_scope(engine_for(url)) as session:
        registry.set_model_metrics(session, trained_id, "test", metrics)
        current = rounds.get_round(session, campaign_id, number)
        wall = (current.timings or {}).get("round_wall_s", 0.0) + time.perf_counter() - round_start
        rounds.advance_round(session, current, RoundStatus.EVALUATED, metrics={"test": metrics},
                             timings={**(current.timings or {}), "round_wall_s": wall})
    get_run_logger().info("round %d: energy MAE %.1f meV/atom, force MAE %.1f meV/Å (model %d)", number,
                          metrics["energy_mae_mev_per_atom"], metrics["force_mae_mev_per_a"], trained_id)
    return metrics


@task(name="re-evaluate", cache_policy=NO_CACHE)
def reevaluate_round(url: str, campaign_id: int, number: int, device: str, force_atoms: str = "free",
                     level: float = DEFAULT_LEVEL) -> dict:
    """Measure evaluated round ``number``'s model again on the test set as it is now (it grew:
    :mod:`tasks.testset`), replacing the round's and the model's test errors; the round stays
    ``evaluated``."""
    with session_scope(engine_for(url)) as session:
        trained_id = rounds.get_round(session, campaign_id, number).trained_model_id
    metrics = _test_errors(url, campaign_id, trained_id, device, force_atoms, level)
    with session_scope(engine_for(url)) as session:
        registry.set_model_metrics(session, trained_id, "test", metrics)
        current = rounds.get_round(session, campaign_id, number)
        current.metrics = {**(current.metrics or {}), "test": metrics}
    return metrics

"""Test-set errors of a model version, stored with it (and, for a round's model, with the round)."""

from __future__ import annotations

import time

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

import numpy as np

from db import RoundStatus, labels, registry, rounds, session_scope, structures
from tangentlab.acquisition.policy import fit_policy_scorer, reference_structures
from tangentlab.config import CampaignConfig, interval_method
from tangentlab.confidence import DEFAULT_LEVEL, interval_text, rounded
from tangentlab.mace_model import load_model, predict
from tangentlab.metrics import error_metrics
from tangentlab.prediction_powered import PPI_METHODS, predicted_error_intervals
from tangentlab.structures import free_components
from tasks._db import engine_for

#: The metrics' interval keys, energy first.
INTERVAL_KEYS = ("energy_mae_interval_mev_per_atom", "force_mae_interval_mev_per_a")


def _per_structure(preds, atoms_list, scored) -> dict[str, np.ndarray]:
    """Per structure: |energy error| per atom (meV/atom), the sum of the scored |force
    component errors| (meV/Å) and how many components are scored."""
    energy = [abs(e - a.info["energy"]) / len(a) for (e, _), a in zip(preds, atoms_list, strict=True)]
    masks = _masks(atoms_list, scored)
    force = [np.abs(f - a.arrays["forces"])[m].sum() for (_, f), a, m in zip(preds, atoms_list, masks, strict=True)]
    return {"energy": 1e3 * np.asarray(energy), "force": 1e3 * np.asarray(force),
            "counts": _counts(masks)}


def _masks(atoms_list, scored) -> list[np.ndarray]:
    """The scored force components of each structure (None in ``scored``: all of them)."""
    return [np.ones((len(a), 3), dtype=bool) if m is None else m for a, m in zip(atoms_list, scored, strict=True)]


def _counts(masks) -> np.ndarray:
    """How many force components each structure has scored."""
    return np.array([m.sum() for m in masks], dtype=np.float64)


def _prediction_powered(url: str, campaign_id: int, config: CampaignConfig, model, test: list, preds,
                        level: float, method: str) -> dict | None:
    """A prediction-powered ``targets.interval`` (``method``, a value of `PPI_METHODS`): the
    intervals of the MAE over the unlabelled pool from the calibrated σ of the evaluated model's scorer (fitted as acquisition fits it) and the test
    labels (:func:`tangentlab.prediction_powered.predicted_error_intervals`); None where there
    is nothing to predict from (fewer than two validation labels, an empty pool)."""
    with session_scope(engine_for(url)) as session:
        failed = labels.failed_structure_ids(session, campaign_id)
        pool = [s for s in structures.campaign_structures(session, campaign_id, split="pool")
                if s.id not in failed]
        reference = [structures.structure_atoms(s) for s in reference_structures(pool)]
        pool_atoms = [structures.structure_atoms(s) for s in pool]
        train = labels.labelled_atoms(session, campaign_id, ["train"])
        valid = [a for a in labels.labelled_atoms(session, campaign_id, ["valid"])
                 if a.arrays.get("forces") is not None]
    if len(valid) < 2 or not pool_atoms or not train:
        return None
    free = config.targets.force_atoms == "free"

    def scored(atoms_list):
        return [free_components(a) if free else None for a in atoms_list]

    scorer = fit_policy_scorer(model, train, reference, config.acquisition, config.device)
    sets = {"test": _per_structure(preds, test, scored(test)),
            "valid": _per_structure(predict(model, valid), valid, scored(valid)),
            "target": {"counts": _counts(_masks(pool_atoms, scored(pool_atoms)))}}
    for name, atoms_list in (("test", test), ("valid", valid), ("target", pool_atoms)):
        sets[name]["sigma"] = np.sqrt(scorer.variance(atoms_list))
    return predicted_error_intervals(sets["test"], sets["valid"], sets["target"], level=level,
                                     method=method)


def _test_errors(url: str, campaign_id: int, model_version_id: int, device: str, force_atoms: str,
                 level: float = DEFAULT_LEVEL, config: CampaignConfig | None = None) -> dict:
    """Energy and force errors of a model on the campaign's labelled test set, with their
    intervals at ``level``: bootstrap intervals, or where ``config.targets.interval`` is (or
    'auto' resolves to) a prediction-powered one (`PPI_METHODS`) where the round has what they
    need (``interval_method`` says which; the bootstrap intervals are then kept under
    ``bootstrap_intervals``)."""
    if force_atoms not in ("free", "all"):
        raise ValueError(f"force_atoms must be 'free' or 'all', got {force_atoms!r}")
    with session_scope(engine_for(url)) as session:
        test = labels.labelled_atoms(session, campaign_id, ["test"])
        path = registry.verified_model_path(session, model_version_id)
    if not test:
        raise RuntimeError("the campaign has no labelled test structures to evaluate on")
    model = load_model(path, device=device)
    preds = predict(model, test)
    refs = [(a.info["energy"], a.arrays["forces"]) for a in test]
    masks = [free_components(a) for a in test]
    scored = masks if force_atoms == "free" else None
    metrics = error_metrics(preds, refs, [len(a) for a in test], scored, level=level)
    metrics["n_fixed_atoms"] = int(sum((~mask.any(axis=1)).sum() for mask in masks))
    metrics["interval_method"] = "bootstrap"
    found = None
    chosen = "bootstrap" if config is None else interval_method(config)
    if chosen in PPI_METHODS:
        found = _prediction_powered(url, campaign_id, config, model, test, preds, level,
                                    PPI_METHODS[chosen])
    if found is not None and found["energy"] is not None and found["force"] is not None:
        metrics["bootstrap_intervals"] = {key: metrics[key] for key in INTERVAL_KEYS}
        for key, quantity in zip(INTERVAL_KEYS, ("energy", "force"), strict=True):
            metrics[key] = rounded(found[quantity]["interval"], 2)
        metrics["interval_method"] = chosen
        metrics["ppi"] = {quantity: {"mae": round(found[quantity]["mae"], 2),
                                     "lambda": round(found[quantity]["lambda"], 3)}
                          for quantity in ("energy", "force")} | {"n_target": found["force"]["n_target"]}
    get_run_logger().info(
        "model %d on %d test structures: energy MAE %.1f %s meV/atom, force MAE %.1f %s meV/Å "
        "(%.0f %%%s intervals)", model_version_id, len(test), metrics["energy_mae_mev_per_atom"],
        interval_text(metrics["energy_mae_interval_mev_per_atom"]), metrics["force_mae_mev_per_a"],
        interval_text(metrics["force_mae_interval_mev_per_a"]), 100 * level,
        " prediction-powered" if metrics["interval_method"] in PPI_METHODS else "")
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
                   force_atoms: str = "free", level: float = DEFAULT_LEVEL,
                   config: CampaignConfig | None = None) -> dict:
    """Evaluate round ``number``'s trained model and move the round ``trained -> evaluated``.

    The model's test errors (as :func:`evaluate_model`), the round's metrics and its wall time
    (``round_wall_s`` grows by the time since ``round_start``, a :func:`time.perf_counter` of
    this process) are committed together.
    """
    with session_scope(engine_for(url)) as session:
        trained_id = rounds.get_round(session, campaign_id, number).trained_model_id
    metrics = _test_errors(url, campaign_id, trained_id, device, force_atoms, level, config)
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
                     level: float = DEFAULT_LEVEL, config: CampaignConfig | None = None) -> dict:
    """Measure evaluated round ``number``'s model again on the test set as it is now (it grew:
    :mod:`tasks.testset`), replacing the round's and the model's test errors; the round stays
    ``evaluated``."""
    with session_scope(engine_for(url)) as session:
        trained_id = rounds.get_round(session, campaign_id, number).trained_model_id
    metrics = _test_errors(url, campaign_id, trained_id, device, force_atoms, level, config)
    with session_scope(engine_for(url)) as session:
        registry.set_model_metrics(session, trained_id, "test", metrics)
        current = rounds.get_round(session, campaign_id, number)
        current.metrics = {**(current.metrics or {}), "test": metrics}
    return metrics

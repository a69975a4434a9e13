"""Test-set errors of a model version, stored with it."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from db import labels, registry, session_scope
from tangentlab.mace_model import load_model, predict
from tangentlab.metrics import error_metrics
from tangentlab.structures import free_components
from tasks._db import engine_for


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_model(url: str, campaign_id: int, model_version_id: int, device: str = "cpu",
                   force_atoms: str = "free") -> dict:
    """Energy and force errors of a model on the campaign's labelled test set (stored).

    Force errors are over the free atoms (those no ``FixAtoms``/``FixCartesian`` holds, e.g. a
    slab's bottom layers) with ``force_atoms="free"``, over all atoms with ``"all"``; the
    metrics say which (``force_atoms``).
    """
    if force_atoms not in ("free", "all"):
        raise ValueError(f"force_atoms must be 'free' or 'all', got {force_atoms!r}")
    engine = engine_for(url)
    with session_scope(engine) as session:
        test = labels.labelled_atoms(session, campaign_id, ["test"])
        path = registry.verified_model_path(session, model_version_id)
    if not test:
        raise RuntimeError("the campaign has no labelled test structures to evaluate on")
    preds = predict(load_model(path, device=device), test)
    refs = [(a.info["energy"], a.arrays["forces"]) for a in test]
    free = [free_components(a) for a in test] if force_atoms == "free" else None
    metrics = error_metrics(preds, refs, [len(a) for a in test], free)
    with session_scope(engine) as session:
        registry.set_model_metrics(session, model_version_id, "test", metrics)
    get_run_logger().info("model %d on %d test structures: energy MAE %.1f meV/atom, force MAE %.1f meV/Å",
                          model_version_id, len(test), metrics["energy_mae_mev_per_atom"],
                          metrics["force_mae_mev_per_a"])
    return metrics

"""Choose the next batch of structures to label and store it as an acquisition round."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from db import labels, registry, rounds, session_scope, structures
from tangentlab.acquisition import calibrate_uncertainty, fit_scorer, select_batch
from tangentlab.committee import committee_disagreement, committee_selection, train_committee
from tangentlab.config import CampaignConfig
from tangentlab.finetune import FineTuneHyperparameters
from tangentlab.mace_model import load_model, predict
from tasks._db import engine_for
from tasks.progress import Progress, artifact_key
from tasks.setup import assign_splits

REFERENCE_SIZE = 256  # pool structures that join the labelled set in normalising feature rows


def _force_errors(model, atoms_list) -> np.ndarray:
    """Per-structure force MAE (meV/Å) of the model on labelled structures."""
    preds = predict(model, atoms_list)
    return np.array([1e3 * np.abs(f - a.arrays["forces"]).mean() for (_, f), a in zip(preds, atoms_list)])


@task(name="acquire", cache_policy=NO_CACHE)
def acquire(url: str, campaign_id: int, config: CampaignConfig, round_number: int, model_version_id: int) -> int:
    """Score the pool with the current model, select a batch, store the round; return its size.

    Failed structures are never candidates. Each selected structure is stored with its
    posterior variance σ² (given the training labels) and a predicted error: the per-structure
    force MAE (meV/Å) that ``scale·σ`` predicts, with ``scale`` fitted on the validation split
    against the current model's real errors. The round, the selection and the structures' new
    splits are written in one transaction.
    """
    logger = get_run_logger()
    settings = config.acquisition
    engine = engine_for(url)
    with session_scope(engine) as session:
        failed = labels.failed_structure_ids(session, campaign_id)
        pool = [s for s in structures.campaign_structures(session, campaign_id, split="pool") if s.id not in failed]
        pool_atoms = [structures.structure_atoms(s) for s in pool]
        train = labels.labelled_atoms(session, campaign_id, ["train"])
        valid = labels.labelled_atoms(session, campaign_id, ["valid"])
        model_path = registry.verified_model_path(session, model_version_id)
        pool_ids = [s.id for s in pool]
    start = time.perf_counter()
    progress = Progress(artifact_key("campaign", config.name, "acquisition"),
                        f"Round {round_number} of campaign {config.name}: {settings.method} acquisition from "
                        f"{len(pool_ids)} pool structures (model {model_version_id})")
    if settings.method == "committee":
        picked, scores, info, scale = _committee(config, round_number, model_path, train, valid, pool_atoms,
                                                 progress)
    else:
        picked, scores, info, scale = _kernel_or_random(config, round_number, model_path, train, valid, pool_atoms,
                                                        progress)
    timings = {"acquire_s": time.perf_counter() - start, **info.get("timings", {})}
    selected = []
    for index, score in zip(picked, scores):
        score = None if not np.isfinite(score) else float(score)
        predicted = None if score is None or scale is None else scale * float(np.sqrt(score))
        selected.append((pool_ids[int(index)], score, predicted))
    with session_scope(engine) as session:
        assign_splits(session, [s for s, _, _ in selected], config.valid_fraction)
        rounds.create_round(
            session, campaign_id, round_number, method=settings.method,
            parameters={**settings.model_dump(), "uncertainty_scale": scale,
                        "feature_dim": info.get("feature_dim")},
            model_version_id=model_version_id, pool_size=len(pool_ids), selected=selected, timings=timings,
        )
    progress.update(100.0, f"Round {round_number}: {settings.method} selected {len(selected)} of "
                    f"{len(pool_ids)} pool structures in {timings['acquire_s']:.1f} s")
    logger.info("round %d: %s selected %d of %d pool structures in %.1f s", round_number,
                settings.method, len(selected), len(pool_ids), timings["acquire_s"])
    return len(selected)


def _kernel_or_random(config, round_number, model_path, train, valid, pool_atoms, progress):
    """Kernel signals: fit the scorer on the training labels (progress 0 → 40 %), calibrate its
    scale on the validation split, then the greedy batch selection over the pool (→ 100 %)."""
    settings = config.acquisition
    model = load_model(model_path, device=config.device)
    scorer, scale = None, None
    if settings.method != "random":
        progress.update(0.0, f"Round {round_number}: {settings.method}: features of {len(train)} training "
                        "structures and the reference rows")
        scorer = fit_scorer(model, train, signal=settings.method, reference_atoms=pool_atoms[:REFERENCE_SIZE],
                            regularization=settings.regularization, device=config.device)
        if len(valid) >= 2:
            sigma = np.sqrt(scorer.variance(valid))
            scale = calibrate_uncertainty(sigma, _force_errors(model, valid))
        progress.update(40.0, f"Round {round_number}: {settings.method}: scoring {len(pool_atoms)} pool "
                        f"structures and selecting {settings.batch_size}")
    picked, scores, info = select_batch(
        model, train, pool_atoms, signal=settings.method, batch_size=settings.batch_size,
        regularization=settings.regularization, rule=settings.rule, seed=config.seed * 1000 + round_number,
        device=config.device, scorer=scorer,
    )
    return picked, scores, info, scale


def _committee(config, round_number, model_path, train, valid, pool_atoms, progress):
    """Fine-tune the committee, then pick the largest force disagreements.

    Progress: the members' epochs take 0 → 90 %, scoring the pool the rest. The stored score is the squared force std (so that ``scale·√score`` is comparable with
    the kernel signals' ``scale·σ``).
    """
    settings = config.acquisition
    tick = time.perf_counter()
    out = Path(config.work_dir).resolve() / config.name / "committee" / f"round-{round_number:03d}"
    hyper = FineTuneHyperparameters(**config.finetune.model_dump(), seed=config.seed)
    size = settings.committee_size

    def member_epoch(member: int, epoch: int, total: int, record: dict) -> None:
        progress.update(90.0 * (member + epoch / total) / size,
                        f"Round {round_number}: committee member {member + 1}/{size}, epoch {epoch}/{total}, "
                        f"validation loss {record['valid_loss']:.4g}")

    members = train_committee(model_path, train, valid, out, size=size, hyper=hyper,
                              seed=config.seed * 1000 + round_number, device=config.device,
                              progress=member_epoch)
    progress.update(90.0, f"Round {round_number}: committee of {size} trained; scoring "
                    f"{len(pool_atoms)} pool structures")
    train_s = time.perf_counter() - tick
    _, force_std = committee_disagreement(members, pool_atoms, device=config.device)
    picked = committee_selection(force_std, settings.batch_size)
    scale = None
    if len(valid) >= 2:
        _, valid_std = committee_disagreement(members, valid, device=config.device)
        scale = calibrate_uncertainty(valid_std, _force_errors(load_model(model_path, device=config.device), valid))
    info = {"timings": {"committee_training_s": train_s, "scoring_s": time.perf_counter() - tick - train_s}}
    return picked, force_std[picked] ** 2, info, scale

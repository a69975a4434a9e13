"""Choose the next batch of structures to label and store it as an acquisition round."""

from __future__ import annotations

import time

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from db import exploration, labels, rounds, session_scope, structures
from tangentlab.acquisition import (
    calibrate_uncertainty,
    iter_structure_files,
    random_selection,
    select_batch,
)
from tangentlab.acquisition.committee import fit_committee
from tangentlab.acquisition.diagnostics import selection_diagnostics
from tangentlab.acquisition.guards import force_guard
from tangentlab.confidence import predicted_mae
from tangentlab.config import FEATURELESS_METHODS, CampaignConfig, interval_level
from tangentlab.finetune import FineTuneHyperparameters
from tangentlab.mace_model import predict
from tangentlab.paths import campaign_dir
from tasks._db import engine_for
from tasks.context import release_context, round_context
from tasks.progress import Progress, artifact_key
from tasks.setup import assign_splits


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
        pool_ids = [s.id for s in pool]
        test_atoms = ([structures.structure_atoms(s) for s in
                       structures.campaign_structures(session, campaign_id, split="test")]
                      if config.acquisition.target == "test" else [])
        explored = ([structures.structure_atoms(s) for s in
                     exploration.explored_structures(session, campaign_id, round_number, split="pool")
                     if s.id not in failed] if config.acquisition.target == "explored" else [])
    if config.acquisition.target == "explored" and not explored:
        logger.warning("round %d: the exploration added no candidates: the transductive target is the pool",
                       round_number)
    targets = target_atoms(config, test_atoms, explored)
    start = time.perf_counter()
    context = round_context(url, campaign_id, config, round_number, model_version_id)
    progress = Progress(artifact_key("campaign", config.name, "round", round_number, "acquisition"),
                        f"Campaign {config.name}, round {round_number}: acquisition progress, "
                        f"{_describe(settings)} over {len(pool_ids)} pool structures (model {model_version_id})")
    select = SELECTORS.get(settings.signal, _kernel)
    picked, scores, info, scale = select(context, round_number, pool_atoms, targets, progress)
    timings = {"acquire_s": time.perf_counter() - start, **info.get("timings", {})}
    diagnostics = selection_diagnostics(context.model, [pool_atoms[int(i)] for i in picked], pool_atoms,
                                        targets, seed=config.seed * 1000 + round_number)
    selected = []
    for index, score in zip(picked, scores):
        score = None if not np.isfinite(score) else float(score)
        predicted = None if score is None or scale is None else scale * float(np.sqrt(score))
        selected.append((pool_ids[int(index)], score, predicted))
    with session_scope(engine) as session:
        assign_splits(session, [s for s, _, _ in selected], config.valid_fraction)
        rounds.create_round(
            session, campaign_id, round_number, method=settings.signal,
            parameters={**settings.model_dump(), "uncertainty_scale": scale,
                        "feature_dim": info.get("feature_dim"), "sigma_bound": info.get("sigma_bound"),
                        "guarded": info.get("guarded"), "force_guarded": info.get("force_guarded"),
                        "diagnostics": diagnostics,
                        "predicted_force_mae": info.get("predicted_force_mae")},
            model_version_id=model_version_id, pool_size=len(pool_ids), selected=selected, timings=timings,
        )
    release_context()  # the round is selected: its scorer and model are not needed again
    progress.update(100.0, f"Campaign {config.name}, round {round_number}: {_describe(settings)} selected "
                    f"{len(selected)} of {len(pool_ids)} pool structures in {timings['acquire_s']:.1f} s")
    logger.info("round %d: %s selected %d of %d pool structures in %.1f s; predicted max force of the picks "
                "(median) %.2f eV/Å vs the pool's %.2f", round_number, _describe(settings), len(selected),
                len(pool_ids), timings["acquire_s"], diagnostics["picked"]["max_force_eV_per_A"]["q50"] or 0.0,
                diagnostics["pool"]["max_force_eV_per_A"]["q50"] or 0.0)
    return len(selected)


def _describe(settings) -> str:
    if settings.signal in FEATURELESS_METHODS:
        return settings.signal
    return f"{settings.signal} ({settings.rule_description()})"


def target_atoms(config: CampaignConfig, test_atoms: list, explored_atoms: list = ()) -> list | None:
    """The acquisition target's structures (None: the pool).

    ``test`` is the campaign's test set when it came from a ``test_file`` (the structures the
    campaign is judged on; only their positions are used, never their labels). A test set drawn
    from the pool is a sample of the pool, so the target is then the pool itself. ``explored``
    is this round's exploration candidates (the pool when there are none).
    """
    settings = config.acquisition
    if settings.rule != "transductive" or settings.target == "pool":
        return None
    if settings.target == "test":
        return test_atoms if config.test_file and test_atoms else None
    if settings.target == "explored":
        return list(explored_atoms) or None
    return list(iter_structure_files([settings.target]))


#: Pool structures whose σ predict the pool's force MAE (a seeded uniform sample).
PREDICTION_SAMPLE = 256


def _predicted_pool_mae(scorer, valid, sigma_valid, valid_errors, pool_atoms, config, round_number):
    """The force MAE the round's model should have over the pool, predicted from σ with the
    validation labels (:func:`tangentlab.confidence.predicted_mae`, at the campaign's interval
    level), from a sample of at most `PREDICTION_SAMPLE` pool structures."""
    if not pool_atoms:
        return None
    rng = np.random.default_rng(config.seed * 1000 + round_number)
    sample = [pool_atoms[int(i)] for i in rng.permutation(len(pool_atoms))[:PREDICTION_SAMPLE]]
    prediction = predicted_mae(
        sigma_valid, valid_errors, np.sqrt(scorer.variance(sample)),
        weights_valid=[3 * len(a) for a in valid], weights_target=[3 * len(a) for a in sample],
        level=interval_level(config))
    return None if prediction is None else {**prediction, "level": interval_level(config)}


def _kernel(context, round_number, pool_atoms, target, progress):
    """Feature signals: the round's scorer (progress 0 → 40 %), its scale calibrated on the
    validation split, then the batch rule over the pool (→ 100 %), without the candidates the
    force guard removes."""
    config = context.config
    settings = config.acquisition
    progress.update(0.0, f"Round {round_number}: {settings.signal}: features of {len(context.train)} training "
                    "structures and the reference rows")
    scorer = context.scorer()
    scale = prediction = None
    if len(context.valid) >= 2:
        sigma = np.sqrt(scorer.variance(context.valid))
        valid_errors = _force_errors(context.model, context.valid)
        scale = calibrate_uncertainty(sigma, valid_errors)
        prediction = _predicted_pool_mae(scorer, context.valid, sigma, valid_errors, pool_atoms, config,
                                         round_number)
    progress.update(40.0, f"Round {round_number}: {_describe(settings)}: scoring {len(pool_atoms)} pool "
                    f"structures and selecting {settings.batch_size}")
    exclude = force_guard(context.model, pool_atoms, settings.max_force, config.device)
    if len(exclude) == len(pool_atoms) > 0:
        get_run_logger().warning("acquisition.max_force %g eV/Å excludes every pool structure: not applied "
                                 "this round", settings.max_force)
        exclude = []
    picked, scores, info = select_batch(
        scorer, pool_atoms, batch_size=settings.batch_size, rule=settings.rule,
        target=target, sigma_quantile=settings.sigma_quantile, exclude=exclude,
        seed=config.seed * 1000 + round_number,
    )
    info["force_guarded"] = len(exclude)
    info["predicted_force_mae"] = prediction
    return picked, scores, info, scale


def _random(context, round_number, pool_atoms, target, progress):
    """Uniformly at random (seeded by the campaign's seed and the round): no scores, no scale."""
    config = context.config
    picked = random_selection(len(pool_atoms), config.acquisition.batch_size, config.seed * 1000 + round_number)
    return picked, np.full(len(picked), np.nan), {}, None


def _committee(context, round_number, pool_atoms, target, progress):
    """Fine-tune the committee, then pick the largest force disagreements (over the pool: the
    committee has no target-aware rule, so ``target`` is not used).

    Progress: the members' epochs take 0 → 90 %, scoring the pool the rest. The stored score is the squared force std (so that ``scale·√score`` is comparable with
    the kernel signals' ``scale·σ``).
    """
    config, train, valid = context.config, context.train, context.valid
    settings = config.acquisition
    tick = time.perf_counter()
    out = campaign_dir(config.work_dir, config.name, "committee", f"round-{round_number:03d}")
    hyper = FineTuneHyperparameters(**config.finetune.hyperparameters(), seed=config.seed)
    size = settings.committee_size

    def member_epoch(member: int, epoch: int, total: int, record: dict) -> None:
        progress.update(90.0 * (member + epoch / total) / size,
                        f"Round {round_number}: committee member {member + 1}/{size}, epoch {epoch}/{total}, "
                        f"validation loss {record['valid_loss']:.4g}")

    committee = fit_committee(context.model_path, train, valid, out, size=size, hyper=hyper,
                              seed=config.seed * 1000 + round_number, device=config.device,
                              progress=member_epoch)
    progress.update(90.0, f"Round {round_number}: committee of {size} trained; scoring "
                    f"{len(pool_atoms)} pool structures")
    train_s = time.perf_counter() - tick
    picked, scores = committee.select(pool_atoms, settings.batch_size)
    scale = None
    if len(valid) >= 2:
        _, valid_std = committee.disagreement(valid)
        scale = calibrate_uncertainty(valid_std, _force_errors(context.model, valid))
    info = {"timings": {"committee_training_s": train_s, "scoring_s": time.perf_counter() - tick - train_s}}
    return picked, scores, info, scale


#: How each signal without feature rows selects; every other signal is a feature signal
#: (`_kernel`). Each takes (round context, round number, pool, target structures, progress)
#: and returns (picked indices, scores, info, uncertainty scale).
SELECTORS = {"random": _random, "committee": _committee}

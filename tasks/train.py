"""Fine-tune the latest model version on every done label and register the result."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from tqdm import tqdm

from db import RoundStatus, labels, registry, rounds, session_scope
from tangentlab.config import CampaignConfig
from tangentlab.finetune import FineTuneHyperparameters, finetune
from tangentlab.paths import campaign_dir
from tasks._db import engine_for
from tasks.progress import Progress, artifact_key


def parent_version(versions: list, start: str):
    """The model a round fine-tunes from: the latest version (warm start) or, with
    ``start="pretrained"``, the campaign's starting model, so that one unlucky round cannot
    carry over into the next (docs/benchmarks/README.md measures both)."""
    if not versions:
        raise ValueError("the campaign has no model version to fine-tune from")
    return versions[0] if start == "pretrained" else versions[-1]


def training_structures(session, campaign_id: int, config: CampaignConfig, number: int) -> set | None:
    """The structures round ``number``'s fine-tune trains on: for asynchronous rounds with
    ``streaming.train_on: batches``, those of rounds ``0..number`` (the initial set and each
    round's batch of arrivals; later arrivals wait for the next round); None (every done
    training and validation label) otherwise."""
    if config.schedule != "async" or config.streaming.train_on != "batches":
        return None
    return {
        entry["structure_id"]
        for round_ in rounds.campaign_rounds(session, campaign_id)
        if round_.number <= number
        for entry in round_.selected or []
    }


@task(name="fine-tune", cache_policy=NO_CACHE)
def finetune_round(url: str, campaign_id: int, config: CampaignConfig, round_number: int) -> int:
    """Fine-tune for ``round_number`` and return the new model version's id.

    The model file is written under a temporary name and renamed when complete; the model
    version and the round's new status are committed together, so a run killed during
    training leaves no registered half-model and simply trains again on resume.
    """
    logger = get_run_logger()
    engine = engine_for(url)
    with session_scope(engine) as session:
        parent = parent_version(registry.model_versions(session, campaign_id), config.finetune.start)
        train = labels.labelled_atoms(session, campaign_id, ["train"])
        valid = labels.labelled_atoms(session, campaign_id, ["valid"])
        chosen = training_structures(session, campaign_id, config, round_number)
        if chosen is not None:
            train = [a for a in train if a.info["structure_id"] in chosen]
            valid = [a for a in valid if a.info["structure_id"] in chosen]
        parent_id, parent_path = parent.id, registry.verified_model_path(session, parent.id)
    hyper = FineTuneHyperparameters(**config.finetune.hyperparameters(), seed=config.seed)
    out = campaign_dir(config.work_dir, config.name, "models", f"round-{round_number:03d}.model")
    logger.info("round %d: fine-tuning model %d on %d train / %d valid labels", round_number,
                parent_id, len(train), len(valid))
    # A progress bar on a terminal (disable=None turns it off when stderr is not a TTY) and a
    # progress artifact in the Prefect UI (early stopping may end it before 100 %).
    artifact = Progress(artifact_key("campaign", config.name, "round", round_number, "fine-tune"),
                        f"Campaign {config.name}, round {round_number}: fine-tune progress, model {parent_id} on "
                        f"{len(train)} train / {len(valid)} valid labels (up to {hyper.max_epochs} epochs, "
                        f"patience {hyper.patience})")
    with tqdm(total=hyper.max_epochs, desc=f"round {round_number} fine-tune", unit="epoch", disable=None) as bar:

        def progress(epoch: int, total: int, record: dict) -> None:
            bar.update(1)
            bar.set_postfix(valid_loss=f"{record['valid_loss']:.4g}")
            artifact.update(100.0 * epoch / total, f"Campaign {config.name}, round {round_number}: fine-tune "
                            f"epoch {epoch}/{total}, "
                            f"validation loss {record['valid_loss']:.4g}")
            logger.debug("epoch %d/%d %s", epoch, total, record)

        result = finetune(parent_path, train, valid, out, hyper=hyper, device=config.device, progress=progress)
    stopped = "early stop" if result.epochs < hyper.max_epochs else "epoch limit"
    artifact.update(100.0, f"Campaign {config.name}, round {round_number}: fine-tune finished after "
                    f"{result.epochs} epochs ({stopped}); "
                    f"kept epoch {result.best_epoch}, validation loss {result.best_valid_loss:.4g}")
    with session_scope(engine) as session:
        version = registry.register_model(
            session, campaign_id, result.path, parent_id=parent_id,
            label_ids=[a.info["label_id"] for a in train + valid],
            hyperparameters=result.hyperparameters,
            metrics={"best_valid_loss": result.best_valid_loss, "epochs": result.epochs,
                     "best_epoch": result.best_epoch, "e0s": result.e0s, "seconds": result.seconds},
            round_number=round_number,
        )
        round_ = rounds.get_round(session, campaign_id, round_number)
        rounds.advance_round(session, round_, RoundStatus.TRAINED, trained_model_id=version.id,
                             timings={**(round_.timings or {}), "finetune_s": result.seconds})
        logger.info("round %d: model %d trained in %.0f s (%d epochs, %s; kept epoch %d, validation loss "
                    "%.4g); saved %s", round_number, version.id, result.seconds, result.epochs, stopped,
                    result.best_epoch, result.best_valid_loss, result.path)
        return version.id


"""Create or reopen a campaign: import the pool, draw the test set and the initial set."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from db import campaigns, init_db, rounds, session_scope, structures
from db.structures import ImportReport
from tangentlab.config import CampaignConfig, config_json, make_config
from tangentlab.mace_model import load_model, model_elements
from tangentlab.splits import draw, split_labelled
from tangentlab.structures import content_hash, read_structures
from tasks._db import engine_for
from tasks.label import oracle_for

INITIAL_METHOD = "initial-random"


def stored_config(url: str, name: str) -> CampaignConfig:
    """The configuration a campaign was created with."""
    with session_scope(engine_for(url)) as session:
        return make_config(campaigns.get_campaign(session, name).config, source=f"of campaign {name!r}")


@task(name="set up campaign", cache_policy=NO_CACHE)
def setup_campaign(url: str, config: CampaignConfig) -> int:
    """Create the campaign (or reopen it) and return its id.

    Everything happens in one transaction: the pool import, the test set and the initial
    round are stored together or not at all, and a campaign that exists already is left as
    it is (its stored configuration wins).
    """
    logger = get_run_logger()
    engine = engine_for(url)
    init_db(engine)
    oracle_for(config)  # an unusable oracle stops the campaign here, before anything is stored
    elements = model_elements(load_model(config.model))
    with session_scope(engine) as session:
        try:
            campaign = campaigns.get_campaign(session, config.name)
            if campaign.config != config_json(config):
                logger.warning("campaign %r exists with another configuration: resuming it with its "
                               "stored configuration (start a new campaign under a new name)", config.name)
            logger.info("resuming campaign %r (id %d)", config.name, campaign.id)
            return campaign.id
        except LookupError:
            pass
        campaign = campaigns.create_campaign(session, config.name, config_json(config))
        for path in config.pool:
            report = import_structures(
                session, campaign, path, origin=f"pool:{Path(path).name}", allowed_elements=elements
            )
            logger.info("imported %s: %d structures (%d duplicates)", path, report.added, report.duplicates)
        pool_ids = [s.id for s in structures.campaign_structures(session, campaign, split="pool")]
        if config.test_file:
            import_structures(
                session, campaign, config.test_file, origin="test", split="test", allowed_elements=elements
            )
        else:
            test_ids = draw(pool_ids, config.test_size, config.seed, salt=1)
            structures.set_split(session, test_ids, "test")
            pool_ids = sorted(set(pool_ids) - set(test_ids))
        initial = draw(pool_ids, config.initial_size, config.seed, salt=2)
        assign_splits(session, initial, config.valid_fraction)
        rounds.create_round(
            session, campaign, 0, method=INITIAL_METHOD, parameters={"seed": config.seed},
            pool_size=len(pool_ids), selected=[(i, None, None) for i in initial],
        )
        logger.info("campaign %r created (id %d): %d pool, %d initial", config.name, campaign.id,
                    len(pool_ids), len(initial))
        return campaign.id


def assign_splits(session, structure_ids: list[int], valid_fraction: float) -> None:
    """Move newly selected pool structures to the train or valid split."""
    selected = structures.structures_by_id(session, structure_ids)
    splits = split_labelled([s.content_hash for s in selected], valid_fraction)
    for split in ("train", "valid"):
        structures.set_split(session, [s.id for s, sp in zip(selected, splits) if sp == split], split)


def import_structures(session, campaign, path: str | Path, *, origin: str | None = None, split: str = "pool",
                      allowed_elements=None) -> ImportReport:
    """Check every structure of a file, then store the new ones in the campaign (all or nothing).

    ``origin`` defaults to the path. Raises ``InvalidStructureError`` naming the file (and the
    structure index) of the first problem; nothing is stored then.
    """
    atoms_list = read_structures(path, allowed_elements=allowed_elements)
    return structures.import_atoms(session, campaign, atoms_list, [content_hash(a) for a in atoms_list],
                                   origin=origin or str(Path(path)), split=split)

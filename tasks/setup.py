"""Create or reopen a campaign: import the pool, draw the test set and the initial set."""

from __future__ import annotations

import contextlib

from dataclasses import dataclass
from pathlib import Path

import torch
from ase import Atoms
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from db import campaigns, init_db, registry, rounds, session_scope, structures
from db.structures import ImportReport
from tangentlab.config import TARGET_KEYWORDS, CampaignConfig, ConfigError, config_json, make_config
from tangentlab.mace_model import load_model, model_elements
from tangentlab.model_files import starting_weights
from tangentlab.paths import campaign_dir
from tangentlab.splits import draw, split_labelled
from tangentlab.structures import content_hash, read_structures
from tasks._db import engine_for
from tasks.label import oracle_for

INITIAL_METHOD = "initial-random"


def stored_config(url: str, name: str) -> CampaignConfig:
    """The configuration a campaign was created with."""
    with session_scope(engine_for(url)) as session:
        return make_config(campaigns.get_campaign(session, name).config, source=f"of campaign {name!r}")


def check_device(device: str) -> None:
    """Raise :class:`ConfigError` unless ``device`` exists on this machine (where the flow runs)."""
    dev = torch.device(device)
    available = {
        "cpu": lambda: True,
        "cuda": torch.cuda.is_available,
        "mps": torch.backends.mps.is_available,
        "xpu": lambda: hasattr(torch, "xpu") and torch.xpu.is_available(),
    }.get(dev.type, lambda: False)
    if not available():
        raise ConfigError(f"device {device!r}: no {dev.type} device on this machine")
    count = torch.cuda.device_count() if dev.type == "cuda" else 0
    if dev.type == "cuda" and dev.index is not None and dev.index >= count:
        raise ConfigError(f"device {device!r}: this machine has {count} CUDA device(s), "
                          f"cuda:0 to cuda:{count - 1}")


def starting_model(config: CampaignConfig) -> tuple[Path, dict]:
    """The campaign's starting model as a weights-only file, and where it came from.

    The file the user named in ``model`` (a MACE ``.model``) is read on first use, with the
    allow-list of MACE's classes (nothing in it runs), and converted into the campaign's
    ``models`` folder (its sha256 logged and returned); every later call finds the converted
    file (see `tangentlab.model_files.starting_weights`).
    """
    return starting_weights(config.model, campaign_dir(config.work_dir, config.name, "models"))


def starting_model_elements(config: CampaignConfig) -> list[str]:
    """The elements of the campaign's starting model; :class:`ConfigError` if it is unusable."""
    try:
        return model_elements(load_model(starting_model(config)[0]))
    except (ValueError, OSError) as exc:
        raise ConfigError(f"model: {exc}") from None


def campaign_model_elements(session, campaign) -> list[str]:
    """The elements of a stored campaign's starting model, read from its registered weights-only
    file (its sha256 checked), never from the file the configuration names, which may have been
    replaced since; before the first model version is registered (a campaign stopped while
    labelling its test set), from the configuration's file through the same safe reading as at
    the start. :class:`ConfigError` if the model is unusable."""
    versions = registry.model_versions(session, campaign)
    if not versions:
        config = make_config(campaign.config, source=f"of campaign {campaign.name!r}")
        return starting_model_elements(config)
    try:
        return model_elements(load_model(registry.verified_model_path(session, versions[0].id)))
    except (ValueError, OSError) as exc:
        raise ConfigError(f"model: {exc}") from None


@dataclass
class CampaignInputs:
    """A new campaign's inputs, all checked: the model's elements and the structures read."""

    elements: list[str]
    pool: dict[str, list[Atoms]]
    test: list[Atoms] | None


def _check_exploration_files(settings, elements: list[str]) -> None:
    """The exploration's seed file and NEB endpoint files: readable, known elements, and two
    structures of the same atoms per endpoint file."""
    if settings.seeds != "labelled":
        read_structures(settings.seeds, allowed_elements=elements)
    for path in settings.neb_endpoints:
        pair = read_structures(path, allowed_elements=elements)
        if len(pair) != 2:
            raise ConfigError(f"exploration.neb_endpoints: {path} holds {len(pair)} structures, not 2 "
                              "(reactant and product)")
        if list(pair[0].numbers) != list(pair[1].numbers):
            raise ConfigError(f"exploration.neb_endpoints: the reactant and product in {path} have different atoms")


def check_inputs(config: CampaignConfig) -> CampaignInputs:
    """Check everything a new campaign needs before its first row or QM job.

    The oracle, the device, the starting model, every structure of the pool and test files (and
    of the acquisition target file, when one is named), and the pool's size against the test and
    initial sets. Raises :class:`ConfigError` or
    ``InvalidStructureError`` naming the problem; a starting model converted by this call is
    then removed again, so a refused start leaves nothing behind.
    """
    models = campaign_dir(config.work_dir, config.name, "models")
    before = set(models.glob("starting-*")) if models.is_dir() else set()
    try:
        return _check_inputs(config)
    except Exception:
        _remove_new(models, before)
        raise


def _remove_new(models: Path, before: set[Path]) -> None:
    """Remove the files a refused check created in ``models``, and the folders it left empty."""
    if not models.is_dir():
        return
    for path in set(models.glob("starting-*")) - before:
        path.unlink(missing_ok=True)
    for folder in (models, models.parent):
        with contextlib.suppress(OSError):  # not empty: something else lives there
            folder.rmdir()


def _check_inputs(config: CampaignConfig) -> CampaignInputs:
    try:
        oracle_for(config)
    except (ValueError, ImportError) as exc:
        raise ConfigError(f"invalid oracle: {exc}") from None
    check_device(config.device)
    elements = starting_model_elements(config)
    pool = {path: read_structures(path, allowed_elements=elements) for path in config.pool}
    config.check_pool_size(len({content_hash(a) for atoms in pool.values() for a in atoms}))
    test = None
    if config.test_file:
        test = read_structures(config.test_file, allowed_elements=elements)
    if config.acquisition.target not in TARGET_KEYWORDS:
        read_structures(config.acquisition.target, allowed_elements=elements)
    if config.exploration is not None:
        _check_exploration_files(config.exploration, elements)
    return CampaignInputs(elements, pool, test)


@task(name="set up campaign", cache_policy=NO_CACHE)
def setup_campaign(url: str, config: CampaignConfig) -> int:
    """Create the campaign (or reopen it) and return its id (see :func:`set_up`)."""
    return _set_up(url, config)[0]


@task(name="set up campaign", cache_policy=NO_CACHE)
def set_up(url: str, config: CampaignConfig) -> tuple[int, CampaignConfig]:
    """Create the campaign (or reopen it); return its id and the configuration it runs with.

    A new campaign's inputs are checked first (:func:`check_inputs`), then everything
    happens in one transaction: the pool import, the test set and the initial round are
    stored together or not at all. A campaign that exists already is left as it is (its
    stored configuration wins).
    """
    return _set_up(url, config)


def _set_up(url: str, config: CampaignConfig) -> tuple[int, CampaignConfig]:
    logger = get_run_logger()
    engine = engine_for(url)
    init_db(engine)
    with session_scope(engine) as session:
        try:
            campaign = campaigns.get_campaign(session, config.name)
            if campaign.config != config_json(config):
                logger.warning("campaign %r exists with another configuration: resuming it with its "
                               "stored configuration (start a new campaign under a new name)", config.name)
            logger.info("resuming campaign %r (id %d)", config.name, campaign.id)
            return campaign.id, make_config(campaign.config, source=f"of campaign {config.name!r}")
        except LookupError:
            pass
    inputs = check_inputs(config)  # an unusable input stops here, before anything is stored
    with session_scope(engine) as session:
        campaign = campaigns.create_campaign(session, config.name, config_json(config))
        for path, atoms_list in inputs.pool.items():
            report = _store(session, campaign, atoms_list, origin=f"pool:{Path(path).name}", split="pool")
            logger.info("imported %s: %d structures (%d duplicates)", path, report.added,
                        report.duplicates)
        pool_ids = [s.id for s in structures.campaign_structures(session, campaign, split="pool")]
        if inputs.test is not None:
            _store(session, campaign, inputs.test, origin="test", split="test")
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
        return campaign.id, make_config(campaign.config, source=f"of campaign {config.name!r}")


def _store(session, campaign, atoms_list: list[Atoms], *, origin: str, split: str) -> ImportReport:
    hashes = [content_hash(a) for a in atoms_list]
    return structures.import_atoms(session, campaign, atoms_list, hashes, origin=origin, split=split)


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
    return _store(session, campaign, atoms_list, origin=origin or str(Path(path)), split=split)

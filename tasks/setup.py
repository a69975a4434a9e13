"""Create or reopen a campaign: import the pool, draw the test set and the initial set."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from ase import Atoms
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from db import campaigns, init_db, registry, rounds, session_scope, sqlite_path, structures
from db.structures import ImportReport
from tangentlab.config import TARGET_KEYWORDS, CampaignConfig, ConfigError, config_json, read_stored_config
from tangentlab.inputs import InputFileError, check_input_file
from tangentlab.mace_model import load_model, model_elements
from tangentlab.model_files import starting_weights
from tangentlab.paths import campaign_dir, check_campaign_folder, claim_campaign_folder
from tangentlab.splits import draw, split_labelled
from tangentlab.structures import content_hash, read_structures
from tasks._db import engine_for, redact_url
from tasks.label import oracle_for

INITIAL_METHOD = "initial-random"


def stored_config(url: str, name: str) -> CampaignConfig:
    """The configuration a campaign was created with."""
    with session_scope(engine_for(url)) as session:
        return read_stored_config(campaigns.get_campaign(session, name).config, source=f"of campaign {name!r}")


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


# sha256 of a weights-only file this process built a model from -> that model's elements
_ELEMENTS: dict[str, list[int]] = {}


def _file_elements(path: Path) -> list[int]:
    """``model_elements(load_model(path))``, the model built once per process for the same
    bytes (building a MACE model takes a good part of a second, and a campaign's set-up asks
    several times)."""
    try:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:  # load_model says what is wrong
        return model_elements(load_model(path))
    if digest not in _ELEMENTS:
        _ELEMENTS[digest] = model_elements(load_model(path))
    return list(_ELEMENTS[digest])


def starting_model_elements(config: CampaignConfig) -> list[str]:
    """The elements of the campaign's starting model; :class:`ConfigError` if it is unusable."""
    try:
        return _file_elements(starting_model(config)[0])
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
        config = read_stored_config(campaign.config, source=f"of campaign {campaign.name!r}")
        return starting_model_elements(config)
    try:
        return _file_elements(registry.verified_model_path(session, versions[0].id))
    except (ValueError, OSError) as exc:
        raise ConfigError(f"model: {exc}") from None


@dataclass
class CampaignInputs:
    """A new campaign's inputs, all checked: the model's elements and the structures read.

    ``pool`` holds no structure of ``test`` (``removed_from_pool`` counts those taken out).
    """

    elements: list[str]
    pool: dict[str, list[Atoms]]
    test: list[Atoms] | None
    removed_from_pool: int = 0


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


def check_inputs(config: CampaignConfig, campaign_uid: str | None = None) -> CampaignInputs:
    """Check everything a campaign needs before its first row, file or QM job.

    The oracle, the device, the campaign's folder (free, or the campaign ``campaign_uid``'s:
    `tangentlab.paths.check_campaign_folder`), the starting model, every structure of the pool
    and test files (and of the acquisition target and exploration files, when named), each
    file a regular file under the input size limit before it is read, and the pool's size
    against the test and initial sets. Test structures are taken out of the pool; an empty test
    set is refused. Raises :class:`ConfigError`, ``CampaignFolderError`` or
    ``InvalidStructureError`` naming the problem; whatever this call wrote (a converted starting
    model, its folders) is then removed again, so a refused start leaves nothing behind.

    Parameters
    ----------
    config
        The configuration.
    campaign_uid
        The uid of the campaign stored under this name in the database (``None``: a new one).
    """
    with removed_on_error(config):
        return _check_inputs(config, campaign_uid)


@contextlib.contextmanager
def removed_on_error(config: CampaignConfig) -> Iterator[None]:
    """Remove what the block writes under the campaign's ``work_dir`` (a converted starting
    model, the folders made for it) if the block raises."""
    work_dir = Path(config.work_dir).resolve()
    models = campaign_dir(config.work_dir, config.name, "models")
    folders = [f for f in (models, models.parent, work_dir) if not f.exists()]
    before = set(models.glob("starting-*")) if models.is_dir() else set()
    try:
        yield
    except BaseException:
        if models.is_dir():
            for path in set(models.glob("starting-*")) - before:
                path.unlink(missing_ok=True)
        for folder in folders:  # innermost first; only folders this block made
            with contextlib.suppress(OSError):  # not empty: something else lives there
                folder.rmdir()
        raise


def _check_inputs(config: CampaignConfig, campaign_uid: str | None) -> CampaignInputs:
    try:
        oracle_for(config)
    except (ValueError, ImportError) as exc:
        raise ConfigError(f"invalid oracle: {exc}") from None
    check_device(config.device)
    check_campaign_folder(config.work_dir, config.name, campaign_uid)
    try:
        check_input_file(config.model, "model file")
    except InputFileError as exc:
        raise ConfigError(f"model: {exc}") from None
    elements = starting_model_elements(config)
    pool = {path: read_structures(path, allowed_elements=elements) for path in config.pool}
    test, removed = None, 0
    if config.test_file:
        test = read_structures(config.test_file, allowed_elements=elements)
        pool, removed = _without(pool, {content_hash(a) for a in test})
    try:
        config.check_pool_size(len({content_hash(a) for atoms in pool.values() for a in atoms}))
    except ConfigError as exc:
        if not removed:
            raise
        raise ConfigError(f"{exc}, once the {removed} structures that are also in test_file "
                          f"{config.test_file} are taken out of it") from None
    if config.acquisition.target not in TARGET_KEYWORDS:
        read_structures(config.acquisition.target, allowed_elements=elements)
    if config.exploration is not None:
        _check_exploration_files(config.exploration, elements)
    return CampaignInputs(elements, pool, test, removed)


def _without(pool: dict[str, list[Atoms]], hashes: set[str]) -> tuple[dict[str, list[Atoms]], int]:
    """The pool without the structures whose content hash is in ``hashes``, and how many went."""
    kept = {path: [a for a in atoms if content_hash(a) not in hashes] for path, atoms in pool.items()}
    return kept, sum(len(a) for a in pool.values()) - sum(len(a) for a in kept.values())


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
            stored = read_stored_config(campaign.config, source=f"of campaign {config.name!r}")
            claim_campaign_folder(stored.work_dir, stored.name, campaign.uid, _database(url))
            logger.info("resuming campaign %r (id %d)", config.name, campaign.id)
            return campaign.id, read_stored_config(campaign.config, source=f"of campaign {config.name!r}")
        except LookupError:
            pass
    inputs = check_inputs(config)  # an unusable input stops here, before anything is stored
    if inputs.removed_from_pool:
        logger.info("%d structures of the test file %s are in the pool too: taken out of the pool",
                    inputs.removed_from_pool, config.test_file)
    # The folder is marked before the commit: if another campaign marked it first, nothing is
    # stored; if the commit fails, the marker goes again.
    with _unmarked_on_error() as markers, session_scope(engine) as session:
        campaign = campaigns.create_campaign(session, config.name, config_json(config))
        markers.append(claim_campaign_folder(config.work_dir, config.name, campaign.uid,
                                             _database(url)))
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
        return campaign.id, read_stored_config(campaign.config, source=f"of campaign {config.name!r}")


def _database(url: str) -> str:
    """The database as a campaign folder's marker names it: an SQLite file by its absolute path,
    a server by its URL without the password."""
    path = sqlite_path(url)
    return f"sqlite:///{path.resolve()}" if path is not None else redact_url(url)


@contextlib.contextmanager
def _unmarked_on_error() -> Iterator[list[Path]]:
    """Remove the marker files appended to the yielded list if the block raises."""
    markers: list[Path] = []
    try:
        yield markers
    except BaseException:
        for marker in markers:
            marker.unlink(missing_ok=True)
        raise


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

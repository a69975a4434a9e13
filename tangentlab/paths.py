"""Campaign names and the folders a campaign writes: always one safe name under ``work_dir``.

A campaign name becomes a folder name (models, QM runs, committee members, plots), so it is
one path component of a small character set, and every path built from it is resolved and
checked to lie under the resolved ``work_dir`` before anything is written there. A marker
file in the folder names the campaign it belongs to, so that a campaign of the same name in
another database never overwrites its files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

#: A name starts with a letter or digit (so never ``.``, ``..`` or ``-x``); no separators.
CAMPAIGN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: Longest campaign name: well under the 255-byte file-name limit of common file systems.
MAX_NAME_LENGTH = 100


class UnsafePathError(ValueError):
    """A campaign name or path that would write outside the campaign's ``work_dir``."""


def check_campaign_name(name: str) -> str:
    """
    Return ``name`` if it is a safe campaign name, else raise.

    Parameters
    ----------
    name
        The campaign name.

    Returns
    -------
    str
        ``name``, unchanged.

    Raises
    ------
    UnsafePathError
        If the name is longer than :data:`MAX_NAME_LENGTH` or not of :data:`CAMPAIGN_NAME`.
    """
    if len(name) > MAX_NAME_LENGTH:
        raise UnsafePathError(
            f"campaign name is {len(name)} characters long (at most {MAX_NAME_LENGTH})")
    if not CAMPAIGN_NAME.fullmatch(name):
        raise UnsafePathError(f"campaign name {name!r} may hold only letters, digits, '_', '.' "
                              "and '-', and must start with a letter or digit")
    return name


def campaign_dir(work_dir: str | Path, name: str, *parts: str) -> Path:
    """
    The resolved path ``<work_dir>/<name>/<parts...>``, checked to lie under ``work_dir``.

    Parameters
    ----------
    work_dir
        The campaign's ``work_dir``.
    name
        The campaign name (checked with :func:`check_campaign_name`).
    *parts
        Further components (a folder or file inside the campaign's folder).

    Returns
    -------
    Path
        The absolute path (symbolic links resolved); nothing is created.

    Raises
    ------
    UnsafePathError
        If the name is unsafe or the resolved path leaves ``work_dir`` (a ``..`` part, an
        absolute part or a symbolic link pointing elsewhere).
    """
    root = Path(work_dir).resolve()
    path = root.joinpath(check_campaign_name(name), *parts).resolve()
    if not path.is_relative_to(root / name):
        raise UnsafePathError(f"{path} is not inside the folder {root / name} of campaign {name!r}")
    return path


#: The file in a campaign's folder that names the campaign it belongs to.
MARKER = ".tangentlab-campaign.json"


class CampaignFolderError(ValueError):
    """A campaign folder that belongs to another campaign (of another database)."""


def folder_owner(folder: Path) -> dict | None:
    """The campaign recorded in ``folder``'s marker file (``None`` when there is none)."""
    marker = folder / MARKER
    if not marker.is_file():
        return None
    try:
        owner = json.loads(marker.read_text())
    except (OSError, ValueError):
        owner = None
    return owner if isinstance(owner, dict) else {"campaign": "?", "uid": None, "database": "?"}


def _holds_campaign_files(folder: Path) -> bool:
    """Whether ``folder`` holds what a campaign writes (models, QM runs, records), apart from
    a converted starting model, which any campaign starting from that model may share."""
    if not folder.is_dir():
        return False
    for entry in folder.iterdir():
        if entry.name != "models" or not entry.is_dir():
            return True
        if any(not p.name.startswith("starting-") for p in entry.iterdir()):
            return True
    return False


def check_campaign_folder(work_dir: str | Path, name: str, uid: str | None) -> Path:
    """
    Return the campaign's folder if it is free for the campaign ``uid``, else raise.

    Parameters
    ----------
    work_dir, name
        The campaign's ``work_dir`` and name.
    uid
        The campaign's unique id (``db.models.Campaign.uid``); ``None`` for a campaign not
        stored yet, whose folder must not hold another campaign's files.

    Returns
    -------
    Path
        The folder (:func:`campaign_dir`); nothing is created.

    Raises
    ------
    CampaignFolderError
        If the folder's marker names another campaign, or (for a new campaign) the folder
        holds the model files or QM records of a campaign that left no marker.
    """
    folder = campaign_dir(work_dir, name)
    owner = folder_owner(folder)
    if owner is not None and (uid is None or owner.get("uid") != uid):
        where = f" of database {owner['database']}" if owner.get("database") else ""
        raise CampaignFolderError(
            f"{folder} belongs to another campaign named {owner.get('campaign')!r}{where}: its "
            "model files and QM records would be overwritten; choose another work_dir or "
            "name, or remove that folder")
    if owner is None and uid is None and _holds_campaign_files(folder):
        raise CampaignFolderError(
            f"{folder} holds the files of another campaign (models, QM runs): they would be "
            "overwritten; choose another work_dir or name, or remove that folder")
    return folder


def claim_campaign_folder(work_dir: str | Path, name: str, uid: str, database: str) -> Path:
    """
    Mark the campaign's folder as the campaign ``uid``'s (checked first, made if missing).

    Parameters
    ----------
    work_dir, name
        The campaign's ``work_dir`` and name.
    uid
        The campaign's unique id.
    database
        The database URL to record, without its password (named in the refusal of another
        campaign).

    Returns
    -------
    Path
        The marker file (:data:`MARKER`).

    Raises
    ------
    CampaignFolderError
        As :func:`check_campaign_folder`, also when another process marks it first.
    """
    folder = check_campaign_folder(work_dir, name, uid)
    marker = folder / MARKER
    if marker.is_file():
        return marker
    folder.mkdir(parents=True, exist_ok=True)
    record = {"campaign": name, "uid": uid, "database": database}
    try:
        with marker.open("x") as handle:  # exclusive: of two new campaigns, one claims it
            json.dump(record, handle)
    except FileExistsError:
        check_campaign_folder(work_dir, name, uid)
    return marker

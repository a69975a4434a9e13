"""Campaign names and the folders a campaign writes: always one safe name under ``work_dir``.

A campaign name becomes a folder name (models, QM runs, committee members, plots), so it is
one path component of a small character set, and every path built from it is resolved and
checked to lie under the resolved ``work_dir`` before anything is written there.
"""

from __future__ import annotations

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

"""Input files read safely: regular files under a size limit, YAML without aliases.

Every file a user names (configuration, pool, test set, target, seeds, starting model) is
checked with :func:`check_input_file` before it is opened: a FIFO would block the read forever,
a device (a link to ``/dev/zero``) would be read until memory runs out, and a file of many
gigabytes would be parsed into memory before any structure is checked. Configuration files
are parsed by :func:`load_yaml`, which refuses YAML aliases: a few hundred bytes of nested
aliases (a "billion laughs" file) expand to gigabytes of objects.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Default size limit of an input file (MiB).
DEFAULT_MAX_INPUT_MB = 2048.0


class InputLimits(BaseSettings):
    """Limits on input files, from the environment (``TANGENTLAB_MAX_INPUT_MB``)."""

    model_config = SettingsConfigDict(env_prefix="TANGENTLAB_", extra="ignore")

    max_input_mb: float = Field(DEFAULT_MAX_INPUT_MB, gt=0,
                                description="Largest input file read (MiB).")


class InputFileError(ValueError):
    """An input file that is missing, not a regular file, or too large to read."""


class ModelFileError(ValueError):
    """A model file tangentlab will not load: pickled, unreadable, or not a MACE model it knows.

    Defined here (raised by `tangentlab.model_files`) so that the command line can name it
    without importing torch."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_input_file(path: str | Path, what: str = "input file") -> Path:
    """
    Return ``path`` if it is a regular file no larger than the limit, else raise.

    Symbolic links are followed: a link to a device or a FIFO is refused like the device.
    Nothing is opened.

    Parameters
    ----------
    path
        The file.
    what
        What the file is, for the message (``"pool file"``).

    Returns
    -------
    Path
        ``path`` as a :class:`~pathlib.Path`.

    Raises
    ------
    InputFileError
        If it does not exist, is not a regular file (folder, FIFO, device, socket), or is
        larger than ``TANGENTLAB_MAX_INPUT_MB`` (default :data:`DEFAULT_MAX_INPUT_MB`).
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise InputFileError(f"{what} {path} not found") from None
    except OSError as exc:
        raise InputFileError(f"{what} {path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputFileError(f"{what} {path} is {_kind(info.st_mode)}, not a regular file")
    limit = InputLimits().max_input_mb
    if info.st_size > limit * 2**20:
        raise InputFileError(f"{what} {path} is {info.st_size / 2**20:.3g} MiB, more than the "
                             f"limit of {limit:g} MiB (raise it with TANGENTLAB_MAX_INPUT_MB)")
    return path


class _NoAliasLoader(yaml.SafeLoader):
    """The safe YAML loader, refusing aliases (``*name``, also in ``<<: *name`` merges)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"alias *{event.anchor} found: YAML anchors and aliases are not "
                "allowed in this file (write the repeated values out)", event.start_mark)
        return super().compose_node(parent, index)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: the problem and where (``line L, column C``)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        context = f"{exc.context}: " if exc.context else ""
        return f"{context}{exc.problem}{where}"
    return " ".join(str(exc).split())


def load_yaml(path: str | Path, what: str = "configuration file") -> Any:
    """
    Parse a YAML (or JSON) file that may hold no aliases, after :func:`check_input_file`.

    Parameters
    ----------
    path
        The file.
    what
        What the file is, for the messages.

    Returns
    -------
    Any
        The parsed document (``None`` for an empty file).

    Raises
    ------
    InputFileError
        As :func:`check_input_file`.
    yaml.YAMLError
        If the text is not YAML, or holds an alias (:func:`yaml_problem` says it in one line).
    """
    text = check_input_file(path, what).read_text()
    loader = _NoAliasLoader(text)
    loader.name = str(path)  # named in the error marks instead of "<unicode string>"
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()

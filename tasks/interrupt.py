"""A stop the user asked for (the first Ctrl-C or SIGTERM): running steps finish, no new step
starts.

The command line sets it from its SIGINT and SIGTERM handlers; label workers check it before they
claim the next label, and the campaign flow between its steps, where it raises :class:`Interrupted`
with nothing half-written: every finished QM job is stored, an unclaimed label stays pending.
"""

from __future__ import annotations

import threading

_STOP = threading.Event()
_REASON = ["Ctrl-C"]  # what asked for the stop, for the messages


class Interrupted(Exception):
    """The campaign stopped between two steps because the user asked it to."""


def request_stop(reason: str = "Ctrl-C") -> None:
    """Ask the running campaign to stop after its current steps (thread- and signal-safe).

    Parameters
    ----------
    reason
        What asked for the stop (``"Ctrl-C"``, ``"SIGTERM"``), named in :class:`Interrupted`.
    """
    if not _STOP.is_set():
        _REASON[0] = reason
    _STOP.set()


def stop_reason() -> str | None:
    """What asked for the stop (``"Ctrl-C"``, ``"SIGTERM"``), or None if none was asked for."""
    return _REASON[0] if _STOP.is_set() else None


def stop_requested() -> bool:
    """Whether a stop was asked for."""
    return _STOP.is_set()


def check_stop(campaign: str) -> None:
    """Raise :class:`Interrupted` if a stop was asked for."""
    if _STOP.is_set():
        raise Interrupted(f"campaign {campaign!r} stopped by {_REASON[0]} between two steps: every "
                          "finished QM job is stored, unfinished ones are pending")

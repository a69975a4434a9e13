"""One error path: every expected failure becomes ``error: …`` and exit code 2, never a traceback.

An *expected* failure is one the user can fix: a bad configuration, structure, model file,
campaign name, database URL or file path, a database that cannot be opened or written, a
missing campaign. Anything else is a bug and keeps its traceback. ``--debug`` shows the
traceback of expected failures too.
"""

from __future__ import annotations

import logging

from sqlalchemy.exc import ArgumentError, DatabaseError, DBAPIError, IntegrityError

from db.leases import LeaseHeldError, LeaseLostError
from db.registry import ModelChangedError
from tangentlab.config import ConfigError
from tangentlab.inputs import InputFileError, ModelFileError
from tangentlab.paths import CampaignFolderError, UnsafePathError
from tangentlab.structures import InvalidStructureError
from tasks.interrupt import Interrupted

#: Exit code of every expected failure.
EXIT_ERROR = 2

# Prefect logs a failed flow or task run with its traceback, before the exception reaches us.
PREFECT_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class UsageError(Exception):
    """A command-line input that cannot be used (the message says which and why)."""


EXPECTED = (UsageError, ConfigError, InvalidStructureError, UnsafePathError, ModelChangedError,
            ModelFileError, LookupError, OSError, ArgumentError, DatabaseError, InputFileError,
            CampaignFolderError)

# Another live run holds the campaign's lease (the message names it), or took it from this run;
# a Ctrl-C stop (answered by the command itself, exit code 130).
EXPECTED += (LeaseHeldError, LeaseLostError, Interrupted)


def is_expected(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure the user can fix (shown as ``error: …`` without traceback)."""
    # Bugs that share a base class with expected failures: a missing key or index (LookupError),
    # two writers racing (DatabaseError).
    if isinstance(exc, (KeyError, IndexError, IntegrityError)):
        return False
    return isinstance(exc, EXPECTED)


def message(exc: BaseException) -> str:
    """The ``error: …`` line for an expected failure."""
    if isinstance(exc, DBAPIError):  # the driver's own words, without SQLAlchemy's statement dump
        return f"error: database: {str(exc.orig).strip()}"
    if isinstance(exc, ArgumentError):
        return f"error: database URL: {exc}"
    return f"error: {exc}"


class _HideExpectedTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and is_expected(record.exc_info[1]):
            record.exc_info, record.exc_text = None, None
        return True


def hide_prefect_tracebacks() -> None:
    """Keep Prefect's failure lines but drop their tracebacks for expected failures."""
    for name in PREFECT_RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _HideExpectedTracebacks) for f in logger.filters):
            logger.addFilter(_HideExpectedTracebacks())

"""The database URL of a flow run (credentials never in parameters or logs) and one engine per
URL; the URL functions of :mod:`db.settings` for the flows, which do not import ``db``."""

from __future__ import annotations

from functools import cache

from sqlalchemy.engine import Engine

from db import make_engine
from db.settings import database_url, has_password, redact_url

__all__ = ["database_url", "engine_for", "has_password", "redact_url", "run_database_url"]


def run_database_url(parameter: str | None) -> str:
    """The database URL of a flow run: its ``database_url`` parameter, else
    :func:`db.settings.database_url` (the environment, a Prefect Secret block, the default).

    Raises
    ------
    ValueError
        If the parameter carries a password: flow parameters are stored in the clear.
    """
    if parameter is not None and has_password(parameter):
        raise ValueError(
            f"database_url {redact_url(parameter)} carries a password: flow parameters are "
            "stored in the clear, so pass it as TANGENTLAB_DATABASE_URL or a Prefect Secret block "
            "named by TANGENTLAB_DATABASE_SECRET"
        )
    return parameter or database_url()


@cache
def engine_for(url: str) -> Engine:
    """The engine for ``url`` in this process (created on first use)."""
    return make_engine(url)

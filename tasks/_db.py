"""The database URL of a run (credentials never in parameters or logs) and one engine per URL."""

from __future__ import annotations

from functools import cache

from sqlalchemy.engine import Engine, make_url

from db import make_engine
from db.settings import database_url

__all__ = ["database_url", "engine_for", "has_password", "redact_url", "run_database_url"]


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for logs and messages)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: show nothing of it
        return "<unparsable database URL>"


def has_password(url: str) -> bool:
    """Whether ``url`` carries a password (then it must not become a flow parameter)."""
    try:
        return make_url(url).password is not None
    except Exception:
        return True


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

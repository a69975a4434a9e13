"""Database URL resolution (credentials never in parameters or logs) and one engine per URL."""

from __future__ import annotations

import os
from functools import cache

from sqlalchemy.engine import Engine, make_url

from db import DEFAULT_DATABASE_URL, make_engine

URL_ENV = "TANGENTLAB_DATABASE_URL"
SECRET_ENV = "TANGENTLAB_DATABASE_SECRET"


def database_url() -> str:
    """The campaign database URL of this process.

    In order: the environment variable ``TANGENTLAB_DATABASE_URL``; the Prefect Secret block
    named by ``TANGENTLAB_DATABASE_SECRET`` (``prefect block create secret`` or
    ``Secret(value=url).save(name)``); else ``sqlite:///tangentlab.db``. Both keep the password
    out of configuration files, flow parameters and logs.

    Raises
    ------
    LookupError
        If ``TANGENTLAB_DATABASE_SECRET`` names a block that cannot be loaded.
    """
    url = os.environ.get(URL_ENV)
    if url:
        return url
    secret = os.environ.get(SECRET_ENV)
    if secret:
        from prefect.blocks.system import Secret

        try:
            return str(Secret.load(secret).get())
        except ValueError as exc:
            raise LookupError(f"{SECRET_ENV}={secret!r}: no such Prefect Secret block ({exc})") from None
    return DEFAULT_DATABASE_URL


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


@cache
def engine_for(url: str) -> Engine:
    """The engine for ``url`` in this process (created on first use)."""
    return make_engine(url)

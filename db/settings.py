"""Where the campaign database is: the one resolver of its URL.

Every process (the ``tangentlab`` command, a flow run, a label worker) asks
:func:`database_url`; the settings come from the environment with the ``TANGENTLAB_`` prefix
(pydantic-settings), so a deployment sets them once for all of its processes.
"""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

#: The database of a campaign started without any setting: a file in the working directory.
DEFAULT_DATABASE_URL = "sqlite:///tangentlab.db"


class DatabaseSettings(BaseSettings):
    """The database settings of this process, read from the environment."""

    model_config = SettingsConfigDict(env_prefix="TANGENTLAB_", extra="ignore")

    database_url: str | None = None
    """``TANGENTLAB_DATABASE_URL``: the SQLAlchemy URL (a password may be in it)."""
    database_secret: str | None = None
    """``TANGENTLAB_DATABASE_SECRET``: name of a Prefect Secret block that holds the URL."""


def database_url(explicit: str | None = None) -> str:
    """
    The campaign database URL of this process.

    Parameters
    ----------
    explicit
        A URL given on the command line (``--db``); it wins over every setting.

    Returns
    -------
    str
        In order: ``explicit``; ``TANGENTLAB_DATABASE_URL``; the value of the Prefect Secret
        block named by ``TANGENTLAB_DATABASE_SECRET`` (``prefect block create secret`` or
        ``Secret(value=url).save(name)``); else :data:`DEFAULT_DATABASE_URL`. The environment
        and the Secret block keep a password out of configuration files, flow parameters and
        logs.

    Raises
    ------
    LookupError
        If ``TANGENTLAB_DATABASE_SECRET`` names a block that cannot be loaded.
    """
    if explicit:
        return explicit
    settings = DatabaseSettings()
    if settings.database_url:
        return settings.database_url
    if settings.database_secret:
        from prefect.blocks.system import Secret  # only a deployment that names a block needs it

        try:
            return str(Secret.load(settings.database_secret).get())
        except ValueError as exc:
            raise LookupError(f"TANGENTLAB_DATABASE_SECRET={settings.database_secret!r}: no such "
                              f"Prefect Secret block ({exc})") from None
    return DEFAULT_DATABASE_URL


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for logs and messages)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: show nothing of it
        return "<unparsable database URL>"


def has_password(url: str) -> bool:
    """Whether ``url`` carries a password (then it must not become a flow parameter)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password is not None
    except Exception:
        return True

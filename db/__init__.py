"""Database engine, schema migrations and sessions for tangentlab.

The engine is always passed in: ``engine = make_engine(url)``, ``init_db(engine)`` once, then
``with session_scope(engine) as session: ...`` around each unit of work.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session

from db.models import (
    AcquisitionRound,
    Base,
    Campaign,
    CampaignStatus,
    ExplorationTrajectory,
    Label,
    LabelStatus,
    ModelVersion,
    RoundStatus,
    Split,
    Structure,
)

__all__ = [
    "DEFAULT_DATABASE_URL",
    "AcquisitionRound",
    "Base",
    "Campaign",
    "CampaignStatus",
    "ExplorationTrajectory",
    "Label",
    "LabelStatus",
    "ModelVersion",
    "RoundStatus",
    "Split",
    "Structure",
    "alembic_config",
    "init_db",
    "make_engine",
    "session_scope",
]

DEFAULT_DATABASE_URL = "sqlite:///tangentlab.db"
MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
MIGRATION_LOCK = 0x7461_6E67  # advisory lock key of schema migrations ("tang")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Several processes (flow, QM workers) share one file: WAL lets readers run beside a
    # writer, and the busy timeout makes a writer wait for the lock instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    _journal_mode_wal(cursor)
    cursor.close()


def _journal_mode_wal(cursor: Any) -> None:
    # Switching a new file to WAL needs its exclusive lock. When several processes open a new
    # database at once, SQLite answers "database is locked" at once, without waiting out the
    # busy timeout, to the ones that would otherwise deadlock: retry them until that timeout.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def make_engine(url: str | None = None, **kwargs: Any) -> Engine:
    """
    Create an engine for a database URL.

    Parameters
    ----------
    url
        SQLAlchemy URL; default ``$TANGENTLAB_DATABASE_URL`` or ``sqlite:///tangentlab.db``.
        ``postgresql+psycopg://user:pass@host/db`` is the production backend.
    **kwargs
        Passed to :func:`sqlalchemy.create_engine`.

    Returns
    -------
    Engine
        For SQLite, every connection has foreign keys on, WAL journaling and a 30 s busy
        timeout.
    """
    url = url or os.environ.get("TANGENTLAB_DATABASE_URL") or DEFAULT_DATABASE_URL
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def alembic_config(connection: Connection | None = None) -> Config:
    """
    Alembic configuration for the packaged migrations (no ``alembic.ini`` needed).

    Parameters
    ----------
    connection
        Connection the migrations run on (``config.attributes["connection"]``).

    Returns
    -------
    Config
        Usable with :mod:`alembic.command`, e.g. ``command.revision(cfg, autogenerate=True)``.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def init_db(engine: Engine) -> None:
    """
    Create or upgrade the schema to the newest migration (``alembic upgrade head``).

    Parameters
    ----------
    engine
        Engine of the database; safe to call on an up-to-date database.
    """
    with engine.begin() as connection:
        # Two processes starting at once on a new database must not both create the tables:
        # the first takes the write lock (SQLite) or an advisory lock (PostgreSQL), the second
        # then finds the schema at head.
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        elif connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        command.upgrade(alembic_config(connection), "head")


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """
    A session that commits on success and rolls back on error.

    Parameters
    ----------
    engine
        Engine to bind the session to.

    Yields
    ------
    Session
        Objects stay usable after the block (``expire_on_commit=False``).
    """
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()

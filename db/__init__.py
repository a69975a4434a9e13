"""Database engine, schema migrations and sessions for tangentlab.

The engine is always passed in: ``engine = make_engine(url)``, ``init_db(engine)`` once, then
``with session_scope(engine) as session: ...`` around each unit of work.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sqlite3
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
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
from db.settings import DEFAULT_DATABASE_URL, database_url

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
    "backup_sqlite",
    "checkpoint",
    "database_url",
    "has_schema",
    "init_db",
    "make_engine",
    "session_scope",
    "sqlite_path",
]

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
        SQLAlchemy URL; default :func:`db.settings.database_url` (``$TANGENTLAB_DATABASE_URL``,
        a Prefect Secret block or ``sqlite:///tangentlab.db``).
        ``postgresql+psycopg://user:pass@host/db`` is the production backend.
    **kwargs
        Passed to :func:`sqlalchemy.create_engine`.

    Returns
    -------
    Engine
        For SQLite, every connection has foreign keys on, WAL journaling and a 30 s busy
        timeout, and the write-ahead log is copied into the database file when the process
        exits (:func:`checkpoint`), so that the ``.db`` file alone holds every commit.

    Raises
    ------
    sqlalchemy.exc.ArgumentError
        If the URL is malformed, or its database driver is not installed (the message says
        which package to install).
    """
    url = url or database_url()
    try:
        engine = create_engine(url, **kwargs)
    except ImportError as exc:  # the dialect's driver (psycopg, ...) is not installed
        raise ArgumentError(_missing_driver(url, exc)) from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        _SQLITE_ENGINES[engine] = os.getpid()
    return engine


def _missing_driver(url: str, exc: ImportError) -> str:
    driver = exc.name or str(exc)
    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        backend = ""
    hint = ("pip install 'tangentlab[postgres]'" if backend == "postgresql"
            else f"install the Python package {driver}")
    return f"the database driver {driver} is not installed ({hint})"


# Engines whose write-ahead log is checkpointed at exit, with the pid that made each (weak: a
# discarded engine is forgotten; a forked child leaves its parent's engines alone).
_SQLITE_ENGINES: weakref.WeakKeyDictionary[Engine, int] = weakref.WeakKeyDictionary()


def checkpoint(engine: Engine) -> None:
    """
    Copy an SQLite database's write-ahead log into the database file and empty the log.

    ``PRAGMA wal_checkpoint(TRUNCATE)``: afterwards the ``.db`` file alone holds every
    committed transaction (a copy of it is a complete database). Waits for the busy timeout
    for writers of other processes; does nothing on other backends.

    Parameters
    ----------
    engine
        Engine of the database.
    """
    if engine.dialect.name != "sqlite":
        return
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


@atexit.register
def _checkpoint_at_exit() -> None:
    # SQLite checkpoints by itself when the last connection to a file closes, but pooled
    # connections still open at interpreter exit are never closed: the commits of a campaign
    # run would stay in the -wal file beside the database.
    for engine, pid in list(_SQLITE_ENGINES.items()):
        path = sqlite_path(engine.url)
        if pid != os.getpid() or path is None or not path.exists():  # never create a file here
            continue
        with contextlib.suppress(Exception):  # exiting anyway: a busy or vanished file is fine
            checkpoint(engine)
            engine.dispose()


def sqlite_path(url: str | URL) -> Path | None:
    """The file of an SQLite URL (``None`` for another backend or an in-memory database)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    database = parsed.database
    if database.startswith("file:"):  # a URI filename (``?uri=true``): file:PATH?mode=ro
        database = database[len("file:"):].split("?", 1)[0]
    return Path(database)


def has_schema(engine: Engine) -> bool:
    """
    Whether the database exists and holds tangentlab's tables; creates nothing.

    Parameters
    ----------
    engine
        Engine of the database (an SQLite file that does not exist is not created).

    Returns
    -------
    bool
        False for a missing SQLite file and for a database without the ``campaign`` table.
    """
    path = sqlite_path(engine.url)
    if path is not None and not path.exists():
        return False
    return inspect(engine).has_table("campaign")


def backup_sqlite(engine: Engine, dest: str | Path) -> Path:
    """
    Copy an SQLite database into a new file with SQLite's online backup API.

    The copy is consistent even while campaigns write (each page is copied under SQLite's own
    locking, restarting when a writer changes a copied page) and is one self-contained file
    (journal mode ``DELETE``: no ``-wal`` beside it).

    Parameters
    ----------
    engine
        Engine of the SQLite database to copy.
    dest
        The new file; it must not exist.

    Returns
    -------
    Path
        ``dest``.

    Raises
    ------
    FileExistsError
        If ``dest`` exists (a backup never overwrites a file).
    """
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} exists; not overwriting it (give a new file)")
    partial = dest.with_name(f".{dest.name}.partial")
    partial.unlink(missing_ok=True)
    target = sqlite3.connect(partial)
    try:
        with engine.connect() as connection:
            connection.connection.driver_connection.backup(target)
        target.execute("PRAGMA journal_mode=DELETE")
        target.commit()
    finally:
        target.close()
    partial.rename(dest)
    return dest


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

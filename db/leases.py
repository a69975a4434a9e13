"""Campaign leases: one live run per campaign, on SQLite and PostgreSQL.

A run takes its campaign's lease before it touches the campaign and renews it by a heartbeat
while it runs; another run may take it over only once it is free (released on exit), expired
(no heartbeat for ``MISSED_HEARTBEATS`` intervals) or held by a process of this host that is
gone. Every change is one conditional ``INSERT``/``UPDATE`` whose row count decides, so two
processes never both win, whatever the timing (no read-then-write).

Times are the database server's clock on PostgreSQL (several hosts, one clock) and this
host's UTC clock on SQLite (one host). Label workers never take the lease: they share the
campaign's label queue, where each claim is atomic on its own (:func:`db.labels.claim_labels`).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import Campaign, CampaignLease

HEARTBEAT_ENV = "TANGENTLAB_LEASE_HEARTBEAT_S"
DEFAULT_HEARTBEAT_S = 10.0
MISSED_HEARTBEATS = 3  # a lease expires after this many heartbeat intervals without one

log = logging.getLogger(__name__)
_HELD_HERE: set[str] = set()  # tokens of the leases this process holds now
# The lease this process holds (or held, until it releases it) per (database, campaign name).
_HELD_BY_NAME: dict[tuple[str, str], Lease] = {}


def _key(bind: Engine | Connection, name: str) -> tuple[str, str]:
    return bind.engine.url.render_as_string(hide_password=True), name


def heartbeat_interval() -> float:
    """Seconds between heartbeats: ``$TANGENTLAB_LEASE_HEARTBEAT_S``, default 10."""
    value = os.environ.get(HEARTBEAT_ENV)
    if not value:
        return DEFAULT_HEARTBEAT_S
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{HEARTBEAT_ENV}={value!r} is not a number of seconds") from None
    if not seconds > 0:
        raise ValueError(f"{HEARTBEAT_ENV}={value!r} must be positive")
    return seconds


def expiry_s(interval_s: float | None = None) -> float:
    """Seconds without a heartbeat after which a holder counts as dead: ``MISSED_HEARTBEATS``
    intervals (default :func:`heartbeat_interval`). Leases and label claims share it."""
    return MISSED_HEARTBEATS * (heartbeat_interval() if interval_s is None else interval_s)


@dataclass(frozen=True)
class Holder:
    """The process that holds (or last held) a campaign's lease."""

    host: str
    pid: int
    token: str
    flow_run_id: str | None
    acquired_at: datetime
    heartbeat_at: datetime
    expires_at: datetime

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} since {_show(self.acquired_at)}"


@dataclass
class Lease:
    """A lease this process holds. ``previous`` is the dead or expired holder it replaced."""

    name: str
    token: str
    host: str
    pid: int
    ttl_s: float
    previous: Holder | None = None
    first: bool = False  # the lease row is new: no run of this campaign held it before
    lost: threading.Event = field(default_factory=threading.Event)
    taken_by: Holder | None = None

    def check(self) -> None:
        """Raise :class:`LeaseLostError` if another run took this lease over."""
        if self.lost.is_set():
            raise LeaseLostError(self)


class LeaseHeldError(RuntimeError):
    """Another live process runs the campaign; the message names it."""

    def __init__(self, name: str, holder: Holder) -> None:
        self.name, self.holder = name, holder
        super().__init__(
            f"campaign {name!r} is being run by {holder.describe()} (last heartbeat "
            f"{_show(holder.heartbeat_at)}); let it finish, or run again with --wait to start when "
            f"it does. If that process is gone, its lease expires at {_show(holder.expires_at)}")


class LeaseLostError(RuntimeError):
    """This run's heartbeats stopped for longer than its lease, and another run took it over."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        other = f" to {lease.taken_by.describe()}" if lease.taken_by else ""
        super().__init__(
            f"campaign {lease.name!r}: this run (pid {lease.pid}) lost its lease{other}: its "
            f"heartbeats stopped for more than {lease.ttl_s:g} s; it stops so that two runs never "
            "write one campaign")


def _show(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def as_utc(moment: datetime | None) -> datetime | None:
    """``moment`` as an aware UTC time (SQLite hands back naive ones; every time written is UTC)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=timezone.utc)


def database_now(connection: Connection) -> datetime:
    """Now, by the database server's clock on PostgreSQL (one clock for every host) and by
    this host's UTC clock elsewhere (SQLite: one host)."""
    if connection.dialect.name == "postgresql":
        return connection.exec_driver_sql("SELECT clock_timestamp()").scalar_one()
    return datetime.now(timezone.utc)


def process_gone(host: str, pid: int) -> bool:
    """True only when process ``pid`` ran on this host and no longer exists."""
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's live process
        return False
    return False


def _alive_here(holder: Holder) -> bool:
    """False only when the holder ran on this host and its process is gone."""
    if holder.host == socket.gethostname() and holder.pid == os.getpid():
        return holder.token in _HELD_HERE  # a lease of this process, or of a gone one whose pid it got
    return not process_gone(holder.host, holder.pid)


def current_holder(engine: Engine, name: str) -> Holder | None:
    """The process holding ``name``'s lease, or ``None`` if it is free (expired or not)."""
    with engine.connect() as connection:
        row = connection.execute(
            select(CampaignLease).where(CampaignLease.name == name)).mappings().first()
    if row is None or row["token"] is None:
        return None
    return Holder(row["host"], row["pid"], row["token"], row["flow_run_id"],
                  as_utc(row["acquired_at"]), as_utc(row["heartbeat_at"]), as_utc(row["expires_at"]))


def _insert_new(connection: Connection, values: dict) -> bool:
    dialect = connection.dialect.name
    if dialect in ("postgresql", "sqlite"):
        module = postgresql if dialect == "postgresql" else sqlite
        statement = (module.insert(CampaignLease).values(**values).on_conflict_do_nothing()
                     .returning(CampaignLease.name))  # psycopg reports no row count for an INSERT
        return connection.execute(statement).first() is not None
    try:  # another backend: the primary key decides
        with connection.begin_nested():
            connection.execute(insert(CampaignLease).values(**values))
    except IntegrityError:
        return False
    return True


def try_acquire(engine: Engine, name: str, ttl_s: float, *, flow_run_id: str | None = None
                ) -> tuple[Lease | None, Holder | None]:
    """
    Take ``name``'s lease if it is free, expired or held by a gone process of this host.

    Returns
    -------
    tuple
        ``(lease, None)`` on success, else ``(None, holder)`` with the live holder.
    """
    me = {"token": secrets.token_hex(16), "host": socket.gethostname(), "pid": os.getpid(),
          "flow_run_id": flow_run_id}
    lease = Lease(name, me["token"], me["host"], me["pid"], ttl_s)
    for _ in range(5):  # the holder may change between a look and a try; each try is atomic
        with engine.begin() as connection:
            now = database_now(connection)
            values = {**me, "acquired_at": now, "heartbeat_at": now,
                      "expires_at": now + timedelta(seconds=ttl_s)}
            if _insert_new(connection, {"name": name, **values}):
                lease.first = True
                _HELD_HERE.add(lease.token)
                _HELD_BY_NAME[_key(engine, name)] = lease
                return lease, None
        holder = current_holder(engine, name)
        condition = [CampaignLease.name == name]
        if holder is None:
            condition.append(CampaignLease.token.is_(None))
        elif holder.expires_at < now or not _alive_here(holder):
            condition.append(CampaignLease.token == holder.token)
            if _alive_here(holder):  # expired: still expired at the moment of the update
                condition.append(CampaignLease.expires_at < now)
        else:
            return None, holder
        with engine.begin() as connection:
            taken = connection.execute(update(CampaignLease).where(*condition).values(**values))
            if taken.rowcount == 1:
                lease.previous = holder
                _HELD_HERE.add(lease.token)
                _HELD_BY_NAME[_key(engine, name)] = lease
                return lease, None
    holder = current_holder(engine, name)
    if holder is None:
        raise RuntimeError(f"campaign {name!r}: could not take its lease after 5 tries")
    return None, holder


def acquire(engine: Engine, name: str, ttl_s: float, *, flow_run_id: str | None = None,
            wait: bool = False, poll_s: float = 1.0, on_wait: Callable[[Holder], None] | None = None
            ) -> Lease:
    """
    Take ``name``'s lease, or raise :class:`LeaseHeldError` naming its live holder.

    Parameters
    ----------
    engine, name, ttl_s, flow_run_id
        As for :func:`try_acquire`.
    wait
        Instead of raising, poll every ``poll_s`` seconds until the lease is ours.
    on_wait
        Called with each new holder waited for (e.g. to log it).
    """
    waited_for = None
    while True:
        lease, holder = try_acquire(engine, name, ttl_s, flow_run_id=flow_run_id)
        if lease is not None:
            return lease
        if not wait:
            raise LeaseHeldError(name, holder)
        if on_wait is not None and holder.token != waited_for:
            on_wait(holder)
        waited_for = holder.token
        time.sleep(poll_s)


def renew(engine: Engine, lease: Lease) -> bool:
    """Push the lease's expiry ``ttl_s`` ahead; False if it is no longer this lease's."""
    with engine.begin() as connection:
        now = database_now(connection)
        result = connection.execute(
            update(CampaignLease)
            .where(CampaignLease.name == lease.name, CampaignLease.token == lease.token)
            .values(heartbeat_at=now, expires_at=now + timedelta(seconds=lease.ttl_s)))
    return result.rowcount == 1


def release(engine: Engine, lease: Lease) -> bool:
    """Free the lease if this process still holds it; returns whether it did."""
    _HELD_HERE.discard(lease.token)
    if _HELD_BY_NAME.get(_key(engine, lease.name)) is lease:
        del _HELD_BY_NAME[_key(engine, lease.name)]
    with engine.begin() as connection:
        result = connection.execute(
            update(CampaignLease)
            .where(CampaignLease.name == lease.name, CampaignLease.token == lease.token)
            .values(token=None, host=None, pid=None, flow_run_id=None, acquired_at=None,
                    heartbeat_at=None, expires_at=None))
    return result.rowcount == 1


def fence(session: Session, campaign_id: int) -> None:
    """
    Let a transaction write a campaign's results only while this process's lease is live.

    Called inside the transaction that records a step's result (a round, a model version, an
    exploration trajectory, a label reset). If this process holds (or held) the campaign's
    lease, the lease row is renewed in that transaction, which keeps the row (PostgreSQL) or
    the database (SQLite) locked until the commit, so no other run can take the lease over in
    between; if another run has taken it, :class:`LeaseLostError` is raised and the
    transaction rolls back. A process that never took the campaign's lease (tests, tools
    calling the steps directly) is not fenced.
    """
    name = session.scalar(select(Campaign.name).where(Campaign.id == campaign_id))
    lease = _HELD_BY_NAME.get(_key(session.connection(), name)) if name is not None else None
    if lease is None:
        return
    now = database_now(session.connection())
    renewed = session.execute(
        update(CampaignLease)
        .where(CampaignLease.name == name, CampaignLease.token == lease.token)
        .values(heartbeat_at=now, expires_at=now + timedelta(seconds=lease.ttl_s))
        .execution_options(synchronize_session=False))
    if renewed.rowcount == 1:
        return
    if session.scalar(select(CampaignLease.name).where(CampaignLease.name == name)) is None:
        return  # no lease row: a database made anew since (tests); nothing to take over
    lease.lost.set()
    raise LeaseLostError(lease)


def _heartbeat(engine: Engine, lease: Lease, interval_s: float, stop: threading.Event) -> None:
    last_renewed = time.monotonic()
    while not stop.wait(interval_s):
        try:
            if renew(engine, lease):
                last_renewed = time.monotonic()
                continue
            lease.taken_by = current_holder(engine, lease.name)
            lease.lost.set()
            log.error("%s", LeaseLostError(lease))
            return
        except Exception as exc:  # the database is away for a moment: try again next beat
            log.warning("campaign %r: lease heartbeat failed: %s", lease.name, exc)
            if time.monotonic() - last_renewed > lease.ttl_s:
                lease.lost.set()
                return


@contextmanager
def hold(engine: Engine, name: str, *, flow_run_id: str | None = None, wait: bool = False,
         interval_s: float | None = None, on_wait: Callable[[Holder], None] | None = None
         ) -> Iterator[Lease]:
    """
    Hold ``name``'s lease for the block: acquire, renew by a heartbeat thread, release on exit.

    Parameters
    ----------
    interval_s
        Heartbeat interval; default :func:`heartbeat_interval`. The lease expires after
        ``MISSED_HEARTBEATS`` intervals without one.

    Yields
    ------
    Lease
        Call its ``check()`` between steps: it raises :class:`LeaseLostError` once lost.
    """
    interval = heartbeat_interval() if interval_s is None else interval_s
    lease = acquire(engine, name, expiry_s(interval), flow_run_id=flow_run_id, wait=wait,
                    poll_s=min(interval, 5.0), on_wait=on_wait)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(engine, lease, interval, stop),
                            name=f"lease heartbeat {name}", daemon=True)
    beat.start()
    try:
        yield lease
    finally:
        stop.set()
        beat.join(timeout=60)
        try:
            release(engine, lease)
        except Exception as exc:  # it expires on its own
            log.warning("campaign %r: could not release its lease (it expires in %g s): %s",
                        name, lease.ttl_s, exc)

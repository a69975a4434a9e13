"""Campaign leases on a real database: acquire, renew, expire, release, and races between processes.

Runs on SQLite and, where ``TANGENTLAB_TEST_POSTGRES_URL`` is set, on PostgreSQL. Fast: the
leases here last half a second.
"""

from __future__ import annotations

import multiprocessing
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import update

from db import init_db, leases, make_engine
from db.models import CampaignLease

TTL = 0.5


@pytest.fixture
def engine(database_url):
    engine = make_engine(database_url)
    init_db(engine)
    yield engine
    engine.dispose()


def test_one_holder_until_release(engine):
    first = leases.acquire(engine, "c", TTL)
    assert first.first and first.previous is None
    with pytest.raises(leases.LeaseHeldError) as refused:
        leases.acquire(engine, "c", TTL)
    holder = refused.value.holder
    assert (holder.host, holder.pid, holder.token) == (socket.gethostname(), first.pid, first.token)
    assert str(refused.value).startswith(
        f"campaign 'c' is being run by pid {first.pid} on {socket.gethostname()} since ")
    assert leases.acquire(engine, "other", TTL)  # leases are per campaign
    assert leases.release(engine, first)
    assert leases.current_holder(engine, "c") is None
    second = leases.acquire(engine, "c", TTL)
    assert not second.first and second.previous is None  # a released lease is free, not taken over
    assert not leases.release(engine, first)  # an old lease releases nothing


def test_heartbeat_keeps_it_and_expiry_frees_it(engine):
    held = leases.acquire(engine, "c", TTL)
    for _ in range(3):  # renewed: still held after several lifetimes
        time.sleep(TTL / 2)
        assert leases.renew(engine, held)
    with pytest.raises(leases.LeaseHeldError):
        leases.acquire(engine, "c", TTL)
    time.sleep(TTL * 1.5)  # no heartbeat: expired
    taker = leases.acquire(engine, "c", TTL)
    assert taker.previous is not None and taker.previous.token == held.token
    assert not leases.renew(engine, held)  # the old holder learns it lost the lease
    assert leases.current_holder(engine, "c").token == taker.token


def test_a_live_holder_on_another_host_is_waited_for_until_it_expires(engine):
    held = leases.acquire(engine, "c", 3.0)
    with engine.begin() as connection:  # as if held by a process of another machine
        connection.execute(update(CampaignLease).values(host="elsewhere", pid=1))
    with pytest.raises(leases.LeaseHeldError, match="by pid 1 on elsewhere since"):
        leases.acquire(engine, "c", TTL)
    waited = []
    taker = leases.acquire(engine, "c", TTL, wait=True, poll_s=0.1, on_wait=waited.append)
    taken_at = datetime.now(timezone.utc)
    assert [h.host for h in waited] == ["elsewhere"] and taker.previous.token == held.token
    assert taken_at >= waited[0].expires_at  # it waited for the expiry, however long the setup took


def test_a_dead_process_of_this_host_is_replaced_at_once(engine):
    held = leases.acquire(engine, "c", 60.0)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with engine.begin() as connection:
        connection.execute(update(CampaignLease).values(pid=gone.pid))
    taker = leases.acquire(engine, "c", TTL)  # no waiting for the 60 s expiry
    assert taker.previous.pid == gone.pid and taker.previous.token == held.token


def test_hold_renews_in_the_background_and_releases_on_exit(engine):
    with leases.hold(engine, "c", interval_s=0.2) as lease:
        assert lease.ttl_s == pytest.approx(0.6)
        time.sleep(1.0)  # several lifetimes: the heartbeat thread renewed it
        with pytest.raises(leases.LeaseHeldError):
            leases.acquire(engine, "c", TTL)
        lease.check()
    assert leases.current_holder(engine, "c") is None


def test_a_run_that_stalls_past_its_lease_learns_it_lost_it(engine):
    with leases.hold(engine, "c", interval_s=1.0) as lease:
        with engine.begin() as connection:  # its lease expired while it stalled
            connection.execute(update(CampaignLease).values(
                expires_at=datetime.now(timezone.utc) - timedelta(seconds=60)))
        taker = leases.acquire(engine, "c", TTL)
        deadline = time.monotonic() + 5
        while not lease.lost.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(leases.LeaseLostError, match=f"lost its lease to pid {taker.pid} on "):
            lease.check()
    assert leases.current_holder(engine, "c").token == taker.token  # its exit freed nothing


def _race(url: str, name: str, barrier, queue) -> None:
    engine = make_engine(url)
    barrier.wait()
    try:
        lease = leases.acquire(engine, name, 30.0)
        queue.put(("won", lease.pid))
        time.sleep(1.0)  # hold it while the others try
    except leases.LeaseHeldError as refused:
        queue.put(("refused", refused.holder.pid))
    engine.dispose()


@pytest.mark.parametrize("taken_over", [False, True], ids=["new", "expired"])
def test_processes_racing_for_a_lease_give_one_winner(engine, database_url, taken_over):
    if taken_over:
        leases.acquire(engine, "c", 0.01)
        time.sleep(0.05)
    context = multiprocessing.get_context("spawn")
    barrier, queue = context.Barrier(4), context.Queue()
    processes = [context.Process(target=_race, args=(database_url, "c", barrier, queue))
                 for _ in range(4)]
    for process in processes:
        process.start()
    results = [queue.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    winners = [pid for outcome, pid in results if outcome == "won"]
    assert len(winners) == 1, results
    assert all(pid == winners[0] for outcome, pid in results if outcome == "refused"), results


def test_two_processes_migrate_a_new_database_at_once(database_url):
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(3)
    processes = [context.Process(target=_init_db, args=(database_url, barrier)) for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0


def _init_db(url: str, barrier) -> None:
    engine = make_engine(url)
    barrier.wait()
    init_db(engine)
    engine.dispose()


def test_many_connections_open_a_new_sqlite_file_at_once(tmp_path):
    """Switching a new file to WAL: SQLite refuses some of several connections that try at
    once with 'database is locked' without waiting out the busy timeout (CI saw it in the
    test above, between processes); each must get its connection. Threads race the same way
    as processes and are cheap (a forked child of a pytest-xdist worker died without a word):
    without the retry, about one round in twenty failed here, so 150 rounds catch it."""
    for attempt in range(150):
        url = f"sqlite:///{tmp_path}/new-{attempt}.db"
        barrier, modes = threading.Barrier(6), []
        threads = [threading.Thread(target=_connect, args=(url, barrier, modes)) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert modes == ["wal"] * 6, f"round {attempt}: {modes}"


def _connect(url: str, barrier: threading.Barrier, modes: list) -> None:
    engine = make_engine(url)
    barrier.wait()
    try:
        with engine.connect() as connection:
            modes.append(connection.exec_driver_sql("PRAGMA journal_mode").scalar())
    except Exception as exc:  # noqa: BLE001 - the test reports it
        modes.append(repr(exc))
    engine.dispose()


def test_a_step_result_written_after_the_lease_was_taken_over_is_refused(engine, database_url, tmp_path):
    """A run that stalled past its lease and was taken over cannot record a step's result:
    the write's transaction checks (and renews) the lease in itself, so the model version and
    the round move are refused with LeaseLostError and nothing of them is stored."""
    from sqlalchemy import func, select

    from db import AcquisitionRound, ModelVersion, campaigns, registry, rounds, session_scope

    with session_scope(engine) as session:
        campaign_id = campaigns.create_campaign(session, "fenced", {}).id
    lease = leases.acquire(engine, "fenced", 60.0)
    with session_scope(engine) as session:  # while it holds the lease, results are written
        rounds.create_round(session, campaign_id, 0, method="initial")
    with engine.begin() as connection:  # it stalled: its lease expired
        connection.execute(update(CampaignLease).values(
            expires_at=datetime.now(timezone.utc) - timedelta(seconds=60)))
    subprocess.run([sys.executable, "-c", "import sys; from db import leases, make_engine; "
                    "leases.acquire(make_engine(sys.argv[1]), 'fenced', 60.0)", database_url], check=True)
    model = tmp_path / "round-000.pt"
    model.write_bytes(b"weights")
    with pytest.raises(leases.LeaseLostError, match="'fenced': this run .* lost its lease"):
        with session_scope(engine) as session:
            registry.register_model(session, campaign_id, model, round_number=0)
    with pytest.raises(leases.LeaseLostError):
        with session_scope(engine) as session:
            rounds.advance_round(session, rounds.get_round(session, campaign_id, 0), "labelled")
    assert lease.lost.is_set()
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(ModelVersion)) == 0
        assert session.scalar(select(AcquisitionRound.status)) == "selected"
    assert not leases.release(engine, lease)  # frees nothing: the lease is the other run's

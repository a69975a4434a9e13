"""The body of a process that claims labels (tests/test_db.py), in a module of its own: a
spawned process imports the module of its target, and this one imports only the database
layer, not what a test module imports (torch, MACE, Prefect: seconds a process)."""

from __future__ import annotations

from db import labels, make_engine, session_scope


def claim_until_empty(url, campaign_id, key, worker, barrier, queue):
    """Claim three labels at a time for ``worker`` until none is left; put what it claimed."""
    engine = make_engine(url)
    barrier.wait()
    claimed = []
    while True:
        with session_scope(engine) as session:
            ids = labels.claim_labels(session, campaign_id, key, 3, worker)
        if not ids:
            break
        claimed.extend(ids)
    engine.dispose()
    queue.put((worker, claimed))

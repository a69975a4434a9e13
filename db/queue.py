"""The label queue of asynchronous rounds: ranked picks, re-ranking, cancelling, the stream.

A pick is a pending label with a ``priority`` (workers claim the lowest first, after every
unranked label: :func:`db.labels.claim_labels`) and the model version that picked it. Only
pending picks are re-ranked or cancelled, each by one conditional ``UPDATE``/``DELETE``, so a
worker that claims a pick at the same moment keeps it.

The **stream** tells the streaming label workers, wherever they run (threads, Dask workers,
a labelling deployment's flow run on another machine), whether to wait for the next pick: the
campaign run opens it under a new token (:func:`open_stream`) and closes it when it stops
(:func:`close_stream`); a worker holding that token keeps claiming only while
:func:`stream_open` says so, which is also false once the run that opened it lost its lease
(killed: no heartbeat for the lease's expiry) or another run opened a stream of its own. It is
a row of the lease table named ``<campaign>:stream`` (``:`` is never in a campaign name).
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from db.labels import level_key as make_level_key
from db.leases import as_utc, database_now, fence
from db.models import Campaign, CampaignLease, Label, LabelStatus, Split, Structure

STREAM = ":stream"  # suffix of the stream's row in the lease table

OPEN = (LabelStatus.PENDING, LabelStatus.RUNNING)
PICKED = (Split.TRAIN, Split.VALID)


@dataclass(frozen=True)
class Pick:
    """One queued or running pick: its label, structure, split, status, rank and picker."""

    label_id: int
    structure_id: int
    split: str
    status: str
    priority: float | None
    picked_by_model_id: int | None


def queue_picks(
    session: Session,
    campaign_id: int,
    structure_ids: Sequence[int],
    level: dict[str, Any],
    *,
    picked_by: int,
) -> list[int]:
    """Pending labels for new picks, ranked after every queued one in the order given."""
    fence(session, campaign_id)
    key = make_level_key(level)
    last = session.scalar(
        select(func.max(Label.priority))
        .join(Structure, Structure.id == Label.structure_id)
        .where(Structure.campaign_id == campaign_id, Label.level_key == key)
    )
    start = 0.0 if last is None else float(last) + 1.0
    new = [
        Label(
            structure_id=sid,
            level_key=key,
            level=level,
            status=LabelStatus.PENDING,
            priority=start + rank,
            picked_by_model_id=picked_by,
        )
        for rank, sid in enumerate(structure_ids)
    ]
    session.add_all(new)
    session.flush()
    return [label.id for label in new]


def picks(
    session: Session, campaign_id: int, key: str | None, *, status: Sequence[str] = OPEN
) -> list[Pick]:
    """Picks of the training and validation splits with a label of ``status`` (at level
    ``key``; None: any), in queue order."""
    query = (
        select(Label, Structure.split)
        .join(Structure, Structure.id == Label.structure_id)
        .where(
            Structure.campaign_id == campaign_id,
            Label.status.in_(list(status)),
            Structure.split.in_(list(PICKED)),
        )
        .order_by(Label.priority.is_not(None), Label.priority, Label.id)
    )
    if key is not None:
        query = query.where(Label.level_key == key)
    return [
        Pick(
            label.id,
            label.structure_id,
            str(getattr(split, "value", split)),
            str(getattr(label.status, "value", label.status)),
            label.priority,
            label.picked_by_model_id,
        )
        for label, split in session.execute(query)
    ]


def rerank(session: Session, campaign_id: int, label_ids: Sequence[int]) -> int:
    """Give still-pending ``label_ids`` the queue order given (their old priorities, sorted);
    returns how many were re-ranked (a label claimed meanwhile keeps its place)."""
    fence(session, campaign_id)
    old = sorted(
        p
        for p in session.scalars(select(Label.priority).where(Label.id.in_(label_ids)))
        if p is not None
    )
    changed = 0
    for label_id, priority in zip(label_ids, old, strict=False):
        changed += session.execute(
            update(Label)
            .where(Label.id == label_id, Label.status == LabelStatus.PENDING)
            .values(priority=priority)
        ).rowcount
    return changed


def cancel_pending(session: Session, campaign_id: int, key: str) -> list[int]:
    """Delete the picks no worker has started and return their structures to the pool."""
    fence(session, campaign_id)
    queued = [
        p
        for p in picks(session, campaign_id, key, status=[LabelStatus.PENDING])
        if p.priority is not None
    ]
    ids = [p.label_id for p in queued]
    if not ids:
        return []
    session.execute(
        delete(Label)
        .where(Label.id.in_(ids), Label.status == LabelStatus.PENDING)
        .execution_options(synchronize_session=False)
    )
    gone = set(session.scalars(select(Label.id).where(Label.id.in_(ids))))
    structure_ids = [p.structure_id for p in queued if p.label_id not in gone]
    session.execute(
        update(Structure)
        .where(Structure.id.in_(structure_ids))
        .values(split=Split.POOL)
        .execution_options(synchronize_session=False)
    )
    return structure_ids


def picked_by(session: Session, campaign_id: int) -> dict[str, int]:
    """Labels of the training and validation splits per model version that picked them
    (``"initial"``: the initial draw and synchronous rounds, which record no picker)."""
    out: dict[str, int] = {}
    for p in picks(session, campaign_id, None, status=list(LabelStatus)):
        name = "initial" if p.picked_by_model_id is None else f"model {p.picked_by_model_id}"
        out[name] = out.get(name, 0) + 1
    return out


def _campaign_name(session: Session, campaign_id: int) -> str:
    return session.scalar(select(Campaign.name).where(Campaign.id == campaign_id))


def open_stream(session: Session, campaign_id: int) -> str:
    """Open the campaign's label stream under a new token (a stream another run opened is
    closed by it) and return the token; only the campaign's lease holder may (fenced)."""
    fence(session, campaign_id)
    name = _campaign_name(session, campaign_id) + STREAM
    token = secrets.token_hex(16)
    values = {
        "token": token,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "acquired_at": database_now(session.connection()),
    }
    opened = session.execute(
        update(CampaignLease)
        .where(CampaignLease.name == name)
        .values(**values)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not opened:
        session.add(CampaignLease(name=name, **values))
        session.flush()
    return token


def stream_open(session: Session, campaign_id: int, token: str) -> bool:
    """Whether the stream of ``token`` is open: not closed, no newer stream opened, and the
    campaign's lease held and not expired (a campaign without a lease row, run by a tool
    that takes none, counts as held)."""
    name = _campaign_name(session, campaign_id)
    rows = dict(
        session.execute(
            select(CampaignLease.name, CampaignLease).where(
                CampaignLease.name.in_([name, name + STREAM])
            )
        ).all()
    )
    stream, lease = rows.get(name + STREAM), rows.get(name)
    if stream is None or stream.token != token:
        return False
    if lease is None:
        return True
    return lease.token is not None and as_utc(lease.expires_at) >= database_now(
        session.connection()
    )


def close_stream(session: Session, campaign_id: int, token: str) -> bool:
    """Close the stream of ``token`` (a newer one is left open); returns whether it was open."""
    name = _campaign_name(session, campaign_id) + STREAM
    return (
        session.execute(
            update(CampaignLease)
            .where(CampaignLease.name == name, CampaignLease.token == token)
            .values(token=None, host=None, pid=None, acquired_at=None)
            .execution_options(synchronize_session=False)
        ).rowcount
        == 1
    )

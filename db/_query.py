"""Small functions the aggregate modules share: campaign ids, split values, chunked IN queries."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Campaign, Split

_IN_CHUNK = 500  # stay far below SQLite's bound-parameter limit in IN (...) queries


def campaign_id_of(campaign: Campaign | int) -> int:
    """The id of a campaign given as a row or an id."""
    return campaign.id if isinstance(campaign, Campaign) else int(campaign)


def split_values(split: str | Iterable[str] | None) -> list[Split] | None:
    """One split or several as :class:`Split` values; ``None`` stays ``None`` (every split)."""
    if split is None:
        return None
    if isinstance(split, str):
        return [Split(split)]
    return [Split(s) for s in split]


def chunks(values: Sequence[Any]) -> Iterable[Sequence[Any]]:
    """``values`` in slices small enough for one ``IN (...)`` clause."""
    for start in range(0, len(values), _IN_CHUNK):
        yield values[start : start + _IN_CHUNK]


def rows_by_id(session: Session, model: type[Any], ids: Sequence[int]) -> list[Any]:
    """Rows of ``model`` in the order of ``ids``; raises ``LookupError`` for a missing id."""
    found: dict[int, Any] = {}
    for chunk in chunks(list(ids)):
        found.update(
            {row.id: row for row in session.scalars(select(model).where(model.id.in_(chunk)))}
        )
    missing = [i for i in ids if i not in found]
    if missing:
        raise LookupError(f"no {model.__tablename__} rows with ids {missing[:10]}")
    return [found[i] for i in ids]

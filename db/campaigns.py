"""Campaigns: create one, find it by name or id, record its status.

Like every aggregate module of :mod:`db`, functions take the session first; they add and
flush but never commit: the caller's :func:`db.session_scope` decides the transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db._query import campaign_id_of
from db.models import Campaign, CampaignStatus


def create_campaign(session: Session, name: str, config: dict[str, Any]) -> Campaign:
    """Create a campaign; raises ``ValueError`` if the name is taken."""
    if session.scalar(select(Campaign.id).where(Campaign.name == name)) is not None:
        raise ValueError(f"campaign {name!r} already exists")
    campaign = Campaign(name=name, config=config, status=CampaignStatus.CREATED)
    session.add(campaign)
    session.flush()
    return campaign


def get_campaign(session: Session, name: str) -> Campaign:
    """The campaign called ``name``; raises ``LookupError`` naming it if there is none."""
    campaign = session.scalar(select(Campaign).where(Campaign.name == name))
    if campaign is None:
        raise LookupError(f"no campaign named {name!r}")
    return campaign


def campaign_by_id(session: Session, campaign_id: int) -> Campaign:
    """The campaign with id ``campaign_id``; raises ``sqlalchemy.exc.NoResultFound`` if none."""
    return session.get_one(Campaign, campaign_id)


def all_campaigns(session: Session) -> list[Campaign]:
    """All campaigns, oldest first."""
    return list(session.scalars(select(Campaign).order_by(Campaign.id)))


def set_campaign_status(
    session: Session, campaign: Campaign | int, status: str, stop_reason: str | None = None
) -> Campaign:
    """Set a campaign's status (and why it stopped)."""
    row = session.get_one(Campaign, campaign_id_of(campaign))
    row.status = CampaignStatus(status)
    if stop_reason is not None:
        row.stop_reason = stop_reason
    session.flush()
    return row

"""Campaign uid: the unique id that marks a campaign's folder under its work_dir.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("campaign") as batch:
        batch.add_column(sa.Column("uid", sa.String(length=32), nullable=True))
    campaign = sa.table("campaign", sa.column("id", sa.Integer), sa.column("uid", sa.String))
    connection = op.get_bind()
    for (campaign_id,) in connection.execute(sa.select(campaign.c.id)).all():
        connection.execute(campaign.update().where(campaign.c.id == campaign_id)
                           .values(uid=uuid.uuid4().hex))
    with op.batch_alter_table("campaign") as batch:
        batch.alter_column("uid", existing_type=sa.String(length=32), nullable=False)
        batch.create_unique_constraint("uq_campaign_uid", ["uid"])


def downgrade() -> None:
    with op.batch_alter_table("campaign") as batch:
        batch.drop_constraint("uq_campaign_uid", type_="unique")
        batch.drop_column("uid")

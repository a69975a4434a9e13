"""Label queue of asynchronous rounds: a pending pick's priority and the model that picked it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("label") as batch:
        batch.add_column(sa.Column("priority", sa.Float(), nullable=True))
        batch.add_column(sa.Column("picked_by_model_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_label_picked_by_model_id", "model_version", ["picked_by_model_id"], ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("label") as batch:
        batch.drop_constraint("fk_label_picked_by_model_id", type_="foreignkey")
        batch.drop_column("picked_by_model_id")
        batch.drop_column("priority")

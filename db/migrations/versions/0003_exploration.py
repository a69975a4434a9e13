"""Exploration: finished trajectories per round, and where each explored candidate came from.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("structure") as batch:
        batch.add_column(sa.Column("provenance", sa.JSON(), nullable=True))
    op.create_table(
        "exploration_trajectory",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("round_number", sa.Integer(), nullable=False),
        sa.Column("walker", sa.Integer(), nullable=False),
        sa.Column("engine", sa.String(length=32), nullable=False),
        sa.Column("seed_structure_id", sa.Integer(), nullable=True),
        sa.Column("temperature_k", sa.Float(), nullable=True),
        sa.Column("steps_run", sa.Integer(), nullable=False),
        sa.Column("frames_scored", sa.Integer(), nullable=False),
        sa.Column("frames_kept", sa.Integer(), nullable=False),
        sa.Column("candidates_added", sa.Integer(), nullable=False),
        sa.Column("stop_reason", sa.String(length=32), nullable=False),
        sa.Column("sigma", sa.JSON(), nullable=False),
        sa.Column("wall_s", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaign.id"], ondelete="CASCADE",
                                name="fk_exploration_trajectory_campaign_id_campaign"),
        sa.PrimaryKeyConstraint("id", name="pk_exploration_trajectory"),
        sa.UniqueConstraint("campaign_id", "round_number", "walker",
                            name="uq_exploration_trajectory_campaign_id_round_number_walker"),
    )


def downgrade() -> None:
    op.drop_table("exploration_trajectory")
    with op.batch_alter_table("structure") as batch:
        batch.drop_column("provenance")

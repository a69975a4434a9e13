"""Initial schema: campaign, structure, label, model_version, acquisition_round.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Enum values are frozen here (not imported from db.models) so this revision never changes.
CAMPAIGN_STATUS = ("created", "running", "stopped", "targets_met", "budget_exhausted", "failed")
SPLIT = ("pool", "train", "valid", "test")
LABEL_STATUS = ("pending", "running", "done", "failed")
ROUND_STATUS = ("selected", "labelled", "trained", "evaluated")


def _enum(values: tuple[str, ...], name: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, length=32)


def _timestamp(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "campaign",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("status", _enum(CAMPAIGN_STATUS, "campaignstatus"), nullable=False),
        sa.Column("stop_reason", sa.Text(), nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_campaign"),
        sa.UniqueConstraint("name", name="uq_campaign_name"),
    )
    op.create_table(
        "model_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("round_number", sa.Integer(), nullable=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("training_label_ids", sa.JSON(), nullable=False),
        sa.Column("hyperparameters", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        _timestamp("created_at"),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaign.id"],
            name="fk_model_version_campaign_id_campaign",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["model_version.id"],
            name="fk_model_version_parent_id_model_version",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_model_version"),
    )
    op.create_index("ix_model_version_campaign_id", "model_version", ["campaign_id"])
    op.create_table(
        "structure",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("numbers", sa.LargeBinary(), nullable=False),
        sa.Column("positions", sa.LargeBinary(), nullable=False),
        sa.Column("cell", sa.LargeBinary(), nullable=False),
        sa.Column("pbc", sa.JSON(), nullable=False),
        sa.Column("charge", sa.Integer(), nullable=False),
        sa.Column("multiplicity", sa.Integer(), nullable=False),
        sa.Column("formula", sa.String(length=200), nullable=False),
        sa.Column("natoms", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("origin", sa.Text(), nullable=False),
        sa.Column("split", _enum(SPLIT, "split"), nullable=False),
        _timestamp("created_at"),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaign.id"],
            name="fk_structure_campaign_id_campaign",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_structure"),
        sa.UniqueConstraint(
            "campaign_id", "content_hash", name="uq_structure_campaign_id_content_hash"
        ),
    )
    op.create_index("ix_structure_campaign_id_split", "structure", ["campaign_id", "split"])
    op.create_table(
        "acquisition_round",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("status", _enum(ROUND_STATUS, "roundstatus"), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        sa.Column("trained_model_id", sa.Integer(), nullable=True),
        sa.Column("method", sa.String(length=64), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("pool_size", sa.Integer(), nullable=False),
        sa.Column("selected", sa.JSON(), nullable=False),
        sa.Column("timings", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaign.id"],
            name="fk_acquisition_round_campaign_id_campaign",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_version.id"],
            name="fk_acquisition_round_model_version_id_model_version",
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["trained_model_id"],
            ["model_version.id"],
            name="fk_acquisition_round_trained_model_id_model_version",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_acquisition_round"),
        sa.UniqueConstraint(
            "campaign_id", "number", name="uq_acquisition_round_campaign_id_number"
        ),
    )
    op.create_table(
        "label",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("structure_id", sa.Integer(), nullable=False),
        sa.Column("level_key", sa.String(length=32), nullable=False),
        sa.Column("level", sa.JSON(), nullable=False),
        sa.Column("energy", sa.Float(), nullable=True),
        sa.Column("forces", sa.LargeBinary(), nullable=True),
        sa.Column("status", _enum(LABEL_STATUS, "labelstatus"), nullable=False),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("wall_time", sa.Float(), nullable=True),
        sa.Column("run_dir", sa.Text(), nullable=True),
        sa.Column("worker", sa.String(length=200), nullable=True),
        _timestamp("claimed_at", nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.ForeignKeyConstraint(
            ["structure_id"],
            ["structure.id"],
            name="fk_label_structure_id_structure",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_label"),
        sa.UniqueConstraint("structure_id", "level_key", name="uq_label_structure_id_level_key"),
    )
    op.create_index("ix_label_level_key_status", "label", ["level_key", "status"])


def downgrade() -> None:
    for table in ("label", "acquisition_round", "structure", "model_version", "campaign"):
        op.drop_table(table)

"""SQLAlchemy 2.0 models of a campaign: structures, labels, model versions and rounds.

Arrays are little-endian blobs (numbers int64, positions/cell/forces/stress float64) whose
shape follows from ``natoms``: positions and forces ``(natoms, 3)``, cell ``(3, 3)``, a label's
stress ``(6,)`` (Voigt order xx, yy, zz, yz, xz, xy, eV/Å³). Energies are total energies in eV,
forces eV/Å. Enum columns store the lower-case values as strings
(no native database enum), so raw SQL can compare with e.g. ``status = 'pending'``.
The schema is created by the Alembic migrations in ``db/migrations``; keep them in step.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Timezone-aware current time (UTC)."""
    return datetime.now(timezone.utc)


def new_uid() -> str:
    """A new campaign's unique id (32 hex digits), unique across databases."""
    return uuid.uuid4().hex


class _StrEnum(str, enum.Enum):
    def __str__(self) -> str:
        return str(self.value)


class CampaignStatus(_StrEnum):
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"
    TARGETS_MET = "targets_met"
    BUDGET_EXHAUSTED = "budget_exhausted"
    FAILED = "failed"


class Split(_StrEnum):
    POOL = "pool"
    TRAIN = "train"
    VALID = "valid"
    TEST = "test"


class LabelStatus(_StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class RoundStatus(_StrEnum):
    EXPLORED = "explored"  # only in campaigns with exploration: candidates stored, none selected
    SELECTED = "selected"
    LABELLED = "labelled"
    TRAINED = "trained"
    EVALUATED = "evaluated"


def _enum_column(enum_class: type[_StrEnum]) -> Enum:
    return Enum(
        enum_class,
        name=enum_class.__name__.lower(),
        native_enum=False,
        length=32,
        values_callable=lambda members: [member.value for member in members],
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012
        dict[str, Any]: JSON,
        list[Any]: JSON,
        datetime: DateTime(timezone=True),
        bytes: LargeBinary,
    }


class Campaign(Base):
    __tablename__ = "campaign"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # Written into the campaign's folder (tangentlab.paths.claim_campaign_folder), so that a
    # campaign of the same name in another database never writes there.
    uid: Mapped[str] = mapped_column(String(32), unique=True, default=new_uid)
    config: Mapped[dict[str, Any]]
    status: Mapped[CampaignStatus] = mapped_column(
        _enum_column(CampaignStatus), default=CampaignStatus.CREATED
    )
    stop_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    structures: Mapped[list[Structure]] = relationship(
        back_populates="campaign", cascade="all, delete-orphan", passive_deletes=True
    )

    def __repr__(self) -> str:
        return f"Campaign(id={self.id}, name={self.name!r}, status={self.status})"


class Structure(Base):
    __tablename__ = "structure"
    __table_args__ = (
        UniqueConstraint("campaign_id", "content_hash"),
        Index("ix_structure_campaign_id_split", "campaign_id", "split"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaign.id", ondelete="CASCADE"))
    numbers: Mapped[bytes]
    positions: Mapped[bytes]
    cell: Mapped[bytes]
    pbc: Mapped[list[Any]]
    charge: Mapped[int] = mapped_column(default=0)
    multiplicity: Mapped[int] = mapped_column(default=1)
    formula: Mapped[str] = mapped_column(String(200))
    natoms: Mapped[int]
    content_hash: Mapped[str] = mapped_column(String(64))
    origin: Mapped[str] = mapped_column(Text, default="")
    #: Where an explored candidate came from (round, engine, seed structure, temperature, step,
    #: σ), and the structure's ASE constraints (``constraints``, ASE's ``todict`` form, e.g.
    #: ``FixAtoms`` on a slab's bottom layers); None for unconstrained structures read from files.
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    split: Mapped[Split] = mapped_column(_enum_column(Split), default=Split.POOL)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    campaign: Mapped[Campaign] = relationship(back_populates="structures")
    labels: Mapped[list[Label]] = relationship(
        back_populates="structure", cascade="all, delete-orphan", passive_deletes=True
    )

    def __repr__(self) -> str:
        return f"Structure(id={self.id}, formula={self.formula!r}, split={self.split})"


class Label(Base):
    __tablename__ = "label"
    __table_args__ = (
        UniqueConstraint("structure_id", "level_key"),
        Index("ix_label_level_key_status", "level_key", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    structure_id: Mapped[int] = mapped_column(ForeignKey("structure.id", ondelete="CASCADE"))
    level_key: Mapped[str] = mapped_column(String(32))
    level: Mapped[dict[str, Any]]
    energy: Mapped[float | None] = mapped_column(Float)
    forces: Mapped[bytes | None]
    stress: Mapped[bytes | None]
    status: Mapped[LabelStatus] = mapped_column(
        _enum_column(LabelStatus), default=LabelStatus.PENDING
    )
    failure_reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0)
    wall_time: Mapped[float | None] = mapped_column(Float)
    run_dir: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(200))
    claimed_at: Mapped[datetime | None]
    # Asynchronous rounds: the queue order of a pending pick (lowest first; None, as for the
    # test and initial sets, before every ranked pick) and the model version that picked it.
    priority: Mapped[float | None] = mapped_column(Float)
    picked_by_model_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_version.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    structure: Mapped[Structure] = relationship(back_populates="labels")

    def __repr__(self) -> str:
        return f"Label(id={self.id}, structure_id={self.structure_id}, status={self.status})"


class ModelVersion(Base):
    __tablename__ = "model_version"

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(
        ForeignKey("campaign.id", ondelete="CASCADE"), index=True
    )
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_version.id", ondelete="SET NULL")
    )
    round_number: Mapped[int | None]
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    training_label_ids: Mapped[list[Any]] = mapped_column(default=list)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"ModelVersion(id={self.id}, round_number={self.round_number}, path={self.path!r})"


class AcquisitionRound(Base):
    __tablename__ = "acquisition_round"
    __table_args__ = (UniqueConstraint("campaign_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaign.id", ondelete="CASCADE"))
    number: Mapped[int]
    status: Mapped[RoundStatus] = mapped_column(
        _enum_column(RoundStatus), default=RoundStatus.SELECTED
    )
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_version.id", ondelete="SET NULL")
    )
    trained_model_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_version.id", ondelete="SET NULL")
    )
    method: Mapped[str] = mapped_column(String(64))
    parameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    pool_size: Mapped[int] = mapped_column(default=0)
    selected: Mapped[list[Any]] = mapped_column(default=list)
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:
        return (
            f"AcquisitionRound(number={self.number}, method={self.method!r}, status={self.status})"
        )


class CampaignLease(Base):
    """Who runs a campaign now: one row per campaign name, held by at most one process.

    Keyed by the name rather than the campaign id, so that a lease can be taken before the
    campaign exists (two ``start``s at once then never both create it). ``token`` is ``None``
    when the lease is free; a holder renews ``heartbeat_at`` and ``expires_at`` while it runs.
    """

    __tablename__ = "campaign_lease"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    token: Mapped[str | None] = mapped_column(String(64))
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None]
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    acquired_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]

    def __repr__(self) -> str:
        return f"CampaignLease(name={self.name!r}, host={self.host!r}, pid={self.pid})"


class ExplorationTrajectory(Base):
    """One finished exploration trajectory (walker) of a round, stored with its candidates.

    A walker's candidate structures and this row are written in one transaction, so a run
    killed during exploration keeps the walkers it finished and a resume runs only the others.
    """

    __tablename__ = "exploration_trajectory"
    __table_args__ = (UniqueConstraint("campaign_id", "round_number", "walker"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaign.id", ondelete="CASCADE"))
    round_number: Mapped[int]
    walker: Mapped[int]
    engine: Mapped[str] = mapped_column(String(32))
    seed_structure_id: Mapped[int | None]
    temperature_k: Mapped[float | None] = mapped_column(Float)
    steps_run: Mapped[int] = mapped_column(default=0)
    frames_scored: Mapped[int] = mapped_column(default=0)
    frames_kept: Mapped[int] = mapped_column(default=0)
    candidates_added: Mapped[int] = mapped_column(default=0)
    stop_reason: Mapped[str] = mapped_column(String(32))
    sigma: Mapped[list[Any]] = mapped_column(default=list)
    wall_s: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return (f"ExplorationTrajectory(round={self.round_number}, walker={self.walker}, "
                f"stop_reason={self.stop_reason!r})")

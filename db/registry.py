"""The model registry: model files recorded with their sha256, and the metrics measured on them.

A model file is loaded only through :func:`verified_model_path`, which refuses a file that
changed since it was registered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db._query import campaign_id_of
from db.leases import fence
from db.models import Campaign, ModelVersion


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def register_model(
    session: Session,
    campaign: Campaign | int,
    path: str | Path,
    *,
    parent_id: int | None = None,
    label_ids: Iterable[int] = (),
    hyperparameters: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    round_number: int | None = None,
) -> ModelVersion:
    """Register a model file (its sha256 is computed here) with its training set and metrics."""
    fence(session, campaign_id_of(campaign))
    path = Path(path)
    model = ModelVersion(
        campaign_id=campaign_id_of(campaign),
        parent_id=parent_id,
        round_number=round_number,
        path=str(path),
        sha256=file_sha256(path),
        training_label_ids=[int(i) for i in label_ids],
        hyperparameters=dict(hyperparameters or {}),
        metrics=dict(metrics or {}),
    )
    session.add(model)
    session.flush()
    return model


class ModelChangedError(ValueError):
    """A registered model file whose content no longer has its recorded sha256."""


def verified_model_path(session: Session, model_version_id: int) -> str:
    """The path of a registered model, after checking the file still has its recorded sha256.

    Raises
    ------
    FileNotFoundError
        If the file is gone.
    ModelChangedError
        If the file changed since it was registered (it is never loaded then).
    """
    version = session.get_one(ModelVersion, model_version_id)
    path = Path(version.path)
    if not path.is_file():
        raise FileNotFoundError(f"model version {version.id}: file {path} is missing")
    digest = file_sha256(path)
    if digest != version.sha256:
        raise ModelChangedError(
            f"model version {version.id}: {path} changed since it was registered "
            f"(sha256 {digest[:12]}..., registered {version.sha256[:12]}...); refusing to load it"
        )
    return str(path)


def set_model_metrics(
    session: Session, model_version_id: int, key: str, metrics: Any
) -> ModelVersion:
    """Store ``metrics`` under ``key`` in a model version's metrics (other keys are kept)."""
    version = session.get_one(ModelVersion, model_version_id)
    version.metrics = {**(version.metrics or {}), key: metrics}
    session.flush()
    return version


def latest_model(session: Session, campaign: Campaign | int) -> ModelVersion | None:
    """The most recently registered model version of a campaign, or ``None``."""
    return session.scalar(
        select(ModelVersion)
        .where(ModelVersion.campaign_id == campaign_id_of(campaign))
        .order_by(ModelVersion.id.desc())
        .limit(1)
    )


def model_versions(session: Session, campaign: Campaign | int) -> list[ModelVersion]:
    """Every model version of a campaign, oldest first (the starting model is the first)."""
    return list(
        session.scalars(
            select(ModelVersion)
            .where(ModelVersion.campaign_id == campaign_id_of(campaign))
            .order_by(ModelVersion.id)
        )
    )

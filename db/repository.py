"""All reads and writes the flows and tasks need, as functions taking a session first.

Functions that take ``campaign`` accept a :class:`Campaign` or its id. They add and flush
but never commit: the caller's :func:`db.session_scope` decides the transaction.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.io import read, write
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.models import (
    AcquisitionRound,
    Campaign,
    CampaignStatus,
    Label,
    LabelStatus,
    ModelVersion,
    RoundStatus,
    Split,
    Structure,
    utcnow,
)
from tangentlab.structures import (
    InvalidStructureError,
    charge_and_multiplicity,
    content_hash,
    validate_atoms,
)

_IN_CHUNK = 500  # stay far below SQLite's bound-parameter limit in IN (...) queries


@dataclass(frozen=True)
class ImportReport:
    """Outcome of an import: rows added, duplicates skipped, ids in input order."""

    added: int
    duplicates: int
    structure_ids: list[int] = field(default_factory=list)


def _campaign_id(campaign: Campaign | int) -> int:
    return campaign.id if isinstance(campaign, Campaign) else int(campaign)


def _splits(split: str | Iterable[str] | None) -> list[Split] | None:
    if split is None:
        return None
    if isinstance(split, str):
        return [Split(split)]
    return [Split(s) for s in split]


def _chunks(values: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), _IN_CHUNK):
        yield values[start : start + _IN_CHUNK]


def level_key(level: dict[str, Any]) -> str:
    """Short stable key of a level of theory: first 16 hex digits of sha1 of its sorted JSON."""
    text = json.dumps(level, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


# Campaigns


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


def set_campaign_status(
    session: Session, campaign: Campaign | int, status: str, stop_reason: str | None = None
) -> Campaign:
    """Set a campaign's status (and why it stopped)."""
    row = session.get_one(Campaign, _campaign_id(campaign))
    row.status = CampaignStatus(status)
    if stop_reason is not None:
        row.stop_reason = stop_reason
    session.flush()
    return row


# Structures


def _structure_row(
    atoms: Atoms, campaign_id: int, hash_: str, origin: str, split: Split
) -> Structure:
    charge, multiplicity = charge_and_multiplicity(atoms)
    return Structure(
        campaign_id=campaign_id,
        numbers=np.asarray(atoms.numbers, dtype="<i8").tobytes(),
        positions=np.asarray(atoms.positions, dtype="<f8").tobytes(),
        cell=np.asarray(atoms.cell.array, dtype="<f8").tobytes(),
        pbc=[bool(p) for p in atoms.pbc],
        charge=charge,
        multiplicity=multiplicity,
        formula=atoms.get_chemical_formula(),
        natoms=len(atoms),
        content_hash=hash_,
        origin=origin,
        split=split,
    )


def import_atoms(
    session: Session,
    campaign: Campaign | int,
    atoms_list: Sequence[Atoms],
    *,
    origin: str,
    split: str = "pool",
    allowed_elements: Iterable[str | int] | None = None,
    min_distance: float = 0.4,
    source: str = "",
) -> ImportReport:
    """
    Add structures to a campaign, all or nothing.

    Parameters
    ----------
    session
        Open session.
    campaign
        Campaign or its id.
    atoms_list
        Structures to add.
    origin
        Where they came from (file, exploration run, ...), stored with each.
    split
        ``"pool"``, ``"train"``, ``"valid"`` or ``"test"``.
    allowed_elements
        Elements the model knows (symbols or atomic numbers); ``None`` accepts any.
    min_distance
        Minimum interatomic distance (Å) passed to :func:`validate_atoms`.
    source
        Name used in error messages (``"<source>, structure <i>"``, i counted from 0).

    Returns
    -------
    ImportReport
        Structures already in the campaign, or repeated in ``atoms_list``, count as
        duplicates and are not added again.

    Raises
    ------
    InvalidStructureError
        For the first invalid structure; nothing is added then.
    """
    split_value = Split(split)
    elements = None if allowed_elements is None else list(allowed_elements)
    label = source or origin
    for index, atoms in enumerate(atoms_list):
        where = f"{label}, structure {index}" if label else f"structure {index}"
        validate_atoms(atoms, allowed_elements=elements, min_distance=min_distance, where=where)

    campaign_id = _campaign_id(campaign)
    hashes = [content_hash(atoms) for atoms in atoms_list]
    known: dict[str, int] = {}
    for chunk in _chunks(sorted(set(hashes))):
        rows = session.execute(
            select(Structure.content_hash, Structure.id).where(
                Structure.campaign_id == campaign_id, Structure.content_hash.in_(chunk)
            )
        )
        known.update({h: i for h, i in rows})

    new_rows: dict[str, Structure] = {}
    for atoms, hash_ in zip(atoms_list, hashes, strict=True):
        if hash_ not in known and hash_ not in new_rows:
            new_rows[hash_] = _structure_row(atoms, campaign_id, hash_, origin, split_value)
    session.add_all(new_rows.values())
    session.flush()
    known.update({h: row.id for h, row in new_rows.items()})
    return ImportReport(
        added=len(new_rows),
        duplicates=len(hashes) - len(new_rows),
        structure_ids=[known[h] for h in hashes],
    )


def import_file(
    session: Session,
    campaign: Campaign | int,
    path: str | Path,
    *,
    origin: str | None = None,
    split: str = "pool",
    allowed_elements: Iterable[str | int] | None = None,
    min_distance: float = 0.4,
) -> ImportReport:
    """
    Import every structure of an ASE-readable file (``ase.io.read(path, ":")``).

    Parameters are those of :func:`import_atoms`; ``origin`` defaults to the path.

    Raises
    ------
    InvalidStructureError
        Naming the file when it is missing, unreadable or empty, or naming the file and
        structure index of the first invalid structure; nothing is added then.
    """
    path = Path(path)
    try:
        atoms_list = read(path, ":")
    except Exception as error:
        raise InvalidStructureError(f"{path}: cannot read structures ({error})") from error
    if not atoms_list:
        raise InvalidStructureError(f"{path}: no structures")
    return import_atoms(
        session,
        campaign,
        atoms_list,
        origin=origin or str(path),
        split=split,
        allowed_elements=allowed_elements,
        min_distance=min_distance,
        source=path.name,
    )


def structure_atoms(structure: Structure) -> Atoms:
    """The structure as :class:`ase.Atoms` with ``info`` structure_id, charge, multiplicity."""
    n = structure.natoms
    atoms = Atoms(
        numbers=np.frombuffer(structure.numbers, dtype="<i8").copy(),
        positions=np.frombuffer(structure.positions, dtype="<f8").reshape(n, 3).copy(),
        cell=np.frombuffer(structure.cell, dtype="<f8").reshape(3, 3).copy(),
        pbc=list(structure.pbc),
    )
    atoms.info.update(
        structure_id=structure.id, charge=structure.charge, multiplicity=structure.multiplicity
    )
    return atoms


def structures(
    session: Session, campaign: Campaign | int, split: str | Iterable[str] | None = None
) -> list[Structure]:
    """Structures of a campaign (optionally of one split or several), ordered by id."""
    query = select(Structure).where(Structure.campaign_id == _campaign_id(campaign))
    splits = _splits(split)
    if splits is not None:
        query = query.where(Structure.split.in_(splits))
    return list(session.scalars(query.order_by(Structure.id)))


def _rows_by_id(session: Session, model: type[Any], ids: Sequence[int]) -> list[Any]:
    found: dict[int, Any] = {}
    for chunk in _chunks(list(ids)):
        found.update(
            {row.id: row for row in session.scalars(select(model).where(model.id.in_(chunk)))}
        )
    missing = [i for i in ids if i not in found]
    if missing:
        raise LookupError(f"no {model.__tablename__} rows with ids {missing[:10]}")
    return [found[i] for i in ids]


def structures_by_id(session: Session, structure_ids: Sequence[int]) -> list[Structure]:
    """Structures in the order of ``structure_ids``; raises ``LookupError`` for a missing id."""
    return _rows_by_id(session, Structure, structure_ids)


def set_split(session: Session, structure_ids: Iterable[int], split: str) -> int:
    """Move structures to a split; returns the number of rows changed."""
    ids = list(structure_ids)
    changed = 0
    for chunk in _chunks(ids):
        result = session.execute(
            update(Structure).where(Structure.id.in_(chunk)).values(split=Split(split))
        )
        changed += result.rowcount
    return changed


# Labels


def ensure_labels(
    session: Session, structure_ids: Sequence[int], level: dict[str, Any]
) -> list[int]:
    """
    Pending labels for structures at a level of theory, reusing existing ones.

    Returns
    -------
    list
        Label ids in the order of ``structure_ids``, whatever their status.
    """
    key = level_key(level)
    existing: dict[int, int] = {}
    for chunk in _chunks(sorted(set(structure_ids))):
        rows = session.execute(
            select(Label.structure_id, Label.id).where(
                Label.level_key == key, Label.structure_id.in_(chunk)
            )
        )
        existing.update({s: i for s, i in rows})
    new = {
        sid: Label(structure_id=sid, level_key=key, level=level, status=LabelStatus.PENDING)
        for sid in dict.fromkeys(structure_ids)
        if sid not in existing
    }
    session.add_all(new.values())
    session.flush()
    existing.update({sid: label.id for sid, label in new.items()})
    return [existing[sid] for sid in structure_ids]


def _pending_ids(campaign_id: int, key: str, limit: int, exclude: set[int] | None = None) -> Any:
    query = (
        select(Label.id)
        .join(Structure, Structure.id == Label.structure_id)
        .where(
            Structure.campaign_id == campaign_id,
            Label.level_key == key,
            Label.status == LabelStatus.PENDING,
        )
        .order_by(Label.id)
        .limit(limit)
    )
    if exclude:
        query = query.where(Label.id.not_in(exclude))
    return query


def claim_labels(
    session: Session, campaign_id: int, level_key: str, limit: int, worker: str
) -> list[int]:
    """
    Atomically mark up to ``limit`` pending labels as running for ``worker``.

    On PostgreSQL the candidates are locked with ``SELECT ... FOR UPDATE SKIP LOCKED``;
    elsewhere each candidate is claimed by ``UPDATE ... WHERE id = :id AND status = 'pending'``
    and kept only if that changed one row, so two workers never claim the same label.

    Returns
    -------
    list
        Ids of the claimed labels, oldest first.
    """
    now = utcnow()
    claim = {"status": LabelStatus.RUNNING, "worker": worker, "claimed_at": now, "updated_at": now}
    if session.get_bind().dialect.name == "postgresql":
        query = _pending_ids(campaign_id, level_key, limit)
        ids = list(session.scalars(query.with_for_update(skip_locked=True, of=Label)))
        if ids:
            session.execute(update(Label).where(Label.id.in_(ids)).values(**claim))
        return ids

    claimed: list[int] = []
    tried: set[int] = set()
    while len(claimed) < limit:
        query = _pending_ids(campaign_id, level_key, limit - len(claimed), tried)
        candidates = list(session.scalars(query))
        if not candidates:
            break
        for label_id in candidates:
            tried.add(label_id)
            result = session.execute(
                update(Label)
                .where(Label.id == label_id, Label.status == LabelStatus.PENDING)
                .values(**claim)
            )
            if result.rowcount == 1:
                claimed.append(label_id)
    return claimed


def _forces_array(forces: Any, natoms: int) -> np.ndarray:
    array = np.asarray(forces, dtype=float)
    if array.shape != (natoms, 3):
        raise ValueError(f"forces have shape {array.shape}, expected ({natoms}, 3)")
    if not np.isfinite(array).all():
        raise ValueError("forces contain NaN or inf")
    return array


def label_forces(label: Label, natoms: int) -> np.ndarray | None:
    """Forces of a label as an ``(natoms, 3)`` array (eV/Å), or ``None``."""
    if label.forces is None:
        return None
    return np.frombuffer(label.forces, dtype="<f8").reshape(natoms, 3).copy()


def complete_label(
    session: Session,
    label_id: int,
    energy: float,
    forces: Any,
    wall_time: float | None = None,
    run_dir: str | None = None,
) -> Label:
    """
    Store a finished QM result and mark the label done.

    Raises
    ------
    ValueError
        If the energy or forces are not finite or the forces are not ``(natoms, 3)``;
        the label is left unchanged.
    """
    label = session.get_one(Label, label_id)
    if not np.isfinite(energy):
        raise ValueError(f"label {label_id}: energy {energy} is not finite")
    try:
        array = _forces_array(forces, label.structure.natoms)
    except ValueError as error:
        raise ValueError(f"label {label_id}: {error}") from None
    label.energy = float(energy)
    label.forces = array.astype("<f8").tobytes()
    label.status = LabelStatus.DONE
    label.wall_time = wall_time
    label.run_dir = run_dir
    label.failure_reason = None
    session.flush()
    return label


def fail_label(
    session: Session, label_id: int, reason: str, run_dir: str | None = None, max_attempts: int = 3
) -> Label:
    """Record a failed attempt: back to pending while attempts < ``max_attempts``, else failed."""
    label = session.get_one(Label, label_id)
    label.attempts += 1
    label.failure_reason = reason
    label.run_dir = run_dir
    label.worker = None
    label.claimed_at = None
    label.status = LabelStatus.PENDING if label.attempts < max_attempts else LabelStatus.FAILED
    session.flush()
    return label


def _campaign_structure_ids(campaign_id: int) -> Any:
    return select(Structure.id).where(Structure.campaign_id == campaign_id)


def reset_stale_running(session: Session, campaign_id: int) -> int:
    """Return a campaign's running labels to pending (on resume); returns how many."""
    result = session.execute(
        update(Label)
        .where(
            Label.status == LabelStatus.RUNNING,
            Label.structure_id.in_(_campaign_structure_ids(campaign_id)),
        )
        .values(status=LabelStatus.PENDING, worker=None, claimed_at=None)
        .execution_options(synchronize_session="fetch")
    )
    return result.rowcount


def label_counts(
    session: Session, campaign_id: int, level_key: str | None = None
) -> dict[str, int]:
    """Number of labels of a campaign per status (every status present, possibly 0)."""
    query = (
        select(Label.status, func.count())
        .join(Structure, Structure.id == Label.structure_id)
        .where(Structure.campaign_id == campaign_id)
        .group_by(Label.status)
    )
    if level_key is not None:
        query = query.where(Label.level_key == level_key)
    counts = {status.value: 0 for status in LabelStatus}
    counts.update({LabelStatus(status).value: n for status, n in session.execute(query)})
    return counts


def failed_structure_ids(
    session: Session, campaign_id: int, level_key: str | None = None
) -> set[int]:
    """Structures whose label failed permanently, so acquisition never selects them again."""
    query = (
        select(Label.structure_id)
        .join(Structure, Structure.id == Label.structure_id)
        .where(Structure.campaign_id == campaign_id, Label.status == LabelStatus.FAILED)
    )
    if level_key is not None:
        query = query.where(Label.level_key == level_key)
    return set(session.scalars(query))


def labels_with_atoms(session: Session, label_ids: Sequence[int]) -> list[tuple[Label, Atoms]]:
    """Labels (in the order given) with their structures as atoms, e.g. for QM workers."""
    return [
        (label, structure_atoms(label.structure))
        for label in _rows_by_id(session, Label, label_ids)
    ]


def labelled(
    session: Session,
    campaign: Campaign | int,
    split: str | Iterable[str] | None = None,
    *,
    level_key: str | None = None,
) -> list[tuple[Structure, Label]]:
    """Structures with their done labels (optionally of some splits and one level), by id."""
    query = (
        select(Structure, Label)
        .join(Label, Label.structure_id == Structure.id)
        .where(Structure.campaign_id == _campaign_id(campaign), Label.status == LabelStatus.DONE)
        .order_by(Structure.id, Label.id)
    )
    splits = _splits(split)
    if splits is not None:
        query = query.where(Structure.split.in_(splits))
    if level_key is not None:
        query = query.where(Label.level_key == level_key)
    return [(s, label) for s, label in session.execute(query)]


def labelled_atoms(
    session: Session,
    campaign_id: int,
    splits: str | Iterable[str] | None = None,
    level_key: str | None = None,
) -> list[Atoms]:
    """
    Done labels as atoms: ``info["energy"]`` (eV), ``arrays["forces"]`` (eV/Å),
    ``info["structure_id"]``, ``info["label_id"]`` and ``info["config_type"]`` (the split).
    """
    result = []
    for structure, label in labelled(session, campaign_id, splits, level_key=level_key):
        atoms = structure_atoms(structure)
        atoms.info.update(energy=label.energy, label_id=label.id, config_type=str(structure.split))
        forces = label_forces(label, structure.natoms)
        if forces is not None:
            atoms.arrays["forces"] = forces
        result.append(atoms)
    return result


def export_extxyz(
    session: Session,
    campaign: Campaign | int,
    path: str | Path,
    *,
    split: str | Iterable[str] | None = None,
    level_key: str | None = None,
) -> int:
    """
    Write done labels to an extended XYZ file for ``mace_run_train``
    (``--energy_key energy --forces_key forces``); returns the number of structures written.
    """
    atoms_list = labelled_atoms(session, _campaign_id(campaign), split, level_key)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write(path, atoms_list, format="extxyz")
    return len(atoms_list)


# Models


def _sha256(path: Path) -> str:
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
    path = Path(path)
    model = ModelVersion(
        campaign_id=_campaign_id(campaign),
        parent_id=parent_id,
        round_number=round_number,
        path=str(path),
        sha256=_sha256(path),
        training_label_ids=[int(i) for i in label_ids],
        hyperparameters=dict(hyperparameters or {}),
        metrics=dict(metrics or {}),
    )
    session.add(model)
    session.flush()
    return model


def verified_model_path(session: Session, model_version_id: int) -> str:
    """The path of a registered model, after checking the file still has its recorded sha256.

    Raises
    ------
    FileNotFoundError
        If the file is gone.
    ValueError
        If the file changed since it was registered (it is never loaded then).
    """
    version = session.get_one(ModelVersion, model_version_id)
    path = Path(version.path)
    if not path.is_file():
        raise FileNotFoundError(f"model version {version.id}: file {path} is missing")
    digest = _sha256(path)
    if digest != version.sha256:
        raise ValueError(
            f"model version {version.id}: {path} changed since it was registered "
            f"(sha256 {digest[:12]}..., registered {version.sha256[:12]}...); refusing to load it"
        )
    return str(path)


def latest_model(session: Session, campaign: Campaign | int) -> ModelVersion | None:
    """The most recently registered model version of a campaign, or ``None``."""
    return session.scalar(
        select(ModelVersion)
        .where(ModelVersion.campaign_id == _campaign_id(campaign))
        .order_by(ModelVersion.id.desc())
        .limit(1)
    )


def model_versions(session: Session, campaign: Campaign | int) -> list[ModelVersion]:
    """Every model version of a campaign, oldest first (the starting model is the first)."""
    return list(
        session.scalars(
            select(ModelVersion)
            .where(ModelVersion.campaign_id == _campaign_id(campaign))
            .order_by(ModelVersion.id)
        )
    )


# Acquisition rounds


def _selected_entry(entry: Any) -> dict[str, Any]:
    if isinstance(entry, dict):
        structure_id, score, error = entry["structure_id"], entry["score"], entry["predicted_error"]
    else:
        structure_id, score, error = entry
    return {
        "structure_id": int(structure_id),
        "score": None if score is None else float(score),
        "predicted_error": None if error is None else float(error),
    }


def create_round(
    session: Session,
    campaign: Campaign | int,
    number: int,
    *,
    method: str,
    parameters: dict[str, Any] | None = None,
    model_version_id: int | None = None,
    pool_size: int = 0,
    selected: Iterable[Any] = (),
    timings: dict[str, Any] | None = None,
) -> AcquisitionRound:
    """
    Record an acquisition round (status ``selected``).

    ``selected`` holds ``(structure_id, score, predicted_error)`` tuples or dicts with
    those keys, stored as a JSON list of dicts.
    """
    round_ = AcquisitionRound(
        campaign_id=_campaign_id(campaign),
        number=number,
        status=RoundStatus.SELECTED,
        method=method,
        parameters=dict(parameters or {}),
        model_version_id=model_version_id,
        pool_size=pool_size,
        selected=[_selected_entry(entry) for entry in selected],
        timings=dict(timings or {}),
        metrics={},
    )
    session.add(round_)
    session.flush()
    return round_


def get_round(session: Session, campaign: Campaign | int, number: int) -> AcquisitionRound | None:
    """Round ``number`` of a campaign, or ``None`` if it was not created."""
    return session.scalar(
        select(AcquisitionRound).where(
            AcquisitionRound.campaign_id == _campaign_id(campaign),
            AcquisitionRound.number == number,
        )
    )


def rounds(session: Session, campaign: Campaign | int) -> list[AcquisitionRound]:
    """A campaign's rounds by number."""
    return list(
        session.scalars(
            select(AcquisitionRound)
            .where(AcquisitionRound.campaign_id == _campaign_id(campaign))
            .order_by(AcquisitionRound.number)
        )
    )


_ROUND_FIELDS = {
    "status",
    "model_version_id",
    "trained_model_id",
    "method",
    "parameters",
    "pool_size",
    "selected",
    "timings",
    "metrics",
}


def update_round(session: Session, round_: AcquisitionRound, **fields: Any) -> AcquisitionRound:
    """
    Update a round's fields (e.g. ``status``, ``metrics``, ``timings``, ``trained_model_id``).

    JSON fields are replaced, not merged; raises ``TypeError`` for an unknown field.
    """
    unknown = set(fields) - _ROUND_FIELDS
    if unknown:
        raise TypeError(f"cannot update round fields {sorted(unknown)}")
    if "status" in fields:
        fields["status"] = RoundStatus(fields["status"])
    if "selected" in fields:
        fields["selected"] = [_selected_entry(entry) for entry in fields["selected"]]
    for name, value in fields.items():
        setattr(round_, name, value)
    session.flush()
    return round_


# Reports


def campaigns(session: Session) -> list[Campaign]:
    """All campaigns, oldest first."""
    return list(session.scalars(select(Campaign).order_by(Campaign.id)))


def campaign_report(session: Session, campaign: Campaign | int) -> dict[str, Any]:
    """What ``tangentlab status`` shows: splits, labels, rounds with errors, current model."""
    camp = campaign if isinstance(campaign, Campaign) else session.get_one(Campaign, campaign)
    split_counts = dict(
        session.execute(
            select(Structure.split, func.count()).where(Structure.campaign_id == camp.id).group_by(Structure.split)
        ).all()
    )
    current = latest_model(session, camp)
    report_rounds = []
    for r in rounds(session, camp):
        test = (r.metrics or {}).get("test") or {}
        report_rounds.append(
            {
                "number": r.number,
                "status": str(getattr(r.status, "value", r.status)),
                "method": r.method,
                "selected": len(r.selected or []),
                "trained_model_id": r.trained_model_id,
                "energy_mae_mev_per_atom": test.get("energy_mae_mev_per_atom"),
                "force_mae_mev_per_a": test.get("force_mae_mev_per_a"),
                "timings": r.timings or {},
            }
        )
    return {
        "id": camp.id,
        "name": camp.name,
        "status": str(getattr(camp.status, "value", camp.status)),
        "stop_reason": camp.stop_reason,
        "structures": {str(getattr(k, "value", k)): v for k, v in split_counts.items()},
        "labels": label_counts(session, camp.id),
        "rounds": report_rounds,
        "current_model": None
        if current is None
        else {"id": current.id, "path": current.path, "sha256": current.sha256,
              "test": (current.metrics or {}).get("test")},
    }

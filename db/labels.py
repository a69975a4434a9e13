"""Labels: the claim queue of QM jobs and the finished labels training reads.

A label is one structure at one level of theory (keyed by :func:`level_key`). It is
``pending`` until a worker claims it (``running``), then ``done`` with its energy and forces,
or back to ``pending`` after a failed attempt, and ``failed`` for good after the last one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from ase import Atoms
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db._query import campaign_id_of, chunks, rows_by_id, split_values
from db.leases import as_utc, database_now, fence, process_gone
from db.models import Campaign, Label, LabelStatus, Structure, utcnow
from db.structures import structure_atoms


def level_key(level: dict[str, Any]) -> str:
    """Short stable key of a level of theory: first 16 hex digits of sha1 of its sorted JSON."""
    text = json.dumps(level, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


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
    for chunk in chunks(sorted(set(structure_ids))):
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
        # unranked labels (test and initial sets, synchronous rounds) first, then the ranked
        # picks of asynchronous rounds by priority (db.queue)
        .order_by(Label.priority.is_not(None), Label.priority, Label.id)
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
    now = database_now(session.connection())
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


def labels_with_atoms(session: Session, label_ids: Sequence[int]) -> list[tuple[Label, Atoms]]:
    """Labels (in the order given) with their structures as atoms, e.g. for QM workers."""
    return [
        (label, structure_atoms(label.structure)) for label in rows_by_id(session, Label, label_ids)
    ]


def _forces_array(forces: Any, natoms: int) -> np.ndarray:
    array = np.asarray(forces, dtype=float)
    if array.shape != (natoms, 3):
        raise ValueError(f"forces have shape {array.shape}, expected ({natoms}, 3)")
    if not np.isfinite(array).all():
        raise ValueError("forces contain NaN or inf")
    return array


def _stress_voigt(stress: Any, label_id: int) -> np.ndarray:
    """A stress as 6 Voigt components (xx, yy, zz, yz, xz, xy) from 6 or 3x3 values."""
    array = np.asarray(stress, dtype=float)
    if array.shape == (3, 3):
        array = array[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    if array.shape != (6,):
        raise ValueError(
            f"label {label_id}: stress has shape {array.shape}, expected (6,) or (3, 3)"
        )
    if not np.isfinite(array).all():
        raise ValueError(f"label {label_id}: stress contains NaN or inf")
    return array


def label_stress(label: Label) -> np.ndarray | None:
    """A done label's stress (Voigt, eV/Å³), or None when the oracle gave none."""
    if label.stress is None:
        return None
    return np.frombuffer(label.stress, dtype="<f8").copy()


def complete_label(
    session: Session,
    label_id: int,
    energy: float,
    forces: Any,
    wall_time: float | None = None,
    run_dir: str | None = None,
    stress: Any = None,
) -> Label:
    """
    Store a finished QM result and mark the label done.

    ``stress`` (the oracle's stress of a periodic structure, Voigt order, eV/Å³) is stored
    when given; None stores none.

    Raises
    ------
    ValueError
        If the energy, forces or stress are not finite, the forces are not ``(natoms, 3)`` or
        the stress has not 6 (Voigt) or 3x3 components; the label is left unchanged.
    """
    label = session.get_one(Label, label_id)
    if not np.isfinite(energy):
        raise ValueError(f"label {label_id}: energy {energy} is not finite")
    try:
        array = _forces_array(forces, label.structure.natoms)
    except ValueError as error:
        raise ValueError(f"label {label_id}: {error}") from None
    voigt = None if stress is None else _stress_voigt(stress, label_id)
    label.energy = float(energy)
    label.forces = array.astype("<f8").tobytes()
    label.stress = None if voigt is None else voigt.astype("<f8").tobytes()
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


def heartbeat_label(session: Session, label_id: int, worker: str) -> bool:
    """Mark ``worker``'s claim on a running label as alive now (its ``updated_at``, by the
    database's clock); False if the label is no longer running for that worker."""
    result = session.execute(
        update(Label)
        .where(Label.id == label_id, Label.status == LabelStatus.RUNNING, Label.worker == worker)
        .values(updated_at=database_now(session.connection()))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def worker_process(worker: str | None) -> tuple[str, int] | None:
    """``(host, pid)`` of a label worker named ``host:pid:n`` (:func:`tasks.label.label_worker`)."""
    parts = (worker or "").rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def reset_stale_running(
    session: Session, campaign_id: int, stale_after_s: float,
    structure_ids: Iterable[int] | None = None,
) -> int:
    """
    Return a campaign's running labels whose worker is gone to pending; returns how many.

    A claim is gone when its worker ran on this host and that process no longer exists, or
    when it has had no heartbeat (:func:`heartbeat_label`) for ``stale_after_s`` seconds.
    Claims of live workers are left alone: a label worker of an earlier run (on a deployment's
    work pool, say) may still be computing, and resetting its label would run the job twice.

    Parameters
    ----------
    structure_ids
        Only the labels of these structures; None: every label of the campaign.
    """
    query = (
        select(Label.id, Label.structure_id, Label.worker, Label.updated_at)
        .join(Structure, Structure.id == Label.structure_id)
        .where(Structure.campaign_id == campaign_id, Label.status == LabelStatus.RUNNING)
    )
    fence(session, campaign_id)
    wanted = None if structure_ids is None else set(structure_ids)
    now = database_now(session.connection())
    reset = 0
    for label_id, structure_id, worker, beat in session.execute(query).all():
        if wanted is not None and structure_id not in wanted:
            continue
        process = worker_process(worker)
        beat = as_utc(beat)
        expired = beat is None or (now - beat).total_seconds() > stale_after_s
        if not expired and (process is None or not process_gone(*process)):
            continue
        reset += session.execute(  # still this worker's claim: it did not finish meanwhile
            update(Label)
            .where(Label.id == label_id, Label.status == LabelStatus.RUNNING, Label.worker == worker)
            .values(status=LabelStatus.PENDING, worker=None, claimed_at=None)
            .execution_options(synchronize_session="fetch")
        ).rowcount
    return reset


def open_structure_ids(session: Session, campaign_id: int, level_key: str) -> list[int]:
    """Structures whose label at ``level_key`` is still pending or running, by id."""
    query = (
        select(Label.structure_id)
        .join(Structure, Structure.id == Label.structure_id)
        .where(
            Structure.campaign_id == campaign_id,
            Label.level_key == level_key,
            Label.status.in_([LabelStatus.PENDING, LabelStatus.RUNNING]),
        )
    )
    return sorted(session.scalars(query))


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


def label_forces(label: Label, natoms: int) -> np.ndarray | None:
    """Forces of a label as an ``(natoms, 3)`` array (eV/Å), or ``None``."""
    if label.forces is None:
        return None
    return np.frombuffer(label.forces, dtype="<f8").reshape(natoms, 3).copy()


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
        .where(Structure.campaign_id == campaign_id_of(campaign), Label.status == LabelStatus.DONE)
        .order_by(Structure.id, Label.id)
    )
    splits = split_values(split)
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
    ``info["REF_stress"]`` (Voigt, eV/Å³; only for labels with a stress: ASE reads a plain
    ``stress`` key of an extxyz file into a calculator, mace_run_train takes ``--stress_key``),
    ``info["structure_id"]``, ``info["label_id"]`` and ``info["config_type"]`` (the split).
    """
    result = []
    for structure, label in labelled(session, campaign_id, splits, level_key=level_key):
        atoms = structure_atoms(structure)
        atoms.info.update(energy=label.energy, label_id=label.id, config_type=str(structure.split))
        forces = label_forces(label, structure.natoms)
        if forces is not None:
            atoms.arrays["forces"] = forces
        stress = label_stress(label)
        if stress is not None:
            atoms.info["REF_stress"] = stress
        result.append(atoms)
    return result

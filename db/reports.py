"""Read-only views of a campaign: status report, round and selection tables, failures, exports.

``tangentlab status`` prints these, the monitoring flow publishes them as Prefect artifacts
and the benchmarks read their learning curves from them. Nothing here writes to the database.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ase.io import write
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db._query import campaign_id_of, chunks
from db.labels import labelled_atoms
from db.models import Campaign, Label, LabelStatus, ModelVersion, Split, Structure
from db.registry import latest_model, model_versions
from db.rounds import campaign_rounds, get_round
from db.structures import structures_by_id


def _value(enum_or_str: Any) -> str:
    return str(getattr(enum_or_str, "value", enum_or_str))


def _rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(float(value), digits)


def _rounded_pair(pair: Sequence[float] | None, digits: int = 1) -> list[float] | None:
    return None if pair is None else [round(float(v), digits) for v in pair]


def label_counts(
    session: Session,
    campaign_id: int,
    level_key: str | None = None,
    structure_ids: Sequence[int] | None = None,
) -> dict[str, int]:
    """Labels of a campaign per status (every status present, possibly 0), optionally only
    those at one level of theory and of some structures."""
    query = (
        select(Label.status, func.count())
        .join(Structure, Structure.id == Label.structure_id)
        .where(Structure.campaign_id == campaign_id)
        .group_by(Label.status)
    )
    if level_key is not None:
        query = query.where(Label.level_key == level_key)
    if structure_ids is not None:
        query = query.where(Label.structure_id.in_(structure_ids))
    counts = {status.value: 0 for status in LabelStatus}
    counts.update({LabelStatus(status).value: n for status, n in session.execute(query)})
    return counts


def test_set_counts(session: Session, campaign_id: int) -> dict[str, int]:
    """The test split: ``structures`` and their labels per status (``done`` are the ones the
    test errors are measured on; ``failed`` never count). A structure without a label yet
    counts as ``pending``."""
    test = (Structure.campaign_id == campaign_id, Structure.split == Split.TEST)
    n = int(session.scalar(select(func.count()).select_from(Structure).where(*test)) or 0)
    counts = {status.value: 0 for status in LabelStatus}
    # The best status of each structure (a structure has one label per level of theory).
    for status, count in session.execute(
        select(Label.status, func.count(func.distinct(Label.structure_id)))
        .join(Structure, Structure.id == Label.structure_id)
        .where(*test)
        .group_by(Label.status)
    ):
        counts[LabelStatus(status).value] += count
    counts["pending"] += max(0, n - sum(counts.values()))
    return {"structures": n, **counts}


def validation_labels_before(session: Session, campaign_id: int, number: int) -> int:
    """Done labels of validation structures that rounds before ``number`` selected: what the
    uncertainty calibration of round ``number`` could use."""
    ids = sorted({
        e["structure_id"]
        for r in campaign_rounds(session, campaign_id)
        if r.number < number
        for e in r.selected or []
    })
    found: set[int] = set()
    for part in chunks(ids):
        found.update(
            session.scalars(
                select(Label.structure_id)
                .join(Structure, Structure.id == Label.structure_id)
                .where(
                    Structure.id.in_(list(part)),
                    Structure.split == Split.VALID,
                    Label.status == LabelStatus.DONE,
                )
            )
        )
    return len(found)


def campaign_report(session: Session, campaign: Campaign | int) -> dict[str, Any]:
    """What ``tangentlab status`` shows: splits, labels, rounds with errors, current model."""
    camp = campaign if isinstance(campaign, Campaign) else session.get_one(Campaign, campaign)
    split_counts = dict(
        session.execute(
            select(Structure.split, func.count())
            .where(Structure.campaign_id == camp.id)
            .group_by(Structure.split)
        ).all()
    )
    current = latest_model(session, camp)
    report_rounds = []
    for r in campaign_rounds(session, camp):
        test = (r.metrics or {}).get("test") or {}
        report_rounds.append(
            {
                "number": r.number,
                "status": _value(r.status),
                "method": r.method,
                "selected": len(r.selected or []),
                "trained_model_id": r.trained_model_id,
                "energy_mae_mev_per_atom": test.get("energy_mae_mev_per_atom"),
                "energy_mae_interval_mev_per_atom": test.get("energy_mae_interval_mev_per_atom"),
                "force_mae_mev_per_a": test.get("force_mae_mev_per_a"),
                "force_mae_interval_mev_per_a": test.get("force_mae_interval_mev_per_a"),
                "interval_level": test.get("interval_level"),
                "n_test": test.get("n_structures"),
                "timings": r.timings or {},
            }
        )
    return {
        "id": camp.id,
        "name": camp.name,
        "status": _value(camp.status),
        "stop_reason": camp.stop_reason,
        "structures": {_value(k): v for k, v in split_counts.items()},
        "labels": label_counts(session, camp.id),
        "test_set": test_set_counts(session, camp.id),
        "rounds": report_rounds,
        "current_model": None
        if current is None
        else {
            "id": current.id,
            "path": current.path,
            "sha256": current.sha256,
            "test": (current.metrics or {}).get("test"),
        },
    }


def round_rows(session: Session, campaign_id: int) -> list[dict[str, Any]]:
    """One row per round: training labels, test errors, model version, acquisition method, time."""
    rows = []
    for r in campaign_rounds(session, campaign_id):
        test = (r.metrics or {}).get("test") or {}
        trained = session.get(ModelVersion, r.trained_model_id) if r.trained_model_id else None
        timings = r.timings or {}
        rows.append(
            {
                "round": r.number,
                "status": _value(r.status),
                "method": r.method,
                "selected": len(r.selected or []),
                "labels": None if trained is None else len(trained.training_label_ids or []),
                "energy_mae_meV_atom": _rounded(test.get("energy_mae_mev_per_atom")),
                "energy_mae_interval_meV_atom": _rounded_pair(test.get("energy_mae_interval_mev_per_atom")),
                "force_mae_meV_A": _rounded(test.get("force_mae_mev_per_a")),
                "force_mae_interval_meV_A": _rounded_pair(test.get("force_mae_interval_mev_per_a")),
                "interval_level": test.get("interval_level"),
                "n_test": test.get("n_structures"),
                "model_version": r.trained_model_id,
                "acquired_with_model": r.model_version_id,
                "acquire_s": _rounded(timings.get("acquire_s"), 2),
                "finetune_s": _rounded(timings.get("finetune_s"), 1),
                "explore_s": _rounded(timings.get("explore_s"), 1),
            }
        )
    return rows


def baseline_errors(session: Session, campaign_id: int) -> dict[str, float] | None:
    """Test errors of the starting model (the campaign's first model version), if evaluated."""
    versions = model_versions(session, campaign_id)
    return (versions[0].metrics or {}).get("test") if versions else None


def selected_rows(session: Session, campaign_id: int, number: int) -> list[dict[str, Any]]:
    """The structures round ``number`` selected, with score, predicted error and label outcome.

    Raises
    ------
    LookupError
        If the campaign has no round ``number``.
    """
    round_ = get_round(session, campaign_id, number)
    if round_ is None:
        raise LookupError(f"campaign {campaign_id} has no round {number}")
    entries = round_.selected or []
    structures = {s.id: s for s in structures_by_id(session, [e["structure_id"] for e in entries])}
    labels = {
        lab.structure_id: lab
        for lab in session.scalars(
            select(Label).where(Label.structure_id.in_(list(structures))).order_by(Label.id)
        )
    }
    rows = []
    for rank, entry in enumerate(entries, start=1):
        structure = structures[entry["structure_id"]]
        label = labels.get(structure.id)
        rows.append(
            {
                "rank": rank,
                "structure_id": structure.id,
                "formula": structure.formula,
                "split": _value(structure.split),
                "score": None if entry["score"] is None else float(f"{entry['score']:.4g}"),
                "predicted_force_error_meV_A": _rounded(entry["predicted_error"]),
                "label": "none" if label is None else _value(label.status),
                "energy_eV": None
                if label is None or label.energy is None
                else round(label.energy, 4),
                "failure": None if label is None else label.failure_reason,
                "attempts": 0 if label is None else label.attempts,
                "qm_wall_s": None if label is None else _rounded(label.wall_time, 1),
            }
        )
    return rows


def failed_label_rows(session: Session, campaign_id: int) -> list[dict[str, Any]]:
    """Labels that failed for good, with the reason and where the job ran."""
    query = (
        select(Label, Structure)
        .join(Structure, Structure.id == Label.structure_id)
        .where(Structure.campaign_id == campaign_id, Label.status == LabelStatus.FAILED)
        .order_by(Label.id)
    )
    return [
        {
            "label_id": lab.id,
            "structure_id": s.id,
            "formula": s.formula,
            "attempts": lab.attempts,
            "reason": lab.failure_reason,
            "run_dir": lab.run_dir,
        }
        for lab, s in session.execute(query)
    ]


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
    atoms_list = labelled_atoms(session, campaign_id_of(campaign), split, level_key)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write(path, atoms_list, format="extxyz")
    return len(atoms_list)

"""What a campaign reports about itself, read from the database in one place.

`campaign_view` is the report that ``tangentlab status`` prints (and ``--json`` shows as it
is) and the campaign overview artifact renders; `selection_view` is one round's selection,
which the selection artifact renders. Both are plain JSON-ready dicts: the rendering
(:mod:`flows.rendering`) never touches the database.
"""

from __future__ import annotations

from typing import Any

from db import (
    campaigns,
    exploration,
    labels,
    queue,
    registry,
    reports,
    rounds,
    session_scope,
    structures,
)
from db.models import Structure
from tasks._db import engine_for


def campaign_view(session, campaign, round_number: int | None = None) -> dict[str, Any]:
    """The campaign's report (:func:`db.reports.campaign_report`) with its round table, the
    starting model, failed labels, the budgets used and round ``round_number``'s selection
    (None: the latest round's).

    Raises
    ------
    LookupError
        If the campaign has no round ``round_number``.
    """
    report = reports.campaign_report(session, campaign)
    campaign_id = report["id"]
    versions = registry.model_versions(session, campaign_id)
    if report["current_model"] is not None:
        current = registry.latest_model(session, campaign_id)
        report["current_model"]["round"] = current.round_number
    report["round_table"] = reports.round_rows(session, campaign_id)
    report["starting_model_test"] = reports.baseline_errors(session, campaign_id)
    report["starting_model_id"] = versions[0].id if versions else None
    report["failed_labels"] = _failed_labels(session, campaign_id)
    report["labels_used"] = len(labels.labelled(session, campaign_id, split=["train", "valid"]))
    numbers = [r["round"] for r in report["round_table"]]
    number = numbers[-1] if round_number is None and numbers else round_number
    if number is not None and number not in numbers:
        raise LookupError(f"campaign {report['name']!r} has no round {number} (rounds: {numbers})")
    report["selected_structures"] = (
        None if number is None else selection_view(session, campaign_id, number)
    )
    upcoming = (numbers[-1] + 1) if numbers else None
    report["exploring"] = (
        None if upcoming is None else round_exploration(session, campaign_id, upcoming, None)
    )
    if report["exploring"] is not None:
        report["exploring"]["round"] = upcoming
    report["label_queue"] = label_queue(session, campaign_id)
    return report


def label_queue(session, campaign_id: int) -> dict[str, Any] | None:
    """Asynchronous rounds: the open picks in queue order (structure, running or queued, the
    model version that picked it) and the labels per picking model; None for a campaign whose
    labels were never queued by a model."""
    by_model = queue.picked_by(session, campaign_id)
    if set(by_model) <= {"initial"}:
        return None
    rows = [{"structure_id": p.structure_id, "status": p.status, "split": p.split,
             "picked_by_model_id": p.picked_by_model_id}
            for p in queue.picks(session, campaign_id, None)]
    return {"running": sum(r["status"] == "running" for r in rows),
            "queued": sum(r["status"] == "pending" for r in rows), "open": rows,
            "picked_by": by_model}


def selection_view(session, campaign_id: int, number: int) -> dict[str, Any]:
    """Round ``number``'s selection: its rows (:func:`db.reports.selected_rows`), how it was
    made (method, rule, pool size, model, uncertainty scale, seed of the initial draw), the
    stored picks-vs-pool ``diagnostics`` and its ``exploration`` (:func:`round_exploration`).

    Raises
    ------
    LookupError
        If the campaign has no round ``number``.
    """
    rows = reports.selected_rows(session, campaign_id, number)
    found = rounds.get_round(session, campaign_id, number)
    parameters = found.parameters or {}
    return {
        "round": number,
        "structures": rows,
        "method": found.method,
        "rule": parameters.get("rule"),
        "pool_size": found.pool_size,
        "model_version_id": found.model_version_id,
        "seed": parameters.get("seed"),
        "uncertainty_scale": parameters.get("uncertainty_scale"),
        "predicted_force_mae": parameters.get("predicted_force_mae"),
        "validation_labels_before": reports.validation_labels_before(session, campaign_id, number),
        "diagnostics": parameters.get("diagnostics"),
        "exploration": round_exploration(session, campaign_id, number, found),
    }


def round_exploration(session, campaign_id: int, number: int, found) -> dict[str, Any] | None:
    """Round ``number``'s (``found``: its row, or None before it is recorded) exploration summary
    with one row per trajectory in ``trajectories_detail`` (None: no exploration)."""
    trajectories = exploration.round_trajectories(session, campaign_id, number)
    summary = None if found is None else (found.parameters or {}).get("exploration")
    if summary is None and not trajectories:
        return None
    summary = dict(summary or exploration.exploration_summary(trajectories) | {"unfinished": True})
    summary["trajectories_detail"] = [
        {
            "walker": t.walker,
            "seed_structure_id": t.seed_structure_id,
            "seed": _seed_name(session, t.seed_structure_id),
            "temperature_K": t.temperature_k,
            "steps_run": t.steps_run,
            "frames_scored": t.frames_scored,
            "frames_kept": t.frames_kept,
            "candidates_added": t.candidates_added,
            "stop_reason": t.stop_reason,
            "sigma_q50": _median(t.sigma),
            "sigma_max": max(t.sigma) if t.sigma else None,
            "wall_s": t.wall_s,
        }
        for t in trajectories
    ]
    return summary


def _median(values) -> float | None:
    values = sorted(values or [])
    return values[len(values) // 2] if values else None


def _seed_name(session, structure_id: int | None) -> str:
    """``CH4O (12)`` for a seed from the campaign, ``seed file`` otherwise."""
    if structure_id is None:
        return "seed file"
    found = session.get(Structure, structure_id)
    return f"{found.formula} ({structure_id})" if found is not None else str(structure_id)


def _failed_labels(session, campaign_id: int) -> list[dict[str, Any]]:
    """:func:`db.reports.failed_label_rows`, each with its structure's split."""
    failed = reports.failed_label_rows(session, campaign_id)
    split = {
        s.id: str(getattr(s.split, "value", s.split))
        for s in structures.structures_by_id(session, [f["structure_id"] for f in failed])
    }
    return [{**row, "split": split.get(row["structure_id"], "")} for row in failed]


def read_campaign_view(url: str, campaign_id: int) -> dict[str, Any]:
    """:func:`campaign_view` of campaign ``campaign_id`` in the database at ``url``."""
    with session_scope(engine_for(url)) as session:
        return campaign_view(session, campaigns.campaign_by_id(session, campaign_id))


def read_selection_view(url: str, campaign_id: int, number: int) -> dict[str, Any]:
    """:func:`selection_view` of round ``number`` in the database at ``url``."""
    with session_scope(engine_for(url)) as session:
        return selection_view(session, campaign_id, number)

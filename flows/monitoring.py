"""What a campaign shows about itself in the Prefect UI: round tables, selections, the learning curve.

The rows come from :mod:`db.reports` (``tangentlab status`` prints the same); the
``publish_*`` functions turn them into Prefect artifacts (a table per round, a learning-curve
image, the selected structures with their scores and predicted errors).
"""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from db import rounds
from db.reports import baseline_errors, round_rows, selected_rows
from tangentlab.paths import campaign_dir
from tasks.progress import artifact_key

# Artifact data is stored by the Prefect server; beyond this the image is only linked.
MAX_INLINE_PNG_BYTES = 400_000


def learning_curve_png(rows: list[dict[str, Any]], baseline: dict[str, float] | None, targets: Any) -> bytes:
    """Test energy and force MAE against training labels (PNG bytes), with the targets dashed."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    points = [(r["labels"], r["energy_mae_meV_atom"], r["force_mae_meV_A"]) for r in rows
              if r["labels"] is not None and r["force_mae_meV_A"] is not None]
    if baseline:
        points.insert(0, (0, baseline["energy_mae_mev_per_atom"], baseline["force_mae_mev_per_a"]))
    fig = Figure(figsize=(8, 3.2), dpi=90)
    panels = [("energy MAE (meV/atom)", 1, targets.energy_mae_mev_per_atom),
              ("force MAE (meV/Å)", 2, targets.force_mae_mev_per_a)]
    for i, (title, column, target) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, 2, i)
        if points:
            ax.plot([p[0] for p in points], [p[column] for p in points], "o-", color="C0", label="test set")
        ax.axhline(target, ls="--", color="C3", label=f"target {target:g}")
        ax.set_yscale("log")
        ax.set_xlabel("training labels")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_none_"
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join("" if r[k] is None else str(r[k]) for k in head) + " |" for r in rows]
    return "\n".join(lines)


def publish_rounds(session: Session, campaign_id: int, name: str, targets: Any, work_dir: str | Path) -> Path:
    """Round table and learning-curve artifacts of a campaign; returns the saved PNG's path.

    The PNG is saved under ``<work_dir>/<name>/learning_curve.png`` and embedded in a markdown
    artifact as a data URI, which the Prefect UI renders without any file server.
    """
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    rows = round_rows(session, campaign_id)
    create_table_artifact(rows, key=artifact_key("campaign", name, "rounds"),
                          description=f"Rounds of campaign {name}: labels, test errors after each "
                          "fine-tune, model version, acquisition method and time")
    png = learning_curve_png(rows, baseline_errors(session, campaign_id), targets)
    path = campaign_dir(work_dir, name, "learning_curve.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    image = (f"![learning curve](data:image/png;base64,{base64.b64encode(png).decode()})"
             if len(png) <= MAX_INLINE_PNG_BYTES else "_(image too large to embed)_")
    create_markdown_artifact(
        f"## Learning curve of campaign {name}\n\n{image}\n\nSaved as `{path}`.\n\n"
        f"Targets: energy ≤ {targets.energy_mae_mev_per_atom:g} meV/atom, "
        f"force ≤ {targets.force_mae_mev_per_a:g} meV/Å.\n\n" + _markdown_table(rows),
        key=artifact_key("campaign", name, "learning-curve"),
        description=f"Test errors of campaign {name} against training labels",
    )
    return path


def publish_selection(session: Session, campaign_id: int, name: str, number: int) -> list[dict[str, Any]]:
    """Table artifact of the structures round ``number`` selected (score, predicted error, label)."""
    from prefect.artifacts import create_table_artifact

    rows = selected_rows(session, campaign_id, number)
    round_ = rounds.get_round(session, campaign_id, number)
    create_table_artifact(
        rows, key=artifact_key("campaign", name, "selected"),
        description=f"Round {number} of campaign {name}: {len(rows)} structures selected by {round_.method} "
        "(score: posterior variance σ² or committee force variance; predicted error: calibrated "
        "per-structure force MAE in meV/Å)",
    )
    return rows


def close_killed_runs(campaign_name: str, *, in_process_labelling: bool = True,
                      flow_run_ids: list[str] | None = None) -> list[str]:
    """Mark the campaign's flow runs that a killed process left ``Running`` as ``Crashed``.

    A process killed by SIGKILL (or a lost machine) cannot report its end, so its flow run
    (and its running task runs) would stay ``Running`` in the Prefect UI for ever. The
    campaign flow calls this only while it holds the campaign's lease (:mod:`db.leases`),
    with ``flow_run_ids`` the run whose dead or expired lease it took over; ``None`` takes
    every other ``campaign NAME`` flow run still ``Running``. Each is set to ``Crashed``, with its running task runs and, when labelling
    ran in the campaign's own process (no ``qm.deployment``), its running ``label`` subflow runs. Labelling runs on a work pool are
    left alone: their workers may still be alive.

    Returns the names of the runs it closed. Never raises: monitoring must not stop a campaign.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterName,
        FlowRunFilterParentFlowRunId,
        FlowRunFilterState,
        FlowRunFilterStateType,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.runtime import flow_run
    from prefect.states import Crashed

    log = logging.getLogger(__name__)
    running = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))
    message = (f"the process of this run was killed before it could report its end; campaign "
               f"{campaign_name!r} was resumed by flow run {flow_run.name or '?'} ({flow_run.id or 'no id'})")
    closed: list[str] = []
    try:
        with get_client(sync_client=True) as client:
            stale = [run for run in client.read_flow_runs(flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(any_=[f"campaign {campaign_name}"]), state=running))
                if str(run.id) != str(flow_run.id)
                and (flow_run_ids is None or str(run.id) in flow_run_ids)]
            if stale and in_process_labelling:
                stale += client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id for run in stale]),
                    state=running))
            for run in stale:
                for task_run in client.read_task_runs(
                        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])),
                        task_run_filter=TaskRunFilter(state=TaskRunFilterState(
                            type=TaskRunFilterStateType(any_=[StateType.RUNNING])))):
                    client.set_task_run_state(task_run.id, Crashed(message=message), force=True)
                client.set_flow_run_state(run.id, Crashed(message=message), force=True)
                closed.append(run.name)
    except Exception as exc:
        log.warning("could not close the flow runs of killed campaign processes: %s", exc)
    return closed

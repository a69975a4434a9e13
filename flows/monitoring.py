"""What a campaign publishes about itself in the Prefect UI (docs/monitoring.md).

Every view is read from the database by :mod:`tasks.report` (``tangentlab status`` prints the
same views), rendered by :mod:`flows.rendering` and published here as a Prefect artifact of
the campaign flow run:

``campaign-<name>-overview``
    Markdown, updated in place by each change (one version per flow run), always current: the
    outcome (or where the campaign is), targets and budgets, the current model, the test set
    (with failed QM jobs), the learning curve and the round table with the starting model's row.
``campaign-<name>-round-<n>-selection``
    Markdown: what round ``n`` picked, with its scores, predicted errors, the picks against the
    pool (from the round's stored diagnostics) and each label's outcome. Published when the
    round is selected and updated when its labels finish.

The flow run's final state is named by the outcome (:func:`final_state`). Nothing here raises
into the campaign: a failed publication is a warning, monitoring never stops the work it watches.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flows.curve import curve_points, learning_curve_png
from flows.rendering import decision_name, overview_markdown
from flows.selection_rendering import selection_markdown
from tangentlab.paths import campaign_dir
from tangentlab.stopping import StopDecision
from tasks.progress import artifact_key
from tasks.report import read_campaign_view, read_selection_view


def final_state(decision: StopDecision, data: Any = None):
    """A ``Completed`` state named by the stop decision's outcome, with its reason as the message."""
    from prefect.states import Completed

    return Completed(name=decision_name(decision), message=decision.reason, data=data)


def publish_overview(
    url: str,
    campaign_id: int,
    config: Any,
    *,
    error: str | None = None,
    decision: StopDecision | None = None,
) -> Path:
    """Publish the campaign overview artifact; returns the saved learning-curve PNG's path.

    The PNG is saved under ``<work_dir>/<name>/learning_curve.png`` and embedded in the
    markdown as a data URI, which the Prefect UI renders without any file server.
    """
    name = config.name
    view = read_campaign_view(url, campaign_id)
    png = learning_curve_png(curve_points(view), config.targets)
    path = campaign_dir(config.work_dir, name, "learning_curve.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    publish_markdown(
        overview_key(name),
        overview_markdown(view, config, png=png, png_path=path, error=error, decision=decision),
        f"Campaign {name}: outcome, targets, current model, learning curve and rounds",
    )
    return path


def publish_selection(url: str, campaign_id: int, name: str, number: int) -> list[dict[str, Any]]:
    """Publish round ``number``'s selection artifact; returns its rows
    (:func:`db.reports.selected_rows`)."""
    view = read_selection_view(url, campaign_id, number)
    publish_markdown(
        selection_key(name, number),
        selection_markdown(view, name),
        f"Campaign {name}, round {number}: the selected structures and their labels",
    )
    return view["structures"]


def publish_markdown(key: str, text: str, description: str) -> str:
    """Create the markdown artifact ``key`` of this flow run, or update it in place if this run
    already has one; returns its id.

    So a run page shows one card per key (the overview, each round's selection) that is always
    current, and the key's history keeps one version per flow run (a resume starts a new one).
    """
    from prefect.artifacts import create_markdown_artifact
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactUpdate
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )
    from prefect.client.schemas.sorting import ArtifactSort
    from prefect.runtime import flow_run

    if flow_run.id:
        with get_client(sync_client=True) as client:
            mine = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=[key]),
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]),
                ),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )
            if mine:
                client.update_artifact(
                    mine[0].id, ArtifactUpdate(data=text, description=description)
                )
                return str(mine[0].id)
    return str(create_markdown_artifact(text, key=key, description=description))


def overview_key(name: str) -> str:
    """Artifact key of a campaign's overview."""
    return artifact_key("campaign", name, "overview")


def selection_key(name: str, number: int) -> str:
    """Artifact key of round ``number``'s selection."""
    return artifact_key("campaign", name, "round", number, "selection")


def close_killed_runs(
    campaign_name: str, *, in_process_labelling: bool = True, flow_run_ids: list[str] | None = None
) -> list[str]:
    """Mark the campaign's flow runs that a killed process left ``Running`` as ``Crashed``.

    A process killed by SIGKILL (or a lost machine) cannot report its end, so its flow run
    (and its running task runs) would stay ``Running`` in the Prefect UI for ever. The
    campaign flow calls this only while it holds the campaign's lease (:mod:`db.leases`),
    with ``flow_run_ids`` the run whose dead or expired lease it took over; ``None`` takes
    every other ``campaign NAME`` flow run still ``Running``. Each is set to ``Crashed``, with
    its running task runs and, when labelling ran in the campaign's own process (no
    ``qm.deployment``), its running ``label`` subflow runs. Labelling runs on a work pool are
    left alone: their workers may still be alive.

    Returns the names of the runs it closed. Never raises: monitoring must not stop a campaign.
    """
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run
    from prefect.states import Crashed

    message = (
        f"the process of this run was killed before it could report its end; campaign "
        f"{campaign_name!r} was resumed by flow run {flow_run.name or '?'} ({flow_run.id or 'no id'})"
    )
    closed: list[str] = []
    try:
        with get_client(sync_client=True) as client:
            for run in _killed_runs(
                client, campaign_name, str(flow_run.id), flow_run_ids, in_process_labelling
            ):
                for task_run in _running_task_runs(client, run.id):
                    client.set_task_run_state(task_run.id, Crashed(message=message), force=True)
                client.set_flow_run_state(run.id, Crashed(message=message), force=True)
                closed.append(run.name)
    except Exception as exc:
        logging.getLogger(__name__).warning(
            "could not close the flow runs of killed campaign processes: %s", exc
        )
    return closed


def _running():
    from prefect.client.schemas.filters import FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    return FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))


def _killed_runs(
    client,
    campaign_name: str,
    this_run: str,
    flow_run_ids: list[str] | None,
    in_process_labelling: bool,
) -> list:
    """The ``campaign NAME`` flow runs still ``Running`` (of ``flow_run_ids``; None: all but
    this one) and, with in-process labelling, their ``Running`` subflow runs."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterName,
        FlowRunFilterParentFlowRunId,
    )

    stale = [
        run
        for run in client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(any_=[f"campaign {campaign_name}"]), state=_running()
            )
        )
        if str(run.id) != this_run and (flow_run_ids is None or str(run.id) in flow_run_ids)
    ]
    if stale and in_process_labelling:
        stale += client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id for run in stale]),
                state=_running(),
            )
        )
    return stale


def _running_task_runs(client, flow_run_id) -> list:
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    return client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
        task_run_filter=TaskRunFilter(
            state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.RUNNING]))
        ),
    )

"""What a campaign shows about itself in the Prefect UI (docs/monitoring.md).

Every view is read from the database through :mod:`db.reports` (``tangentlab status`` prints
the same rows) and published as a Prefect artifact of the campaign flow run:

``campaign-<name>-overview``
    Markdown, updated in place by each change (one version per flow run), always current: the
    outcome (or where the campaign is), targets and budgets, the current model, the test set (with failed QM jobs), the learning
    curve and the round table with the starting model's row.
``campaign-<name>-round-<n>-selection``
    Markdown: what round ``n`` picked, with its scores, predicted errors, the picks against the
    pool (from the round's stored diagnostics) and each label's outcome. Published when the
    round is selected and updated when its labels finish.

Tables carry human column headers with units. The flow run's final state is named by the
outcome (:func:`final_state`: "Targets met", "Label budget exhausted", "Round budget
exhausted", "Time budget exhausted", "Pool exhausted"), from the stop decision's ``budget``
field, never from the wording of its reason. Nothing here raises into the campaign: a failed publication
is a warning, monitoring never stops the work it watches.
"""

from __future__ import annotations

import base64
import io
import logging
import math
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from db import campaigns, labels, registry, rounds, structures
from db.reports import (
    baseline_errors,
    failed_label_rows,
    round_rows,
    selected_rows,
    test_set_counts,
    validation_labels_before,
)
from tangentlab.paths import campaign_dir
from tangentlab.stopping import StopDecision, stored_budget
from tasks.progress import artifact_key

# Artifact data is stored by the Prefect server; beyond this the image is only linked.
MAX_INLINE_PNG_BYTES = 400_000
INITIAL_METHOD = "initial-random"

# Final state names of a campaign flow run, by outcome (the runs list shows them).
TARGETS_MET = "Targets met"
LABEL_BUDGET = "Label budget exhausted"
ROUND_BUDGET = "Round budget exhausted"
TIME_BUDGET = "Time budget exhausted"
POOL_EXHAUSTED = "Pool exhausted"
BUDGET_EXHAUSTED = "Budget exhausted"
# The state name of each budget of :class:`tangentlab.stopping.StopDecision`.
BUDGET_STATE_NAMES: dict[str, str] = {"labels": LABEL_BUDGET, "rounds": ROUND_BUDGET, "wall_time": TIME_BUDGET,
                                      "pool": POOL_EXHAUSTED}


def outcome_name(status: str, budget: str | None = None) -> str:
    """The state name that says how a campaign ended.

    Parameters
    ----------
    status
        The campaign status (``targets_met``, ``budget_exhausted``, ``failed``, ``stopped``).
    budget
        For ``budget_exhausted``: which budget (:attr:`tangentlab.stopping.StopDecision.budget`);
        ``None`` gives the generic "Budget exhausted".

    Raises
    ------
    ValueError
        If ``status`` is not a finished campaign's, or ``budget`` is not a known budget.
    """
    status = str(getattr(status, "value", status))
    if status == "targets_met":
        return TARGETS_MET
    if status == "budget_exhausted":
        if budget is None:
            return BUDGET_EXHAUSTED
        if budget not in BUDGET_STATE_NAMES:
            raise ValueError(f"unknown budget {budget!r}: expected one of {', '.join(BUDGET_STATE_NAMES)}")
        return BUDGET_STATE_NAMES[budget]
    if status in ("failed", "stopped"):
        return status.capitalize()
    raise ValueError(f"campaign status {status!r} is not an outcome: expected targets_met, budget_exhausted, "
                     "failed or stopped")


def decision_name(decision: StopDecision) -> str:
    """The state name of a stop decision, from its status and budget (not from its wording)."""
    return outcome_name(decision.status, decision.budget)


def final_state(decision: StopDecision, data: Any = None):
    """A ``Completed`` state named by the stop decision's outcome, with its reason as the message."""
    from prefect.states import Completed

    return Completed(name=decision_name(decision), message=decision.reason, data=data)


# --- formatting -------------------------------------------------------------------------------

def _cell(value: Any, spec: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    text = format(value, spec) if spec else str(value)
    return " ".join(text.split()).replace("|", "\\|")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table (cells already formatted); ``_none_`` without rows."""
    if not rows:
        return "_none_"
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _short(text: str | None, limit: int = 140) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# --- learning curve ---------------------------------------------------------------------------

def learning_curve_png(points: list[tuple[str, int, float, float]], targets: Any) -> bytes:
    """Test energy and force MAE against training labels, as PNG bytes.

    ``points`` are ``(mark, training labels, energy MAE meV/atom, force MAE meV/Å)``; each
    point is marked (``start``, ``R0``, ``R1``, ...) and the targets are dashed lines. The
    background is transparent and the text a mid grey, so the figure reads on the UI's light
    and dark themes. A panel whose values span more than a factor of 30 gets a log axis with
    plain-number ticks (and says so); otherwise the axes are linear.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    grey, line, target_colour = "#8c8c8c", "#3b82f6", "#f97316"
    fig = Figure(figsize=(10, 3.9), dpi=100)
    fig.patch.set_alpha(0.0)
    panels = [("Energy MAE (meV/atom)", 2, targets.energy_mae_mev_per_atom),
              ("Force MAE (meV/Å)", 3, targets.force_mae_mev_per_a)]
    for i, (title, column, target) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, 2, i)
        ax.patch.set_alpha(0.0)
        xs = [p[1] for p in points]
        ys = [p[column] for p in points]
        values = [v for v in [*ys, target] if v is not None and v > 0]
        log = wants_log_axis(values)
        if points:
            ax.plot(xs, ys, "o-", color=line, lw=2, ms=6, label="test set")
            for mark, x, y in zip((p[0] for p in points), xs, ys):
                ax.annotate(mark, (x, y), textcoords="offset points", xytext=(0, 7), ha="center",
                            fontsize=9, color=grey)
        ax.axhline(target, ls="--", lw=1.5, color=target_colour, label=f"target {target:g}")
        if log:
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        else:
            ax.set_ylim(bottom=0, top=1.15 * max(values) if values else None)
        ax.margins(y=0.12)
        ax.set_xlabel("training labels", color=grey)
        ax.set_title(title + (" (log scale)" if log else ""), fontsize=11, color=grey)
        ax.tick_params(colors=grey, which="both")
        for spine in ax.spines.values():
            spine.set_color(grey)
        ax.grid(alpha=0.25, color=grey)
        legend = ax.legend(fontsize=9, frameon=False)
        for text in legend.get_texts():
            text.set_color(grey)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", transparent=True)
    return buffer.getvalue()


def wants_log_axis(values: list[float]) -> bool:
    """A log axis only when the positive values span more than a factor of 30."""
    values = [v for v in values if v is not None and v > 0]
    return bool(values) and max(values) / min(values) > 30


def _curve_points(rows: list[dict[str, Any]], baseline: dict[str, float] | None) -> list[tuple[str, int, float, float]]:
    points = [(f"R{r['round']}", r["labels"], r["energy_mae_meV_atom"], r["force_mae_meV_A"]) for r in rows
              if r["labels"] is not None and r["force_mae_meV_A"] is not None]
    if baseline:
        points.insert(0, ("start", 0, baseline["energy_mae_mev_per_atom"], baseline["force_mae_mev_per_a"]))
    return points


# --- overview ---------------------------------------------------------------------------------

ROUND_HEADER = ["Round", "Selected by", "Picked", "Training labels", "Energy MAE (meV/atom)",
                "Force MAE (meV/Å)", "Model version"]
TIME_HEADER = ["Round", "Acquire (s)", "Fine-tune (s)", "Whole round (s)"]


def round_table(session: Session, campaign_id: int) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """The round table as shown (the starting model first, then one row per round) and the
    rounds' times (header, rows, time rows)."""
    versions = registry.model_versions(session, campaign_id)
    start = (versions[0].metrics or {}).get("test") if versions else None
    table, times = [], []
    if versions:
        start = start or {}
        table.append(["start", "starting model", "", "0", _cell(start.get("energy_mae_mev_per_atom"), ".1f"),
                      _cell(start.get("force_mae_mev_per_a"), ".1f"), _cell(versions[0].id)])
    wall = {r.number: (r.timings or {}).get("round_wall_s") for r in rounds.campaign_rounds(session, campaign_id)}
    for r in round_rows(session, campaign_id):
        method = "initial random set" if r["method"] == INITIAL_METHOD else r["method"]
        table.append([str(r["round"]), method, _cell(r["selected"]), _cell(r["labels"]),
                      _cell(r["energy_mae_meV_atom"], ".1f"), _cell(r["force_mae_meV_A"], ".1f"),
                      _cell(r["model_version"])])
        times.append([str(r["round"]), _cell(r["acquire_s"], ".1f"), _cell(r["finetune_s"], ".0f"),
                      _cell(wall.get(r["round"]), ".0f")])
    return ROUND_HEADER, table, times


def overview_markdown(session: Session, campaign_id: int, config: Any, *, png: bytes | None = None,
                      png_path: Path | None = None, error: str | None = None,
                      decision: StopDecision | None = None) -> str:
    """The campaign overview (markdown): outcome, targets and budgets, current model, test set,
    learning curve, round table and failed QM jobs.

    The headline of a stopped campaign is :func:`decision_name` of ``decision`` (the campaign
    flow passes the one it just stored); without it, the stored status and the budget its
    stored reason names (:func:`tangentlab.stopping.stored_budget`).
    """
    camp = campaigns.campaign_by_id(session, campaign_id)
    status = str(getattr(camp.status, "value", camp.status))
    all_rounds = rounds.campaign_rounds(session, campaign_id)
    if error is not None:
        headline, outcome = "Failed", f"**Failed:** {_short(error, 400)}"
    elif decision is not None:
        headline = decision_name(decision)
        outcome = f"**{headline}:** {decision.reason}"
    elif status in ("targets_met", "budget_exhausted", "failed", "stopped"):
        headline = outcome_name(status, stored_budget(status, camp.stop_reason))
        outcome = f"**{headline}:** {camp.stop_reason or status}"
    else:
        last = all_rounds[-1] if all_rounds else None
        where = "" if last is None else f", round {last.number} {getattr(last.status, 'value', last.status)}"
        headline, outcome = "Running", f"**Running**{where}."
    targets, budgets = config.targets, config.budgets
    used_labels = len(labels.labelled(session, campaign_id, split=["train", "valid"]))
    evaluated = [r for r in all_rounds if str(getattr(r.status, "value", r.status)) == "evaluated"]
    used_rounds = evaluated[-1].number if evaluated else 0
    used_wall = sum((r.timings or {}).get("round_wall_s", 0.0) for r in all_rounds)
    lines = [f"## Campaign {camp.name}: {headline}", "", outcome, "",
             f"- **Targets:** energy MAE ≤ {targets.energy_mae_mev_per_atom:g} meV/atom and force MAE ≤ "
             f"{targets.force_mae_mev_per_a:g} meV/Å on the test set",
             f"- **Budgets used:** {used_labels} of {budgets.max_labels} labels, {used_rounds} of "
             f"{budgets.max_rounds} rounds, {_duration(used_wall) or '0 s'} of "
             f"{_duration(budgets.max_wall_time_s)}"]
    current = registry.latest_model(session, campaign_id)
    if current is not None:
        test = (current.metrics or {}).get("test") or {}
        errors = (f": test energy MAE {test['energy_mae_mev_per_atom']:.1f} meV/atom, force MAE "
                  f"{test['force_mae_mev_per_a']:.1f} meV/Å" if test else " (not evaluated yet)")
        origin = "starting model" if current.round_number is None else f"after round {current.round_number}"
        lines.append(f"- **Current model:** version {current.id} ({origin}){errors}; `{current.path}`")
    test_set = test_set_counts(session, campaign_id)
    failed_note = (f", **{test_set['failed']} failed QM** (not in the test errors)" if test_set["failed"] else "")
    open_note = (f", {test_set['pending'] + test_set['running']} not labelled yet"
                 if test_set["pending"] + test_set["running"] else "")
    lines.append(f"- **Test set:** {test_set['structures']} structures, errors measured on the "
                 f"{test_set['done']} labelled{failed_note}{open_note}")
    lines.append("")
    if png is not None:
        image = (f"![learning curve: test errors against training labels](data:image/png;base64,"
                 f"{base64.b64encode(png).decode()})" if len(png) <= MAX_INLINE_PNG_BYTES
                 else "_(learning curve too large to embed)_")
        lines += ["### Learning curve", "", image, ""]
        if png_path is not None:
            lines += [f"Saved as `{png_path}`.", ""]
    header, table, times = round_table(session, campaign_id)
    lines += ["### Rounds", "", markdown_table(header, table), "",
              "Test-set errors after each round's fine-tune; training labels include the validation split.", "",
              "### Time per round", "", markdown_table(TIME_HEADER, times), ""]
    failed = failed_label_rows(session, campaign_id)
    if failed:
        split = {s.id: str(getattr(s.split, "value", s.split))
                 for s in structures.structures_by_id(session, [f["structure_id"] for f in failed])}
        lines += ["### Failed QM jobs", "", markdown_table(
            ["Structure", "Formula", "Split", "Attempts", "Reason", "Run directory"],
            [[_cell(f["structure_id"]), _cell(f["formula"]), split.get(f["structure_id"], ""), _cell(f["attempts"]),
              _cell(_short(f["reason"])), f"`{f['run_dir']}`" if f["run_dir"] else ""] for f in failed]), ""]
    return "\n".join(lines)


def publish_overview(session: Session, campaign_id: int, config: Any, *, error: str | None = None,
                     decision: StopDecision | None = None) -> Path:
    """Publish the campaign overview artifact; returns the saved learning-curve PNG's path.

    The PNG is saved under ``<work_dir>/<name>/learning_curve.png`` and embedded in the
    markdown as a data URI, which the Prefect UI renders without any file server.
    """
    name = config.name
    png = learning_curve_png(_curve_points(round_rows(session, campaign_id), baseline_errors(session, campaign_id)),
                             config.targets)
    path = campaign_dir(config.work_dir, name, "learning_curve.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    publish_markdown(overview_key(name),
                     overview_markdown(session, campaign_id, config, png=png, png_path=path, error=error,
                                       decision=decision),
                     f"Campaign {name}: outcome, targets, current model, learning curve and rounds")
    return path


def publish_markdown(key: str, text: str, description: str) -> str:
    """Create the markdown artifact ``key`` of this flow run, or update it in place if this run
    already has one; returns its id.

    So a run page shows one card per key (the overview, each round's selection) that is always
    current, and the key's history keeps one version per flow run (a resume starts a new one).
    """
    from prefect.artifacts import create_markdown_artifact
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactUpdate
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort
    from prefect.runtime import flow_run

    if flow_run.id:
        with get_client(sync_client=True) as client:
            mine = client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])),
                sort=ArtifactSort.CREATED_DESC, limit=1)
            if mine:
                client.update_artifact(mine[0].id, ArtifactUpdate(data=text, description=description))
                return str(mine[0].id)
    return str(create_markdown_artifact(text, key=key, description=description))


def overview_key(name: str) -> str:
    """Artifact key of a campaign's overview."""
    return artifact_key("campaign", name, "overview")


def selection_key(name: str, number: int) -> str:
    """Artifact key of round ``number``'s selection."""
    return artifact_key("campaign", name, "round", number, "selection")


# --- selections -------------------------------------------------------------------------------

SELECTION_HEADER = ["Pick", "Structure", "Formula", "Split", "Score at pick", "Predicted force error (meV/Å)",
                    "Label", "Energy (eV)", "QM time (s)", "Failure"]
INITIAL_HEADER = ["Structure", "Formula", "Split", "Label", "Energy (eV)", "QM time (s)", "Failure"]


def _label_cell(row: dict[str, Any]) -> str:
    label = row["label"]
    if label == "none":
        return "not queued"
    if label == "failed":
        return f"failed ({row['attempts']} attempts)"
    return label


def _diagnostics_table(diagnostics: dict[str, Any]) -> str:
    header = ["Set", "Structures", "Energy/atom q10 (eV)", "q50", "q90", "Max force q10 (eV/Å)", "q50", "q90"]
    table = []
    for name, title in (("picked", "picked"), ("pool", "pool (sample)"), ("target", "target (sample)")):
        summary = diagnostics.get(name)
        if not summary:
            continue
        energy, force = summary.get("energy_per_atom_eV") or {}, summary.get("max_force_eV_per_A") or {}
        table.append([title, _cell(summary.get("count")),
                      *(_cell(energy.get(q), ".3f") for q in ("q10", "q50", "q90")),
                      *(_cell(force.get(q), ".2f") for q in ("q10", "q50", "q90"))])
    return markdown_table(header, table)


EXPLORATION_HEADER = ["Walker", "Seed", "T (K)", "Steps", "Stopped because", "Frames scored", "Candidates",
                      "New", "σ q50", "σ max", "Wall (s)"]


def exploration_markdown(session: Session, campaign_id: int, number: int, summary: dict[str, Any]) -> list[str]:
    """The round's exploration: totals, σ bounds and one row per trajectory (markdown lines)."""
    from db import exploration
    from tangentlab.exploration.guards import STOP_REASONS

    bounds, sigma = summary.get("bounds") or {}, summary.get("sigma") or {}
    stops = ", ".join(f"{v} {STOP_REASONS.get(k, k)}" for k, v in summary.get("stops", {}).items()) or "none"
    lines = ["### Exploration", "",
             f"**{summary.get('engine', '?')}** with the model of the previous round: {summary['trajectories']} "
             f"trajectories, {summary['steps_run']} steps, {summary['frames_scored']} frames scored, "
             f"{summary['frames_kept']} kept as candidates ({summary['candidates_added']} new) in "
             f"{_duration(summary.get('wall_s'))}. Stopped: {stops}.", ""]
    if bounds:
        lines += [f"**σ bounds** ({summary.get('signal', '')} kernel): candidates need σ ≥ {bounds['lower']:.4g} "
                  f"({bounds.get('lower_rule', '')}); σ > {bounds['upper']:.4g} ({bounds.get('upper_rule', '')}) "
                  "stops a trajectory." + (f" Frames scored: σ q10 {sigma['q10']:.4g}, q50 {sigma['q50']:.4g}, "
                                           f"q90 {sigma['q90']:.4g}, max {sigma['max']:.4g}." if sigma else ""), ""]
    rows = []
    for t in exploration.round_trajectories(session, campaign_id, number):
        seed = _seed_name(session, t.seed_structure_id)
        values = sorted(t.sigma)
        rows.append([_cell(t.walker), seed, _cell(t.temperature_k, ".0f"), _cell(t.steps_run),
                     STOP_REASONS.get(t.stop_reason, t.stop_reason), _cell(t.frames_scored), _cell(t.frames_kept),
                     _cell(t.candidates_added), _cell(values[len(values) // 2] if values else None, ".4g"),
                     _cell(values[-1] if values else None, ".4g"), _cell(t.wall_s, ".1f")])
    return [*lines, markdown_table(EXPLORATION_HEADER, rows), ""]


def _seed_name(session: Session, structure_id: int | None) -> str:
    """``CH4O (structure 12)`` for a seed from the campaign, ``seed file`` otherwise."""
    if structure_id is None:
        return "seed file"
    from db.models import Structure

    found = session.get(Structure, structure_id)
    return f"{found.formula} ({structure_id})" if found is not None else str(structure_id)


def selection_markdown(session: Session, campaign_id: int, name: str, number: int) -> tuple[str, list[dict[str, Any]]]:
    """Round ``number``'s selection as markdown, and its rows (:func:`db.reports.selected_rows`).

    Raises
    ------
    LookupError
        If the campaign has no round ``number``.
    """
    rows = selected_rows(session, campaign_id, number)
    round_ = rounds.get_round(session, campaign_id, number)
    parameters = round_.parameters or {}
    outcome = {k: sum(1 for r in rows if r["label"] == k) for k in ("done", "failed", "running", "pending", "none")}
    finished = outcome["done"] + outcome["failed"] == len(rows)
    label_line = (f"**Labels:** {outcome['done']} done, {outcome['failed']} failed QM." if finished else
                  f"**Labels:** {outcome['done']} done, {outcome['failed']} failed, "
                  f"{outcome['pending'] + outcome['running'] + outcome['none']} still to run "
                  "(this artifact is published again when the round's labelling ends).")
    if round_.method == INITIAL_METHOD:
        lines = [f"## Campaign {name} · round 0 · initial set", "",
                 f"{len(rows)} structures drawn at random from {round_.pool_size} pool structures "
                 f"(seed {parameters.get('seed', '?')}): the first training set. No scores: nothing was ranked.",
                 "", label_line, "",
                 markdown_table(INITIAL_HEADER, [[_cell(r["structure_id"]), _cell(r["formula"]), _cell(r["split"]),
                                                  _label_cell(r), _cell(r["energy_eV"], ".4f"),
                                                  _cell(r["qm_wall_s"], ".1f"), _cell(_short(r["failure"]))]
                                                 for r in rows])]
        return "\n".join(lines), rows
    rule = parameters.get("rule")
    method = f"{round_.method} ({rule})" if rule and round_.method not in ("random", "committee") else round_.method
    lines = [f"## Campaign {name} · round {number} · selection", "",
             f"{len(rows)} structures picked by **{method}** from {round_.pool_size} pool structures with model "
             f"version {round_.model_version_id}.", "", label_line, ""]
    if round_.method == "random":
        lines += ["Random picks: no score and no predicted error.", ""]
    else:
        score = ("the squared force spread of the committee ((eV/Å)²)" if round_.method == "committee"
                 else "the rule's score (posterior variance σ² or its gain) when the structure was picked, "
                 "given the picks before it")
        lines += [f"**Pick** is the order of picking; **score at pick** is {score}, so it need not fall "
                  "with the pick order.", ""]
        if parameters.get("uncertainty_scale") is None:
            valid = validation_labels_before(session, campaign_id, number)
            lines += [f"**No predicted force error this round:** the error scale is fitted on at least 2 "
                      f"labelled validation structures and this round had {valid}.", ""]
        else:
            lines += [f"**Predicted force error:** scale·σ with scale {parameters['uncertainty_scale']:.3g} "
                      "fitted on the validation labels (per-structure force MAE, meV/Å).", ""]
    if parameters.get("exploration"):
        lines += exploration_markdown(session, campaign_id, number, parameters["exploration"])
    diagnostics = parameters.get("diagnostics")
    if diagnostics:
        lines += ["### Picks against the pool (the round's model predictions)", "",
                  _diagnostics_table(diagnostics), ""]
    lines += ["### Picks", "", markdown_table(SELECTION_HEADER, [
        [_cell(r["rank"]), _cell(r["structure_id"]), _cell(r["formula"]), _cell(r["split"]), _cell(r["score"], ".4g"),
         _cell(r["predicted_force_error_meV_A"], ".1f"), _label_cell(r), _cell(r["energy_eV"], ".4f"),
         _cell(r["qm_wall_s"], ".1f"), _cell(_short(r["failure"]))] for r in rows])]
    return "\n".join(lines), rows


def publish_selection(session: Session, campaign_id: int, name: str, number: int) -> list[dict[str, Any]]:
    """Publish round ``number``'s selection artifact; returns its rows."""
    text, rows = selection_markdown(session, campaign_id, name, number)
    publish_markdown(selection_key(name, number), text,
                     f"Campaign {name}, round {number}: the selected structures and their labels")
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

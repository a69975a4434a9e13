"""How a campaign is shown: pure functions from its report (:mod:`tasks.report`) to words.

The Markdown of the Prefect artifacts (the overview and each round's selection), the learning
curve's PNG, the outcome names of a finished campaign and the lines ``tangentlab status``
prints are all rendered here from the same JSON-ready views, without a database or a Prefect
server (:mod:`flows.monitoring` publishes them).

Tables carry human column headers with units. A finished campaign is named by its outcome
(:func:`outcome_name`: "Targets met", "Label budget exhausted", "Round budget exhausted",
"Time budget exhausted", "Pool exhausted", "Targets out of reach"), from the stop decision's ``budget`` field, never
from the wording of its reason.
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Any

from tangentlab.confidence import interval_text
from tangentlab.stopping import StopDecision, stored_budget

# Artifact data is stored by the Prefect server; beyond this the image is only linked.
MAX_INLINE_PNG_BYTES = 400_000
INITIAL_METHOD = "initial-random"

# Final state names of a campaign flow run, by outcome (the runs list shows them).
TARGETS_MET = "Targets met"
LABEL_BUDGET = "Label budget exhausted"
ROUND_BUDGET = "Round budget exhausted"
TIME_BUDGET = "Time budget exhausted"
POOL_EXHAUSTED = "Pool exhausted"
OUT_OF_REACH = "Targets out of reach"
BUDGET_EXHAUSTED = "Budget exhausted"
# The state name of each budget of :class:`tangentlab.stopping.StopDecision`.
BUDGET_STATE_NAMES: dict[str, str] = {"labels": LABEL_BUDGET, "rounds": ROUND_BUDGET, "wall_time": TIME_BUDGET,
                                      "pool": POOL_EXHAUSTED, "unreachable": OUT_OF_REACH}


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


# --- formatting -------------------------------------------------------------------------------

def cell(value: Any, spec: str = "") -> str:
    """A table cell: ``value`` formatted with ``spec`` on one line, empty for None and NaN."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    text = format(value, spec) if spec else str(value)
    return " ".join(text.split()).replace("|", "\\|")


def with_interval(value: float | None, interval: list[float] | None, spec: str = ".1f") -> str:
    """``426.0 [381.2, 470.9]``: an error with its interval (the interval left out when there
    is none, an empty cell without a value)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    text = format(value, spec)
    return f"{text} {interval_text(interval, spec)}" if interval else text


def _level_note(level: float | None) -> str:
    return "" if level is None else f"{level:.0%} intervals over the test structures in brackets"


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

    fig = Figure(figsize=(10, 3.9), dpi=100)
    fig.patch.set_alpha(0.0)
    panels = [("Energy MAE (meV/atom)", 2, targets.energy_mae_mev_per_atom),
              ("Force MAE (meV/Å)", 3, targets.force_mae_mev_per_a)]
    for i, (title, column, target) in enumerate(panels, start=1):
        _curve_panel(fig.add_subplot(1, 2, i), points, title, column, target)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", transparent=True)
    return buffer.getvalue()


def _curve_panel(ax, points: list[tuple[str, int, float, float]], title: str, column: int,
                 target: float) -> None:
    """One panel of the learning curve: ``points``' ``column`` against training labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    grey, line, target_colour = "#8c8c8c", "#3b82f6", "#f97316"
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


def wants_log_axis(values: list[float]) -> bool:
    """A log axis only when the positive values span more than a factor of 30."""
    values = [v for v in values if v is not None and v > 0]
    return bool(values) and max(values) / min(values) > 30


def curve_points(view: dict[str, Any]) -> list[tuple[str, int, float, float]]:
    """The learning curve's points (:func:`learning_curve_png`) of a campaign view."""
    rows, baseline = view["round_table"], view["starting_model_test"]
    points = [(f"R{r['round']}", r["labels"], r["energy_mae_meV_atom"], r["force_mae_meV_A"]) for r in rows
              if r["labels"] is not None and r["force_mae_meV_A"] is not None]
    if baseline:
        points.insert(0, ("start", 0, baseline["energy_mae_mev_per_atom"], baseline["force_mae_mev_per_a"]))
    return points




# --- overview ---------------------------------------------------------------------------------

ROUND_HEADER = ["Round", "Selected by", "Picked", "Training labels", "Energy MAE (meV/atom)",
                "Force MAE (meV/Å)", "Model version"]


def force_scope(test: dict[str, Any] | None) -> str:
    """Which atoms a stored test force MAE is over, as words to append to "force MAE": empty
    when the test set holds no atom a constraint fixes (every atom is free), else ``" over free
    atoms"`` or ``" over all atoms, fixed ones included"``."""
    test = test or {}
    if not test.get("n_fixed_atoms"):
        return ""
    if test.get("force_atoms") == "free":
        return " over free atoms"
    return " over all atoms, fixed ones included"


def view_force_scope(view: dict[str, Any]) -> str:
    """:func:`force_scope` of a campaign view (its starting or current model's test errors)."""
    current = view.get("current_model") or {}
    return force_scope(view.get("starting_model_test") or current.get("test"))
TIME_HEADER = ["Round", "Acquire (s)", "Fine-tune (s)", "Whole round (s)"]
FAILED_HEADER = ["Structure", "Formula", "Split", "Attempts", "Reason", "Run directory"]
FINISHED = ("targets_met", "budget_exhausted", "failed", "stopped")


def _round_header(view: dict[str, Any]) -> list[str]:
    scope = view_force_scope(view)
    return [f"Force MAE{scope} (meV/Å)" if h == "Force MAE (meV/Å)" else h for h in ROUND_HEADER]


def round_table(view: dict[str, Any]) -> tuple[list[list[str]], list[list[str]]]:
    """The round table as shown (the starting model first, then one row per round) and the
    rounds' times."""
    table, times = [], []
    if view["starting_model_id"] is not None:
        start = view["starting_model_test"] or {}
        table.append(["start", "starting model", "", "0",
                      with_interval(start.get("energy_mae_mev_per_atom"), start.get("energy_mae_interval_mev_per_atom")),
                      with_interval(start.get("force_mae_mev_per_a"), start.get("force_mae_interval_mev_per_a")),
                      cell(view["starting_model_id"])])
    wall = {r["number"]: r["timings"].get("round_wall_s") for r in view["rounds"]}
    for r in view["round_table"]:
        method = "initial random set" if r["method"] == INITIAL_METHOD else r["method"]
        table.append([str(r["round"]), method, cell(r["selected"]), cell(r["labels"]),
                      with_interval(r["energy_mae_meV_atom"], r.get("energy_mae_interval_meV_atom")),
                      with_interval(r["force_mae_meV_A"], r.get("force_mae_interval_meV_A")),
                      cell(r["model_version"])])
        times.append([str(r["round"]), cell(r["acquire_s"], ".1f"), cell(r["finetune_s"], ".0f"),
                      cell(wall.get(r["round"]), ".0f")])
    return table, times


def _headline(view: dict[str, Any], error: str | None, decision: StopDecision | None) -> tuple[str, str]:
    """The overview's headline and outcome line."""
    status = view["status"]
    if error is not None:
        return "Failed", f"**Failed:** {_short(error, 400)}"
    if decision is not None:
        headline = decision_name(decision)
        return headline, f"**{headline}:** {decision.reason}"
    if status in FINISHED:
        headline = outcome_name(status, stored_budget(status, view["stop_reason"]))
        return headline, f"**{headline}:** {view['stop_reason'] or status}"
    last = view["rounds"][-1] if view["rounds"] else None
    where = "" if last is None else f", round {last['number']} {last['status']}"
    return "Running", f"**Running**{where}."


def _budget_lines(view: dict[str, Any], config: Any) -> list[str]:
    targets, budgets = config.targets, config.budgets
    evaluated = [r for r in view["rounds"] if r["status"] == "evaluated"]
    used_rounds = evaluated[-1]["number"] if evaluated else 0
    used_wall = sum(r["timings"].get("round_wall_s", 0.0) for r in view["rounds"])
    confidence = getattr(targets, "confidence", None)
    level = ("" if confidence is None
             else f", at {confidence:.0%} confidence (the upper ends of the intervals decide)")
    return [f"- **Targets:** energy MAE ≤ {targets.energy_mae_mev_per_atom:g} meV/atom and force MAE ≤ "
            f"{targets.force_mae_mev_per_a:g} meV/Å{view_force_scope(view)} on the test set{level}",
            f"- **Budgets used:** {view['labels_used']} of {budgets.max_labels} labels, {used_rounds} of "
            f"{budgets.max_rounds} rounds, {_duration(used_wall) or '0 s'} of "
            f"{_duration(budgets.max_wall_time_s)}"]


def _model_and_test_lines(view: dict[str, Any]) -> list[str]:
    lines = []
    current = view["current_model"]
    if current is not None:
        test = current["test"] or {}
        errors = (f": test energy MAE {_errors_text(test)}" if test else " (not evaluated yet)")
        origin = "starting model" if current["round"] is None else f"after round {current['round']}"
        lines.append(f"- **Current model:** version {current['id']} ({origin}){errors}; `{current['path']}`")
    test_set = view["test_set"]
    failed_note = (f", **{test_set['failed']} failed QM** (not in the test errors)" if test_set["failed"] else "")
    still = test_set["pending"] + test_set["running"]
    open_note = f", {still} not labelled yet" if still else ""
    lines.append(f"- **Test set:** {test_set['structures']} structures, errors measured on the "
                 f"{test_set['done']} labelled{failed_note}{open_note}")
    return lines


def _curve_lines(png: bytes | None, png_path: Path | None) -> list[str]:
    if png is None:
        return []
    image = (f"![learning curve: test errors against training labels](data:image/png;base64,"
             f"{base64.b64encode(png).decode()})" if len(png) <= MAX_INLINE_PNG_BYTES
             else "_(learning curve too large to embed)_")
    return ["### Learning curve", "", image, ""] + ([f"Saved as `{png_path}`.", ""] if png_path else [])


def overview_markdown(view: dict[str, Any], config: Any, *, png: bytes | None = None,
                      png_path: Path | None = None, error: str | None = None,
                      decision: StopDecision | None = None) -> str:
    """The campaign overview (markdown) of a campaign view (:func:`tasks.report.campaign_view`):
    outcome, targets and budgets, current model, test set, learning curve, round table and
    failed QM jobs.

    The headline of a stopped campaign is :func:`decision_name` of ``decision`` (the campaign
    flow passes the one it just stored); without it, the stored status and the budget its
    stored reason names (:func:`tangentlab.stopping.stored_budget`).
    """
    headline, outcome = _headline(view, error, decision)
    lines = [f"## Campaign {view['name']}: {headline}", "", outcome, "", *_budget_lines(view, config),
             *_model_and_test_lines(view), "", *_curve_lines(png, png_path)]
    table, times = round_table(view)
    level = next((r.get("interval_level") for r in view["round_table"] if r.get("interval_level")), None)
    note = _level_note(level)
    lines += ["### Rounds", "", markdown_table(_round_header(view), table), "",
              "Test-set errors after each round's fine-tune" + (f" ({note})" if note else "")
              + "; training labels include the validation split.", "",
              "### Time per round", "", markdown_table(TIME_HEADER, times), ""]
    failed = view["failed_labels"]
    if failed:
        lines += ["### Failed QM jobs", "", markdown_table(FAILED_HEADER, [
            [cell(f["structure_id"]), cell(f["formula"]), f["split"], cell(f["attempts"]), cell(_short(f["reason"])),
             f"`{f['run_dir']}`" if f["run_dir"] else ""] for f in failed]), ""]
    return "\n".join(lines)


# --- selections -------------------------------------------------------------------------------

SELECTION_HEADER = ["Pick", "Structure", "Formula", "Split", "Score at pick", "Predicted force error (meV/Å)",
                    "Label", "Energy (eV)", "QM time (s)", "Failure"]
INITIAL_HEADER = ["Structure", "Formula", "Split", "Label", "Energy (eV)", "QM time (s)", "Failure"]
EXPLORATION_HEADER = ["Walker", "Seed", "T (K)", "Steps", "Stopped because", "Frames scored", "Candidates",
                      "New", "σ q50", "σ max", "Wall (s)"]
DIAGNOSTICS_HEADER = ["Set", "Structures", "Energy/atom q10 (eV)", "q50", "q90", "Max force q10 (eV/Å)", "q50",
                      "q90"]


def _label_cell(row: dict[str, Any]) -> str:
    label = row["label"]
    if label == "none":
        return "not queued"
    if label == "failed":
        return f"failed ({row['attempts']} attempts)"
    return label


def diagnostics_table(diagnostics: dict[str, Any]) -> str:
    """The picks against the pool (and target): predicted energy/atom and max force quantiles."""
    table = []
    for name, title in (("picked", "picked"), ("pool", "pool (sample)"), ("target", "target (sample)")):
        summary = diagnostics.get(name)
        if not summary:
            continue
        energy, force = summary.get("energy_per_atom_eV") or {}, summary.get("max_force_eV_per_A") or {}
        table.append([title, cell(summary.get("count")),
                      *(cell(energy.get(q), ".3f") for q in ("q10", "q50", "q90")),
                      *(cell(force.get(q), ".2f") for q in ("q10", "q50", "q90"))])
    return markdown_table(DIAGNOSTICS_HEADER, table)


def exploration_markdown(summary: dict[str, Any]) -> list[str]:
    """A round's exploration (:func:`tasks.report.round_exploration`): totals, σ bounds and one
    row per trajectory (markdown lines)."""
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
    rows = [[cell(t["walker"]), t["seed"], cell(t["temperature_K"], ".0f"), cell(t["steps_run"]),
             STOP_REASONS.get(t["stop_reason"], t["stop_reason"]), cell(t["frames_scored"]), cell(t["frames_kept"]),
             cell(t["candidates_added"]), cell(t["sigma_q50"], ".4g"), cell(t["sigma_max"], ".4g"),
             cell(t["wall_s"], ".1f")] for t in summary.get("trajectories_detail", [])]
    return [*lines, markdown_table(EXPLORATION_HEADER, rows), ""]


def _labels_line(rows: list[dict[str, Any]]) -> str:
    outcome = {k: sum(1 for r in rows if r["label"] == k) for k in ("done", "failed", "running", "pending", "none")}
    if outcome["done"] + outcome["failed"] == len(rows):
        return f"**Labels:** {outcome['done']} done, {outcome['failed']} failed QM."
    return (f"**Labels:** {outcome['done']} done, {outcome['failed']} failed, "
            f"{outcome['pending'] + outcome['running'] + outcome['none']} still to run "
            "(this artifact is published again when the round's labelling ends).")


def _initial_markdown(view: dict[str, Any], name: str) -> str:
    rows = view["structures"]
    seed = "?" if view["seed"] is None else view["seed"]
    return "\n".join([
        f"## Campaign {name} · round 0 · initial set", "",
        f"{len(rows)} structures drawn at random from {view['pool_size']} pool structures "
        f"(seed {seed}): the first training set. No scores: nothing was ranked.", "", _labels_line(rows), "",
        markdown_table(INITIAL_HEADER, [[cell(r["structure_id"]), cell(r["formula"]), cell(r["split"]),
                                         _label_cell(r), cell(r["energy_eV"], ".4f"), cell(r["qm_wall_s"], ".1f"),
                                         cell(_short(r["failure"]))] for r in rows])])


def _score_lines(view: dict[str, Any]) -> list[str]:
    """What the score and the predicted error of a ranked selection mean."""
    if view["method"] == "random":
        return ["Random picks: no score and no predicted error.", ""]
    score = ("the squared force spread of the committee ((eV/Å)²)" if view["method"] == "committee"
             else "the rule's score (posterior variance σ² or its gain) when the structure was picked, "
             "given the picks before it")
    lines = [f"**Pick** is the order of picking; **score at pick** is {score}, so it need not fall "
             "with the pick order.", ""]
    if view["uncertainty_scale"] is None:
        return lines + [f"**No predicted force error this round:** the error scale is fitted on at least 2 "
                        f"labelled validation structures and this round had {view['validation_labels_before']}.", ""]
    return lines + [f"**Predicted force error:** scale·σ with scale {view['uncertainty_scale']:.3g} "
                    "fitted on the validation labels (per-structure force MAE, meV/Å).", ""]


def selection_markdown(view: dict[str, Any], name: str) -> str:
    """A round's selection (:func:`tasks.report.selection_view`) as markdown."""
    if view["method"] == INITIAL_METHOD:
        return _initial_markdown(view, name)
    rows, rule, method = view["structures"], view["rule"], view["method"]
    shown = f"{method} ({rule})" if rule and method not in ("random", "committee") else method
    lines = [f"## Campaign {name} · round {view['round']} · selection", "",
             f"{len(rows)} structures picked by **{shown}** from {view['pool_size']} pool structures with model "
             f"version {view['model_version_id']}.", "", _labels_line(rows), "", *_score_lines(view)]
    if view.get("predicted_force_mae"):
        lines += [f"**Predicted error of the pool:** {prediction_line(view, None)}.", ""]
    exploration = view["exploration"]
    if exploration and not exploration.get("unfinished"):
        lines += exploration_markdown(exploration)
    if view["diagnostics"]:
        lines += ["### Picks against the pool (the round's model predictions)", "",
                  diagnostics_table(view["diagnostics"]), ""]
    lines += ["### Picks", "", markdown_table(SELECTION_HEADER, [
        [cell(r["rank"]), cell(r["structure_id"]), cell(r["formula"]), cell(r["split"]), cell(r["score"], ".4g"),
         cell(r["predicted_force_error_meV_A"], ".1f"), _label_cell(r), cell(r["energy_eV"], ".4f"),
         cell(r["qm_wall_s"], ".1f"), cell(_short(r["failure"]))] for r in rows])]
    return "\n".join(lines)


# --- terminal ---------------------------------------------------------------------------------

SPLIT_ORDER = ("pool", "train", "valid", "test")
LABEL_ORDER = ("done", "failed", "running", "pending")


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "" if value is None else format(value, spec)


def counts_text(counts: dict[str, int], order: tuple[str, ...], zero: bool = False) -> str:
    """``{"done": 3, "failed": 1}`` as ``3 done, 1 failed`` (known keys first, zeros left out)."""
    keys = [k for k in order if k in counts] + sorted(k for k in counts if k not in order)
    shown = [f"{counts[k]} {k}" for k in keys if counts[k] or zero]
    return ", ".join(shown) or "none"


def exploration_line(summary: dict[str, Any]) -> str:
    """One line: trajectories, steps, frames scored/kept, candidates, stops and σ (status and logs)."""
    sigma = summary.get("sigma") or {}
    bounds = summary.get("bounds") or {}
    line = (f"{summary['trajectories']} trajectories, {summary['steps_run']} steps, {summary['frames_scored']} "
            f"frames scored, {summary['frames_kept']} kept, {summary['candidates_added']} new candidates; stopped: "
            + (", ".join(f"{v} {k}" for k, v in summary["stops"].items()) or "none"))
    if sigma:
        line += f"; σ q10 {sigma['q10']:.3g}, q50 {sigma['q50']:.3g}, q90 {sigma['q90']:.3g}, max {sigma['max']:.3g}"
    if bounds:
        line += f" (bounds {bounds['lower']:.3g}–{bounds['upper']:.3g})"
    return line + (" — not finished: the other walkers are running, or run on resume"
                   if summary.get("unfinished") else "")


def diagnostics_line(diagnostics: dict[str, Any]) -> str:
    """``largest force 1.40 eV/Å (pool 2.70, target 0.70)``: mean predicted largest force and
    energy per atom of the picks against the pool's (and target's)."""
    parts = []
    for key, label, unit in (("max_force_eV_per_A", "largest force", "eV/Å"),
                             ("energy_per_atom_eV", "energy", "eV/atom")):
        values = {name: (diagnostics.get(name) or {}).get(key, {}).get("mean")
                  for name in ("picked", "pool", "target")}
        if values["picked"] is None:
            continue
        others = ", ".join(f"{name} {values[name]:.2f}" for name in ("pool", "target")
                           if values[name] is not None)
        parts.append(f"{label} {values['picked']:.2f} {unit} ({others})")
    return "; ".join(parts)


def _test_set_line(test: dict[str, int]) -> str:
    line = f"{test['structures']} structures, test errors on the {test['done']} labelled"
    if test["failed"]:
        line += f"; {test['failed']} FAILED QM (not in the test errors)"
    if test["pending"] + test["running"]:
        line += f"; {test['pending'] + test['running']} not labelled yet"
    return line


def _errors_text(test: dict[str, Any]) -> str:
    """``12.3 [10.1, 14.9] meV/atom, force MAE 426.0 [381.2, 470.9] meV/Å (90 % intervals)``."""
    level = test.get("interval_level")
    note = f" ({level:.0%} intervals)" if level and test.get("force_mae_interval_mev_per_a") else ""
    return (f"{with_interval(test['energy_mae_mev_per_atom'], test.get('energy_mae_interval_mev_per_atom'))} "
            f"meV/atom, force MAE {with_interval(test['force_mae_mev_per_a'], test.get('force_mae_interval_mev_per_a'))}"
            f" meV/Å{note}")


def _model_lines(view: dict[str, Any]) -> list[str]:
    model, lines = view["current_model"], []
    if model is None:
        lines.append("  current model: none registered yet")
    else:
        test = model["test"] or {}
        errors = f", test energy MAE {_errors_text(test)}" if test else ""
        lines.append(f"  current model: version {model['id']} {model['path']} (sha256 {model['sha256'][:12]})"
                     f"{errors}")
    start = view["starting_model_test"]
    if start:
        lines.append(f"  starting model: test energy MAE {_errors_text(start)}")
    return lines


def _round_lines(view: dict[str, Any]) -> list[str]:
    lines = [f"  {'round':>5} {'status':>10} {'method':>15} {'selected':>8} {'labels':>6} {'E MAE':>8} "
             f"{'E interval':>16} {'F MAE':>8} {'F interval':>16} {'model':>5} {'acquire s':>9}"]
    for r in view["round_table"]:
        lines.append(f"  {r['round']:>5} {r['status']:>10} {r['method']:>15} {r['selected']:>8} "
                     f"{_fmt(r['labels'], 'd'):>6} {_fmt(r['energy_mae_meV_atom']):>8} "
                     f"{interval_text(r.get('energy_mae_interval_meV_atom')):>16} "
                     f"{_fmt(r['force_mae_meV_A']):>8} {interval_text(r.get('force_mae_interval_meV_A')):>16} "
                     f"{_fmt(r['model_version'], 'd'):>5} {_fmt(r['acquire_s'], '.2f'):>9}")
    level = next((r.get("interval_level") for r in view["round_table"] if r.get("interval_level")), None)
    lines.append(f"  (E MAE in meV/atom, F MAE in meV/Å{view_force_scope(view)}, on the test set"
                 + (f"; {_level_note(level)}" if level else "") + ")")
    if view.get("exploring"):
        lines.append(f"  round {view['exploring']['round']} exploring now: {exploration_line(view['exploring'])}")
    return lines


def prediction_line(selection: dict[str, Any], measured: dict[str, Any] | None) -> str:
    """``predicted force MAE over the pool 123.4 [110.0, 140.0] meV/Å (from σ and 6 validation
    labels); measured on the test set 130.2 [115.1, 146.0]`` for the model a round acquired
    with; empty without a prediction."""
    predicted = selection.get("predicted_force_mae")
    if not predicted:
        return ""
    line = (f"model {selection['model_version_id']}: predicted force MAE over the pool "
            f"{with_interval(predicted['mae'], predicted['interval'])} meV/Å (from σ and "
            f"{predicted['n_valid']} validation labels, {predicted.get('level', 0.9):.0%} interval)")
    if measured and measured.get("force_mae_mev_per_a") is not None:
        line += (f"; measured on the test set "
                 f"{with_interval(measured['force_mae_mev_per_a'], measured.get('force_mae_interval_mev_per_a'))}")
    return line


def _measured(view: dict[str, Any], model_id: int | None) -> dict[str, Any] | None:
    """The stored test errors of model version ``model_id`` (starting model or a round's)."""
    if model_id is not None and model_id == view.get("starting_model_id"):
        return view.get("starting_model_test")
    row = next((r for r in view["round_table"] if r["model_version"] == model_id), None)
    if row is None:
        return None
    return {"force_mae_mev_per_a": row["force_mae_meV_A"],
            "force_mae_interval_mev_per_a": row.get("force_mae_interval_meV_A")}


def _selection_lines(selection: dict[str, Any] | None, view: dict[str, Any] | None = None) -> list[str]:
    if not selection:
        return []
    number, lines = selection["round"], []
    predicted = prediction_line(selection, _measured(view, selection.get("model_version_id")) if view else None)
    if predicted:
        lines.append(f"  round {number} acquired with {predicted}")
    if selection.get("exploration"):
        lines.append(f"  round {number} exploration: {exploration_line(selection['exploration'])}")
    if selection.get("diagnostics"):
        lines.append(f"  round {number} picks, predicted means: {diagnostics_line(selection['diagnostics'])}")
    lines.append(f"  round {number} selected (score; predicted force error in meV/Å; label):")
    for s in selection["structures"]:
        score = _fmt(s["score"], ".3g") or "n/a"
        predicted = _fmt(s["predicted_force_error_meV_A"]) or "n/a"
        label = "not queued" if s["label"] == "none" else s["label"]
        lines.append(f"    {s['rank']:>3}. structure {s['structure_id']:>5} {s['formula']:>10} {s['split']:>5} "
                     f"score {score:>9} predicted {predicted:>7} {label}"
                     + (f" ({s['failure']})" if s["failure"] else ""))
    return lines


def _queue_lines(queue: dict[str, Any] | None) -> list[str]:
    """Asynchronous rounds: the jobs in flight, the queue and which model picked the labels."""
    if not queue:
        return []
    picked = ", ".join(f"{name} {count}" for name, count in queue["picked_by"].items())
    lines = [f"  label queue: {queue['running']} running, {queue['queued']} queued; labels picked by: "
             f"{picked}"]
    for rank, row in enumerate(queue["open"][:20], start=1):
        by = row["picked_by_model_id"]
        lines.append(f"    {rank:>3}. structure {row['structure_id']:>5} {row['split']:>5} {row['status']:>8} "
                     f"picked by {'the initial draw' if by is None else f'model {by}'}")
    if len(queue["open"]) > 20:
        lines.append(f"    ... {len(queue['open']) - 20} more")
    return lines


def status_lines(view: dict[str, Any]) -> list[str]:
    """What ``tangentlab status`` prints for one campaign view (:func:`tasks.report.campaign_view`)."""
    return [f"campaign {view['name']!r} (id {view['id']}): {view['status'].replace('_', ' ')}"
            + (f" — {view['stop_reason']}" if view["stop_reason"] else ""),
            f"  structures: {counts_text(view['structures'], SPLIT_ORDER)}",
            f"  labels: {counts_text(view['labels'], LABEL_ORDER)}",
            f"  test set: {_test_set_line(view['test_set'])}",
            *_model_lines(view), *_round_lines(view), *_queue_lines(view.get("label_queue")),
            *_selection_lines(view["selected_structures"], view),
            *(f"  failed label {f['label_id']} ({f['formula']}, structure {f['structure_id']}, "
              f"{f['attempts']} attempts): {f['reason']} [{f['run_dir']}]" for f in view["failed_labels"])]


def result_lines(result: dict[str, Any]) -> list[str]:
    """The end of ``start``/``resume`` (:func:`flows.campaign.summary`): outcome, reason, each
    model's test errors and the label counts, in the words ``tangentlab status`` uses."""
    lines = ["", f"campaign {result['name']!r}: {result['status'].replace('_', ' ')}", f"  {result['reason']}",
             f"  {'model':>5} {'round':>5} {'energy MAE (meV/atom)':>28} {'force MAE (meV/Å)':>28}"]
    scope = next((force_scope(m["test"]) for m in result["models"] if m["test"]), "")
    for m in result["models"]:
        test = m["test"] or {}
        rnd = "start" if m["round"] is None else m["round"]
        e = with_interval(test.get("energy_mae_mev_per_atom"), test.get("energy_mae_interval_mev_per_atom"))
        f = with_interval(test.get("force_mae_mev_per_a"), test.get("force_mae_interval_mev_per_a"))
        lines.append(f"  {m['id']:>5} {rnd!s:>5} {e:>28} {f:>28}")
    if scope:
        lines.append(f"  (force MAE{scope} of the test set)")
    lines.append(f"  labels: {counts_text(result['labels'], LABEL_ORDER)}")
    return lines

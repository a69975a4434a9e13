"""How a campaign is shown: pure functions from its report (:mod:`tasks.report`) to words.

The Markdown of the campaign's overview artifact, the outcome names of a finished campaign
and the lines that end ``start`` and ``resume`` are rendered here from JSON-ready views, without a database or a Prefect server (:mod:`flows.monitoring`
publishes them). A round's selection artifact is :mod:`flows.selection_rendering`, the learning
curve's PNG :mod:`flows.curve`, the lines ``tangentlab status`` prints
:mod:`flows.status_text`, all from the same views.

Tables carry human column headers with units. A finished campaign is named by its outcome
(:func:`outcome_name`: "Targets met", "Label budget exhausted", "Round budget exhausted",
"Time budget exhausted", "Pool exhausted", "Targets out of reach"), from the stop decision's ``budget`` field, never
from the wording of its reason.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

from tangentlab.confidence import interval_text
from tangentlab.prediction_powered import PPI_METHODS
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


def level_note(level: float | None) -> str:
    return "" if level is None else f"{level:.0%} intervals over the test structures in brackets"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table (cells already formatted); ``_none_`` without rows."""
    if not rows:
        return "_none_"
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def short_text(text: str | None, limit: int = 140) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def duration_text(seconds: float | None) -> str:
    """``45 s``, ``3.5 min`` or ``2.1 h``; empty for None."""
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def errors_text(test: dict[str, Any]) -> str:
    """``12.3 [10.1, 14.9] meV/atom, force MAE 426.0 [381.2, 470.9] meV/Å (90 % intervals)``."""
    level = test.get("interval_level")
    kind = " prediction-powered" if test.get("interval_method") in PPI_METHODS else ""
    note = f" ({level:.0%}{kind} intervals)" if level and test.get("force_mae_interval_mev_per_a") else ""
    return (f"{with_interval(test['energy_mae_mev_per_atom'], test.get('energy_mae_interval_mev_per_atom'))} "
            f"meV/atom, force MAE {with_interval(test['force_mae_mev_per_a'], test.get('force_mae_interval_mev_per_a'))}"
            f" meV/Å{note}")


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
        return "Failed", f"**Failed:** {short_text(error, 400)}"
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
            f"{budgets.max_rounds} rounds, {duration_text(used_wall) or '0 s'} of "
            f"{duration_text(budgets.max_wall_time_s)}"]


def _model_and_test_lines(view: dict[str, Any]) -> list[str]:
    lines = []
    current = view["current_model"]
    if current is not None:
        test = current["test"] or {}
        errors = (f": test energy MAE {errors_text(test)}" if test else " (not evaluated yet)")
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
    note = level_note(level)
    lines += ["### Rounds", "", markdown_table(_round_header(view), table), "",
              "Test-set errors after each round's fine-tune" + (f" ({note})" if note else "")
              + "; training labels include the validation split.", "",
              "### Time per round", "", markdown_table(TIME_HEADER, times), ""]
    failed = view["failed_labels"]
    if failed:
        lines += ["### Failed QM jobs", "", markdown_table(FAILED_HEADER, [
            [cell(f["structure_id"]), cell(f["formula"]), f["split"], cell(f["attempts"]), cell(short_text(f["reason"])),
             f"`{f['run_dir']}`" if f["run_dir"] else ""] for f in failed]), ""]
    return "\n".join(lines)


# --- the end of start/resume (`tangentlab status`: flows.status_text) ----------------------

LABEL_ORDER = ("done", "failed", "running", "pending")


def counts_text(counts: dict[str, int], order: tuple[str, ...], zero: bool = False) -> str:
    """``{"done": 3, "failed": 1}`` as ``3 done, 1 failed`` (known keys first, zeros left out)."""
    keys = [k for k in order if k in counts] + sorted(k for k in counts if k not in order)
    shown = [f"{counts[k]} {k}" for k in keys if counts[k] or zero]
    return ", ".join(shown) or "none"


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

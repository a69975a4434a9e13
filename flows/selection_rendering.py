"""A round's selection artifact as Markdown: what the round picked and why (scores, predicted
errors, labels), its exploration and the picks against the pool, from the round's selection
view (:func:`tasks.report.read_selection_view`).

Pure (no database, no Prefect server): :mod:`flows.monitoring` publishes it.
"""

from __future__ import annotations

from typing import Any

from flows.rendering import (
    INITIAL_METHOD,
    cell,
    duration_text,
    markdown_table,
    prediction_line,
    short_text,
)


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
             f"{duration_text(summary.get('wall_s'))}. Stopped: {stops}.", ""]
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
                                         cell(short_text(r["failure"]))] for r in rows])])


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
         cell(r["qm_wall_s"], ".1f"), cell(short_text(r["failure"]))] for r in rows])]
    return "\n".join(lines)

"""What ``tangentlab status`` prints: a campaign view (:func:`tasks.report.campaign_view`) as
terminal lines, in the words and units of the Prefect artifacts (:mod:`flows.rendering`).

Pure (no database, no Prefect server).
"""

from __future__ import annotations

from typing import Any

from flows.rendering import (
    LABEL_ORDER,
    counts_text,
    errors_text,
    level_note,
    prediction_line,
    view_force_scope,
)
from tangentlab.confidence import interval_text

SPLIT_ORDER = ("pool", "train", "valid", "test")


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "" if value is None else format(value, spec)


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


def _model_lines(view: dict[str, Any]) -> list[str]:
    model, lines = view["current_model"], []
    if model is None:
        lines.append("  current model: none registered yet")
    else:
        test = model["test"] or {}
        errors = f", test energy MAE {errors_text(test)}" if test else ""
        lines.append(f"  current model: version {model['id']} {model['path']} (sha256 {model['sha256'][:12]})"
                     f"{errors}")
    start = view["starting_model_test"]
    if start:
        lines.append(f"  starting model: test energy MAE {errors_text(start)}")
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
                 + (f"; {level_note(level)}" if level else "") + ")")
    if view.get("exploring"):
        lines.append(f"  round {view['exploring']['round']} exploring now: {exploration_line(view['exploring'])}")
    return lines


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

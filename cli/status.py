"""``tangentlab status``: rounds, labels, errors, the current model and a round's selection."""

from __future__ import annotations

import argparse
import json

from cli.commands import open_database


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "" if value is None else format(value, spec)


def _status_report(session, campaign, round_number: int | None) -> dict:
    from db import reports

    report = reports.campaign_report(session, campaign)
    report["round_table"] = reports.round_rows(session, campaign.id)
    report["starting_model_test"] = reports.baseline_errors(session, campaign.id)
    report["failed_labels"] = reports.failed_label_rows(session, campaign.id)
    numbers = [r["round"] for r in report["round_table"]]
    number = numbers[-1] if round_number is None and numbers else round_number
    if number is not None and number not in numbers:
        raise LookupError(f"campaign {campaign.name!r} has no round {number} (rounds: {numbers})")
    report["selected_structures"] = None if number is None else {
        "round": number, "structures": reports.selected_rows(session, campaign.id, number),
        **_round_extras(session, campaign.id, number)}
    upcoming = (numbers[-1] + 1) if numbers else None
    report["exploring"] = None if upcoming is None else _round_exploration(session, campaign.id, upcoming, None)
    if report["exploring"] is not None:
        report["exploring"]["round"] = upcoming
    return report


def _round_exploration(session, campaign_id: int, number: int, found) -> dict | None:
    """Round ``number``'s (``found``: its row, or None before it is recorded) exploration summary
    with one row per trajectory (None: no exploration)."""
    from db import exploration

    trajectories = exploration.round_trajectories(session, campaign_id, number)
    summary = None if found is None else (found.parameters or {}).get("exploration")
    if summary is None and not trajectories:
        return None
    summary = dict(summary or exploration.exploration_summary(trajectories) | {"unfinished": True})
    summary["trajectories_detail"] = [
        {"walker": t.walker, "seed_structure_id": t.seed_structure_id, "temperature_K": t.temperature_k,
         "steps_run": t.steps_run, "frames_scored": t.frames_scored, "frames_kept": t.frames_kept,
         "candidates_added": t.candidates_added, "stop_reason": t.stop_reason, "wall_s": t.wall_s}
        for t in trajectories]
    return summary


def exploration_line(summary: dict) -> str:
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
    return line + (" — not finished: the other walkers are running, or run on resume" if summary.get("unfinished") else "")


def _round_extras(session, campaign_id: int, number: int) -> dict:
    """The round's stored picks-vs-pool ``diagnostics`` (None for the random initial round) and
    its ``exploration`` (:func:`_round_exploration`), from one read of the round."""
    from db import rounds

    found = rounds.get_round(session, campaign_id, number)
    return {"diagnostics": None if found is None else (found.parameters or {}).get("diagnostics"),
            "exploration": _round_exploration(session, campaign_id, number, found)}


def _diagnostics_line(diagnostics: dict) -> str:
    """``picks 1.4 eV/Å (pool 2.7, target 0.7)``: mean predicted largest force and energy per atom."""
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


SPLIT_ORDER = ("pool", "train", "valid", "test")
LABEL_ORDER = ("done", "failed", "running", "pending")


def _counts(counts: dict[str, int], order: tuple[str, ...], zero: bool = False) -> str:
    """``{"done": 3, "failed": 1}`` as ``3 done, 1 failed`` (known keys first, zeros left out)."""
    keys = [k for k in order if k in counts] + sorted(k for k in counts if k not in order)
    shown = [f"{counts[k]} {k}" for k in keys if counts[k] or zero]
    return ", ".join(shown) or "none"


def _test_set_line(test: dict[str, int]) -> str:
    line = f"{test['structures']} structures, test errors on the {test['done']} labelled"
    if test["failed"]:
        line += f"; {test['failed']} FAILED QM (not in the test errors)"
    if test["pending"] + test["running"]:
        line += f"; {test['pending'] + test['running']} not labelled yet"
    return line


def _print_status(camp: dict) -> None:
    print(f"campaign {camp['name']!r} (id {camp['id']}): {camp['status'].replace('_', ' ')}"
          + (f" — {camp['stop_reason']}" if camp["stop_reason"] else ""))
    print(f"  structures: {_counts(camp['structures'], SPLIT_ORDER)}")
    print(f"  labels: {_counts(camp['labels'], LABEL_ORDER)}")
    print(f"  test set: {_test_set_line(camp['test_set'])}")
    model = camp["current_model"]
    if model is None:
        print("  current model: none registered yet")
    else:
        test = model["test"] or {}
        errors = (f", test {test['energy_mae_mev_per_atom']:.1f} meV/atom, {test['force_mae_mev_per_a']:.1f} meV/Å"
                  if test else "")
        print(f"  current model: version {model['id']} {model['path']} (sha256 {model['sha256'][:12]}){errors}")
    start = camp["starting_model_test"]
    if start:
        print(f"  starting model: test {start['energy_mae_mev_per_atom']:.1f} meV/atom, "
              f"{start['force_mae_mev_per_a']:.1f} meV/Å")
    print(f"  {'round':>5} {'status':>10} {'method':>15} {'selected':>8} {'labels':>6} {'E MAE':>8} {'F MAE':>8} "
          f"{'model':>5} {'acquire s':>9}")
    for r in camp["round_table"]:
        print(f"  {r['round']:>5} {r['status']:>10} {r['method']:>15} {r['selected']:>8} "
              f"{_fmt(r['labels'], 'd'):>6} {_fmt(r['energy_mae_meV_atom']):>8} {_fmt(r['force_mae_meV_A']):>8} "
              f"{_fmt(r['model_version'], 'd'):>5} {_fmt(r['acquire_s'], '.2f'):>9}")
    print("  (E MAE in meV/atom, F MAE in meV/Å, on the test set)")
    if camp.get("exploring"):
        print(f"  round {camp['exploring']['round']} exploring now: {exploration_line(camp['exploring'])}")
    selection = camp["selected_structures"]
    if selection:
        if selection.get("exploration"):
            print(f"  round {selection['round']} exploration: {exploration_line(selection['exploration'])}")
        if selection.get("diagnostics"):
            print(f"  round {selection['round']} picks, predicted means: "
                  f"{_diagnostics_line(selection['diagnostics'])}")
        print(f"  round {selection['round']} selected (score; predicted force error in meV/Å; label):")
        for s in selection["structures"]:
            score = _fmt(s["score"], ".3g") or "n/a"
            predicted = _fmt(s["predicted_force_error_meV_A"]) or "n/a"
            label = "not queued" if s["label"] == "none" else s["label"]
            print(f"    {s['rank']:>3}. structure {s['structure_id']:>5} {s['formula']:>10} {s['split']:>5} "
                  f"score {score:>9} predicted {predicted:>7} {label}"
                  + (f" ({s['failure']})" if s["failure"] else ""))
    for f in camp["failed_labels"]:
        print(f"  failed label {f['label_id']} ({f['formula']}, structure {f['structure_id']}, "
              f"{f['attempts']} attempts): {f['reason']} [{f['run_dir']}]")


def cmd_status(args: argparse.Namespace) -> int:
    from db import campaigns, session_scope

    with session_scope(open_database(args)) as session:
        shown = [campaigns.get_campaign(session, args.name)] if args.name else campaigns.all_campaigns(session)
        report = [_status_report(session, c, args.round) for c in shown]
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    for camp in report:
        _print_status(camp)
    return 0

"""Exploration against a fixed pool of rattled seeds, at the same label budget.

For each seed, two campaigns of the exploration example (examples/exploration.yaml) run to the
full label budget with targets no campaign meets, so their learning curves can be compared
label for label:

- ``explore``: the example as it is: four xTB-relaxed molecules, MD exploration each round;
- ``rattled``: no exploration; the pool is examples/exploration/rattled_pool.extxyz (200
  rattled copies of the same four molecules); the same acquisition picks from it.

Both are judged on the example's test set, an xTB MD trajectory at 1000 K run with xTB itself.
Printed and written as JSON: per campaign the test errors after every round, the labels at
which the example's targets would have been met, and the wall time spent exploring, labelling,
acquiring and fine-tuning.

    python scripts/benchmark_exploration.py --seeds 0 1 2 --out docs/benchmarks/exploration.json

Needs a Prefect API (``PREFECT_API_URL``) or starts Prefect's temporary server.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "exploration.yaml"
# Targets no model meets and no "out of reach" stop: the budget decides.
UNREACHABLE = {"energy_mae_mev_per_atom": 1e-3, "force_mae_mev_per_a": 1e-3, "confidence": None}


def configs(seed: int, work_dir: str) -> dict[str, dict]:
    from tangentlab.config import load_config

    example = load_config(EXAMPLE).model_dump(mode="json")
    explore = {**example, "name": f"explore-s{seed}", "seed": seed, "work_dir": work_dir, "targets": UNREACHABLE}
    rattled = {**explore, "name": f"rattled-s{seed}", "exploration": None,
               "pool": [str(ROOT / "examples" / "exploration" / "rattled_pool.extxyz")]}
    return {"explore": explore, "rattled": rattled}


def measure(url: str, name: str, targets: dict) -> dict:
    """Learning curve, labels to the targets and times of a finished campaign."""
    from sqlalchemy import select

    from db import Label, campaigns, make_engine, reports, rounds, session_scope

    with session_scope(make_engine(url)) as session:
        campaign = campaigns.get_campaign(session, name)
        curve, times = [], {"explore_s": 0.0, "label_s": 0.0, "acquire_s": 0.0, "finetune_s": 0.0}
        for row, round_ in zip(reports.round_rows(session, campaign.id), rounds.campaign_rounds(session, campaign.id)):
            timings = round_.timings or {}
            ids = [e["structure_id"] for e in round_.selected or []]
            qm = sum(w or 0.0 for w in session.scalars(select(Label.wall_time).where(Label.structure_id.in_(ids))))
            times["explore_s"] += timings.get("explore_s", 0.0)
            times["acquire_s"] += timings.get("acquire_s", 0.0)
            times["finetune_s"] += timings.get("finetune_s", 0.0)
            times["label_s"] += qm
            curve.append({"round": row["round"], "labels": row["labels"], "energy_mae_meV_atom": row["energy_mae_meV_atom"],
                          "force_mae_meV_A": row["force_mae_meV_A"],
                          "candidates_added": ((round_.parameters or {}).get("exploration") or {}).get("candidates_added")})
        start = reports.baseline_errors(session, campaign.id)

    def first(key: str, target: float) -> int | None:
        return next((p["labels"] for p in curve if p[key] is not None and p[key] <= target), None)

    return {"curve": curve, "starting_model": start, "times_s": times,
            "labels_to_energy_target": first("energy_mae_meV_atom", targets["energy_mae_mev_per_atom"]),
            "labels_to_force_target": first("force_mae_meV_A", targets["force_mae_mev_per_a"]),
            "labels_to_both_targets": next((p["labels"] for p in curve if p["energy_mae_meV_atom"] is not None
                                            and p["energy_mae_meV_atom"] <= targets["energy_mae_mev_per_atom"]
                                            and p["force_mae_meV_A"] <= targets["force_mae_mev_per_a"]), None)}


def report(results: dict) -> str:
    """Markdown: per seed and method the errors at every label count, labels to the targets,
    the seed-paired difference at the end of the budget and where the time went."""
    import numpy as np

    runs = results["campaigns"]
    seeds = sorted({r["seed"] for r in runs.values()})
    methods = [m for m in ("explore", "rattled") if any(r["method"] == m for r in runs.values())]
    by = {(r["method"], r["seed"]): r for r in runs.values()}
    targets = results["targets_judged"]
    lines = ["| method | seed | " + " | ".join(f"F @ {p['labels']}" for p in next(iter(runs.values()))["curve"])
             + " | E @ end | labels to targets (E, F, both) | explore s | label s | acquire s | fine-tune s |",
             "|---|---:|" + "---:|" * (len(next(iter(runs.values()))["curve"]) + 6)]
    for method in methods:
        for seed in seeds:
            r = by.get((method, seed))
            if r is None:
                continue
            t = r["times_s"]
            lines.append(f"| {method} | {seed} | " + " | ".join(f"{p['force_mae_meV_A']:.1f}" for p in r["curve"])
                         + f" | {r['curve'][-1]['energy_mae_meV_atom']:.1f} | {r['labels_to_energy_target']}, "
                         f"{r['labels_to_force_target']}, {r['labels_to_both_targets']} | {t['explore_s']:.0f} | "
                         f"{t['label_s']:.0f} | {t['acquire_s']:.0f} | {t['finetune_s']:.0f} |")
    paired = [(by[("explore", s)], by[("rattled", s)]) for s in seeds if ("explore", s) in by and ("rattled", s) in by]
    out = ["\n".join(lines), ""]
    if paired:
        for key, unit in (("force_mae_meV_A", "meV/Å"), ("energy_mae_meV_atom", "meV/atom")):
            diff = np.array([e["curve"][-1][key] - r["curve"][-1][key] for e, r in paired])
            spread = diff.std(ddof=1) if len(diff) > 1 else float("nan")
            out.append(f"- {key} at the end of the budget, explore − rattled, paired by seed: mean "
                       f"{diff.mean():+.1f} {unit} (per seed {', '.join(f'{d:+.1f}' for d in diff)}; sd {spread:.1f}).")
    out.append(f"- Targets judged: {targets['energy_mae_mev_per_atom']:g} meV/atom and "
               f"{targets['force_mae_mev_per_a']:g} meV/Å (the example's); None: not reached within the budget.")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["explore", "rattled"])
    parser.add_argument("--db", default="sqlite:///benchmark-exploration.db")
    parser.add_argument("--work-dir", default="runs/benchmark-exploration")
    parser.add_argument("--out", default="docs/benchmarks/exploration.json")
    parser.add_argument("--merge", nargs="*", default=[], help="result files to merge into --out, then report")
    args = parser.parse_args()
    if args.merge:
        merged = {"campaigns": {}}
        for path in args.merge:
            part = json.loads(Path(path).read_text())
            merged.update({k: v for k, v in part.items() if k != "campaigns"})
            merged["campaigns"].update(part["campaigns"])
        Path(args.out).write_text(json.dumps(merged, indent=2))
        print(report(merged))
        return

    from db import init_db, make_engine
    from flows.campaign import campaign
    from tangentlab.config import load_config

    init_db(make_engine(args.db))
    targets = load_config(EXAMPLE).targets.model_dump()
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"campaigns": {}}
    results.update(example=str(EXAMPLE.relative_to(ROOT)), example_config=yaml.safe_load(EXAMPLE.read_text()),
                   targets_judged=targets)
    for seed in args.seeds:
        for method, config in configs(seed, args.work_dir).items():
            if method not in args.methods or config["name"] in results["campaigns"]:
                continue
            tick = time.perf_counter()
            campaign(config=config, database_url=args.db)
            entry = {"method": method, "seed": seed, "wall_s": time.perf_counter() - tick,
                     **measure(args.db, config["name"], targets)}
            results["campaigns"][config["name"]] = entry
            out.write_text(json.dumps(results, indent=2))
            last = entry["curve"][-1]
            print(f"{config['name']}: {last['labels']} labels, {last['energy_mae_meV_atom']} meV/atom, "
                  f"{last['force_mae_meV_A']} meV/Å; to targets: {entry['labels_to_both_targets']}; "
                  f"times {entry['times_s']}", flush=True)


if __name__ == "__main__":
    main()

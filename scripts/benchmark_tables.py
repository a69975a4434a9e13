"""Extra tables for the benchmark pages (docs/benchmarks/*.md) from a replay-benchmark JSON.

    python scripts/benchmark_tables.py docs/benchmarks/h2combustion.json
    python scripts/benchmark_tables.py docs/benchmarks/h2combustion.json --compare docs/benchmarks/h2combustion-shift.json

Prints the per-seed / TS-region / calibration / cost table, the NEB path table where there is
one, and the mean learning curves; with ``--compare`` a main → other table (final errors,
spread over seeds, TS-region error, calibration).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.methods import SIGNAL_LABELS, method_label, method_slug  # noqa: E402


def _methods(r: dict) -> list[str]:
    """The result's methods in its spec order."""
    return list(r["spec"]["methods"])


def _label(method: str) -> str:
    try:
        return method_label(method)
    except ValueError:  # a name from before the rename (descriptor)
        return SIGNAL_LABELS.get(method, method)


def _campaigns(r: dict, method: str) -> list[dict]:
    prefix = f"{r['name']}-{method_slug(method)}-s"
    return [c for n, c in r["campaigns"].items() if n.startswith(prefix)]


def _final(r: dict, method: str, key: str) -> list[float]:
    return [c["curve"][key][-1] for c in _campaigns(r, method)]


def details(r: dict) -> None:
    print("| method | force MAE per seed at budget (meV/Å) | energy MAE per seed (meV/atom) | TS-region force MAE | other frames force MAE | Spearman σ vs energy err. | acquisition s per round (committee training s) | campaign wall s (mean) |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for m in _methods(r):
        camps = {i: c for i, c in enumerate(_campaigns(r, m))}
        if not camps: continue
        f = ", ".join(f"{c['curve']['force'][-1]:.0f}" for c in camps.values())
        e = ", ".join(f"{c['curve']['energy'][-1]:.0f}" for c in camps.values())
        ts = r["ts_region"].get(m, {})
        cal = r["calibration"].get(m, {})
        t = r["acquisition_time"].get(m, {})
        wall = np.mean([c["wall_s"] for c in camps.values()])
        ct = t.get("committee_training_s_per_round_mean", 0)
        print(f"| {_label(m)} | {f} | {e} | {ts.get('ts_force_mae_mean', float('nan')):.0f} ± {ts.get('ts_force_mae_std', float('nan')):.0f} | {ts.get('other_force_mae_mean', float('nan')):.0f} | "
              f"{cal.get('energy_spearman_mean', float('nan')):.2f} | {t.get('acquire_s_per_round_mean', 0):.1f}{f' ({ct:.1f})' if ct else ''} | {wall:.0f} |")
    if r.get("path"):
        print()
        print("| method | NEB path: relative-energy MAE (meV) | barrier ref (meV) | barrier pred (meV) | barrier error (meV) |")
        print("|---|---:|---:|---:|---:|")
        for m in _methods(r):
            p = r["path"].get(m)
            if p: print(f"| {_label(m)} | {p['relative_mae_mev']:.0f} | {p['barrier_ref_mev']:.0f} | {p['barrier_pred_mev']:.0f} | {p['barrier_error_mev']:+.0f} ± {p['barrier_error_std_mev']:.0f} |")
    print()
    print("curves (labels: force mean over seeds)")
    for m in _methods(r):
        camps = _campaigns(r, m)
        if not camps: continue
        F = np.mean([c["curve"]["force"] for c in camps], axis=0); E = np.mean([c["curve"]["energy"] for c in camps], axis=0)
        print(m, camps[0]["curve"]["labels"], "F", np.round(F).tolist(), "E", np.round(E).tolist())


def compare(a: dict, b: dict) -> None:
    print("| method | seeds (main / shift) | energy MAE main → shift (meV/atom) | energy spread (std) main → shift | force MAE main → shift (meV/Å) | force spread (std) main → shift | TS-region force MAE main → shift | Spearman σ vs force err. main → shift |")
    print("|---|---|---|---|---|---|---|---|")
    for m in _methods(a):
        fb = _final(b, m, "force")
        if not fb: continue
        fa, ea, eb = _final(a, m, "force"), _final(a, m, "energy"), _final(b, m, "energy")
        ta, tb = a["ts_region"].get(m, {}), b["ts_region"].get(m, {})
        ca, cb = a["calibration"].get(m, {}), b["calibration"].get(m, {})
        sp = lambda c: "n/a" if not c else f"{c['force_spearman_mean']:.2f}"
        print(f"| {_label(m)} | {len(fa)} / {len(fb)} | {np.mean(ea):.0f} → {np.mean(eb):.0f} | {np.std(ea):.0f} → {np.std(eb):.0f} | {np.mean(fa):.0f} → {np.mean(fb):.0f} | {np.std(fa):.0f} → {np.std(fb):.0f} | {ta.get('ts_force_mae_mean', float('nan')):.0f} → {tb.get('ts_force_mae_mean', float('nan')):.0f} | {sp(ca)} → {sp(cb)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", type=Path)
    parser.add_argument("--compare", type=Path, default=None, help="a second result, printed as main → other")
    args = parser.parse_args()
    r = json.loads(args.result.read_text())
    details(r)
    if args.compare is not None:
        print()
        compare(r, json.loads(args.compare.read_text()))


if __name__ == "__main__":
    main()

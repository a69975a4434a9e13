"""Merge replay-benchmark results of the same benchmark run in parts (e.g. seeds on different days).

A replay benchmark's summary is computed from the campaigns in one work folder. When the seeds
of one benchmark were run at different times or in different folders, each part has its own
result JSON; this module joins them into one result with the tables recomputed over every
seed, as if the campaigns had been summarised together:

```
python -m benchmarks.merge docs/benchmarks/surface-shift.json new/surface-shift.json \
    --out docs/benchmarks
```

The parts must describe the same benchmark: the same name, methods, budget and data (the
pool and test files' SHA-256 in the manifest, where the parts record it). A campaign that
appears in two parts must have the same learning curve in both (a rerun of the same seed on
the same code reproduces it); otherwise the merge is refused, since it could not say which
one counts. Per-method results that are not recomputable from the campaigns' curves (the
final models' calibration Spearman and the transition-region errors) are recombined from
their per-seed values where the parts store them, and kept per part otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.analysis import comparison_table
from benchmarks.report import write_outputs

# keys that must agree between parts (the benchmark's identity); seeds and work_dir may differ
_SPEC_KEYS = ("name", "data", "methods", "model", "initial_size", "batch_size", "rounds")
_MANIFEST_KEYS = ("pool_file_sha256", "test_file_sha256", "pool_size", "test_size")


class MergeError(ValueError):
    """The parts are not the same benchmark, or they disagree on a campaign."""


def _check_same_benchmark(first: dict[str, Any], other: dict[str, Any], label: str) -> None:
    for key in _SPEC_KEYS:
        if first["spec"].get(key) != other["spec"].get(key):
            raise MergeError(f"{label}: spec.{key} differs from the first part's")
    if first.get("budget") != other.get("budget"):
        raise MergeError(f"{label}: the label budget differs from the first part's")
    a, b = first.get("manifest") or {}, other.get("manifest") or {}
    for key in _MANIFEST_KEYS:
        if key in a and key in b and a[key] != b[key]:
            raise MergeError(f"{label}: manifest.{key} differs (not the same data)")


def _merged_calibration(parts: list[dict[str, Any]], method: str) -> dict[str, Any]:
    force: list[float] = []
    energy: list[float] = []
    for part in parts:
        entry = (part.get("calibration") or {}).get(method) or {}
        force.extend(entry.get("per_seed_force", []))
        energy.extend(entry.get("per_seed_energy", []))
    finite = [r for r in force if r is not None and np.isfinite(r)]
    if not finite:
        return {}
    return {
        "force_spearman_mean": float(np.mean(finite)),
        "force_spearman_std": float(np.std(finite)),
        "energy_spearman_mean": float(np.nanmean(np.asarray(energy, float))),
        "per_seed_force": force,
        "per_seed_energy": energy,
    }


def _acquisition_time(curves: list[dict[str, Any]]) -> dict[str, float]:
    per_round = [t for c in curves for t in c.get("acquire_s", [])]
    if not per_round:
        return {}
    return {
        "acquire_s_per_round_mean": float(np.mean(per_round)),
        "acquire_s_total_mean": float(np.sum(per_round) / len(curves)),
    }


def merge(parts: list[dict[str, Any]], labels: list[str] | None = None) -> dict[str, Any]:
    """
    One benchmark result from several parts of the same benchmark.

    Parameters
    ----------
    parts
        Result dictionaries as written by `benchmarks.report.write_outputs`.
    labels
        A name per part for error messages and the ``parts`` record (default: "part k").

    Returns
    -------
    dict
        The first part's fields, with ``campaigns`` the union, ``spec.seeds`` the union,
        ``table`` recomputed from every campaign's curve, ``acquisition_time`` and
        ``calibration`` recombined, ``total_wall_s`` summed and ``parts`` listing each part's
        seeds, command and per-part fields that cannot be recombined (``path``,
        ``ts_region``).
    """
    if not parts:
        raise MergeError("nothing to merge")
    labels = labels or [f"part {k + 1}" for k in range(len(parts))]
    first = parts[0]
    campaigns: dict[str, dict[str, Any]] = {}
    for part, label in zip(parts, labels):
        _check_same_benchmark(first, part, label)
        for name, campaign in part["campaigns"].items():
            if name in campaigns and campaigns[name]["curve"] != campaign["curve"]:
                raise MergeError(
                    f"{label}: campaign {name} is in an earlier part with a different "
                    "learning curve"
                )
            campaigns.setdefault(name, campaign)
    methods = list(first["spec"]["methods"])
    curves: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for campaign in campaigns.values():
        curves.setdefault(campaign["method"], []).append(campaign["curve"])
    for method_curves in curves.values():
        method_curves.sort(key=lambda c: c["seed"])
    finished = {m: c for m, c in curves.items() if c}
    table = comparison_table(finished) if finished.get("random") else {}
    seeds = sorted({c["seed"] for c in campaigns.values()})
    return {
        **first,
        "spec": {**first["spec"], "seeds": seeds},
        "campaigns": dict(sorted(campaigns.items(), key=lambda kv: (kv[1]["seed"], kv[0]))),
        "table": {m: table[m] for m in methods if m in table},
        "calibration": {m: _merged_calibration(parts, m) for m in methods},
        "acquisition_time": {m: _acquisition_time(c) for m, c in finished.items()},
        "path": {},
        "ts_region": {},
        "total_wall_s": float(sum(c["wall_s"] for c in campaigns.values())),
        "parts": [
            {
                "part": label,
                "seeds": part["spec"]["seeds"],
                "command": part.get("command"),
                "path": part.get("path") or {},
                "ts_region": part.get("ts_region") or {},
            }
            for part, label in zip(parts, labels)
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.merge",
        description="Merge result JSONs of the same replay benchmark run in parts.",
    )
    parser.add_argument("parts", nargs="+", type=Path, help="result JSON files")
    parser.add_argument("--out", type=Path, required=True, help="folder for JSON, PNG, table")
    args = parser.parse_args(argv)
    loaded = []
    for path in args.parts:
        try:
            loaded.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            print(f"error: cannot read {path}: {err}", file=sys.stderr)
            return 2
    try:
        results = merge(loaded, labels=[p.name for p in args.parts])
    except MergeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    command = "python -m benchmarks.merge " + " ".join(
        [f"<part {k + 1}>" for k in range(len(args.parts))] + ["--out", "<out>"]
    )
    for path in write_outputs(results, args.out, command):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

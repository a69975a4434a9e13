"""``tangentlab benchmark replay``: run (or resume) a replay benchmark, then summarise it."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.report import markdown_table, write_outputs
from benchmarks.spec import BenchmarkSpec, load_spec_data, make_spec, preset, preset_names


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tangentlab benchmark replay",
        description="Replay a labelled data set as the pool and compare every acquisition method "
        "(learning curves, labels-to-reach, calibration, acquisition time).",
    )
    parser.add_argument(
        "preset",
        nargs="?",
        default="h2combustion",
        help=f"built-in configuration: {', '.join(preset_names())} (default h2combustion)",
    )
    parser.add_argument(
        "--config", type=Path, help="YAML/JSON benchmark specification (replaces the preset)"
    )
    parser.add_argument("--name", help="benchmark name (campaign prefix, work-dir folder)")
    parser.add_argument(
        "--methods", nargs="+",
        help="methods (must include random): random, default, committee, a signal (greedy), "
        "or signal:rule[:q<quantile>], e.g. activation:transductive",
    )
    parser.add_argument(
        "--data-root", help="folder holding h2combustion/ and acac/ (default: $TANGENTLAB_DATA)"
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, help="campaign seeds (initial set, training)"
    )
    parser.add_argument("--pool-size", type=int)
    parser.add_argument("--test-size", type=int)
    parser.add_argument("--initial-size", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--max-epochs", type=int, help="fine-tune epochs per round")
    parser.add_argument("--model", help="starting MACE .model (default: the shipped model)")
    parser.add_argument("--device", help="cpu or cuda")
    parser.add_argument(
        "--work-dir", help="campaign runs, prepared data and the benchmark database"
    )
    parser.add_argument(
        "--db", help="database URL (default sqlite:///<work-dir>/<name>/benchmark.db)"
    )
    parser.add_argument(
        "--out", type=Path, help="folder for results JSON, PNG and table (default: none)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--summary-only", action="store_true", help="only summarise finished campaigns"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    return parser


def spec_from_args(args: argparse.Namespace) -> BenchmarkSpec:
    """The specification an invocation asks for: preset or file, then the options on top."""
    if args.config:
        data = load_spec_data(args.config, args.data_root)
    else:
        data = preset(args.preset, args.data_root)
    data.setdefault("data", {})
    for option, key in (("pool_size", "pool_size"), ("test_size", "test_size")):
        if getattr(args, option) is not None:
            data["data"][key] = getattr(args, option)
    for option in (
        "name",
        "methods",
        "seeds",
        "initial_size",
        "batch_size",
        "rounds",
        "model",
        "device",
        "work_dir",
    ):
        if getattr(args, option) is not None:
            data[option] = getattr(args, option)
    if args.max_epochs is not None:
        data["finetune"] = {**data.get("finetune", {"patience": 5}), "max_epochs": args.max_epochs}
    return make_spec(data)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """
    ``tangentlab benchmark replay``: run (or resume) a benchmark, then summarise it.

    Returns
    -------
    dict
        The results (printed as JSON with ``--json``).
    """
    args = _parser().parse_args(argv)
    spec = spec_from_args(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from flows.benchmark import benchmark_replay

    results = benchmark_replay(
        spec=spec.model_dump(), database_url=args.db, run=not args.summary_only
    )
    command = "tangentlab benchmark replay " + " ".join(sys.argv[3:] if argv is None else argv)
    if args.out:
        written = write_outputs(results, args.out, command, data_root=args.data_root)
        results["outputs"] = [str(p) for p in written]
    if args.json:
        print(json.dumps(results, indent=1, default=float))
    else:
        if results["table"]:
            print(markdown_table(results))
        print(
            f"{len(results['campaigns'])} finished campaigns, "
            f"{results['total_wall_s']:.0f} s of campaign wall time"
        )
    return results

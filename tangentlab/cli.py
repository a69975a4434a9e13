"""The ``tangentlab`` command: start, resume and inspect campaigns; import and export data."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

DEFAULT_DB = "sqlite:///tangentlab.db"


def _database_url(args: argparse.Namespace) -> str:
    if args.db:
        return args.db
    from tasks._db import database_url  # environment, then a Prefect Secret block

    return database_url()


def _quiet_prefect() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")


def _print_result(result: dict) -> None:
    models = result["models"]
    print(f"\ncampaign {result['name']!r}: {result['status']}")
    print(f"  {result['reason']}")
    print(f"  {'model':>5} {'round':>5} {'energy MAE (meV/atom)':>22} {'force MAE (meV/Å)':>18}")
    for m in models:
        test = m["test"] or {}
        rnd = "start" if m["round"] is None else m["round"]
        e, f = test.get("energy_mae_mev_per_atom"), test.get("force_mae_mev_per_a")
        print(f"  {m['id']:>5} {rnd!s:>5} {'' if e is None else f'{e:.1f}':>22} {'' if f is None else f'{f:.1f}':>18}")
    print(f"  labels: {result['labels']}")


def _run_campaign(args: argparse.Namespace, config: dict | None, name: str | None) -> int:
    _quiet_prefect()
    from flows.campaign import campaign

    if config is not None:
        from tangentlab.config import ConfigError, make_config
        from tasks.label import oracle_for

        try:
            oracle_for(make_config(config))
        except (ValueError, ImportError) as exc:
            raise ConfigError(f"invalid oracle: {exc}") from None

    # The flow reads the URL from the environment, so that a password in it never becomes a
    # flow parameter (which the Prefect server stores in the clear).
    os.environ["TANGENTLAB_DATABASE_URL"] = _database_url(args)
    result = campaign(config=config, name=name)
    _print_result(result)
    return 0 if result["status"] == "targets_met" else 3


def cmd_quickstart(args: argparse.Namespace) -> int:
    from tangentlab.config import config_json, make_config

    config = config_json(make_config({"work_dir": args.work_dir}))
    return _run_campaign(args, config, None)


def cmd_start(args: argparse.Namespace) -> int:
    from tangentlab.config import config_json, load_config

    return _run_campaign(args, config_json(load_config(args.config)), None)


def cmd_resume(args: argparse.Namespace) -> int:
    return _run_campaign(args, None, args.name)


def cmd_init_config(args: argparse.Namespace) -> int:
    from tangentlab.config import config_json, make_config

    path = Path(args.path)
    if path.exists():
        print(f"error: {path} exists; not overwriting it", file=sys.stderr)
        return 2
    path.write_text(yaml.safe_dump(config_json(make_config({"name": args.name})), sort_keys=False))
    print(f"wrote the default configuration to {path}")
    return 0


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "" if value is None else format(value, spec)


def _status_report(session, campaign, round_number: int | None) -> dict:
    from db import repository
    from flows.monitoring import baseline_errors, failed_label_rows, round_rows, selected_rows

    report = repository.campaign_report(session, campaign)
    report["round_table"] = round_rows(session, campaign.id)
    report["starting_model_test"] = baseline_errors(session, campaign.id)
    report["failed_labels"] = failed_label_rows(session, campaign.id)
    numbers = [r["round"] for r in report["round_table"]]
    number = numbers[-1] if round_number is None and numbers else round_number
    if number is not None and number not in numbers:
        raise LookupError(f"campaign {campaign.name!r} has no round {number} (rounds: {numbers})")
    report["selected_structures"] = None if number is None else {
        "round": number, "structures": selected_rows(session, campaign.id, number)}
    return report


def _print_status(camp: dict) -> None:
    print(f"campaign {camp['name']!r} (id {camp['id']}): {camp['status']}"
          + (f" — {camp['stop_reason']}" if camp["stop_reason"] else ""))
    print(f"  structures: {camp['structures']}   labels: {camp['labels']}")
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
    selection = camp["selected_structures"]
    if selection:
        print(f"  round {selection['round']} selected (score; predicted force error in meV/Å; label):")
        for s in selection["structures"]:
            score = _fmt(s["score"], ".3g") or "n/a"
            predicted = _fmt(s["predicted_force_error_meV_A"]) or "n/a"
            print(f"    {s['rank']:>3}. structure {s['structure_id']:>5} {s['formula']:>10} {s['split']:>5} "
                  f"score {score:>9} predicted {predicted:>7} {s['label']}"
                  + (f" ({s['failure']})" if s["failure"] else ""))
    for f in camp["failed_labels"]:
        print(f"  failed label {f['label_id']} ({f['formula']}, structure {f['structure_id']}, "
              f"{f['attempts']} attempts): {f['reason']} [{f['run_dir']}]")


def cmd_status(args: argparse.Namespace) -> int:
    from db import make_engine, repository, session_scope

    with session_scope(make_engine(_database_url(args))) as session:
        campaigns = [repository.get_campaign(session, args.name)] if args.name else repository.campaigns(session)
        report = [_status_report(session, c, args.round) for c in campaigns]
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    for camp in report:
        _print_status(camp)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from db import init_db, make_engine, repository, session_scope
    from tangentlab.mace_model import load_model, model_elements

    engine = make_engine(_database_url(args))
    init_db(engine)
    with session_scope(engine) as session:
        campaign = repository.get_campaign(session, args.name)
        elements = model_elements(load_model(campaign.config["model"]))
        report = repository.import_file(session, campaign, args.file, split=args.split, allowed_elements=elements)
    print(f"imported {report.added} structures into {args.name!r} ({report.duplicates} already there)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from db import make_engine, repository, session_scope

    with session_scope(make_engine(_database_url(args))) as session:
        campaign = repository.get_campaign(session, args.name)
        n = repository.export_extxyz(session, campaign, args.file, split=args.split)
    print(f"wrote {n} labelled structures to {args.file}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    _quiet_prefect()
    from flows.pretrain import pretrain

    record = pretrain(out_dir=args.out, n_structures=args.structures, epochs=args.epochs, seed=args.seed,
                      work_dir=args.work_dir, device=args.device)
    print(json.dumps(record["metrics"], indent=2))
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    if args.which == "replay":
        _quiet_prefect()
        from tangentlab.benchmark_replay import BenchmarkError
        from tangentlab.benchmark_replay import main as replay_main

        try:
            replay_main(args.options)
        except BenchmarkError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    from tangentlab.benchmark_acquisition import main as benchmark_main

    benchmark_main(args.options)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tangentlab",
        description="Active learning of MACE potentials: acquisition from the pretrained model, "
        "QM labels through quacc, fine-tuning until error targets are met.",
    )
    parser.add_argument("--db", help="database URL (default: $TANGENTLAB_DATABASE_URL, else the Prefect Secret "
                        f"block named by $TANGENTLAB_DATABASE_SECRET, else {DEFAULT_DB})")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("quickstart", help="run (or resume) the built-in quick-start campaign")
    p.add_argument("--work-dir", default="runs", help="folder for models and QM runs (default: runs)")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("start", help="start a campaign from a YAML/JSON configuration file")
    p.add_argument("config", help="configuration file (see `tangentlab init-config`)")
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("resume", help="resume a campaign where it stopped")
    p.add_argument("name", help="campaign name")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("init-config", help="write the default configuration to a file")
    p.add_argument("path", help="file to write (YAML)")
    p.add_argument("--name", default="my-campaign", help="campaign name")
    p.set_defaults(func=cmd_init_config)

    p = sub.add_parser("status", help="rounds, labels, errors and the current model of campaigns")
    p.add_argument("name", nargs="?", help="campaign name (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--round", type=int, default=None,
                   help="show the structures this round selected (default: the latest round)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("import", help="import structures (any ASE-readable file) into a campaign")
    p.add_argument("name", help="campaign name")
    p.add_argument("file", help="structure file")
    p.add_argument("--split", default="pool", choices=["pool", "test"], help="where they go (default: pool)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="export labelled structures as extxyz (for mace_run_train)")
    p.add_argument("name", help="campaign name")
    p.add_argument("file", help="extxyz file to write")
    p.add_argument("--split", default=None, choices=["train", "valid", "test"], help="only this split")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("pretrain", help="build the GFN2-xTB data set and train the starting MACE model")
    p.add_argument("--out", default="tangentlab/data", help="folder for the .model and provenance .json")
    p.add_argument("--structures", type=int, default=4000, help="structures to generate and label")
    p.add_argument("--epochs", type=int, default=30, help="training epochs")
    p.add_argument("--seed", type=int, default=2026, help="seed of the structure recipe")
    p.add_argument("--work-dir", default="pretrain", help="folder for QM runs, data and MACE logs")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("benchmark", help="benchmarks: `tangentlab benchmark acquisition|replay --help`")
    p.add_argument("which", choices=["acquisition", "replay"],
                   help="acquisition: throughput; replay: acquisition methods on a replayed labelled data set")
    p.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's own options")
    p.set_defaults(func=cmd_benchmark)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tangentlab`` command."""
    args = build_parser().parse_args(argv)
    from tangentlab.config import ConfigError
    from tangentlab.structures import InvalidStructureError

    try:
        return args.func(args)
    except (ConfigError, InvalidStructureError, LookupError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The ``tangentlab`` sub-commands that run or feed campaigns (all but ``status``).

Each ``cmd_*`` takes the parsed arguments and returns the exit code. Heavy packages (flows,
torch through the core) are imported inside the commands, so ``tangentlab --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

DEFAULT_DB = "sqlite:///tangentlab.db"


def database_url(args: argparse.Namespace) -> str:
    """The ``--db`` URL, else the environment, the Prefect Secret block or :data:`DEFAULT_DB`."""
    if args.db:
        return args.db
    from tasks._db import database_url as configured_url  # environment, then a Prefect Secret block

    return configured_url()


def open_database(args: argparse.Namespace, *, create: bool = False):
    """An engine for the campaign database; with ``create``, its schema made or upgraded.

    A malformed URL, an unreachable server or a file that is not a database fails here, as
    an ``error:`` line, before any campaign work starts.
    """
    from sqlalchemy.exc import ArgumentError

    from cli.errors import UsageError
    from db import init_db, make_engine
    from tasks._db import redact_url

    url = database_url(args)
    try:
        engine = make_engine(url)
    except (ArgumentError, ValueError) as exc:  # a bad port is a ValueError of the URL parser
        raise UsageError(f"database URL {redact_url(url)} is not usable: {exc}") from None
    if create:
        init_db(engine)
    return engine


def quiet_prefect() -> None:
    """Turn off Prefect's analytics and keep its log at INFO, unless the user chose otherwise."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")


def _print_result(result: dict) -> None:
    """The end of ``start``/``resume`` (:func:`flows.rendering.result_lines`)."""
    from flows.rendering import result_lines

    print("\n".join(result_lines(result)))


def _run_campaign(args: argparse.Namespace, config: dict | None, name: str | None) -> int:
    quiet_prefect()
    from flows.campaign import campaign

    if config is not None:
        from tangentlab.config import make_config
        from tasks.setup import check_inputs

        check_inputs(make_config(config))  # before the database: a refused start stores nothing
    open_database(args, create=True).dispose()

    # The flow reads the URL from the environment, so that a password in it never becomes a
    # flow parameter (which the Prefect server stores in the clear).
    os.environ["TANGENTLAB_DATABASE_URL"] = database_url(args)
    from cli.interrupt import ctrl_c_stops_cleanly, exit_code
    from tasks._db import redact_url
    from tasks.interrupt import Interrupted

    db = f" --db {redact_url(args.db)}" if args.db else ""
    hint = f"tangentlab{db} resume {name or config['name']}"
    try:
        with ctrl_c_stops_cleanly(hint):
            result = campaign(config=config, name=name, wait=getattr(args, "wait", False))
    except Interrupted as exc:
        print(f"{exc}\nto continue: {hint}", file=sys.stderr)
        return exit_code()
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
    from db import campaigns, registry, session_scope

    with session_scope(open_database(args)) as session:  # refuse before the flow starts
        campaign = campaigns.get_campaign(session, args.name)
        for version in registry.model_versions(session, campaign):
            registry.verified_model_path(session, version.id)
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


def cmd_import(args: argparse.Namespace) -> int:
    from db import campaigns, session_scope
    from tasks.setup import campaign_model_elements, import_structures

    with session_scope(open_database(args, create=True)) as session:
        campaign = campaigns.get_campaign(session, args.name)
        elements = campaign_model_elements(session, campaign)
        report = import_structures(session, campaign, args.file, split=args.split, allowed_elements=elements)
    print(f"imported {report.added} structures into {args.name!r} ({report.duplicates} already there)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from db import campaigns, reports, session_scope

    if Path(args.file).is_dir():
        from cli.errors import UsageError

        raise UsageError(f"{args.file} is a folder: give the extxyz file to write")
    with session_scope(open_database(args)) as session:
        campaign = campaigns.get_campaign(session, args.name)
        n = reports.export_extxyz(session, campaign, args.file, split=args.split)
    print(f"wrote {n} labelled structures to {args.file}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    quiet_prefect()
    from flows.pretrain import pretrain

    record = pretrain(out_dir=args.out, n_structures=args.structures, epochs=args.epochs, seed=args.seed,
                      work_dir=args.work_dir, device=args.device)
    print(json.dumps(record["metrics"], indent=2))
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    if args.which == "replay":
        quiet_prefect()
        from benchmarks.spec import BenchmarkError
        from cli.benchmark import main as replay_main

        try:
            replay_main(args.options)
        except BenchmarkError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    from benchmarks.acquisition_speed import main as benchmark_main

    benchmark_main(args.options)
    return 0

"""The ``tangentlab`` sub-commands that run or feed campaigns (all but ``status``).

Each ``cmd_*`` takes the parsed arguments and returns the exit code. Heavy packages (flows,
torch through the core) are imported inside the commands, so ``tangentlab --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

import yaml

from db.settings import DEFAULT_DATABASE_URL

DEFAULT_DB = DEFAULT_DATABASE_URL


def database_url(args: argparse.Namespace) -> str:
    """The ``--db`` URL, else the environment, the Prefect Secret block or :data:`DEFAULT_DB`
    (`db.settings.database_url`)."""
    from db.settings import database_url as configured_url

    return configured_url(args.db)


def open_database(args: argparse.Namespace, *, create: bool = False, existing: bool = True):
    """An engine for the campaign database; with ``create``, its schema made or upgraded.

    A malformed URL, a database driver that is not installed, an unreachable server or a file
    that is not a database fails here, as an ``error:`` line, before any campaign work starts.
    A read (``existing``, the default) creates nothing: a database that does not exist or has
    no tangentlab tables is a :class:`LookupError` naming the campaign asked for
    (``args.name``). With ``existing=False`` only the URL and its driver are checked.
    """
    from sqlalchemy.exc import ArgumentError

    from cli.errors import UsageError
    from db import has_schema, init_db, make_engine, sqlite_path
    from db.settings import redact_url

    url = database_url(args)
    try:
        engine = make_engine(url)
    except (ArgumentError, ValueError) as exc:  # a bad port is a ValueError of the URL parser
        raise UsageError(f"database URL {redact_url(url)} is not usable: {exc}") from None
    if create:
        init_db(engine)
    elif existing and not has_schema(engine):
        name = getattr(args, "name", None)
        path = sqlite_path(url)
        missing = path is not None and not path.exists()
        why = f"{path} does not exist" if missing else "it has no campaigns"
        what = f"no campaign named {name!r}" if name else "no campaigns"
        raise LookupError(f"{what} in the database {redact_url(url)} ({why})")
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
        _check_start(args, config)  # before the database is made: a refused start stores nothing
    else:
        open_database(args, create=True).dispose()

    # The flow reads the URL from the environment, so that a password in it never becomes a
    # flow parameter (which the Prefect server stores in the clear).
    os.environ["TANGENTLAB_DATABASE_URL"] = database_url(args)
    from cli.interrupt import ctrl_c_stops_cleanly, exit_code
    from db.settings import redact_url
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


def _check_start(args: argparse.Namespace, config: dict) -> None:
    """Check a start's inputs, then create or upgrade the database.

    The URL and its driver first (nothing created), then every input (`tasks.setup.check_inputs`,
    with the uid of the campaign of that name if the database holds one, so that its folder is
    checked against it); the database is created only when they pass, and a converted starting
    model is removed again if that fails.
    """
    from db import campaigns, has_schema, init_db, session_scope
    from tangentlab.config import make_config
    from tangentlab.paths import CampaignFolderError
    from tasks.setup import check_inputs, removed_on_error

    def stored_uid() -> str | None:
        if not has_schema(engine):
            return None
        init_db(engine)  # an older schema has no campaign uid yet
        with session_scope(engine) as session, contextlib.suppress(LookupError):
            return campaigns.get_campaign(session, cfg.name).uid
        return None

    cfg = make_config(config)
    engine = open_database(args, existing=False)
    uid = stored_uid()
    with removed_on_error(cfg):
        try:
            check_inputs(cfg, campaign_uid=uid)
        except CampaignFolderError:
            # Another start of this database may have created the campaign since: its folder
            # is then this campaign's (the lease decides which run goes on).
            if uid is not None or (uid := stored_uid()) is None:
                raise
            check_inputs(cfg, campaign_uid=uid)
        init_db(engine)
    engine.dispose()


def cmd_quickstart(args: argparse.Namespace) -> int:
    from tangentlab.config import QUICKSTART_POOL, config_json, make_config, shipped_file

    pool = [shipped_file(QUICKSTART_POOL)]  # the one campaign whose pool is the shipped one
    config = config_json(make_config({"work_dir": args.work_dir, "pool": pool}))
    return _run_campaign(args, config, None)


def cmd_start(args: argparse.Namespace) -> int:
    from tangentlab.config import config_json, load_config

    return _run_campaign(args, config_json(load_config(args.config)), None)


def cmd_resume(args: argparse.Namespace) -> int:
    from db import campaigns, init_db, registry, session_scope
    from tangentlab.config import read_stored_config
    from tangentlab.paths import check_campaign_folder

    engine = open_database(args)
    init_db(engine)  # an older schema has no campaign uid yet
    with session_scope(engine) as session:  # refuse before the flow starts
        campaign = campaigns.get_campaign(session, args.name)
        stored = read_stored_config(campaign.config, source=f"of campaign {args.name!r}")
        check_campaign_folder(stored.work_dir, stored.name, campaign.uid)
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
    from db import campaigns, init_db, session_scope
    from tasks.setup import campaign_model_elements, import_structures

    engine = open_database(args)
    init_db(engine)  # upgraded, never created: the campaign must exist
    with session_scope(engine) as session:
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


def cmd_backup(args: argparse.Namespace) -> int:
    """Copy the SQLite database into a new file (online: campaigns may be running)."""
    from db import backup_sqlite, has_schema, sqlite_path
    from db.settings import redact_url

    url = database_url(args)
    engine = open_database(args, existing=False)
    if engine.dialect.name != "sqlite":
        print(f"error: {redact_url(url)} is a {engine.dialect.name} database: back it up with the "
              f"server's own tool, e.g. `pg_dump --format=custom --file {args.dest} <database>` "
              "(restore with `pg_restore --dbname <database> <file>`; see docs/operations.md)",
              file=sys.stderr)
        return 2
    if not has_schema(engine):
        path = sqlite_path(url)
        raise LookupError(f"nothing to back up: {path} does not exist" if not path.exists()
                          else f"nothing to back up: {path} has no campaigns")
    dest = backup_sqlite(engine, args.dest)
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{dest}?mode=ro", uri=True)) as copy:
        names = [row[0] for row in copy.execute("SELECT name FROM campaign ORDER BY id")]
    print(f"backed up {redact_url(url)} to {dest}: {len(names)} campaigns"
          + (f" ({', '.join(names)})" if names else ""))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    quiet_prefect()
    from flows.pretrain import pretrain

    record = pretrain(recipe=args.recipe, out_dir=args.out, n_structures=args.structures,
                      epochs=args.epochs, seed=args.seed, work_dir=args.work_dir,
                      device=args.device)
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

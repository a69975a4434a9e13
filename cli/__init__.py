"""The ``tangentlab`` command: start, resume and inspect campaigns; import and export data.

This is the top layer: it may import flows, tasks, db and the science core; nothing imports it.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

# Prefect's temporary server gets 20 s to start by default; on a busy machine (QM jobs, another
# campaign) it needs longer, and a start that gives up loses the run. Set before prefect loads
# its settings; a value the user set wins.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

# `--debug` also shows the libraries' warnings and notices that `tangentlab.quiet` hides when
# tangentlab is first imported (below); the processes a campaign starts inherit the variable.
if "--debug" in sys.argv[1:]:
    os.environ["TANGENTLAB_DEBUG"] = "1"

import tangentlab  # noqa: E402,F401  (imports mace before e3nn, without its notices on stdout)
from cli.commands import (  # noqa: E402
    DEFAULT_DB,
    cmd_backup,
    cmd_benchmark,
    cmd_export,
    cmd_import,
    cmd_init_config,
    cmd_pretrain,
    cmd_quickstart,
    cmd_resume,
    cmd_start,
)
from cli.status import cmd_status  # noqa: E402

WAIT_HELP = ("if another process runs this campaign, wait for it to end instead of exiting "
             "(one run per campaign at a time: see docs/operations.md)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tangentlab`` command, one sub-command per action."""
    parser = argparse.ArgumentParser(
        prog="tangentlab",
        description="Active learning of MACE potentials: acquisition from the pretrained model, "
        "QM labels through quacc, fine-tuning until error targets are met.",
    )
    parser.add_argument("--db", help="database URL (default: $TANGENTLAB_DATABASE_URL, else the Prefect Secret "
                        f"block named by $TANGENTLAB_DATABASE_SECRET, else {DEFAULT_DB})")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a failure instead of only its `error:` line, "
                        "and the libraries' warnings")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("quickstart", help="run (or resume) the built-in quick-start campaign")
    p.add_argument("--work-dir", default="runs", help="folder for models and QM runs (default: runs)")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("start", help="start a campaign from a YAML/JSON configuration file")
    p.add_argument("config", help="configuration file (see `tangentlab init-config`)")
    p.add_argument("--wait", action="store_true", help=WAIT_HELP)
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("resume", help="resume a campaign where it stopped")
    p.add_argument("name", help="campaign name")
    p.add_argument("--wait", action="store_true", help=WAIT_HELP)
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

    p = sub.add_parser("backup", help="copy the SQLite database into one new, self-contained file "
                       "(safe while campaigns run; for PostgreSQL it names pg_dump)")
    p.add_argument("dest", help="the new file (never overwritten)")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("pretrain", help="build a data set and train a shipped starting MACE model")
    p.add_argument("--recipe", choices=["molecules", "surface"], default="molecules",
                   help="molecules: H/C/N/O on GFN2-xTB labels (tangentlab-hcno-xtb); "
                        "surface: Cu(111) slabs with O/H/OH on EMT labels (tangentlab-cuoh-emt)")
    p.add_argument("--out", default="tangentlab/data", help="folder for the .model and provenance .json")
    p.add_argument("--structures", type=int, default=None,
                   help="structures to generate and label (default 4000 molecules, 600 surface)")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs (default 30 molecules, 6 surface)")
    p.add_argument("--seed", type=int, default=2026, help="seed of the structure recipe")
    p.add_argument("--work-dir", default=None, help="folder for QM runs, data and MACE logs "
                   "(default pretrain or pretrain-surface)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("benchmark", help="benchmarks: `tangentlab benchmark acquisition|replay --help`")
    p.add_argument("which", choices=["acquisition", "replay"],
                   help="acquisition: throughput; replay: acquisition methods on a replayed labelled data set")
    p.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's own options")
    p.set_defaults(func=cmd_benchmark)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tangentlab`` command; returns its exit code.

    0: done (or the campaign met its targets); 3: a campaign stopped on a budget; 2: an
    expected failure, reported as one ``error: …`` line (its traceback with ``--debug``).
    """
    args = build_parser().parse_args(argv)
    from cli.errors import EXIT_ERROR, hide_prefect_tracebacks, is_expected, message
    from tangentlab import quiet

    if args.debug:
        os.environ[quiet.DEBUG_ENV] = "1"
        quiet.show_library_warnings()
    else:
        hide_prefect_tracebacks()
    try:
        return args.func(args)
    except Exception as exc:
        if not is_expected(exc):
            raise
        if args.debug:
            traceback.print_exc()
        print(message(exc), file=sys.stderr)
        return EXIT_ERROR

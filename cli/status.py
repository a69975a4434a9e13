"""``tangentlab status``: rounds, labels, errors, the current model and a round's selection.

The report is :func:`tasks.report.campaign_view` (``--json`` prints it as it is), in the words
of :func:`flows.status_text.status_lines`: the same views the Prefect artifacts render.
"""

from __future__ import annotations

import argparse
import json

from cli.commands import open_database


def cmd_status(args: argparse.Namespace) -> int:
    from db import campaigns, session_scope
    from flows.status_text import status_lines
    from tasks.report import campaign_view

    with session_scope(open_database(args)) as session:
        shown = [campaigns.get_campaign(session, args.name)] if args.name else campaigns.all_campaigns(session)
        report = [campaign_view(session, c, args.round) for c in shown]
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    for view in report:
        print("\n".join(status_lines(view)))
    return 0

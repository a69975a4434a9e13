"""Server-side automation that marks flow runs whose process died as ``Crashed``.

Every Prefect flow run sends a heartbeat event every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``
seconds (default 180) from a background thread. A process killed by SIGKILL, an OOM killer, a
lost node or a Slurm wall-time limit sends nothing more, and its flow run would stay
``Running`` — in the UI, and as a holder of the deployment's concurrency slot
(``quickstart-nightly`` has ``concurrency_limit: 1``). This automation, created once per
Prefect server (``python -m flows.automations``; ``python -m flows.serve`` does it on start),
sets such a run to ``Crashed`` when no heartbeat and no final state arrives within
``within`` seconds of its last heartbeat. It is Prefect's documented zombie-flow recipe
(docs.prefect.io, "How to detect and respond to zombie flows").

A campaign resumed earlier than that marks the runs it supersedes itself
(:func:`flows.monitoring.close_killed_runs`). Neither touches the database: the campaign's
state there is what a resume continues from.
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta

NAME = "tangentlab: crash flow runs that stopped sending heartbeats"
TERMINAL_EVENTS = ("prefect.flow-run.Completed", "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
                   "prefect.flow-run.Crashed")


def heartbeat_seconds() -> int:
    """The heartbeat interval this process's settings give flow runs (Prefect's minimum is 30 s)."""
    from prefect.settings import get_current_settings

    return max(int(get_current_settings().flows.heartbeat_frequency or 0), 30)


def default_within() -> int:
    """Three missed heartbeats: ``3 × heartbeat interval + 60 s`` (600 s for Prefect's default 180 s)."""
    return 3 * heartbeat_seconds() + 60


def _trigger_and_action(within_s: int):
    """The trigger (no heartbeat of a flow run for ``within_s``) and its action (Crashed)."""
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    trigger = EventTrigger(
        after={"prefect.flow-run.heartbeat"},
        expect={"prefect.flow-run.heartbeat", *TERMINAL_EVENTS},
        match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
        for_each={"prefect.resource.id"},
        posture=Posture.Proactive,
        threshold=1,
        within=timedelta(seconds=within_s),
    )
    action = ChangeFlowRunState(
        state=StateType.CRASHED,
        message=f"no heartbeat for {within_s} s: the flow run's process died (killed, out of memory, node lost). "
                "Resume the campaign to continue; finished labels and models are kept.")
    return trigger, action


def ensure_zombie_automation(within_s: int | None = None):
    """Create the automation on the current Prefect server, or update it to ``within_s``.

    Idempotent: one automation named :data:`NAME` per server. ``within_s`` must exceed the
    heartbeat interval of the flow runs it watches, or it would crash healthy runs between two
    heartbeats; it defaults to :func:`default_within`. Returns the automation.

    Raises
    ------
    ValueError
        ``within_s`` is not longer than this process's heartbeat interval.
    """
    from prefect.automations import Automation

    within_s = default_within() if within_s is None else int(within_s)
    if within_s <= heartbeat_seconds():
        raise ValueError(f"within_s={within_s} s is not longer than the flow-run heartbeat interval "
                         f"({heartbeat_seconds()} s, PREFECT_FLOWS_HEARTBEAT_FREQUENCY): healthy runs would be "
                         "marked Crashed between two heartbeats")
    trigger, action = _trigger_and_action(within_s)
    existing = _read(NAME)
    if existing is not None:
        if existing.trigger.within == trigger.within and existing.enabled:
            return existing
        existing.trigger, existing.actions, existing.enabled = trigger, [action], True
        existing.update()
        return existing
    return Automation(name=NAME, description=__doc__.splitlines()[0], trigger=trigger, actions=[action]).create()


def delete_zombie_automation() -> bool:
    """Remove the automation from the current Prefect server; True if there was one."""
    existing = _read(NAME)
    return bool(existing is not None and existing.delete())


def _read(name: str):
    from prefect.automations import Automation

    try:
        return Automation.read(name=name)
    except ValueError:  # "Automation with name ... not found"
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.automations", description=__doc__.splitlines()[0])
    parser.add_argument("--within", type=int, default=None,
                        help="seconds without a heartbeat before a run is marked Crashed "
                             "(default: 3 heartbeat intervals + 60 s)")
    parser.add_argument("--delete", action="store_true", help="remove the automation instead")
    args = parser.parse_args(argv)
    if args.delete:
        print("deleted" if delete_zombie_automation() else "there was no automation to delete")
        return 0
    try:
        automation = ensure_zombie_automation(args.within)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"automation {automation.name!r} ({automation.id}): flow runs without a heartbeat for "
          f"{automation.trigger.within.total_seconds():.0f} s are marked Crashed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

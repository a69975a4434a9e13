"""One machine, no work pools: serve tangentlab's flows from this process.

``python -m flows.serve`` registers the deployments below with the Prefect server
(``PREFECT_API_URL``) and runs every flow run they get in a subprocess of this one, until
stopped (Ctrl-C pauses the schedules). On start it also creates (once per server) the
automation that marks flow runs whose process died ``Crashed`` (:mod:`flows.automations`),
and warns when the server's UI looks for its API on another port than ``PREFECT_API_URL``
(a server started with ``--port`` but without ``PREFECT_UI_API_URL``: :func:`ui_api_warning`).
Start runs from the UI, with
``prefect deployment run 'campaign/campaign' --param name=my-campaign``, or from Python with
:func:`prefect.deployments.run_deployment`. For several machines use work pools and workers
instead (``deployments/prefect.yaml``, docs/operations.md).
"""

from __future__ import annotations

import argparse
import sys
from urllib.parse import urlsplit

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows.campaign import campaign
from flows.label import label
from flows.pretrain import pretrain

NIGHTLY_CRON = "0 1 * * *"


def _benchmark_flow():
    try:
        from flows.benchmark import benchmark_replay
    except ModuleNotFoundError as exc:
        if exc.name != "flows.benchmark":
            raise
        return None
    return benchmark_replay


def deployments(nightly: str | None = "quickstart", cron: str = NIGHTLY_CRON) -> list[RunnerDeployment]:
    """The served deployments: ``campaign``, ``label``, ``pretrain``, ``benchmark-replay`` and,
    unless ``nightly`` is None, ``<nightly>-nightly`` (resume that campaign on ``cron``, UTC)."""
    served = [
        campaign.to_deployment(name="campaign", description="Start or resume any campaign."),
        label.to_deployment(name="label", description="QM labelling of a campaign's structures."),
        pretrain.to_deployment(name="pretrain", description="Build the starting MACE model."),
    ]
    benchmark = _benchmark_flow()
    if benchmark is not None:
        served.append(benchmark.to_deployment(name="benchmark-replay"))
    if nightly is not None:
        served.append(campaign.to_deployment(
            name=f"{nightly}-nightly", parameters={"name": nightly}, cron=cron, concurrency_limit=1,
            description=f"Resume campaign {nightly!r} every night until its targets are met."))
    return served


def _port(url: str) -> int | None:
    parts = urlsplit(url)
    return parts.port or {"http": 80, "https": 443}.get(parts.scheme)


def ui_port_warning(api_url: str, ui_api_url: str | None) -> str | None:
    """The warning for a UI whose API URL (the server's ``PREFECT_UI_API_URL``) is on another
    port than the API the clients use (``PREFECT_API_URL``); ``None`` when the ports agree or
    the UI's API URL is relative (``/api``: the page's own server)."""
    if not ui_api_url or not urlsplit(ui_api_url).netloc or _port(ui_api_url) == _port(api_url):
        return None
    return (f"WARNING: the Prefect UI of {api_url.removesuffix('/').removesuffix('/api')} looks for its API at "
            f"{ui_api_url}, not at {api_url}: its pages will say \"Can't connect to Server API\". Restart "
            f"the server with the UI's API URL set, e.g.\n  PREFECT_UI_API_URL={api_url} prefect server start "
            f"--port {_port(api_url)}\n(docs/monitoring.md, Starting the UI). Flow runs are served all the same.")


def ui_api_warning(api_url: str | None = None, timeout_s: float = 10.0) -> str | None:
    """Ask the Prefect server at ``api_url`` (default ``PREFECT_API_URL``) where its UI looks for
    the API (``GET <server>/ui-settings``) and return :func:`ui_port_warning`'s warning, if any.

    ``None`` without ``PREFECT_API_URL`` (a temporary server without UI), and when the server
    serves no UI settings (UI turned off) or cannot be asked: then there is nothing to check.
    """
    import httpx
    from prefect.settings import PREFECT_API_URL

    api_url = api_url or PREFECT_API_URL.value()
    if not api_url:
        return None
    base = api_url.rstrip("/").removesuffix("/api")
    try:
        response = httpx.get(f"{base}/ui-settings", timeout=timeout_s)
        response.raise_for_status()
        ui_api_url = response.json().get("api_url")
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return ui_port_warning(api_url, ui_api_url)


def main(argv: list[str] | None = None) -> int:
    """Serve the deployments until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--nightly", default="quickstart", help="campaign resumed every night (default: quickstart)")
    parser.add_argument("--no-schedule", action="store_true", help="serve without the nightly schedule")
    parser.add_argument("--cron", default=NIGHTLY_CRON, help=f"schedule of the nightly resume (default: {NIGHTLY_CRON!r})")
    parser.add_argument("--limit", type=int, default=None, help="flow runs at the same time (default: no limit)")
    parser.add_argument("--no-zombie-automation", action="store_true",
                        help="do not create the automation that marks runs without heartbeats Crashed "
                             "(flows/automations.py)")
    args = parser.parse_args(argv)
    warning = ui_api_warning()
    if warning:
        print(warning, file=sys.stderr)
    if not args.no_zombie_automation:
        from flows.automations import ensure_zombie_automation

        automation = ensure_zombie_automation()
        print(f"automation {automation.name!r}: runs without a heartbeat for "
              f"{automation.trigger.within.total_seconds():.0f} s are marked Crashed")
    serve(*deployments(None if args.no_schedule else args.nightly, args.cron), limit=args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Deployments through a real local Prefect server: `prefect deploy` of deployments/prefect.yaml,
a process worker on the CPU pool running the campaign's labelling, the served deployments, and
database credentials (Secret block, redaction, refused password parameters)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import stop_process_group, xtb_campaign_config

from db import campaigns, make_engine, reports, session_scope, structures
from tangentlab.config import make_config

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")


def _campaign(tmp_path: Path, name: str) -> tuple[str, list[int], list[int]]:
    """A campaign in a fresh SQLite file; its URL, test and initial structure ids (unlabelled)."""
    from tasks.setup import setup_campaign

    url = f"sqlite:///{tmp_path / 'c.db'}"
    config = make_config(xtb_campaign_config(tmp_path, name, 12, seed=5, max_atoms=3, test_size=3, initial_size=3))
    campaign_id = setup_campaign(url, config)
    with session_scope(make_engine(url)) as session:
        test = [s.id for s in structures.campaign_structures(session, campaign_id, split="test")]
        initial = [s.id for s in structures.campaign_structures(session, campaign_id, split=["train", "valid"])]
    return url, test, initial


def _finished_jobs(tmp_path: Path, name: str) -> list[int]:
    log = tmp_path / "runs" / name / "qm_jobs.jsonl"
    return [json.loads(line)["label_id"] for line in log.read_text().splitlines()] if log.exists() else []


def _flow_run_logs(api_url: str, flow_run_id) -> str:
    response = httpx.post(f"{api_url}/logs/filter", timeout=30,
                          json={"logs": {"flow_run_id": {"any_": [str(flow_run_id)]}}, "limit": 200})
    response.raise_for_status()
    return "\n".join(entry["message"] for entry in response.json())


def _deployment_runs(api_url: str, deployment: str, limit: int = 10) -> list[dict]:
    response = httpx.post(f"{api_url}/flow_runs/filter", timeout=30,
                          json={"deployments": {"name": {"any_": [deployment]}}, "limit": limit})
    response.raise_for_status()
    return response.json()


def test_campaign_labels_on_a_cpu_pool_worker_through_the_yaml_deployment(prefect_server, tmp_path):
    """`prefect deploy` of label-cpu from prefect.yaml, a process worker on cpu-pool, and the
    campaign's `qm.deployment` path sending a labelling step there."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.workers.process import ProcessWorker

    from flows.label import dispatch_labels
    from tasks.setup import stored_config

    url, test, initial = _campaign(tmp_path, "deployed")
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(
            name="cpu-pool", type="process",
            base_job_template=ProcessWorker.get_default_base_job_template()))
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "TANGENTLAB_HOME": str(REPO),
           "OMP_NUM_THREADS": "1", "PREFECT_LOGGING_LEVEL": "INFO"}
    env.pop("TANGENTLAB_DATABASE_URL", None)
    # The worker starts (and imports Prefect) while `prefect deploy` runs: it polls the pool.
    worker_log = tmp_path / "worker.log"
    worker_env = {**env, "PREFECT_WORKER_QUERY_SECONDS": "1"}
    with open(worker_log, "w") as out:
        worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "cpu-pool", "--limit", "1"],
                                  cwd=tmp_path, env=worker_env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    config = stored_config(url, "deployed")
    config.qm.deployment = "label/label-cpu"

    @flow
    def campaign_step() -> None:  # what the campaign flow does with `qm.deployment` set
        dispatch_labels(url, "deployed", config, test + initial)

    try:
        deploy = subprocess.run([PREFECT, "--no-prompt", "deploy", "--name", "label-cpu",
                                 "--prefect-file", "deployments/prefect.yaml"],
                                cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        step = campaign_step(return_state=True)
        # The flow-run process ships its last log lines after its final state, and it is in the
        # worker's process group: stopping the worker before they arrive would lose them.
        deadline = time.monotonic() + 120
        while step.is_completed() and time.monotonic() < deadline:
            runs = _deployment_runs(prefect_server, "label-cpu")
            if runs and "labelling finished:" in _flow_run_logs(prefect_server, runs[0]["id"]):
                break
            time.sleep(0.5)
    finally:
        stop_process_group(worker)
    assert step.is_completed(), f"{step}\n{worker_log.read_text()[-5000:]}"
    (run,) = _deployment_runs(prefect_server, "label-cpu")
    assert run["state_type"] == "COMPLETED" and run["parent_task_run_id"] is not None  # a subflow of the step

    ids = test + initial
    jobs = _finished_jobs(tmp_path, "deployed")
    with session_scope(make_engine(url)) as session:
        counts = reports.label_counts(session, campaigns.get_campaign(session, "deployed").id)
    assert counts["done"] == len(jobs) == len(set(jobs)) and counts["done"] + counts["failed"] == len(ids)
    assert f"labelling finished: {counts['done']} done" in _flow_run_logs(prefect_server, run["id"])


def test_served_deployments_and_prefect_yaml_entrypoints(prefect_server):
    """The served deployments match prefect.yaml's; every entrypoint in prefect.yaml loads."""
    from prefect.flows import load_flow_from_entrypoint

    from flows.serve import deployments

    served = {d.name: d for d in deployments(nightly="quickstart")}
    assert {"campaign", "label", "pretrain", "quickstart-nightly"} <= set(served)
    assert served["quickstart-nightly"].parameters == {"name": "quickstart"}
    assert served["quickstart-nightly"].schedules and served["quickstart-nightly"].concurrency_limit == 1
    assert "quickstart-nightly" not in {d.name for d in deployments(nightly=None)}

    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    pools = set()
    for entry in spec["deployments"]:
        path, function = entry["entrypoint"].split(":")
        pools.add(entry["work_pool"]["name"])
        assert (REPO / path).is_file(), f"prefect.yaml's deployment {entry['name']!r} names a missing file {path}"
        loaded = load_flow_from_entrypoint(str(REPO / entry["entrypoint"]))
        assert loaded.fn.__name__ == function
        assert set(entry.get("parameters", {})) <= set(loaded.parameters.properties)
    assert pools == {"gpu-pool", "cpu-pool"}


def test_database_credentials_stay_out_of_parameters_and_logs(prefect_server, tmp_path, monkeypatch):
    from prefect.logging.handlers import APILogWorker

    from flows.campaign import campaign
    from tasks._db import database_url, has_password, redact_url

    secret_url = "postgresql+psycopg://lab:s3cr3t-pw@db.example.org:5432/tangentlab"
    assert redact_url(secret_url) == "postgresql+psycopg://lab:***@db.example.org:5432/tangentlab"
    assert has_password(secret_url) and not has_password(f"sqlite:///{tmp_path / 'x.db'}")

    state = campaign(name="anything", database_url=secret_url, return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match=r"lab:\*\*\*@db.example.org.*TANGENTLAB_DATABASE_URL"):
        state.result()
    APILogWorker.drain_all(timeout=10)
    logs = _flow_run_logs(prefect_server, state.state_details.flow_run_id)
    assert "carries a password" in logs and "s3cr3t" not in logs

    # A Secret block on the Prefect server holds the URL; the environment only names the block.
    from prefect.blocks.system import Secret

    stored = f"sqlite:///{tmp_path / 'from-secret.db'}"
    Secret(value=stored).save("tangentlab-test-database", overwrite=True)
    monkeypatch.delenv("TANGENTLAB_DATABASE_URL", raising=False)
    monkeypatch.setenv("TANGENTLAB_DATABASE_SECRET", "tangentlab-test-database")
    assert database_url() == stored
    monkeypatch.setenv("TANGENTLAB_DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    assert database_url().endswith("env.db")  # the environment wins
    monkeypatch.delenv("TANGENTLAB_DATABASE_URL")
    monkeypatch.setenv("TANGENTLAB_DATABASE_SECRET", "no-such-block")
    with pytest.raises(LookupError, match="no-such-block"):
        database_url()


def test_ui_port_warning_compares_the_ports_only():
    from flows.serve import ui_port_warning

    assert ui_port_warning("http://127.0.0.1:4200/api", "http://localhost:4200/api") is None
    assert ui_port_warning("http://prefect-host/api", "http://prefect-host:80/api") is None
    assert ui_port_warning("http://127.0.0.1:4300/api", "/api") is None  # relative: the page's own server
    warning = ui_port_warning("http://127.0.0.1:4300/api", "http://127.0.0.1:4200/api")
    assert "looks for its API at http://127.0.0.1:4200/api" in warning
    assert "PREFECT_UI_API_URL=http://127.0.0.1:4300/api prefect server start --port 4300" in warning


def _start_prefect_server(home: Path, *, ui_api_url: bool = False) -> tuple[subprocess.Popen, str]:
    """Start a real `prefect server start --port P` (UI on) in its own PREFECT_HOME, with
    PREFECT_UI_API_URL set to its API URL if ``ui_api_url``; returns it and its API URL."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "PREFECT_UI_API_URL", "PREFECT_SERVER_UI_API_URL")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    if ui_api_url:
        env["PREFECT_UI_API_URL"] = api
    home.mkdir(parents=True)
    with open(home / "server.log", "w") as log:
        server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return server, api


@contextlib.contextmanager
def _prefect_servers_on_free_ports(*homes: tuple[Path, bool]):
    """Real Prefect servers, one per ``(home, ui_api_url)`` (see `_start_prefect_server`),
    started side by side; yields their API URLs once all of them answer."""
    servers = []
    try:
        for home, ui_api_url in homes:
            servers.append((*_start_prefect_server(home, ui_api_url=ui_api_url), home))
        deadline = time.monotonic() + 180
        for server, api, home in servers:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{api}/health", timeout=5).status_code == 200:
                        break
                assert server.poll() is None and time.monotonic() < deadline, (home / "server.log").read_text()
                time.sleep(0.5)
        yield [api for _, api, _ in servers]
    finally:
        for server, _, _ in servers:
            os.killpg(server.pid, signal.SIGTERM)
        for server, _, _ in servers:
            server.wait(timeout=60)


def test_serve_warns_when_the_ui_of_a_server_on_another_port_looks_for_its_api_on_4200(tmp_path, monkeypatch,
                                                                                    capsys):
    """The issue's defect on a real server started with --port: serve says how to fix it, and
    says nothing once the server is started that way."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import flows.serve

    served = []
    monkeypatch.setattr(flows.serve, "serve", lambda *deployments, limit=None: served.append(len(deployments)))
    # A plain server, and one started the documented way (docs/monitoring.md): its UI told its
    # own API URL.
    with _prefect_servers_on_free_ports((tmp_path / "plain", False), (tmp_path / "fixed", True)) as (api, fixed):
        port = api.split(":")[-1].removesuffix("/api")
        base = api.removesuffix("/api")
        assert httpx.get(f"{base}/ui-settings", timeout=10).json()["api_url"].endswith(":4200/api")
        with temporary_settings({PREFECT_API_URL: api}):
            assert flows.serve.main(["--no-schedule", "--no-zombie-automation"]) == 0
        err = capsys.readouterr().err
        assert served and f"looks for its API at http://127.0.0.1:4200/api, not at {api}" in err, err
        assert f"PREFECT_UI_API_URL={api} prefect server start --port {port}" in err

        assert httpx.get(f"{fixed.removesuffix('/api')}/ui-settings", timeout=10).json()["api_url"] == fixed
        with temporary_settings({PREFECT_API_URL: fixed}):
            assert flows.serve.main(["--no-schedule", "--no-zombie-automation"]) == 0
        assert "PREFECT_UI_API_URL" not in capsys.readouterr().err
    assert len(served) == 2

"""The zombie-run automation on a real Prefect server, with real flow processes.

Two flow runs in their own processes send heartbeats; one is SIGKILLed. The automation must
mark the killed one ``Crashed`` and leave the healthy one alone until it completes. The
automation is removed afterwards so that it cannot touch other tests' runs.

Prefect sends a flow run's heartbeats every 30 s at the least, and the automation's window must
be longer than that. The probe flows below send theirs every ``PROBE_HEARTBEAT_S`` seconds
(Prefect's heartbeat thread with a shorter interval): a healthy run sends six in a window, and
the test waits about one window rather than the several that 30-s heartbeats need.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from flows.automations import NAME, delete_zombie_automation, ensure_zombie_automation

pytestmark = pytest.mark.slow

HEARTBEAT_S = 30  # the flow-run heartbeat setting of this process: Prefect's minimum
WITHIN_S = 31  # the shortest window ensure_zombie_automation accepts with it
PROBE_HEARTBEAT_S = 5
FLOW = """
import sys, time
from pathlib import Path

import prefect.flow_engine as engine
from prefect import flow

# Prefect's own heartbeat thread, every PROBE_HEARTBEAT_S seconds instead of its 30-s minimum.
assert engine.MINIMUM_HEARTBEAT_INTERVAL and engine.FlowRunEngine.heartbeat_seconds
engine.MINIMUM_HEARTBEAT_INTERVAL = 1
engine.FlowRunEngine.heartbeat_seconds = property(lambda self: int(sys.argv[3]))

@flow(name="heartbeat-probe", flow_run_name=sys.argv[1])
def probe(until: str) -> None:  # runs until the file ``until`` exists (10 min at most)
    deadline = time.time() + 600
    while not Path(until).exists() and time.time() < deadline:
        time.sleep(0.2)

probe(sys.argv[2])
"""


def _start(name: str, until: Path, api_url: str) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S)}
    return subprocess.Popen([sys.executable, "-c", FLOW, name, str(until), str(PROBE_HEARTBEAT_S)], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _states() -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["heartbeat-probe"])))
    return {run.name: run.state.type.value for run in runs}


def _wait(condition, timeout: float, what: str) -> float:
    start = time.time()
    while time.time() - start < timeout:
        if condition():
            return time.time() - start
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout} s; flow runs: {_states()}")


def test_bad_window_is_refused_before_anything_is_created(prefect_server):
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 180}), \
            pytest.raises(ValueError, match=r"within_s=120 s is not longer than the flow-run heartbeat interval"):
        ensure_zombie_automation(120)
    assert not delete_zombie_automation()  # nothing was created


def test_killed_run_is_marked_crashed_and_a_healthy_one_is_not(prefect_server, tmp_path):
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: HEARTBEAT_S}):
        automation = ensure_zombie_automation(WITHIN_S)
        again = ensure_zombie_automation(WITHIN_S)
    try:
        assert again.id == automation.id and automation.name == NAME  # one per server
        healthy = _start("healthy", tmp_path / "healthy-done", prefect_server)
        doomed = _start("doomed", tmp_path / "never", prefect_server)
        _wait(lambda: _states() == {"healthy": "RUNNING", "doomed": "RUNNING"}, 120, "both runs did not start")
        time.sleep(3)  # the first heartbeat is sent as the run starts
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait(timeout=30)
        waited = _wait(lambda: _states()["doomed"] == "CRASHED", WITHIN_S + 60, "the killed run was not marked Crashed")
        assert waited > WITHIN_S - PROBE_HEARTBEAT_S  # not before the window could have passed
        # The healthy run is older than the window by now: without the heartbeats that renew
        # it, its first one would have expired before the killed run's last. Two more heartbeat
        # intervals for an action on it already under way to land.
        time.sleep(2 * PROBE_HEARTBEAT_S)
        assert _states()["healthy"] == "RUNNING"  # its heartbeats keep it alive
        (tmp_path / "healthy-done").touch()
        assert healthy.wait(timeout=120) == 0
        assert _states() == {"healthy": "COMPLETED", "doomed": "CRASHED"}
    finally:
        for process in (locals().get("healthy"), locals().get("doomed")):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        assert delete_zombie_automation()

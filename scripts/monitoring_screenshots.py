"""Screenshots of what a campaign shows in the Prefect UI, for docs/monitoring.md.

Starts its own Prefect server (a fresh PREFECT_HOME, analytics off, the UI pointed at the
server's own port), runs a small real campaign against it (GFN2-xTB through tblite on a
generated pool of 2-4 atom H/C/N/O molecules, two acquisition rounds), then opens the UI in
headless Chromium (driven over the DevTools protocol, no extra packages) and saves:

- ``runs.png``: the flow runs list, the campaign's final state named by its outcome and the
  label runs named by purpose;
- ``run-artifacts.png``: the campaign run's artifacts tab;
- ``overview-light.png`` / ``overview-dark.png``: the campaign overview artifact on the light
  and the dark theme;
- ``selection.png``: round 1's selection after its labelling.

Usage (about 10 minutes on 2 loaded cores)::

    nice -n 10 .venv/bin/python scripts/monitoring_screenshots.py --out docs/img/monitoring

Needs ``chromium`` (Debian: ``apt-get install chromium``) or ``--browser PATH``. The PNGs are
reduced to 256 colours so that they stay small enough to commit.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
NAME = "uicheck"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, port: int) -> tuple[subprocess.Popen, dict[str, str]]:
    """A Prefect server on ``port`` whose UI asks that same port for its API."""
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": api, "PREFECT_UI_API_URL": api, "PREFECT_LOGGING_LEVEL": "INFO"}
    log = open(home / "server.log", "w")  # noqa: SIM115 (the server writes to it until stopped)
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return server, env
        except httpx.HTTPError:
            pass
        if server.poll() is not None:
            raise RuntimeError(f"the Prefect server exited: see {home / 'server.log'}")
        time.sleep(1)
    raise RuntimeError(f"no Prefect server on {api} after 180 s: see {home / 'server.log'}")


def run_campaign(work: Path, env: dict[str, str]) -> None:
    """A small xTB campaign: 8 test, 6 initial, 2 rounds of 4 (the targets are never met)."""
    import ase.io
    import yaml

    sys.path.insert(0, str(ROOT))
    from tangentlab.config import shipped_file
    from tangentlab.pretrain_data import REACTIVE_RECIPE, generate_structures

    pool = work / "pool.extxyz"
    ase.io.write(pool, generate_structures(40, seed=5, max_atoms=4, **REACTIVE_RECIPE), format="extxyz")
    config = {
        "name": NAME, "pool": [str(pool)], "model": shipped_file("tangentlab-hcno-xtb.model"),
        "work_dir": str(work / "runs"), "test_size": 8, "initial_size": 6,
        "oracle": {"name": "xtb", "method": "GFN2-xTB"}, "qm": {"timeout_s": 120, "max_parallel": 2},
        "acquisition": {"batch_size": 4},
        "budgets": {"max_rounds": 2, "max_labels": 30},
        "targets": {"energy_mae_mev_per_atom": 5.0, "force_mae_mev_per_a": 50.0},
        "finetune": {"max_epochs": 6, "patience": 3},
    }
    (work / "campaign.yaml").write_text(yaml.safe_dump(config))
    with open(work / "campaign.log", "w") as log:
        done = subprocess.run([sys.executable, "-m", "cli", "--db", f"sqlite:///{work / 'lab.db'}", "start",
                               str(work / "campaign.yaml")], cwd=ROOT, env={**env, "OMP_NUM_THREADS": "1"},
                              stdout=log, stderr=subprocess.STDOUT)
    if done.returncode not in (0, 3):  # 3: a budget stopped it before the targets, as meant here
        raise RuntimeError(f"the campaign exited {done.returncode}: see {work / 'campaign.log'}")


class Browser:
    """Headless Chromium over the DevTools protocol (one page)."""

    def __init__(self, executable: str, profile: Path, width: int, height: int) -> None:
        from websockets.sync.client import connect

        port = free_port()
        self.process = subprocess.Popen(
            [executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--hide-scrollbars", f"--remote-debugging-port={port}", f"--user-data-dir={profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 60
        while True:
            try:
                pages = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=2).json()
                page = next(p for p in pages if p["type"] == "page")
                break
            except (httpx.HTTPError, StopIteration):
                if time.time() > deadline:
                    raise RuntimeError("headless Chromium did not start") from None
                time.sleep(0.5)
        self.socket = connect(page["webSocketDebuggerUrl"], max_size=64 * 2**20)
        self.next_id = 0
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=120))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def theme(self, ui: str, dark: bool) -> None:
        """The UI's theme (kept in its local storage under ``color-scheme``; dark by default)."""
        self.show(ui, "Runs")
        mode = "dark" if dark else "light"
        self.call("Runtime.evaluate", expression=f"localStorage.setItem('color-scheme', JSON.stringify('{mode}'))")
        self.call("Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": mode}])

    def scroll_to(self, text: str) -> None:
        """Scroll the innermost element whose text is ``text`` to the top of the view."""
        self.call("Runtime.evaluate", expression=(
            "(() => { const want = " + json.dumps(text) + ";"
            " const hit = [...document.querySelectorAll('body *')].reverse()"
            ".find(e => e.innerText && e.innerText.trim() === want);"
            " if (hit) hit.scrollIntoView({block: 'start'}); })()"))
        time.sleep(1.0)

    def show(self, url: str, wait_for: str, timeout_s: float = 60) -> None:
        """Open ``url`` and wait until the page's text contains ``wait_for`` (then a little more)."""
        self.call("Page.navigate", url=url)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            text = self.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                             returnByValue=True)["result"].get("value", "")
            if wait_for in text:
                time.sleep(2.0)  # images and late requests
                return
            time.sleep(0.5)
        raise RuntimeError(f"{url}: {wait_for!r} did not appear within {timeout_s:.0f} s")

    def click_text(self, text: str) -> None:
        """Click the first button, tab or link whose text is ``text``."""
        found = self.call("Runtime.evaluate", returnByValue=True, expression=(
            "(() => { const want = " + json.dumps(text) + ";"
            " const hit = [...document.querySelectorAll('button, a, [role=tab], li')]"
            ".find(e => e.innerText && e.innerText.trim() === want);"
            " if (hit) { hit.click(); return true; } return false; })()"))
        if not found["result"].get("value"):
            raise RuntimeError(f"nothing to click named {text!r}")
        time.sleep(2.0)

    def save(self, path: Path, colours: int = 256) -> int:
        """Screenshot of the viewport, reduced to ``colours`` colours; returns its size in bytes."""
        from PIL import Image

        png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colours)
        image.save(path, optimize=True)
        return path.stat().st_size

    def close(self) -> None:
        self.socket.close()
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)


def _post(api: str, path: str, body: dict) -> list[dict]:
    response = httpx.post(f"{api}{path}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def screenshots(api: str, out: Path, browser_path: str, profile: Path) -> dict[str, int]:
    ui = api.removesuffix("/api")
    (campaign_run,) = _post(api, "/flow_runs/filter", {"flow_runs": {"name": {"any_": [f"campaign {NAME}"]}}})
    state = campaign_run["state"]["name"]

    def artifact(key: str) -> dict:
        return _post(api, "/artifacts/filter", {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC",
                                                "limit": 1})[0]

    overview = artifact(f"campaign-{NAME}-overview")
    selection = artifact(f"campaign-{NAME}-round-1-selection")
    sizes = {}
    browser = Browser(browser_path, profile, 1440, 900)
    try:
        browser.theme(ui, dark=False)
        browser.show(f"{ui}/runs", state)
        browser.scroll_to("Hide subflows")
        sizes["runs.png"] = browser.save(out / "runs.png")
        browser.show(f"{ui}/runs/flow-run/{campaign_run['id']}", f"campaign {NAME}")
        browser.click_text("Artifacts")
        sizes["run-artifacts.png"] = browser.save(out / "run-artifacts.png")
        browser.show(f"{ui}/artifacts/artifact/{overview['id']}", "Learning curve")
        sizes["overview-light.png"] = browser.save(out / "overview-light.png")
        browser.theme(ui, dark=True)
        browser.show(f"{ui}/artifacts/artifact/{overview['id']}", "Learning curve")
        browser.scroll_to("Learning curve")
        sizes["overview-dark.png"] = browser.save(out / "overview-dark.png")
        browser.theme(ui, dark=False)
        browser.show(f"{ui}/artifacts/artifact/{selection['id']}", "Picks against the pool")
        sizes["selection.png"] = browser.save(out / "selection.png")
    finally:
        browser.close()
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "monitoring"), help="folder for the PNGs")
    parser.add_argument("--port", type=int, default=None, help="Prefect server port (default: a free one)")
    parser.add_argument("--browser", default=shutil.which("chromium") or shutil.which("chromium-browser"),
                        help="Chromium executable")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (server, campaign)")
    parser.add_argument("--work", default=None,
                        help="a folder kept by an earlier --keep run: reuse its server database and "
                        "finished campaign, only take the screenshots again")
    args = parser.parse_args(argv)
    if not args.browser or not Path(args.browser).exists():
        parser.error("no Chromium found: install it (apt-get install chromium) or pass --browser PATH")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="tangentlab-screenshots-"))
    reuse = args.work is not None and (work / "lab.db").exists()
    port = args.port or free_port()
    started = time.perf_counter()
    server, env = start_server(work, port)
    try:
        print(f"Prefect server and UI on http://127.0.0.1:{port} (files in {work})", flush=True)
        if not reuse:
            run_campaign(work, env)
        print(f"campaign done in {time.perf_counter() - started:.0f} s", flush=True)
        sizes = screenshots(env["PREFECT_API_URL"], out, args.browser, work / "chromium")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        if not (args.keep or args.work):
            shutil.rmtree(work, ignore_errors=True)
    for name, size in sizes.items():
        print(f"{out / name}: {size / 1024:.0f} KiB")
    print(f"total {sum(sizes.values()) / 1024:.0f} KiB in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

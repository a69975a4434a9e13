"""Shared test set-up: offline Prefect, one session-scoped test server, small real inputs.

The suite runs in parallel with pytest-xdist (`python -m pytest -q -n 2`, .ci/run). Each worker
is a process of its own with its own Prefect home, quacc results folder, temporary Prefect
server (a free port), pytest temporary directories and, on PostgreSQL, its own database.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="tangentlab-prefect-home-")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# pytest-xdist workers share the machine's cores: each gets its share of OpenMP threads (torch,
# tblite, PySCF; inherited by the processes the tests start) instead of one per core each, which
# oversubscribes the cores (two workers on two cores: four spinning threads). An explicit
# OMP_NUM_THREADS wins.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault(
        "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))
# A `tangentlab` process the tests start without PREFECT_API_URL starts Prefect's temporary
# server and gives up after 20 s by default: too short on a busy machine (two workers, each
# with a campaign running, measured 21 s), so such a test fails before it checks anything.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
# quacc's default RESULTS_DIR is the working directory: a job run without an explicit
# results_dir would leave a quacc-* folder in the checkout.
os.environ["QUACC_RESULTS_DIR"] = tempfile.mkdtemp(prefix="tangentlab-quacc-results-")

import ase.io  # noqa: E402
import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
TUTORIAL_MODEL = SHARED / "models" / "mace-tutorial-hco-swa.model"
# A PostgreSQL server for the database tests (from `.ci/start-postgres`); else SQLite only.
POSTGRES_URL = os.environ.get("TANGENTLAB_TEST_POSTGRES_URL")
# "gw0", "gw1", ... in a pytest-xdist worker; None in a plain (single-process) run.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")


#: The longest tests, longest first: CONTRIBUTING.md's "Slowest tests" (CI, 2026-12-04), the
#: campaign tests cut since then placed by their new times measured that day. A parametrised
#: test is named without its parameters. They start before the other tests marked ``slow``.
SLOWEST = [
    "tests/test_interrupt.py::test_ctrl_c_stops_cleanly_and_twice_at_once",
    "tests/test_automations.py::test_killed_run_is_marked_crashed_and_a_healthy_one_is_not",
    "tests/test_lease_processes.py::test_one_live_run_per_campaign",
    "tests/test_benchmark_replay.py::test_replay_benchmark_end_to_end",
    "tests/test_async_rounds.py::test_kill_during_a_fine_tune_with_labels_in_flight_loses_and_repeats_nothing",
    "tests/test_async_dispatch.py::test_async_rounds_label_on_a_served_labelling_deployment",
    "tests/test_evaluate_ppi.py::test_a_campaign_states_prediction_powered_intervals",
    "tests/test_lease_processes.py::test_a_scheduled_nightly_run_overlapping_a_cli_run_is_refused",
    "tests/test_campaign.py::test_campaign_reaches_its_targets",
    "tests/test_periodic.py::test_periodic_campaign_killed_while_labelling_resumes_then_exports_cells_and_constraints",
    "tests/test_periodic_campaign.py::test_slab_campaign_with_emt_labels_reaches_its_targets",
    "tests/test_resume.py::test_kills_during_acquisition_and_fine_tuning_lose_and_repeat_nothing",
    "tests/test_exploration.py::test_kill_during_exploration_then_resume_adds_no_candidate_twice",
]


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist, every worker starts with its share of the slow tests.

    pytest-xdist's ``worksteal`` hands each of the n workers one contiguous 1/n of the
    collection, and an idle worker later takes over the end of a busy one's queue. So the
    tests marked ``slow`` (the `SLOWEST` first, longest first) are dealt round-robin to the n
    parts, each part starting with its slow tests and filled up with the others in their own
    order: no worker is left with a long test at the end while the others have nothing to do.
    """
    if XDIST_WORKER is None:
        return
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    rank = {name: i for i, name in enumerate(SLOWEST)}

    def key(index_item):
        index, item = index_item
        return rank.get(item.nodeid.split("[")[0], len(rank)), index

    numbered = list(enumerate(items))
    slow = [item for _, item in sorted(
        (pair for pair in numbered if pair[1].get_closest_marker("slow") is not None), key=key)]
    rest = [item for item in items if item.get_closest_marker("slow") is None]
    parts: list[list] = [[] for _ in range(workers)]
    for i, item in enumerate(slow):
        parts[i % workers].append(item)
    left = len(items)
    for i, part in enumerate(parts):  # the sizes worksteal gives: what is left // workers left
        size = left // (workers - i)
        while len(part) < size and rest:
            part.append(rest.pop(0))
        left -= len(part)
    parts[-1].extend(rest)
    items[:] = [item for part in parts for item in part]


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server for the whole session; yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):  # a loaded machine: minutes
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory) -> Path:
    """A tiny real (randomly initialised) H/C/N/O MACE model file."""
    from tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.model")


@pytest.fixture(scope="module")
def model(tiny_model_file):
    """The tiny MACE model, loaded (float64, eval mode, frozen); one instance per test module."""
    from tangentlab.mace_model import load_model

    return load_model(tiny_model_file)


@pytest.fixture(scope="session")
def postgres_url():
    """This test process's PostgreSQL database URL.

    A plain run uses the database of ``TANGENTLAB_TEST_POSTGRES_URL`` itself. A pytest-xdist
    worker creates a database of its own on that server (``<database>_gw0``, ...; dropped first
    if an earlier run left it) and drops it at the end, so that parallel workers never see each
    other's tables.
    """
    if XDIST_WORKER is None:
        yield POSTGRES_URL
        return
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    server = make_url(POSTGRES_URL)
    name = f"{server.database}_{XDIST_WORKER}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield server.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def no_run_logger(monkeypatch):
    """Task bodies called with ``.fn()`` log through Prefect's run logger, which needs a run:
    here they log to a plain logger."""
    import logging

    for module in ("tasks.acquire", "tasks.steps", "tasks.testset"):
        monkeypatch.setattr(f"{module}.get_run_logger", lambda: logging.getLogger("tangentlab.test"))


@pytest.fixture(params=["sqlite", *(["postgresql"] if POSTGRES_URL else [])])
def database_url(request, tmp_path):
    """A database URL for one test: a new SQLite file, then the PostgreSQL server if there is one.

    The PostgreSQL database (this process's own, see ``postgres_url``) is left empty afterwards
    (its migrations downgraded), so the next test starts from nothing as on SQLite.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'lab.db'}"
        return
    url = request.getfixturevalue("postgres_url")
    yield url
    from alembic import command

    from db import alembic_config, make_engine

    engine = make_engine(url)
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "base")
        connection.exec_driver_sql("DROP TABLE alembic_version")
    engine.dispose()


def write_pool(path: Path, n: int, seed: int = 0, max_atoms: int = 4) -> Path:
    """A small pool of distorted H/C/N/O molecules of one reaction network (no labels)."""
    from tangentlab.pretrain_data import REACTIVE_RECIPE, generate_structures

    structures = generate_structures(n, seed=seed, max_atoms=max_atoms, **REACTIVE_RECIPE)
    ase.io.write(path, structures, format="extxyz")
    return path


_LABELLED: dict[tuple[int, int, int], list] = {}


def write_labelled_pool(path: Path, n: int, seed: int = 0, max_atoms: int = 4) -> Path:
    """``write_pool``'s molecules with GFN2-xTB energies and forces stored in the file (what the
    replay oracle reveals). A structure whose SCF fails is written without labels, so that its
    replayed QM job fails as the real one would. Labelled once per process for each pool."""
    from tangentlab.pretrain_data import REACTIVE_RECIPE, generate_structures

    key = (n, seed, max_atoms)
    if key not in _LABELLED:
        from ase.calculators.singlepoint import SinglePointCalculator
        from tblite.ase import TBLite

        from tangentlab.structures import spin_state

        labelled = []
        for atoms in generate_structures(n, seed=seed, max_atoms=max_atoms, **REACTIVE_RECIPE):
            charge, multiplicity = spin_state(atoms)
            atoms.calc = TBLite(method="GFN2-xTB", charge=charge, multiplicity=multiplicity,
                                verbosity=0)
            try:
                energy, forces = atoms.get_potential_energy(), atoms.get_forces()
            except Exception:  # not converged: no stored label
                atoms.calc = None
            else:
                atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
            labelled.append(atoms)
        _LABELLED[key] = labelled
    ase.io.write(path, _LABELLED[key], format="extxyz")
    return path


_TINY_MODEL: list[Path] = []


def tiny_model_path() -> str:
    """This test process's tiny H/C/N/O MACE model (tests/tiny_model.py), built on first use:
    the starting model of the subprocess campaigns (fine-tuning it takes a fraction of the time
    the shipped model takes)."""
    if not _TINY_MODEL:
        from tiny_model import make_tiny_model

        folder = Path(tempfile.mkdtemp(prefix="tangentlab-tiny-model-"))
        _TINY_MODEL.append(make_tiny_model(folder / "tiny.model"))
    return str(_TINY_MODEL[0])


#: One short fine-tuning per round: what a campaign test checks is the round loop, not how
#: well a model learns (tests/test_finetune.py and the PySCF campaign check that).
ONE_EPOCH = {"max_epochs": 1, "patience": 1, "min_steps_per_epoch": 2}


def _campaign_config(tmp_path: Path, name: str, pool: Path, oracle: dict, overrides: dict) -> dict:
    config = {
        "name": name,
        "pool": [str(pool)],
        "model": tiny_model_path(),
        "work_dir": str(tmp_path / "runs"),
        "test_size": 6,
        "initial_size": 6,
        "oracle": oracle,
        "qm": {"timeout_s": 120},
        "finetune": dict(ONE_EPOCH),
    }
    config.update(overrides)
    return config


def xtb_campaign_config(tmp_path: Path, name: str, pool_size: int, *, seed: int, max_atoms: int = 4,
                        **overrides) -> dict:
    """A small campaign on a generated pool, labelled with GFN2-xTB (fast real QM jobs, each in
    a process of its own), starting from the tiny model, one epoch per round.

    ``overrides`` replace top-level keys (e.g. ``qm``, ``acquisition``, ``test_size``).
    """
    pool = write_pool(tmp_path / "pool.extxyz", pool_size, seed=seed, max_atoms=max_atoms)
    return _campaign_config(tmp_path, name, pool, {"name": "xtb", "method": "GFN2-xTB"}, overrides)


def replay_campaign_config(tmp_path: Path, name: str, pool_size: int, *, seed: int,
                           max_atoms: int = 4, **overrides) -> dict:
    """``xtb_campaign_config`` with the GFN2-xTB labels stored with the pool and revealed by the
    replay oracle (no QM process): for tests of the round loop rather than of QM jobs."""
    pool = write_labelled_pool(tmp_path / "pool.extxyz", pool_size, seed=seed, max_atoms=max_atoms)
    return _campaign_config(tmp_path, name, pool, {"name": "replay"}, overrides)


# `python -m cli ARGS` once the file GO exists, after the imports the command makes anyway
# (`python -c CLI_ON_SIGNAL GO STEM ARGS`): a process started ahead of its turn imports while
# others work, and touches GO.ready-STEM when it is ready. Not released within an hour (its
# test failed), it exits 1. With TANGENTLAB_TEST_HOLD_QM_JOBS_AFTER=N in its environment it
# runs N QM jobs of its campaign's oracle and then holds in the next one until the file named
# by TANGENTLAB_TEST_RELEASE_QM_JOBS exists (without it, for good): a test then kills or
# overlaps it "while it labels" at a known point, instead of racing xTB jobs that take 0.06 s
# each.
HOLD_QM_JOBS_AFTER = "TANGENTLAB_TEST_HOLD_QM_JOBS_AFTER"
RELEASE_QM_JOBS = "TANGENTLAB_TEST_RELEASE_QM_JOBS"
CLI_ON_SIGNAL = """
import os, runpy, sys, time
from pathlib import Path

go, stem = Path(sys.argv.pop(1)), sys.argv.pop(1)
import cli, cli.commands, flows.campaign  # noqa: E401,F401
hold = os.environ.pop("TANGENTLAB_TEST_HOLD_QM_JOBS_AFTER", None)
release = os.environ.pop("TANGENTLAB_TEST_RELEASE_QM_JOBS", None)
if hold is not None:
    import tasks.label

    class Held:
        jobs = 0

        def __init__(self, oracle):
            self.oracle = oracle

        def __getattr__(self, name):
            return getattr(self.oracle, name)

        def __call__(self, *args, **kwargs):
            Held.jobs += 1
            while Held.jobs > int(hold) and not (release and Path(release).exists()):
                time.sleep(0.2)
            return self.oracle(*args, **kwargs)

    oracle_for = tasks.label.oracle_for
    tasks.label.oracle_for = lambda config: Held(oracle_for(config))
Path(f"{go}.ready-{stem}").touch()
deadline = time.time() + 3600
while not go.exists():
    if time.time() > deadline:
        sys.exit(1)
    time.sleep(0.01)
runpy.run_module("cli", run_name="__main__", alter_sys=True)
"""


def cli_argv(go: Path | None, stem: str) -> list[str]:
    """The interpreter's arguments before the CLI's own: ``-m cli``, or with ``go`` the
    process imported ahead that runs the command once ``go`` exists (``CLI_ON_SIGNAL``; it
    touches ``GO.ready-STEM`` when ready)."""
    return ["-m", "cli"] if go is None else ["-c", CLI_ON_SIGNAL, str(go), stem]


# Processes a test started (process tests append theirs): the ones still alive when the test
# ends (it failed, or left runs waiting for their CLI_ON_SIGNAL file) are SIGKILLed with their
# groups, so that none outlives its test.
STARTED_PROCESSES: list = []


@pytest.fixture(autouse=True)
def _no_started_process_outlives_its_test():
    yield
    while STARTED_PROCESSES:
        process = STARTED_PROCESSES.pop()
        if process.poll() is None:
            import signal

            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)


def stop_process_group(process, timeout: float = 30) -> None:
    """SIGTERM a child started with ``start_new_session=True`` and its group; SIGKILL it if it
    has not ended after ``timeout`` seconds."""
    import os
    import signal
    import subprocess

    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


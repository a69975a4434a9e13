"""Shared test set-up: offline Prefect, one session-scoped test server, small real inputs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="tangentlab-prefect-home-")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# quacc's default RESULTS_DIR is the working directory: a job run without an explicit
# results_dir would leave a quacc-* folder in the checkout.
os.environ["QUACC_RESULTS_DIR"] = tempfile.mkdtemp(prefix="tangentlab-quacc-results-")

import ase.io  # noqa: E402
import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
TUTORIAL_MODEL = SHARED / "models" / "mace-tutorial-hco-swa.model"
# A PostgreSQL server for the database tests (from `.ci/start-postgres`); else SQLite only.
POSTGRES_URL = os.environ.get("TANGENTLAB_TEST_POSTGRES_URL")


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server for the whole session; yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
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


@pytest.fixture(params=["sqlite", *(["postgresql"] if POSTGRES_URL else [])])
def database_url(request, tmp_path):
    """A database URL for one test: a new SQLite file, then the PostgreSQL server if there is one.

    The shared PostgreSQL database is left empty afterwards (its migrations downgraded), so
    the next test starts from nothing as on SQLite.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'lab.db'}"
        return
    yield POSTGRES_URL
    from alembic import command

    from db import alembic_config, make_engine

    engine = make_engine(POSTGRES_URL)
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


def xtb_campaign_config(tmp_path: Path, name: str, pool_size: int, *, seed: int, max_atoms: int = 4,
                        **overrides) -> dict:
    """A small campaign on a generated pool, labelled with GFN2-xTB (fast real QM jobs).

    ``overrides`` replace top-level keys (e.g. ``qm``, ``acquisition``, ``test_size``).
    """
    from tangentlab.config import shipped_file

    config = {
        "name": name,
        "pool": [str(write_pool(tmp_path / "pool.extxyz", pool_size, seed=seed, max_atoms=max_atoms))],
        "model": shipped_file("tangentlab-hcno-xtb.model"),
        "work_dir": str(tmp_path / "runs"),
        "test_size": 6,
        "initial_size": 6,
        "oracle": {"name": "xtb", "method": "GFN2-xTB"},
        "qm": {"timeout_s": 120},
    }
    config.update(overrides)
    return config

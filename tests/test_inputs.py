"""Hostile and mistaken inputs: each is refused with one `error:` line, exit code 2, no traceback,
and nothing stored (no campaign row, no folder under work_dir, no QM job)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
import yaml
from ase import Atoms
from conftest import write_pool

from cli import main
from db import campaigns, init_db, make_engine, registry, session_scope, structures
from tangentlab.config import config_json, make_config
from tangentlab.paths import UnsafePathError, campaign_dir

REPO = Path(__file__).resolve().parents[1]


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is now (each test's capture)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@pytest.fixture(autouse=True)
def _prefect_console_to_this_test():
    """Prefect's console handler (on the root logger) keeps the stderr it was configured with:
    an earlier test's capture, closed by now. Point it at the current one."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.stream = handler.console.file = _CurrentStderr()


@pytest.fixture
def db_url(tmp_path):
    """An empty, migrated SQLite database: after a refusal it must still hold no campaign."""
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    init_db(make_engine(url))
    return url


def stored_campaigns(url: str) -> list[str]:
    with session_scope(make_engine(url)) as session:
        return [c.name for c in campaigns.all_campaigns(session)]


def base_config(tmp_path: Path, model: Path, pool_size: int = 8, **overrides) -> dict:
    """A campaign on a small pool with the xTB oracle; no test here gets as far as a QM job."""
    config = {
        "name": "c1",
        "pool": [str(write_pool(tmp_path / "pool.extxyz", pool_size, seed=5))],
        "model": str(model),
        "work_dir": str(tmp_path / "runs"),
        "test_size": 2,
        "initial_size": 2,
        "oracle": {"name": "xtb", "method": "GFN2-xTB"},
    }
    config.update(overrides)
    return config


def refused_start(tmp_path: Path, url: str, capsys, config: dict | str, *extra: str) -> str:
    """Run ``start`` on ``config``; check the refusal; return the ``error:`` line."""
    path = tmp_path / "c.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    assert main(["--db", url, *extra, "start", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("error: ") and "Traceback" not in err, err
    assert stored_campaigns(url) == []
    assert not list((tmp_path / "runs").glob("*/qm"))  # no QM job ran
    assert not list((tmp_path / "runs").glob("*/models/starting-*"))  # no converted model left
    return err.splitlines()[-1]


def test_an_empty_configuration_file_is_refused(tmp_path, db_url, capsys):
    err = refused_start(tmp_path, db_url, capsys, "")
    assert "is empty" in err


@pytest.mark.parametrize("name", ["../../x", "/srv/abs", "a" * 300, "runs/x", ".hidden", ""])
def test_unsafe_campaign_names_are_refused(tmp_path, db_url, capsys, tiny_model_file, name):
    err = refused_start(tmp_path, db_url, capsys, base_config(tmp_path, tiny_model_file, name=name))
    assert "name:" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "x").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"device": "banana"}, "device: 'banana' is not a torch device"),
        ({"device": "cuda:7"}, "device 'cuda:7'"),
        ({"seed": -5}, "seed: Input should be greater than or equal to 0"),
        ({"budgets": {"max_labels": 1}}, "initial_size 2 is larger than budgets.max_labels 1"),
        ({"acquisition": {"target": "/nonexistent/frames.extxyz"}}, "/nonexistent/frames.extxyz"),
    ],
)
def test_settings_checked_before_anything_is_stored(tmp_path, db_url, capsys, tiny_model_file,
                                                    overrides, message):
    config = base_config(tmp_path, tiny_model_file, **overrides)
    err = refused_start(tmp_path, db_url, capsys, config)
    assert message in err


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"test_size": 30}, "test_size 30 + initial_size 2 is larger than the pool of 8"),
        ({"test_size": 5, "initial_size": 4},
         "test_size 5 + initial_size 4 is larger than the pool of 8"),
    ],
)
def test_split_sizes_are_checked_against_the_pool(tmp_path, db_url, capsys, tiny_model_file,
                                                  overrides, message):
    config = base_config(tmp_path, tiny_model_file, **overrides)
    err = refused_start(tmp_path, db_url, capsys, config)
    assert message in err


def _molecules(path: Path, bad: Atoms, n_good: int = 6) -> Path:
    good = ase.io.read(write_pool(path.with_suffix(".good.extxyz"), n_good, seed=2), ":")
    ase.io.write(path, [*good, bad], format="extxyz")
    return path


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (Atoms("H2", positions=[[0, 0, 0], [1e8, 0, 0]]), "structure 6: coordinates out of bounds"),
        (Atoms("H2", positions=[[-6e3, 0, 0], [6e3, 0, 0]]),
         "structure 6: coordinates out of bounds"),
        (Atoms("H2", positions=[[0, 0, 0], [0.74, 0, 0]], info={"charge": "abc"}),
         "structure 6: charge must be an integer, got 'abc'"),
        (Atoms("H2", positions=[[0, 0, 0], [0.74, 0, 0]], info={"multiplicity": "two"}),
         "structure 6: multiplicity must be an integer, got 'two'"),
    ],
)
def test_poison_structures_are_refused_at_start_and_import(tmp_path, db_url, capsys,
                                                           tiny_model_file, bad, message):
    pool = _molecules(tmp_path / "bad.extxyz", bad)
    config = base_config(tmp_path, tiny_model_file, pool=[str(pool)])
    err = refused_start(tmp_path, db_url, capsys, config)
    assert message in err and "bad.extxyz" in err
    with session_scope(make_engine(db_url)) as session:
        campaigns.create_campaign(session, "demo", {"model": str(tiny_model_file)})
    assert main(["--db", db_url, "import", "demo", str(pool)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    with session_scope(make_engine(db_url)) as session:
        demo = campaigns.get_campaign(session, "demo")
        assert structures.campaign_structures(session, demo) == []


@pytest.mark.parametrize("content", [b"this is a text file, not a model\n", bytes(range(256)) * 40])
def test_a_model_file_that_is_not_a_model_is_refused(tmp_path, db_url, capsys, content):
    model = tmp_path / "start.model"
    model.write_bytes(content)
    err = refused_start(tmp_path, db_url, capsys, base_config(tmp_path, model))
    assert "error: model:" in err and "start.model" in err


def test_a_changed_model_file_stops_resume_before_it_starts(tmp_path, db_url, capsys,
                                                            tiny_model_file):
    model = tmp_path / "start.model"
    model.write_bytes(tiny_model_file.read_bytes())
    with session_scope(make_engine(db_url)) as session:
        camp = campaigns.create_campaign(session, "c1", config_json(make_config(
            base_config(tmp_path, model))))
        registry.register_model(session, camp, model, hyperparameters={"source": "starting model"})
    model.write_bytes(model.read_bytes() + b"tampered")
    assert main(["--db", db_url, "resume", "c1"]) == 2
    err = capsys.readouterr().err
    assert "changed since it was registered" in err and "Traceback" not in err


def test_resume_of_an_unknown_campaign_is_refused_before_the_flow(db_url, capsys):
    assert main(["--db", db_url, "resume", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'nope'" in err and "Traceback" not in err


@pytest.mark.parametrize("url", ["not a url", "postgresql://u@host:notaport/db", "nosuchdialect://x/y"])
def test_a_malformed_database_url_is_named(capsys, url):
    assert main(["--db", url, "status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: database URL") and "Traceback" not in err


def test_status_on_a_file_that_is_not_a_database(tmp_path, capsys):
    junk = tmp_path / "notes.txt"
    junk.write_text("shopping list\n" * 200)
    assert main(["--db", f"sqlite:///{junk}", "status"]) == 2
    err = capsys.readouterr().err
    assert err == "error: database: file is not a database\n"
    assert main(["--debug", "--db", f"sqlite:///{junk}", "status"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("error: database: file is not a database\n")


def test_export_to_a_folder_is_refused(tmp_path, db_url, capsys):
    with session_scope(make_engine(db_url)) as session:
        campaigns.create_campaign(session, "demo", {})
    assert main(["--db", db_url, "export", "demo", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a folder" in err and "Traceback" not in err


def test_expected_failures_and_bugs():
    """A refused model file inside the flow is an `error:` line; a bug or a race keeps its
    traceback."""
    from sqlalchemy.exc import IntegrityError

    from cli.errors import is_expected
    from tangentlab.model_files import ModelFileError

    assert is_expected(ModelFileError("round-001.pt is a pickled file"))
    assert not is_expected(IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed")))
    assert not is_expected(KeyError("round_wall_s")) and not is_expected(TypeError("bug"))


def test_campaign_dir_stays_inside_the_campaign_folder(tmp_path):
    assert campaign_dir(tmp_path, "c1", "qm") == (tmp_path / "c1" / "qm").resolve()
    for parts in [("..", "..", "x"), ("/etc",)]:
        with pytest.raises(UnsafePathError):
            campaign_dir(tmp_path, "c1", *parts)
    with pytest.raises(UnsafePathError):
        campaign_dir(tmp_path, "../x")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "c2").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="not inside"):
        campaign_dir(tmp_path / "runs", "c2", "models")


def test_a_read_only_database_is_an_error_line_without_prefect_tracebacks(prefect_server, tmp_path,
                                                                          tiny_model_file):
    """A real `resume` process: the write fails inside the flow, and Prefect prints no traceback."""
    path = tmp_path / "lab.db"
    init_db(make_engine(f"sqlite:///{path}"))
    with session_scope(make_engine(f"sqlite:///{path}")) as session:
        campaigns.create_campaign(session, "c1", config_json(make_config(
            base_config(tmp_path, tiny_model_file))))
    url = f"sqlite:///file:{path}?mode=ro&uri=true"
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_LOGGING_LEVEL": "INFO"}
    done = subprocess.run([sys.executable, "-m", "cli", "--db", url, "resume", "c1"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output, output
    last = done.stderr.rstrip().splitlines()[-1]
    assert last == "error: database: attempt to write a readonly database"


def test_the_setup_task_checks_inputs_before_storing(prefect_server, tmp_path, db_url,
                                                     tiny_model_file):
    """A deployment runs the flow without the CLI: its setup refuses the same inputs."""
    from prefect import flow

    from tangentlab.config import ConfigError
    from tasks.setup import setup_campaign

    @flow
    def set_up(config: dict) -> int:
        return setup_campaign(db_url, make_config(config))

    with pytest.raises(ConfigError, match="larger than the pool"):
        set_up(base_config(tmp_path, tiny_model_file, test_size=30))
    assert stored_campaigns(db_url) == []
    positions = np.zeros((2, 3))
    positions[1, 0] = 1e8
    pool = _molecules(tmp_path / "far.extxyz", Atoms("H2", positions=positions))
    with pytest.raises(ValueError, match="coordinates out of bounds"):
        set_up(base_config(tmp_path, tiny_model_file, pool=[str(pool)]))
    assert stored_campaigns(db_url) == []


def test_a_refused_start_leaves_no_converted_starting_model(tmp_path, db_url, capsys):
    """The user's pickled .model is converted while the inputs are checked; a later check that
    fails (here the pool is too small) removes the converted file and the folders it made."""
    from tangentlab.config import shipped_file

    config = base_config(tmp_path, Path(shipped_file("tangentlab-hcno-xtb.model")), test_size=30)
    err = refused_start(tmp_path, db_url, capsys, config)
    assert "test_size 30 + initial_size 2 is larger than the pool of 8" in err
    assert not (tmp_path / "runs" / "c1").exists()

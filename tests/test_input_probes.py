"""Careless and hostile inputs given to the `tangentlab` command: refused with one `error:` line
and exit code 2 before anything is stored or written; a campaign's folder belongs to it alone;
the SQLite file alone holds every commit, and `tangentlab backup` copies it whole.

The refusals need no QM and no Prefect server. Most run the command's entry point (`cli.main`)
in this process; a refusal, a missing driver and one tiny real campaign (tiny model, labels
replayed from EMT, one epoch; run once for the folder, checkpoint and backup tests) run as real
`python -m cli` processes, which is how a user meets them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import ase.io
import pytest
import yaml
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from conftest import ONE_EPOCH, write_pool

from db import campaigns, init_db, make_engine, session_scope
from tangentlab.config import make_config


def process(*args: str, cwd: Path, timeout: float = 600, env: dict | None = None,
            python: tuple[str, ...] = ("-m", "cli")) -> subprocess.CompletedProcess:
    """Run ``python -m cli ARGS`` in ``cwd`` (the installed package, or ``PYTHONPATH``'s)."""
    env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, *python, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def cli(*args: str, cwd: Path, env: dict | None = None,
        hidden: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``tangentlab ARGS`` in this process (`cli.main`) in ``cwd``, with ``env`` set and the
    modules ``hidden`` made unimportable; returns its exit code and output as a process would.
    An unexpected exception propagates (a process would print its traceback)."""
    from cli import main

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        patch.chdir(cwd)
        for key, value in (env or {}).items():
            patch.setenv(key, value)
        for name in hidden:
            patch.setitem(sys.modules, name, None)
        code = main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def refused(done: subprocess.CompletedProcess) -> str:
    """The ``error:`` line of a refused command (checked: exit code 2, no traceback)."""
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output, output
    last = done.stderr.rstrip().splitlines()[-1]
    assert last.startswith("error: "), output
    return last


def labelled(path: Path, structures) -> Path:
    """``structures`` with EMT energies and forces stored (what the replay oracle reveals)."""
    for atoms in structures:
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    ase.io.write(path, structures, format="extxyz")
    return path


def tiny_config(folder: Path, model: Path, **overrides) -> dict:
    """A campaign of 9 pool and 3 test structures, labels replayed, one round of one epoch."""
    frames = ase.io.read(write_pool(folder / "raw.extxyz", 12, seed=5), ":")
    config = {
        "name": "c1",
        "pool": [str(labelled(folder / "pool.extxyz", frames[:9]))],
        "test_file": str(labelled(folder / "test.extxyz", frames[9:])),
        "model": str(model),
        "work_dir": str(folder / "runs"),
        "initial_size": 3,
        "oracle": {"name": "replay"},
        "budgets": {"max_labels": 3, "max_rounds": 1},
        "finetune": dict(ONE_EPOCH),
    }
    config.update(overrides)
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def nothing_left(folder: Path, db: Path) -> None:
    """A refused start stored and wrote nothing: no database file, no work_dir."""
    assert not db.exists() and not (folder / "runs").exists()


# Refusals before anything is stored -----------------------------------------------------------


def test_a_config_without_a_pool_is_refused(tmp_path, tiny_model_file):
    config = tiny_config(tmp_path, tiny_model_file)
    del config["pool"]
    path = write_config(tmp_path / "c.yaml", config)
    done = process("--db", "sqlite:///lab.db", "start", str(path), cwd=tmp_path)
    assert "pool: missing" in refused(done)
    nothing_left(tmp_path, tmp_path / "lab.db")


def test_a_test_file_that_is_the_pool_is_refused(tmp_path, tiny_model_file):
    """Every test structure is taken out of the pool; what is left cannot hold the initial set."""
    config = tiny_config(tmp_path, tiny_model_file)
    config["test_file"] = config["pool"][0]
    done = cli("--db", "sqlite:///lab.db", "start", str(write_config(tmp_path / "c.yaml", config)),
               cwd=tmp_path)
    err = refused(done)
    assert "larger than the pool of 0 distinct structures" in err
    assert "the 9 structures that are also in test_file" in err
    nothing_left(tmp_path, tmp_path / "lab.db")


def test_test_structures_are_taken_out_of_the_pool(tmp_path, tiny_model_file):
    from tasks.setup import check_inputs

    config = tiny_config(tmp_path, tiny_model_file)
    frames = ase.io.read(config["pool"][0], ":")
    ase.io.write(tmp_path / "test.extxyz", frames[:2] + ase.io.read(config["test_file"], ":"))
    inputs = check_inputs(make_config(config))
    assert inputs.removed_from_pool == 2
    assert [len(atoms) for atoms in inputs.pool.values()] == [7] and len(inputs.test) == 5


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_pool_that_is_not_a_regular_file_is_refused_unread(tmp_path, tiny_model_file, kind):
    """A FIFO would block the read forever, a link to /dev/zero fill the memory."""
    pool = tmp_path / "pool-special.extxyz"
    if kind == "fifo":
        os.mkfifo(pool)
    else:
        pool.symlink_to("/dev/zero")
    config = tiny_config(tmp_path, tiny_model_file, pool=[str(pool)],
                         oracle={"name": "xtb", "method": "GFN2-xTB"})  # no QM job runs
    done = cli("--db", "sqlite:///lab.db", "start", str(write_config(tmp_path / "c.yaml", config)),
               cwd=tmp_path)
    err = refused(done)
    assert "pool-special.extxyz is " + ("a FIFO" if kind == "fifo" else "a device") in err
    nothing_left(tmp_path, tmp_path / "lab.db")


def test_a_file_over_the_size_limit_is_refused(tmp_path, tiny_model_file):
    config = tiny_config(tmp_path, tiny_model_file)
    done = cli("--db", "sqlite:///lab.db", "start", str(write_config(tmp_path / "c.yaml", config)),
               cwd=tmp_path, env={"TANGENTLAB_MAX_INPUT_MB": "0.001"})
    err = refused(done)
    assert "more than the limit of 0.001 MiB (raise it with TANGENTLAB_MAX_INPUT_MB)" in err
    nothing_left(tmp_path, tmp_path / "lab.db")


def test_a_yaml_alias_bomb_is_refused(tmp_path, tiny_model_file):
    """Four lines of nested aliases: 9**9 strings once expanded."""
    config = yaml.safe_dump(tiny_config(tmp_path, tiny_model_file))
    levels = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    levels += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    bomb = "qm:\n  dask_cluster_kwargs:\n" + "".join(f"    {line}\n" for line in levels)
    path = tmp_path / "c.yaml"
    path.write_text(config + bomb)
    err = refused(cli("--db", "sqlite:///lab.db", "start", str(path), cwd=tmp_path))
    assert err.endswith("alias *a0 found: YAML anchors and aliases are not allowed in this file "
                        "(write the repeated values out) (line 20, column 14)")
    nothing_left(tmp_path, tmp_path / "lab.db")


def test_a_refused_start_leaves_no_folder_and_no_converted_model(tmp_path, tiny_model_file):
    """The pickled starting model is converted while the inputs are checked; a refusal after
    that (the database cannot be made) removes it and every folder made for it."""
    pickled = tiny_model_file.with_suffix(".model")
    config = tiny_config(tmp_path, pickled)
    (tmp_path / "db-folder").mkdir()
    url = f"sqlite:///{tmp_path / 'db-folder'}"  # a folder: SQLite cannot open it
    err = refused(cli("--db", url, "start", str(write_config(tmp_path / "c.yaml", config)),
                      cwd=tmp_path))
    assert err.startswith("error: database:")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_a_missing_database_driver_names_the_extra(tmp_path, driver):
    """psycopg2 is not installed (a real process); psycopg is hidden from the command."""
    args = ("--db", f"postgresql+{driver}://lab:pw@localhost/lab", "status")
    if driver == "psycopg":
        done = cli(*args, cwd=tmp_path, hidden=("psycopg",))
    else:
        done = process(*args, cwd=tmp_path)
    err = refused(done)
    assert f"database driver {driver} is not installed (pip install 'tangentlab[postgres]')" in err
    assert "pw" not in err


@pytest.mark.parametrize("command", [["resume", "c1"], ["status", "c1"], ["status"],
                                     ["export", "c1", "out.extxyz"], ["import", "c1", "x.xyz"]])
def test_reads_of_a_missing_database_create_nothing(tmp_path, command):
    err = refused(cli("--db", "sqlite:///gone.db", *command, cwd=tmp_path))
    what = "no campaigns" if command == ["status"] else "no campaign named 'c1'"
    assert err == f"error: {what} in the database sqlite:///gone.db (gone.db does not exist)"
    assert list(tmp_path.iterdir()) == []


# One tiny real campaign: its folder, its database file, its backup ----------------------------


@pytest.fixture(scope="module")
def finished(prefect_server, tmp_path_factory, tiny_model_file):
    """A campaign run to its label budget by a real `tangentlab start`, and a second campaign
    stored beside it; returns (folder, database file, config)."""
    folder = tmp_path_factory.mktemp("finished")
    config = tiny_config(folder, tiny_model_file)
    write_config(folder / "c.yaml", config)
    done = process("--db", "sqlite:///lab.db", "start", "c.yaml", cwd=folder,
                   env={"PREFECT_API_URL": prefect_server, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 3, done.stdout + done.stderr  # the label budget stopped it
    return folder, folder / "lab.db", config


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _campaigns(path: Path) -> dict[str, int]:
    """Campaign name -> labels done, read from the file ``path`` alone (``immutable``: SQLite
    reads no -wal beside it)."""
    with sqlite3.connect(f"file:{path}?immutable=1", uri=True) as connection:
        rows = connection.execute(
            "SELECT c.name, (SELECT count(*) FROM label l JOIN structure s ON l.structure_id = s.id"
            " WHERE s.campaign_id = c.id AND l.status = 'done') FROM campaign c ORDER BY c.id")
        return dict(rows.fetchall())


def test_the_database_file_alone_holds_the_finished_campaign(finished, tmp_path):
    _, db, _ = finished
    copy = tmp_path / "copy.db"
    shutil.copyfile(db, copy)  # the file alone, as a user copies it
    assert _campaigns(copy) == {"c1": 6}  # 3 initial + 3 test labels


def test_backup_copies_every_campaign_into_one_file(finished, tmp_path):
    _, db, _ = finished
    url = f"sqlite:///{db}"
    with session_scope(make_engine(url)) as session:
        if "c2" not in [c.name for c in campaigns.all_campaigns(session)]:
            campaigns.create_campaign(session, "c2", {})
    done = cli("--db", url, "backup", str(tmp_path / "backup.db"), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 campaigns (c1, c2)" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.db"]
    assert _campaigns(tmp_path / "backup.db") == {"c1": 6, "c2": 0}
    init_db(make_engine(f"sqlite:///{tmp_path / 'backup.db'}"))  # opens as a campaign database
    assert "exists; not overwriting it" in refused(
        cli("--db", url, "backup", str(tmp_path / "backup.db"), cwd=tmp_path))
    pg = refused(cli("--db", "postgresql+psycopg://lab:pw@localhost/lab", "backup", "b.dump",
                     cwd=tmp_path))
    assert "pg_dump --format=custom --file b.dump" in pg and "pw" not in pg


def test_a_campaign_of_another_database_never_writes_into_the_folder(finished, tmp_path):
    """Same name and work_dir, another database: refused before anything is stored there."""
    folder, _, config = finished
    before = _tree(folder / "runs")
    path = write_config(tmp_path / "c.yaml", config)
    err = refused(cli("--db", "sqlite:///other.db", "start", str(path), cwd=tmp_path))
    assert f"{folder / 'runs' / 'c1'} belongs to another campaign named 'c1' of database " \
           f"sqlite:///{folder / 'lab.db'}:" in err
    assert _tree(folder / "runs") == before
    assert not (tmp_path / "other.db").exists()

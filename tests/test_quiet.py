"""Quiet by default: the libraries' notices reach a user only with ``tangentlab --debug``."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

from db import init_db, make_engine
from tangentlab import quiet
from tangentlab.mace_model import load_model

REPO = Path(__file__).resolve().parents[1]
NOTICES = ("UserWarning", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "cuequivariance")


# `python -m cli ARGS`, and then whether the command imported torch (it should not need to).
CLI_THEN_TORCH = ("import sys; from cli import main; code = main(); "
                  "print('torch imported' if 'torch' in sys.modules else '', file=sys.stderr); "
                  "sys.exit(code)")
# Loading a model: MACE, e3nn and TorchScript are imported and compile its layers.
LOAD_MODEL = "import sys; from tangentlab.mace_model import load_model; load_model(sys.argv[1])"


def _run(*args: str, debug: bool = False) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != quiet.DEBUG_ENV}
    if debug:
        env[quiet.DEBUG_ENV] = "1"
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


def test_status_prints_no_library_notice_and_imports_no_torch(tmp_path):
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    init_db(make_engine(url))
    for flags in ((), ("--debug",)):
        done = _run("-c", CLI_THEN_TORCH, *flags, "--db", url, "status")
        assert done.returncode == 0, done.stderr
        assert "torch imported" not in done.stderr  # a command without a model starts quickly
        for notice in NOTICES:
            assert notice not in done.stderr + done.stdout, done.stderr


def test_library_notices_show_only_with_debug(tiny_model_file):
    quiet = _run("-c", LOAD_MODEL, str(tiny_model_file))
    assert quiet.returncode == 0, quiet.stderr
    for notice in NOTICES:
        assert notice not in quiet.stderr + quiet.stdout, quiet.stderr
    loud = _run("-c", LOAD_MODEL, str(tiny_model_file), debug=True)
    assert loud.returncode == 0, loud.stderr
    assert "UserWarning: Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" in loud.stderr
    if importlib.util.find_spec("cuequivariance_torch") is None:
        assert "cuequivariance or cuequivariance_torch is not available" in loud.stderr
    assert loud.stdout == quiet.stdout == ""  # the notices never mix with a command's output


def test_loading_a_model_raises_no_torchscript_warning_when_quiet(tiny_model_file):
    def torchscript_warnings(hide: bool) -> list[str]:
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            if hide:
                quiet.hide_library_warnings()
            load_model(tiny_model_file, script=True)  # as fine-tuning builds it
        return [str(w.message) for w in shown if "TorchScript" in str(w.message)]

    assert torchscript_warnings(hide=True) == []
    assert torchscript_warnings(hide=False)  # e3nn compiles every equivariant layer it builds


def test_schema_migrations_log_nothing_unless_debug(tmp_path, caplog):
    """A campaign start makes or upgrades the schema; Alembic's INFO lines are not shown."""
    caplog.set_level(logging.INFO)
    try:
        quiet.hide_library_warnings()
        init_db(make_engine(f"sqlite:///{tmp_path / 'quiet.db'}"))
        assert not [r for r in caplog.records if r.name.startswith("alembic")]
        quiet.show_library_warnings()
        init_db(make_engine(f"sqlite:///{tmp_path / 'loud.db'}"))
        assert [r for r in caplog.records if r.name.startswith("alembic")]
    finally:
        if not quiet.debug():
            quiet.hide_library_warnings()

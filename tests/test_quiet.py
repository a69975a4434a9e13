"""Quiet by default: the libraries' notices reach a user only with ``tangentlab --debug``."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

from db import init_db, make_engine
from tangentlab import _quiet
from tangentlab.mace_model import load_model

REPO = Path(__file__).resolve().parents[1]
NOTICES = ("UserWarning", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "cuequivariance")


def _status(url: str, *flags: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != _quiet.DEBUG_ENV}
    return subprocess.run([sys.executable, "-m", "cli", *flags, "--db", url, "status"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)


def test_status_prints_no_library_notice_unless_debug(tmp_path):
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    init_db(make_engine(url))
    quiet = _status(url)
    assert quiet.returncode == 0, quiet.stderr
    for notice in NOTICES:
        assert notice not in quiet.stderr + quiet.stdout, quiet.stderr
    loud = _status(url, "--debug")
    assert loud.returncode == 0, loud.stderr
    assert "UserWarning: Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" in loud.stderr
    if importlib.util.find_spec("cuequivariance_torch") is None:
        assert "cuequivariance or cuequivariance_torch is not available" in loud.stderr
    assert loud.stdout == quiet.stdout  # the notices never mix with the command's output


def test_loading_a_model_raises_no_torchscript_warning_when_quiet(tiny_model_file):
    def torchscript_warnings(hide: bool) -> list[str]:
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            if hide:
                _quiet.hide_library_warnings()
            load_model(tiny_model_file)
        return [str(w.message) for w in shown if "TorchScript" in str(w.message)]

    assert torchscript_warnings(hide=True) == []
    assert torchscript_warnings(hide=False)  # e3nn compiles every equivariant layer it builds

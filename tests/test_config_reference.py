"""docs/configuration.md is generated from the configuration's fields and must match them."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from tangentlab.config import make_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reference():
    path = ROOT / "scripts" / "config_reference.py"
    spec = importlib.util.spec_from_file_location("config_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_configuration_reference_is_up_to_date(reference):
    assert (ROOT / "docs" / "configuration.md").read_text() == reference.render(), (
        "docs/configuration.md is out of date: run python scripts/config_reference.py")


def test_every_configuration_key_has_a_description(reference):
    models = [model for _, _, model, _ in reference.SECTIONS]
    models += [oracle.settings_model for oracle in reference.ORACLES.values()]
    missing = [f"{model.__name__}.{name}" for model in models
               for name, field in model.model_fields.items()
               if not (field.description or "").strip()]
    assert not missing


def test_every_key_is_listed_with_its_default(reference):
    text = reference.render()
    config = make_config()
    for section in ("targets", "budgets", "acquisition", "qm", "finetune"):
        for name in getattr(config, section).model_fields:
            assert f"| `{section}.{name}` |" in text
    assert "| `acquisition.batch_size` | int | `10` |" in text
    assert "| `qm.task_runner` | 'threads' \\| 'dask' | `threads` |" in text


def test_the_reference_names_no_path_of_this_machine(reference):
    assert reference._package_root() not in reference.render()


def test_the_example_configuration_is_valid(reference):
    example = re.search(r"```yaml\n(.*?)```", reference.render(), re.S).group(1)
    config = make_config(yaml.safe_load(example))
    assert config.oracle.name == "xtb" and config.acquisition.batch_size == 20

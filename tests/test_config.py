from __future__ import annotations

import pytest

from tangentlab.config import ConfigError, load_config, make_config


def test_defaults_are_the_quickstart():
    config = make_config()
    assert config.name == "quickstart"
    assert config.oracle.model_dump() == {"name": "pyscf", "xc": "wb97x", "basis": "6-31g*"}
    assert config.model.endswith("tangentlab-hcno-xtb.model")


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="unknown key 'acquisition.batchsize'"):
        make_config({"acquisition": {"batchsize": 5}})
    with pytest.raises(ConfigError, match="unknown key 'colour'"):
        make_config({"colour": "blue"})


def test_negative_target_is_named():
    with pytest.raises(ConfigError, match="targets.force_mae_mev_per_a: Input should be greater than 0"):
        make_config({"targets": {"force_mae_mev_per_a": -5}})


def test_config_file_paths_are_relative_to_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\npool: [pool.xyz]\nmodel: m.model\n")
    config = load_config(path)
    assert config.pool == [str(tmp_path / "pool.xyz")]
    assert config.model == str(tmp_path / "m.model")


@pytest.mark.parametrize(
    ("text", "message"),
    [("[1, 2]", "must hold a mapping"), ("name: [unclosed", "not valid YAML"), ("pool: []", "pool")],
)
def test_bad_config_files(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")

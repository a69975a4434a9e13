from __future__ import annotations

import pytest

from tangentlab.config import ConfigError, config_json, load_config, make_config


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


# A configuration as the database stored it before the oracle section was a union per oracle.
STORED_CONFIG = {
    "name": "orca-run", "pool": ["/data/pool.extxyz"], "test_file": None, "test_size": 30,
    "initial_size": 10, "valid_fraction": 0.15, "model": "/data/start.model", "work_dir": "runs",
    "seed": 0, "device": "cpu",
    "targets": {"energy_mae_mev_per_atom": 160.0, "force_mae_mev_per_a": 450.0},
    "budgets": {"max_labels": 90, "max_rounds": 8, "max_wall_time_s": 3600.0},
    "oracle": {"name": "quacc", "recipe": "quacc.recipes.orca.core.static_job",
               "kwargs": {"xc": "wb97x-d3bj", "basis": "def2-tzvp", "nprocs": 8},
               "level": {"method": "wB97X-D3BJ", "basis": "def2-TZVP"}},
    "acquisition": {"method": "activation", "rule": "greedy", "committee_size": 3, "batch_size": 10,
                    "regularization": 0.01, "feature_batch_size": 64},
    "qm": {"max_attempts": 2, "timeout_s": 600.0, "max_parallel": 1, "num_threads": None,
           "task_runner": "threads", "dask_address": None, "dask_cluster_class": None,
           "dask_cluster_kwargs": {}, "dask_adapt_kwargs": {}, "deployment": None},
    "finetune": {"max_epochs": 40, "patience": 8, "lr": 0.002, "batch_size": 8, "energy_weight": 1.0,
                 "forces_weight": 10.0, "ema_decay": 0.95, "e0_refit_interval": 5,
                 "min_steps_per_epoch": 10, "min_valid": 5},
}


@pytest.mark.parametrize(
    "oracle",
    [
        STORED_CONFIG["oracle"],
        {"name": "pyscf", "xc": "wb97x", "basis": "6-31g*"},
        {"name": "pyscf", "xc": "hf", "basis": "sto-3g", "max_cycle": 50, "dispersion": None},
        {"name": "xtb", "method": "GFN2-xTB"},
        {"name": "replay"},
        {"name": "replay", "files": ["/data/pool.extxyz"], "reference_level": {"method": "ωB97X-V"}},
    ],
)
def test_stored_configs_still_load_and_store_the_oracle_as_given(oracle):
    stored = STORED_CONFIG | {"oracle": oracle}
    config = make_config(stored, source="of campaign 'orca-run'")
    assert config_json(config)["oracle"] == oracle
    assert config.oracle.model_dump() == oracle


def test_oracle_section_is_checked_per_oracle():
    assert make_config({"oracle": {"xc": "hf"}}).oracle.model_dump() == {"name": "pyscf", "xc": "hf"}
    with pytest.raises(ConfigError, match=r"oracle: unknown oracle name 'orca'; known: \[.*'pyscf'"):
        make_config({"oracle": {"name": "orca"}})
    with pytest.raises(ConfigError, match=r"unknown key 'oracle\.pyscf\.functional'"):
        make_config({"oracle": {"name": "pyscf", "functional": "b3lyp"}})
    with pytest.raises(ConfigError, match=r"unknown key 'oracle\.xtb\.basis'"):
        make_config({"oracle": {"name": "xtb", "basis": "6-31g*"}})
    with pytest.raises(ConfigError, match=r"oracle\.pyscf\.max_cycle: Input should be a valid integer"):
        make_config({"oracle": {"name": "pyscf", "max_cycle": "many"}})
    with pytest.raises(ConfigError, match=r"oracle\.quacc\.recipe: Field required"):
        make_config({"oracle": {"name": "quacc"}})
    with pytest.raises(ConfigError, match="oracle: Input should be a mapping"):
        make_config({"oracle": "pyscf"})
    # a recipe's own keywords are free-form: the recipe's signature checks them (make_oracle)
    free = {"name": "quacc", "recipe": "quacc.recipes.emt.core.static_job", "kwargs": {"anything": 1}}
    assert make_config({"oracle": free}).oracle.model_dump() == free


def test_stored_acquisition_section_keeps_its_meaning():
    """Configs stored with the old key 'method' (and 'descriptor') load as signal + greedy."""
    config = make_config(STORED_CONFIG, source="of campaign 'orca-run'")
    assert (config.acquisition.signal, config.acquisition.rule) == ("activation", "greedy")
    old = STORED_CONFIG | {"acquisition": {**STORED_CONFIG["acquisition"], "method": "descriptor"}}
    assert make_config(old).acquisition.signal == "random_mace"
    assert config_json(config)["finetune"]["start"] == "previous"


def test_acquisition_section_is_checked_against_the_registries():
    default = make_config({}).acquisition
    assert (default.signal, default.rule, default.target) == ("activation", "transductive", "test")
    ntk = make_config({"acquisition": {"signal": "ntk", "signal_options": {"sketch_dim": 32}}})
    assert ntk.acquisition.signal_keywords()["sketch_dim"] == 32
    for section, message in (
        ({"signal": "soap"}, "unknown signal 'soap'"),
        ({"rule": "best"}, "unknown batch rule 'best'"),
        ({"signal": "ntk", "signal_options": {"sketchdim": 4}}, r"signal_options \['sketchdim'\]"),
        ({"signal": "random", "signal_options": {"sketch_dim": 4}}, "takes no signal_options"),
        ({"signal": "ntk", "method": "ntk"}, "not both"),
        ({"sigma_quantile": 1.5}, "sigma_quantile"),
        ({"max_force": -1}, "max_force"),
    ):
        with pytest.raises(ConfigError, match=message):
            make_config({"acquisition": section})


def test_acquisition_target_file_is_relative_to_the_config(tmp_path):
    (tmp_path / "c.yaml").write_text("pool: [p.xyz]\nacquisition: {target: frames.extxyz}\n")
    assert load_config(tmp_path / "c.yaml").acquisition.target == str(tmp_path / "frames.extxyz")
    for keyword in ("pool", "test"):  # the campaign's own sets, not files beside the config
        (tmp_path / "c.yaml").write_text(f"pool: [p.xyz]\nacquisition: {{target: {keyword}}}\n")
        assert load_config(tmp_path / "c.yaml").acquisition.target == keyword


def test_finetune_start_is_not_a_trainer_keyword():
    from tangentlab.finetune import FineTuneHyperparameters

    section = make_config({"finetune": {"start": "pretrained"}}).finetune
    assert section.start == "pretrained" and "start" not in section.hyperparameters()
    FineTuneHyperparameters(**section.hyperparameters())
    with pytest.raises(ConfigError, match="finetune.start"):
        make_config({"finetune": {"start": "yesterday"}})


@pytest.mark.parametrize("target", ["pool", "explored", "frames.extxyz"])
@pytest.mark.parametrize("rule", ["greedy", "lcmd", "top"])
def test_a_target_without_the_transductive_rule_is_refused_by_name(rule, target):
    data = {"acquisition": {"rule": rule, "target": target}, "exploration": {}}
    message = f"acquisition: target '{target}' has no effect with rule '{rule}'"
    with pytest.raises(ConfigError, match=message):
        make_config(data)
    assert make_config({**data, "acquisition": {"rule": "transductive", "target": target}})


def test_the_default_target_is_kept_with_any_rule():
    # init-config writes every key and the database stores every key: the default target with
    # another rule is what such a file holds after the rule was changed, and it reads back
    config = make_config({"acquisition": {"rule": "greedy", "target": "test"}})
    assert make_config(config_json(config)) == config


EMT_RECIPE = {"name": "quacc", "recipe": "quacc.recipes.emt.core.static_job"}


@pytest.mark.parametrize("oracle", [{"name": "xtb"}, {"name": "replay"}, EMT_RECIPE])
def test_qm_threads_with_an_oracle_that_ignores_them_are_refused_by_name(oracle):
    message = f"qm.num_threads has no effect with oracle '{oracle['name']}'"
    with pytest.raises(ConfigError, match=message):
        make_config({"oracle": oracle, "qm": {"num_threads": 2}})
    assert make_config({"oracle": oracle}).qm.num_threads is None


def test_qm_threads_are_taken_by_the_pyscf_oracle():
    assert make_config({"qm": {"num_threads": 2}}).qm.num_threads == 2


@pytest.mark.parametrize("signal", ["random", "committee"])
@pytest.mark.parametrize("key, value", [("rule", "greedy"), ("target", "pool"), ("sigma_quantile", 0.9),
                                        ("max_force", 5.0), ("feature_batch_size", 8)])
def test_a_setting_a_signal_without_feature_rows_never_reads_is_refused_by_name(signal, key, value):
    with pytest.raises(ConfigError, match=rf"acquisition: {key} has no effect here \(signal '{signal}'"):
        make_config({"acquisition": {"signal": signal, key: value}})
    assert make_config({"acquisition": {"signal": "activation", key: value}}).acquisition


def test_committee_size_and_forward_batches_only_with_a_signal_that_uses_them():
    with pytest.raises(ConfigError, match="committee_size has no effect here .*not 'activation'"):
        make_config({"acquisition": {"committee_size": 5}})
    assert make_config({"acquisition": {"signal": "committee", "committee_size": 5}})
    with pytest.raises(ConfigError, match="feature_batch_size has no effect .*'fixed_descriptor'"):
        make_config({"acquisition": {"signal": "fixed_descriptor", "feature_batch_size": 8}})
    assert make_config({"acquisition": {"signal": "ntk", "feature_batch_size": 8}})


@pytest.mark.parametrize("engine, key, value", [
    ("rattle", "temperatures_K", [500.0]), ("rattle", "timestep_fs", 1.0), ("rattle", "walkers_per_call", 4),
    ("md", "rattle_stdev", 0.2), ("md", "neb_images", 9), ("md", "fmax", 0.1),
])
def test_an_engine_setting_without_its_engine_is_refused_by_name(engine, key, value):
    with pytest.raises(ConfigError, match=f"exploration: {key} has no effect here"):
        make_config({"exploration": {"engine": engine, key: value}})
    assert make_config({"exploration": {"engine": ["md", "rattle", "neb"], key: value,
                                        "neb_endpoints": ["ends.extxyz"]}}).exploration


def test_test_step_without_a_growing_test_set_is_refused_by_name():
    with pytest.raises(ConfigError, match="test_step has no effect here"):
        make_config({"test_step": 5})
    assert make_config({"test_step": 5, "test_max_size": 60}).test_step == 5


def test_a_written_out_configuration_reads_back_for_every_signal_and_engine():
    # init-config and the database write every key, with its default where it has no effect
    for acquisition in ({"signal": "random"}, {"signal": "committee"}, {"signal": "fixed_descriptor"}):
        config = make_config({"acquisition": acquisition})
        assert make_config(config_json(config)) == config
    for engine in ("md", "rattle"):
        config = make_config({"exploration": {"engine": engine}})
        assert make_config(config_json(config)) == config


def test_regularization_without_a_feature_posterior_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"acquisition.regularization has no effect here \(signal 'random'"):
        make_config({"acquisition": {"signal": "random", "regularization": 0.1}})
    # exploration's σ comes from a feature posterior even when the acquisition has none
    assert make_config({"acquisition": {"signal": "random", "regularization": 0.1}, "exploration": {}})


def test_test_size_with_a_test_file_is_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match=r"test_size has no effect here \(the test set is test_file's"):
        make_config({"test_file": "test.extxyz", "test_size": 12})
    assert make_config({"test_file": "test.extxyz"}).test_size == 30  # the default, as stored


def test_a_stored_configuration_with_a_key_without_effect_still_loads():
    # stored before such keys were refused: the campaign resumes, the key still has no effect
    from tangentlab.config import read_stored_config

    stored = config_json(make_config({"acquisition": {"signal": "random"}}))
    stored["acquisition"]["rule"] = "greedy"
    stored["test_step"] = 5
    with pytest.raises(ConfigError, match="rule has no effect here"):
        make_config(stored)
    config = read_stored_config(stored)
    assert (config.acquisition.rule, config.test_step) == ("greedy", 5)
    with pytest.raises(ConfigError, match="rule has no effect here"):  # only inside the read
        make_config(stored)


def test_a_campaign_stored_before_the_interval_keys_keeps_its_stop_rule():
    from tangentlab.config import read_stored_config

    stored = config_json(make_config({}))
    assert stored["targets"]["interval"] == "auto" and stored["targets"]["confidence"] == 0.9
    assert read_stored_config(stored).targets.interval == "auto"  # stored with the key: kept
    older = {**stored, "targets": {k: v for k, v in stored["targets"].items() if k != "interval"}}
    assert read_stored_config(older).targets.interval == "bootstrap"
    assert read_stored_config(older).targets.confidence == 0.9
    oldest = {**stored, "targets": {k: v for k, v in stored["targets"].items()
                                    if k not in ("interval", "confidence")}}
    assert (read_stored_config(oldest).targets.interval, read_stored_config(oldest).targets.confidence) == (
        "bootstrap", None)


@pytest.mark.parametrize("schedule", ["sync", "async"])
def test_the_two_worker_quick_start_files_differ_from_the_quick_start_only_where_documented(schedule):
    """docs/benchmarks/async-schedule.md compares these two files as the quick start with 2
    PySCF workers, one thread per job and 2 rounds, on the one schedule or the other."""
    from pathlib import Path

    from tangentlab.config import QUICKSTART_POOL, shipped_file

    root = Path(__file__).resolve().parents[1]
    config = config_json(load_config(root / "examples" / f"quickstart-2workers-{schedule}.yaml"))
    quickstart = config_json(make_config({"pool": [shipped_file(QUICKSTART_POOL)]}))
    assert Path(config.pop("pool")[0]).resolve() == Path(quickstart.pop("pool")[0]).resolve()
    differ = {key for key in quickstart if config[key] != quickstart[key]}
    async_keys = {"schedule", "streaming"} if schedule == "async" else set()
    assert differ == {"name", "budgets", "qm"} | async_keys
    assert config["budgets"] == {**quickstart["budgets"], "max_rounds": 2}
    assert config["qm"] == {**quickstart["qm"], "max_parallel": 2, "num_threads": 1}
    assert config["schedule"] == schedule
    if schedule == "async":  # the streaming defaults
        defaults = make_config({"pool": [shipped_file(QUICKSTART_POOL)], "schedule": "async"})
        assert config["streaming"] == config_json(defaults)["streaming"]

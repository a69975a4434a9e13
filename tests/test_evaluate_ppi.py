"""``targets.interval: ppi`` (and ``ppi-t``): the evaluated model's test errors get prediction-powered intervals
over the unlabelled pool, from its scorer's σ calibrated on the validation labels.

A real SQLite campaign database and the tiny real MACE model; no Prefect server.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from ase.calculators.emt import EMT
from test_round_context import _structures

from db import campaigns, init_db, labels, make_engine, registry, session_scope, structures
from tangentlab.config import ConfigError, make_config
from tangentlab.structures import content_hash

LEVEL = {"method": "EMT", "basis": None, "code": "ase", "code_version": "test"}


def _label(session, campaign_id: int, atoms_by_id: dict, structure_ids: list[int]) -> None:
    ids = labels.ensure_labels(session, structure_ids, LEVEL)
    claimed = labels.claim_labels(session, campaign_id, labels.level_key(LEVEL), len(ids), "test")
    assert sorted(claimed) == sorted(ids)
    for label_id, sid in zip(ids, structure_ids, strict=True):
        atoms = atoms_by_id[sid].copy()
        atoms.calc = EMT()
        labels.complete_label(session, label_id, atoms.get_potential_energy(), atoms.get_forces(), 1.0, "run")


@pytest.fixture
def lab(tmp_path, tiny_model_file, monkeypatch):
    """A campaign with 6 training, ``valid`` validation and 8 test labels (EMT) and a pool of
    20 unlabelled structures; returns (url, campaign id, model id)."""
    monkeypatch.setattr("tasks.evaluate.get_run_logger", lambda: logging.getLogger("tangentlab.test"))

    def make(valid: int):
        url = f"sqlite:///{tmp_path / f'lab{valid}.db'}"
        init_db(make_engine(url))
        atoms = _structures(34 + valid, seed=4)
        with session_scope(make_engine(url)) as session:
            camp = campaigns.create_campaign(session, "ppi", {})
            ids = structures.import_atoms(
                session, camp, atoms, [content_hash(a) for a in atoms], origin="pool"
            ).structure_ids
            by_id = dict(zip(ids, atoms, strict=True))
            splits = {"train": ids[:6], "valid": ids[6:6 + valid], "test": ids[6 + valid:14 + valid]}
            for split, chosen in splits.items():
                structures.set_split(session, chosen, split)
                _label(session, camp.id, by_id, chosen)
            model = registry.register_model(session, camp, tiny_model_file, hyperparameters={"source": "test"})
            return url, camp.id, model.id

    return make


def test_ppi_intervals_cover_the_pool_from_its_predicted_errors(lab):
    from tasks.evaluate import _test_errors

    url, campaign_id, model_id = lab(valid=3)
    plain = _test_errors(url, campaign_id, model_id, "cpu", "free", 0.9)
    config = make_config({"name": "ppi", "acquisition": {"method": "activation"}, "targets": {"interval": "ppi"}})
    found = _test_errors(url, campaign_id, model_id, "cpu", "free", 0.9, config)
    assert plain["interval_method"] == "bootstrap" and "bootstrap_intervals" not in plain
    assert found["interval_method"] == "ppi"
    # the point estimates stay the test set's; the bootstrap intervals are kept beside
    assert found["force_mae_mev_per_a"] == plain["force_mae_mev_per_a"]
    assert found["bootstrap_intervals"]["force_mae_interval_mev_per_a"] == plain["force_mae_interval_mev_per_a"]
    assert found["ppi"]["n_target"] == 20
    for quantity, key in (("energy", "energy_mae_interval_mev_per_atom"), ("force", "force_mae_interval_mev_per_a")):
        low, high = found[key]
        assert 0 <= found["ppi"][quantity]["lambda"] <= 1
        assert low <= found["ppi"][quantity]["mae"] <= high
        assert found[key] != plain[key]
    assert np.isfinite(found["force_mae_interval_mev_per_a"]).all()
    from flows.rendering import errors_text

    assert errors_text(found).endswith(" meV/Å (90% prediction-powered intervals)")
    assert errors_text(plain).endswith(" meV/Å (90% intervals)")


def test_ppi_t_and_ppi_pool_are_the_same_estimate_with_other_intervals(lab):
    from tangentlab.config.sections import Targets
    from tangentlab.prediction_powered import PPI_METHODS
    from tasks.evaluate import _test_errors

    # every prediction-powered value of targets.interval has its method, and only those
    assert set(PPI_METHODS) == set(Targets.model_fields["interval"].annotation.__args__) - {"auto", "bootstrap"}
    url, campaign_id, model_id = lab(valid=3)
    found = {
        name: _test_errors(url, campaign_id, model_id, "cpu", "free", 0.9, make_config(
            {"name": "ppi", "acquisition": {"method": "activation"}, "targets": {"interval": name}}))
        for name in ("ppi", "ppi-t", "ppi-pool")
    }
    for name in ("ppi-t", "ppi-pool"):
        assert found[name]["interval_method"] == name
        assert found[name]["ppi"] == found["ppi"]["ppi"]  # the estimate and λ do not depend on the interval
        for key in ("energy_mae_interval_mev_per_atom", "force_mae_interval_mev_per_a"):
            low, high = found[name][key]
            assert found[name][key] != found["ppi"][key] and low < high
    symmetric = 0
    for quantity, key in (("energy", "energy_mae_interval_mev_per_atom"), ("force", "force_mae_interval_mev_per_a")):
        low, high = found["ppi-t"][key]
        estimate = found["ppi-t"]["ppi"][quantity]["mae"]
        assert found["ppi-t"][key] != found["ppi"][key]
        if low > 0:  # a t interval is symmetric about the estimate (unless cut at zero)
            assert abs((high - estimate) - (estimate - low)) < 0.02
            symmetric += 1
    assert symmetric
    from flows.rendering import errors_text

    assert errors_text(found["ppi-t"]).endswith(" meV/Å (90% prediction-powered intervals)")


def test_ppi_falls_back_to_the_bootstrap_without_two_validation_labels(lab):
    from tasks.evaluate import _test_errors

    url, campaign_id, model_id = lab(valid=1)
    config = make_config({"name": "ppi", "acquisition": {"method": "activation"}, "targets": {"interval": "ppi"}})
    found = _test_errors(url, campaign_id, model_id, "cpu", "free", 0.9, config)
    assert found["interval_method"] == "bootstrap" and "ppi" not in found


def test_ppi_needs_a_feature_signal_and_a_test_set_from_the_pool(tmp_path):
    with pytest.raises(ConfigError, match="needs σ from a feature signal"):
        make_config({"name": "x", "acquisition": {"method": "random"}, "targets": {"interval": "ppi"}})
    test_file = tmp_path / "test.extxyz"
    test_file.write_text("")
    with pytest.raises(ConfigError, match="leave out test_file"):
        make_config({"name": "x", "test_file": str(test_file), "targets": {"interval": "ppi"}})
    with pytest.raises(ConfigError, match="interval"):
        make_config({"name": "x", "targets": {"interval": "bca"}})


def test_auto_is_ppi_pool_where_the_campaign_can_have_it(lab, tmp_path, caplog):
    from tangentlab.config import AUTO_PPI, interval_method
    from tasks.evaluate import _test_errors

    test_file = tmp_path / "test.extxyz"
    test_file.write_text("")
    assert make_config({"name": "x"}).targets.interval == "auto"
    assert AUTO_PPI == "ppi-pool"
    assert interval_method(make_config({"name": "x", "acquisition": {"method": "activation"}})) == "ppi-pool"
    assert interval_method(make_config({"name": "x", "acquisition": {"method": "random"}})) == "bootstrap"
    assert interval_method(make_config({"name": "x", "test_file": str(test_file)})) == "bootstrap"
    assert interval_method(make_config({"name": "x", "targets": {"interval": "ppi-t"}})) == "ppi-t"
    assert interval_method(make_config({"name": "x", "targets": {"interval": "bootstrap"}})) == "bootstrap"
    url, campaign_id, model_id = lab(valid=3)
    with caplog.at_level(logging.INFO, logger="tangentlab.test"):
        found = _test_errors(url, campaign_id, model_id, "cpu", "free", 0.9, make_config({"name": "ppi"}))
    assert "meV/Å (90 % prediction-powered intervals)" in caplog.text  # the log says which
    chosen = _test_errors(url, campaign_id, model_id, "cpu", "free", 0.9,
                          make_config({"name": "ppi", "targets": {"interval": "ppi-pool"}}))
    assert found["interval_method"] == "ppi-pool" and found == chosen
    plain = _test_errors(url, campaign_id, model_id, "cpu", "free", 0.9,
                         make_config({"name": "ppi", "acquisition": {"method": "random"}}))
    assert plain["interval_method"] == "bootstrap" and "bootstrap_intervals" not in plain


@pytest.mark.slow
def test_a_campaign_states_prediction_powered_intervals(prefect_server, tmp_path):
    # The flow hands its configuration to the evaluation: a round with two validation labels
    # is measured with the prediction-powered interval, and the overview says so.
    from conftest import replay_campaign_config

    from db import reports
    from flows.campaign import campaign
    from flows.rendering import errors_text

    config = replay_campaign_config(
        tmp_path, "ppi", 30, seed=5, valid_fraction=0.34,
        budgets={"max_rounds": 1, "max_labels": 30},
        targets={"energy_mae_mev_per_atom": 0.01, "force_mae_mev_per_a": 0.01, "interval": "ppi"},
    )
    url = f"sqlite:///{tmp_path / 'c.db'}"
    result = campaign(config=config, database_url=url)
    start, first, *_ = result["models"]
    assert start["test"]["interval_method"] == "bootstrap"  # the starting model: no validation labels yet
    assert first["test"]["interval_method"] == "ppi"
    assert errors_text(first["test"]).endswith("(90% prediction-powered intervals)")
    with session_scope(make_engine(url)) as session:
        camp = campaigns.get_campaign(session, "ppi")
        report = reports.campaign_report(session, camp)
        distinct = len(structures.campaign_structures(session, camp))
    assert report["status"] == "budget_exhausted"
    # the target: the distinct pool structures left after the test set and the initial set
    # were drawn (round 1's batch is picked after round 0's evaluation)
    assert first["test"]["ppi"]["n_target"] == distinct - 6 - 6

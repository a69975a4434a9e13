"""Fine-tuning a tiny real MACE on real GFN2-xTB labels."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
import torch
from conftest import write_pool

from tangentlab.config import FineTune
from tangentlab.finetune import FineTuneHyperparameters, finetune, refit_e0s
from tangentlab.mace_model import load_model, predict
from tangentlab.metrics import error_metrics
from tangentlab.oracles.xtb import xtb_static


def test_refit_e0s_recovers_reference_energies():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 4, size=(20, 3)).astype(float)
    counts[:, 0] += 1
    e0 = np.array([-13.6, -1029.0, -2040.5])
    fitted = refit_e0s(counts, counts @ e0, prior=np.zeros(3))
    np.testing.assert_allclose(fitted, e0, atol=1e-4)


def test_refit_e0s_is_defined_for_an_absent_element():
    counts = np.array([[2.0, 0.0], [4.0, 0.0]])
    fitted = refit_e0s(counts, counts @ np.array([-5.0, 0.0]), prior=np.array([-1.0, -7.0]))
    assert fitted[0] == pytest.approx(-5.0, abs=1e-3)
    assert fitted[1] == pytest.approx(-7.0 - 4.0, abs=1e-2)  # prior moved by the mean per-atom shift


def test_a_direct_fine_tune_has_a_campaigns_defaults():
    # A benchmark that calls finetune() without hyperparameters trains like a campaign round.
    campaign = FineTune().hyperparameters()
    direct = vars(FineTuneHyperparameters())
    assert {key: direct[key] for key in campaign} == campaign
    assert (direct["max_epochs"], direct["patience"]) == (40, 8)


@pytest.fixture(scope="module")
def xtb_data(tmp_path_factory):
    path = write_pool(tmp_path_factory.mktemp("ft") / "pool.extxyz", 16, seed=5, max_atoms=4)
    out = []
    for atoms in ase.io.read(path, ":"):
        result = xtb_static(atoms)
        atoms.info["energy"], atoms.arrays["forces"] = result.energy, result.forces
        out.append(atoms)
    return out


def _errors(model_path, data):
    preds = predict(load_model(model_path), data)
    return error_metrics(preds, [(a.info["energy"], a.arrays["forces"]) for a in data], [len(a) for a in data])


def test_finetune_learns_and_writes_a_standard_model(tiny_model_file, xtb_data, tmp_path):
    train, valid = xtb_data[:12], xtb_data[12:]
    before = _errors(tiny_model_file, train)
    dtype = torch.get_default_dtype()
    result = finetune(tiny_model_file, train, valid, tmp_path / "ft.model",
                      hyper=FineTuneHyperparameters(max_epochs=15, patience=15, lr=5e-3))
    assert torch.get_default_dtype() == dtype
    assert result.best_epoch >= 1 and result.path.exists()
    after = _errors(result.path, train)
    # The E0 refit removes the convention mismatch; training then lowers the force error.
    assert after["energy_mae_mev_per_atom"] < 0.05 * before["energy_mae_mev_per_atom"]
    assert after["force_mae_mev_per_a"] < before["force_mae_mev_per_a"]
    from mace.calculators import MACECalculator

    atoms = train[0].copy()
    # tangentlab registers the weights-only file; users get a standard .model beside it.
    assert result.path == tmp_path / "ft.pt"
    atoms.calc = MACECalculator(model_paths=str(tmp_path / "ft.model"), device="cpu", default_dtype="float64")
    assert atoms.get_potential_energy() == pytest.approx(predict(load_model(result.path), [atoms])[0][0], abs=1e-9)
    torch.set_default_dtype(dtype)


def test_finetune_needs_training_data(tiny_model_file, tmp_path):
    with pytest.raises(ValueError, match="at least one labelled training structure"):
        finetune(tiny_model_file, [], [], tmp_path / "x.model")


def test_committee_disagrees_where_members_differ(tiny_model_file, xtb_data, tmp_path):
    from tangentlab.acquisition.committee import (
        CommitteeScorer,
        committee_disagreement,
        committee_selection,
        fit_committee,
        train_committee,
    )

    energy_std, force_std = committee_disagreement([tiny_model_file, tiny_model_file], xtb_data[:4])
    np.testing.assert_allclose(energy_std, 0.0, atol=1e-12)
    np.testing.assert_allclose(force_std, 0.0, atol=1e-12)
    scorer = fit_committee(tiny_model_file, xtb_data[:10], xtb_data[10:12], tmp_path, size=2,
                           hyper=FineTuneHyperparameters(max_epochs=2, patience=2))
    assert scorer.signal == "committee" and len(scorer.members) == 2
    molecules = [a for a in xtb_data[12:] if len(a) >= 2]  # a lone atom feels no force
    energy_std, force_std = committee_disagreement(scorer.members, molecules)
    assert (force_std > 0).all() and (energy_std > 0).all()
    picked = committee_selection(force_std, 2)
    assert list(picked) == list(np.argsort(-force_std)[:2])
    # The scorer: σ² is the squared force spread, its picks the committee's.
    np.testing.assert_array_equal(scorer.variance(molecules), force_std**2)
    chosen, scores = scorer.select(molecules, 2, exclude=[int(picked[0])])
    assert list(chosen) == [i for i in np.argsort(-force_std, kind="stable") if i != picked[0]][:2]
    np.testing.assert_array_equal(scores, force_std[chosen] ** 2)
    assert CommitteeScorer.from_dir(tmp_path).members == scorer.members
    with pytest.raises(ValueError, match="at least 2 members"):
        train_committee(tiny_model_file, xtb_data, [], tmp_path, size=1)
    with pytest.raises(ValueError, match="0 committee member files"):
        CommitteeScorer.from_dir(tmp_path / "none")


def test_rounds_start_from_the_latest_or_the_starting_model():
    from tasks.train import parent_version

    versions = ["start", "round 0", "round 1"]
    assert parent_version(versions, "previous") == "round 1"
    assert parent_version(versions, "pretrained") == "start"
    with pytest.raises(ValueError, match="no model version"):
        parent_version([], "previous")

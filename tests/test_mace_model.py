from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from mace.calculators import MACECalculator
from tiny_model import rattled_molecules

from tangentlab.mace_model import (
    atoms_to_batch,
    default_dtype,
    iter_batches,
    load_model,
    model_cutoff,
    model_elements,
    predict,
)
from tangentlab.metrics import energy_mae_per_atom, error_metrics, force_mae
from tangentlab.model_files import starting_weights

PRETRAINED = Path(__file__).resolve().parents[2] / "shared/models/mace-tutorial-hco-swa.model"
needs_pretrained = pytest.mark.skipif(
    not PRETRAINED.is_file(), reason="shared pretrained H/C/O MACE not present"
)


def _rattled(names: list[str], seed: int = 0) -> list[Atoms]:
    return rattled_molecules(names, seed)


def test_default_dtype_restores_on_exit_and_error():
    before = torch.get_default_dtype()
    with default_dtype(torch.float64):
        assert torch.get_default_dtype() == torch.float64
    assert torch.get_default_dtype() == before
    with pytest.raises(RuntimeError), default_dtype(torch.float64):
        raise RuntimeError("boom")
    assert torch.get_default_dtype() == before


def test_load_model_float64_eval_frozen(tiny_model_file):
    before = torch.get_default_dtype()
    model = load_model(tiny_model_file)
    assert torch.get_default_dtype() == before
    assert not model.training
    assert all(p.dtype == torch.float64 and not p.requires_grad for p in model.parameters())
    assert model.r_max.dtype == torch.float64


def test_load_model_float32(tiny_model_file):
    model = load_model(tiny_model_file, dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    energy, forces = predict(model, [molecule("CH4")])[0]
    assert np.isfinite(energy)
    assert forces.dtype == np.float64


def test_load_model_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope.model"
    with pytest.raises(FileNotFoundError, match="nope.model"):
        load_model(missing)
    text = tmp_path / "text.model"
    text.write_text("not a model")
    with pytest.raises(ValueError, match="text.model"):
        load_model(text)
    not_mace = tmp_path / "linear.model"
    torch.save(torch.nn.Linear(2, 2), not_mace)
    with pytest.raises(ValueError, match="linear.model"):
        load_model(not_mace)


def test_elements_and_cutoff(tiny_model_file):
    model = load_model(tiny_model_file)
    assert model_elements(model) == [1, 6, 7, 8]
    assert model_cutoff(model) == pytest.approx(4.0)


@pytest.fixture(scope="module")
def pretrained_weights(tmp_path_factory) -> Path:
    """The shared pretrained ``.model`` converted to a weights-only file (the starting-model path)."""
    if not PRETRAINED.is_file():
        pytest.skip("shared pretrained H/C/O MACE not present")
    return starting_weights(PRETRAINED, tmp_path_factory.mktemp("pretrained"))[0]


@needs_pretrained
def test_pretrained_elements_and_cutoff(pretrained_weights):
    model = load_model(pretrained_weights)
    assert model_elements(model) == [1, 6, 8]
    assert model_cutoff(model) == pytest.approx(3.0)


def test_batches_keep_order_and_sizes(tiny_model_file):
    model = load_model(tiny_model_file)
    structures = _rattled(["CH4", "H2O", "NH3", "CO2", "HCN"])
    batches = list(iter_batches(model, structures, batch_size=2))
    assert [b.num_graphs for b in batches] == [2, 2, 1]
    counts = np.concatenate([np.diff(b.ptr.numpy()) for b in batches])
    assert counts.tolist() == [len(a) for a in structures]
    batch = atoms_to_batch(model, structures)
    assert batch.positions.dtype == torch.float64
    np.testing.assert_array_equal(
        batch.positions.numpy(), np.concatenate([a.positions for a in structures])
    )


def test_unknown_element_is_named(tiny_model_file):
    model = load_model(tiny_model_file)
    with pytest.raises(ValueError, match=r"structure 1 .*Si"):
        predict(model, [molecule("CH4"), molecule("SiH4")])


def _assert_matches_calculator(weights: Path, pickled: Path, structures: list[Atoms], batch_size: int) -> None:
    """tangentlab's predictions from the weights-only file equal MACECalculator's from the ``.model``."""
    before = torch.get_default_dtype()
    results = predict(load_model(weights), structures, batch_size=batch_size)
    assert torch.get_default_dtype() == before
    calc = MACECalculator(model_paths=str(pickled), device="cpu", default_dtype="float64")
    for atoms, (energy, forces) in zip(structures, results):
        atoms = atoms.copy()
        atoms.calc = calc
        assert energy == pytest.approx(atoms.get_potential_energy(), rel=1e-10, abs=1e-10)
        assert forces.shape == (len(atoms), 3)
        np.testing.assert_allclose(forces, atoms.get_forces(), rtol=1e-8, atol=1e-10)


def test_predict_matches_calculator_tiny(tiny_model_file):
    diamond = bulk("C", "diamond", a=3.57) * (2, 1, 1)
    diamond.rattle(0.05, seed=1)
    structures = [*_rattled(["CH4", "NH3", "CH3OH", "HCN", "C2H6"]), diamond]
    _assert_matches_calculator(tiny_model_file, tiny_model_file.with_suffix(".model"), structures, batch_size=4)


@needs_pretrained
def test_predict_matches_calculator_pretrained(pretrained_weights):
    structures = _rattled(["CH4", "H2O", "CO2", "CH3OH", "CH3CHO"], seed=3)
    _assert_matches_calculator(pretrained_weights, PRETRAINED, structures, batch_size=2)


def test_predict_independent_of_batch_size_and_no_grad_context(tiny_model_file):
    model = load_model(tiny_model_file)
    structures = _rattled(["CH4", "NH3", "H2O", "CO2"])
    one = predict(model, structures, batch_size=1)
    with torch.no_grad():
        many = predict(model, structures, batch_size=16)
    for (e1, f1), (e2, f2) in zip(one, many):
        assert e1 == pytest.approx(e2, abs=1e-10)
        np.testing.assert_allclose(f1, f2, atol=1e-10)


def test_forces_are_minus_energy_gradient(tiny_model_file):
    model = load_model(tiny_model_file)
    atoms = _rattled(["CH3OH"])[0]
    _, forces = predict(model, [atoms])[0]
    step = 1e-5
    for atom, axis in [(0, 0), (3, 2)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[atom, axis] += step
        minus.positions[atom, axis] -= step
        (e_plus, _), (e_minus, _) = predict(model, [plus, minus])
        assert forces[atom, axis] == pytest.approx(-(e_plus - e_minus) / (2 * step), abs=1e-6)


def test_restores_float64_default_too(tiny_model_file):
    with default_dtype(torch.float64):
        model = load_model(tiny_model_file, dtype=torch.float32)
        predict(model, [molecule("H2O")])
        assert torch.get_default_dtype() == torch.float64


def test_error_metrics_of_predictions(tiny_model_file):
    model = load_model(tiny_model_file)
    structures = _rattled(["CH4", "H2O"])
    preds = predict(model, structures)
    shifts = [0.05, -0.02]
    refs = [(e + s, f + 0.01) for (e, f), s in zip(preds, shifts)]
    natoms = [len(a) for a in structures]
    expected_e = np.mean([0.05 / 5, 0.02 / 3]) * 1e3
    assert energy_mae_per_atom([p[0] for p in preds], [r[0] for r in refs], natoms) == (
        pytest.approx(expected_e)
    )
    assert force_mae([p[1] for p in preds], [r[1] for r in refs]) == pytest.approx(10.0)
    metrics = error_metrics(preds, refs, natoms)
    assert metrics["energy_mae_mev_per_atom"] == pytest.approx(expected_e)
    assert metrics["energy_rmse_mev_per_atom"] == pytest.approx(
        np.sqrt(np.mean(np.square([0.05 / 5, 0.02 / 3]))) * 1e3
    )
    assert metrics["force_mae_mev_per_a"] == pytest.approx(10.0)
    assert metrics["force_rmse_mev_per_a"] == pytest.approx(10.0)
    assert metrics["n_structures"] == 2
    energies_only = error_metrics(preds, [(e, None) for e, _ in refs], natoms)
    assert energies_only["force_mae_mev_per_a"] is None
    with pytest.raises(ValueError, match="structure 0"):
        force_mae([preds[0][1]], [preds[1][1]])


def test_a_model_built_without_torchscript_predicts_the_same(tiny_model_file):
    """Inference models skip e3nn's TorchScript compilation (most of a model's build time);
    fine-tuning builds the scripted model it writes out. Both give the same numbers."""
    frames = [molecule("H2O"), molecule("CH4"), molecule("NH3")]
    scripted = load_model(tiny_model_file, script=True)
    plain = load_model(tiny_model_file)
    assert any(isinstance(m, torch.jit.ScriptModule) for m in scripted.modules())
    assert not any(isinstance(m, torch.jit.ScriptModule) for m in plain.modules())
    for (e_scripted, f_scripted), (e_plain, f_plain) in zip(
        predict(scripted, frames), predict(plain, frames), strict=True
    ):
        assert e_plain == e_scripted and np.array_equal(f_plain, f_scripted)

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from mace.calculators import MACECalculator
from scipy.spatial.transform import Rotation
from tiny_model import rattled_molecules

from tangentlab.acquisition.activations import Standardizer, activation_features, invariant_columns
from tangentlab.mace_model import load_model
from tangentlab.model_files import starting_weights, write_model

PRETRAINED = Path(__file__).resolve().parents[2] / "shared/models/mace-tutorial-hco-swa.model"
HCO_NAMES = ["CH4", "H2O", "CO2", "CH3OH", "CH3CHO", "C2H6"]


@pytest.fixture(scope="module", params=["tiny", "pretrained"])
def model_path(request, tiny_model_file, tmp_path_factory) -> Path:
    if request.param == "tiny":
        return tiny_model_file
    if not PRETRAINED.is_file():
        pytest.skip("shared pretrained H/C/O MACE not present")
    folder = tmp_path_factory.mktemp("pretrained")
    # Weights-only, with a standard .model of the same weights beside it (as fine-tuning writes).
    return write_model(load_model(starting_weights(PRETRAINED, folder)[0]), folder / "pretrained")


def _rattled(names: list[str], seed: int = 0) -> list[Atoms]:
    return rattled_molecules(names, seed)


def test_shape_pooling_and_dtype_isolation(tiny_model_file):
    model = load_model(tiny_model_file)
    structures = _rattled(HCO_NAMES)
    before = torch.get_default_dtype()
    both = activation_features(model, structures, pooling="sum+mean")
    assert torch.get_default_dtype() == before
    # tiny model: 8 invariant channels per layer, 2 layers
    assert len(invariant_columns(model)) == 16
    assert both.shape == (len(structures), 32)
    assert both.dtype == np.float64
    sums = activation_features(model, structures, pooling="sum")
    means = activation_features(model, structures, pooling="mean")
    np.testing.assert_allclose(both, np.hstack([sums, means]), atol=1e-12)
    natoms = np.array([len(a) for a in structures])[:, None]
    np.testing.assert_allclose(means, sums / natoms, atol=1e-12)
    with pytest.raises(ValueError, match="pooling"):
        activation_features(model, structures, pooling="max")


def test_equal_to_mace_descriptors(model_path):
    """Sum pooling of MACECalculator.get_descriptors (mace's own invariant extraction)."""
    structures = _rattled(HCO_NAMES[:3])
    sums = activation_features(load_model(model_path), structures, pooling="sum")
    calc = MACECalculator(model_paths=str(model_path.with_suffix(".model")), device="cpu", default_dtype="float64")
    for atoms, row in zip(structures, sums):
        descriptors = calc.get_descriptors(atoms, invariants_only=True)
        np.testing.assert_allclose(row, descriptors.sum(axis=0), rtol=1e-10, atol=1e-10)


def test_permutation_invariance(model_path):
    model = load_model(model_path)
    atoms = _rattled(["CH3CHO"])[0]
    order = np.random.default_rng(1).permutation(len(atoms))
    rows = activation_features(model, [atoms, atoms[order]])
    np.testing.assert_allclose(rows[0], rows[1], rtol=1e-10, atol=1e-10)


def test_rotation_and_translation_invariance(model_path):
    model = load_model(model_path)
    atoms = _rattled(["CH3OH"])[0]
    moved = atoms.copy()
    moved.positions = Rotation.random(random_state=4).apply(atoms.positions) + [1.0, -2.0, 3.0]
    rows = activation_features(model, [atoms, moved])
    np.testing.assert_allclose(rows[0], rows[1], rtol=1e-9, atol=1e-9)


def test_batch_size_independence(model_path):
    model = load_model(model_path)
    structures = _rattled(HCO_NAMES * 2, seed=2)
    one = activation_features(model, structures, batch_size=1)
    many = activation_features(model, structures, batch_size=16)
    np.testing.assert_allclose(one, many, rtol=1e-12, atol=1e-12)


def test_different_molecules_differ(model_path):
    rows = activation_features(load_model(model_path), _rattled(HCO_NAMES))
    distances = np.linalg.norm(rows[:, None, :] - rows[None, :, :], axis=-1)
    off_diagonal = distances[~np.eye(len(rows), dtype=bool)]
    assert off_diagonal.min() > 1e-3


def test_standardizer():
    rng = np.random.default_rng(0)
    reference = rng.normal(loc=3.0, scale=2.0, size=(50, 4))
    reference[:, 2] = 7.0  # constant column
    scaler = Standardizer.fit(reference)
    scaled = scaler.transform(reference)
    np.testing.assert_allclose(scaled.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(scaled.std(axis=0), [1.0, 1.0, 0.0, 1.0], atol=1e-12)
    other = rng.normal(size=(3, 4))
    np.testing.assert_allclose(
        scaler.transform(other), (other - scaler.mean) / scaler.std, atol=1e-15
    )
    assert np.all(np.isfinite(scaler.transform(other)))
    restored = Standardizer.from_dict(scaler.to_dict())
    np.testing.assert_array_equal(restored.transform(other), scaler.transform(other))
    with pytest.raises(ValueError, match="columns"):
        scaler.transform(other[:, :3])
    with pytest.raises(ValueError, match="non-empty"):
        Standardizer.fit(np.zeros((0, 4)))


def test_atom_features_are_the_unpooled_sums_and_follow_atom_order(model_path):
    from tangentlab.acquisition.activations import atom_features

    model = load_model(model_path)
    structures = _rattled(HCO_NAMES, seed=3)
    rows = atom_features(model, structures, batch_size=2)
    sums = activation_features(model, structures, pooling="sum")
    offsets = np.cumsum([0] + [len(atoms) for atoms in structures])
    assert rows.shape == (offsets[-1], sums.shape[1])
    for i in range(len(structures)):
        np.testing.assert_allclose(rows[offsets[i]:offsets[i + 1]].sum(axis=0), sums[i], rtol=1e-10, atol=1e-10)
    atoms = structures[-1]
    order = np.random.default_rng(1).permutation(len(atoms))
    np.testing.assert_allclose(atom_features(model, [atoms[order]]), atom_features(model, [atoms])[order],
                               rtol=1e-10, atol=1e-10)

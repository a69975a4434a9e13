from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from tiny_model import rattled_molecules

from tangentlab.mace_model import load_model
from tangentlab.acquisition.ntk import NTKFeaturizer
from tangentlab.acquisition.ntk_reference import per_structure_force_jacobians, per_structure_gradients
from tangentlab.acquisition.sketch import ParameterSketch, select_parameters


def _structures(names=("H2O", "CH4", "CO2", "CH3OH"), seed=0) -> list[Atoms]:
    return rattled_molecules(names, seed)


def _periodic() -> Atoms:
    """Two atoms in a small periodic box: most edges cross the cell boundary."""
    return Atoms("CO", positions=[[0.1, 0.2, 0.3], [1.3, 0.9, 0.8]], cell=[3.5, 3.6, 3.7], pbc=True)


def test_select_parameters(model):
    everything = select_parameters(model, "all")
    assert everything == [name for name, _ in model.named_parameters()]
    assert all(name.startswith("readouts.") for name in select_parameters(model, "readouts"))
    last = select_parameters(model, "last_layer")
    assert any(name.startswith("interactions.1.") for name in last)
    assert not any(name.startswith("interactions.0.") for name in last)
    assert select_parameters(model, ["products.0.linear"]) == ["products.0.linear.weight"]
    with pytest.raises(ValueError, match="no parameter"):
        select_parameters(model, ["nonexistent."])
    with pytest.raises(ValueError, match="parameters must be"):
        select_parameters(model, "everything")


def test_sketch_is_seeded_blockwise():
    sketch = ParameterSketch(["a", "b"], [5, 7000], 6, seed=3)
    again = ParameterSketch(["b"], [7000], 6, seed=3, cache_bytes=0)
    np.testing.assert_array_equal(sketch.block(1).numpy(), again.block(0).numpy())
    other = ParameterSketch(["a", "b"], [5, 7000], 6, seed=4)
    assert not np.allclose(sketch.dense(), other.dense())
    signs = ParameterSketch(["a"], [50], 4, kind="rademacher").dense()
    np.testing.assert_allclose(np.abs(signs), 0.5)
    exact = ParameterSketch(["a", "b"], [2, 3], None)
    np.testing.assert_array_equal(exact.dense(), np.eye(5))
    with pytest.raises(ValueError, match="sketch_dim"):
        ParameterSketch(["a"], [10**6], None)


def test_per_sample_equals_per_structure_loop_exactly(model):
    """Exact rows over all parameters, several batches, a periodic structure included."""
    structures = [*_structures(), _periodic()]
    reference = per_structure_gradients(model, structures)
    rows = NTKFeaturizer(model, sketch_dim=None, batch_size=3).energy_rows(structures)
    assert rows.shape == reference.shape == (5, sum(p.numel() for p in model.parameters()))
    np.testing.assert_allclose(rows, reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["per_sample", "double_backward", "loop"])
@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_sketched_energy_rows_equal_sketch_times_jacobian(model, method, kind):
    structures = _structures()
    featurizer = NTKFeaturizer(model, sketch_dim=8, sketch=kind, seed=1, method=method)
    expected = per_structure_gradients(model, structures) @ featurizer.sketch.dense().T
    np.testing.assert_allclose(featurizer.energy_rows(structures), expected, rtol=1e-9, atol=1e-12)


def test_exact_subset_equals_restricted_gradient(model):
    structures = _structures()
    names = [name for name, _ in model.named_parameters()]
    offsets = np.concatenate([[0], np.cumsum([p.numel() for p in model.parameters()])])
    full = per_structure_gradients(model, structures)
    # double backward takes one pass per parameter: check it on the small readout subset
    for subset, method in (("last_layer", "per_sample"), ("readouts", "double_backward")):
        columns = np.concatenate(
            [
                np.arange(offsets[names.index(n)], offsets[names.index(n) + 1])
                for n in select_parameters(model, subset)
            ]
        )
        rows = NTKFeaturizer(model, parameters=subset, sketch_dim=None, method=method).energy_rows(
            structures
        )
        np.testing.assert_allclose(rows, full[:, columns], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("direction_chunk", [1, 4])
def test_force_rows_equal_sketch_times_force_jacobian(model, direction_chunk):
    structures = [*_structures(("H2O", "CH4")), _periodic()]
    featurizer = NTKFeaturizer(model, sketch_dim=6, seed=2, direction_chunk=direction_chunk)
    rows, counts = featurizer.force_rows(structures)
    np.testing.assert_array_equal(counts, [9, 15, 6])
    expected = np.concatenate(
        [
            jacobian @ featurizer.sketch.dense().T
            for jacobian in per_structure_force_jacobians(model, structures)
        ]
    )
    np.testing.assert_allclose(rows, expected, rtol=1e-9, atol=1e-11)
    loop_rows, _ = NTKFeaturizer(model, sketch_dim=6, seed=2, method="loop").force_rows(structures)
    np.testing.assert_allclose(loop_rows, expected, rtol=1e-9, atol=1e-11)


def test_force_rows_are_minus_coordinate_derivative_of_energy_rows(model):
    """F = -∂E/∂r, so the force rows are minus central differences of the energy rows."""
    atoms = _structures(("H2O",))[0]
    featurizer = NTKFeaturizer(model, sketch_dim=5, seed=4)
    force_rows, _ = featurizer.force_rows([atoms])
    step = 1e-4
    displaced = []
    for coordinate in range(3 * len(atoms)):
        for sign in (1.0, -1.0):
            shifted = atoms.copy()
            shifted.positions.reshape(-1)[coordinate] += sign * step
            displaced.append(shifted)
    energy_rows = featurizer.energy_rows(displaced)
    central = (energy_rows[0::2] - energy_rows[1::2]) / (2 * step)
    np.testing.assert_allclose(force_rows, -central, rtol=1e-6, atol=1e-8)


def test_energy_force_rows_layout_and_weights(model):
    structures = _structures(("H2O", "CH4"))
    options = {"sketch_dim": 4, "seed": 5}
    featurizer = NTKFeaturizer(model, **options)
    energy = featurizer.energy_rows(structures)
    forces, force_counts = featurizer.force_rows(structures)
    rows, counts = featurizer.energy_force_rows(structures, energy_weight=2.0, force_weight=0.5)
    np.testing.assert_array_equal(counts, force_counts + 1)
    np.testing.assert_allclose(rows[0], energy[0] * 2.0 / 3, rtol=1e-9)
    np.testing.assert_allclose(rows[1:10], forces[:9] * 0.5, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(rows[10], energy[1] * 2.0 / 5, rtol=1e-9)
    np.testing.assert_allclose(rows[11:], forces[9:] * 0.5, rtol=1e-9, atol=1e-12)
    loop, _ = NTKFeaturizer(model, method="loop", **options).energy_force_rows(
        structures, energy_weight=2.0, force_weight=0.5
    )
    np.testing.assert_allclose(loop, rows, rtol=1e-9, atol=1e-12)


def test_batching_flags_and_dtype_are_left_alone(model):
    structures = _structures()
    before = torch.get_default_dtype()
    one = NTKFeaturizer(model, sketch_dim=7, batch_size=1).energy_rows(structures)
    four = NTKFeaturizer(model, sketch_dim=7, batch_size=4).energy_rows(structures)
    np.testing.assert_allclose(one, four, rtol=1e-10, atol=1e-12)
    assert torch.get_default_dtype() == before
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_rows_on_cuda(tiny_model_file):
    structures = _structures(("H2O", "CH4"))
    cpu = NTKFeaturizer(load_model(tiny_model_file), sketch_dim=6, seed=1)
    gpu = NTKFeaturizer(load_model(tiny_model_file, device="cuda"), sketch_dim=6, seed=1)
    np.testing.assert_allclose(
        gpu.energy_rows(structures), cpu.energy_rows(structures), rtol=1e-8, atol=1e-10
    )
    cpu_rows, _ = cpu.energy_force_rows(structures)
    gpu_rows, _ = gpu.energy_force_rows(structures)
    np.testing.assert_allclose(gpu_rows, cpu_rows, rtol=1e-8, atol=1e-10)


def test_force_probe_rows_are_probes_of_the_exact_force_rows(model):
    """k probe rows of a structure are ``uᵀ (exact 3N rows) / √k``, with the same sketch, in
    any batch; the energy-force layout puts the energy row first."""
    from tangentlab.acquisition.ntk_probes import probe_vectors

    structures = [*_structures(("H2O", "CH4", "CH3OH")), _periodic()]
    exact, exact_counts = NTKFeaturizer(model, sketch_dim=6, seed=2).force_rows(structures)
    probes = NTKFeaturizer(model, sketch_dim=6, seed=2, batch_size=3, force_probes=3)
    rows, counts = probes.force_rows(structures)
    np.testing.assert_array_equal(counts, [3, 3, 3, 3])
    starts = np.concatenate([[0], np.cumsum(exact_counts)])
    expected = np.concatenate([
        probe_vectors(atoms, 3, 2).reshape(3, -1) @ exact[starts[i] : starts[i + 1]] / np.sqrt(3)
        for i, atoms in enumerate(structures)
    ])
    scale = np.abs(expected).max()
    np.testing.assert_allclose(rows, expected, rtol=1e-3, atol=1e-4 * scale)
    alone, _ = NTKFeaturizer(model, sketch_dim=6, seed=2, force_probes=3).force_rows(structures[3:])
    np.testing.assert_allclose(alone, rows[9:], rtol=1e-9, atol=1e-12)  # same probes alone
    joint, joint_counts = probes.energy_force_rows(structures, force_weight=0.5)
    np.testing.assert_array_equal(joint_counts, [4, 4, 4, 4])
    energy = probes.energy_rows(structures)
    np.testing.assert_allclose(joint[0], energy[0] / 3, rtol=1e-9)
    np.testing.assert_allclose(joint[1:4], rows[:3] * 0.5, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="force_probes"):
        NTKFeaturizer(model, force_probes=0)


def test_probe_designs_shared_and_atom_blocks(model):
    """``shared`` probes depend on the atoms and their order, not on the positions, so frames
    of one molecule share them; ``atom_blocks`` deals each coordinate to one probe, and with
    k = 3N its rows carry exactly the Gram matrix of the exact rows."""
    from tangentlab.acquisition.ntk_probes import probe_vectors

    base = _structures(("CH3OH",))[0]
    moved = base.copy()
    moved.positions += np.random.default_rng(1).normal(scale=0.05, size=moved.positions.shape)
    reordered = base[[1, 0, *range(2, len(base))]]
    for design in ("shared", "atom_blocks"):
        np.testing.assert_array_equal(probe_vectors(base, 4, 2, design),
                                      probe_vectors(moved, 4, 2, design))
        assert not np.array_equal(probe_vectors(base, 4, 2, design),
                                  probe_vectors(reordered, 4, 2, design))
    assert not np.array_equal(probe_vectors(base, 4, 2), probe_vectors(moved, 4, 2))
    blocks = probe_vectors(base, 4, 2, "atom_blocks")
    assert ((blocks != 0).sum(axis=0) == 1).all()  # every coordinate in exactly one probe
    assert (np.count_nonzero(blocks, axis=2) <= 1).all()  # an atom's components apart
    n = 3 * len(base)
    full = probe_vectors(base, n, 2, "atom_blocks").reshape(n, n)
    np.testing.assert_allclose(full.T @ full / n, np.eye(n), atol=1e-12)

    structures = [base, moved]
    exact, _ = NTKFeaturizer(model, sketch_dim=6, seed=2).force_rows(structures)
    shared, counts = NTKFeaturizer(model, sketch_dim=6, seed=2, force_probes=2,
                                   probe_design="shared").force_rows(structures)
    np.testing.assert_array_equal(counts, [2, 2])
    u = probe_vectors(base, 2, 2, "shared").reshape(2, -1)
    scale = np.abs(exact).max()
    for i in range(2):
        np.testing.assert_allclose(shared[2 * i : 2 * i + 2],
                                   u @ exact[n * i : n * (i + 1)] / np.sqrt(2),
                                   rtol=1e-3, atol=1e-4 * scale)
    blocked, _ = NTKFeaturizer(model, sketch_dim=6, seed=2, force_probes=n,
                               probe_design="atom_blocks").force_rows(structures)
    for i in range(2):
        gram = blocked[n * i : n * (i + 1)].T @ blocked[n * i : n * (i + 1)]
        exact_gram = exact[n * i : n * (i + 1)].T @ exact[n * i : n * (i + 1)]
        np.testing.assert_allclose(gram, exact_gram, rtol=1e-3, atol=1e-4 * scale**2)
    with pytest.raises(ValueError, match="probe_design"):
        NTKFeaturizer(model, force_probes=2, probe_design="hadamard")

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from tangentlab.acquisition import (
    SIGNALS,
    calibrate_uncertainty,
    fit_scorer,
    iter_pool_chunks,
    select_batch,
    uncertainty_quality,
)
from tangentlab.acquisition.activations import activation_features
from tangentlab.acquisition.signals import random_mace_copy

NAMES = ["H2O", "CH4", "CO2", "CH3OH", "C2H6", "HCOOH", "CH3CHO", "H2CO", "NH3", "HCN"]


def _pool(n: int, seed: int = 0) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    pool = []
    for i in range(n):
        atoms = molecule(NAMES[i % len(NAMES)])
        atoms.positions += rng.normal(scale=0.08, size=atoms.positions.shape)
        pool.append(atoms)
    return pool


LABELLED = _pool(4, seed=1)
FAST = {
    "ntk": {"sketch_dim": 16},
    "energy_force_ntk": {"sketch_dim": 6},
    "force_ntk": {"sketch_dim": 6},
}


def _scorer(model, pool, signal="activation", reference_size=256, device=None, **signal_options):
    """The scorer select_batch takes: fitted on LABELLED with the pool's first structures."""
    return fit_scorer(model, LABELLED, signal=signal, reference_atoms=pool[:reference_size], device=device,
                      **signal_options)


@pytest.mark.parametrize("signal", ["activation", "atom_activation", "ntk", "energy_force_ntk"])
def test_chunked_equals_unchunked_and_any_source(model, signal):
    pool = _pool(14)
    scorer = _scorer(model, pool, signal, reference_size=5, **FAST.get(signal, {}))
    whole, whole_scores, info = select_batch(scorer, pool, batch_size=4, chunk_size=100)
    chunked, chunked_scores, _ = select_batch(scorer, pool, batch_size=4, chunk_size=3)
    streamed, _, streamed_info = select_batch(scorer, (atoms for atoms in pool), batch_size=4, chunk_size=5)
    factory, _, _ = select_batch(scorer, lambda: [pool[:6], pool[6:]], batch_size=4, chunk_size=4)
    for other in (chunked, streamed, factory):
        np.testing.assert_array_equal(whole, other)
    np.testing.assert_allclose(whole_scores, chunked_scores, rtol=1e-8)
    assert info["pool_size"] == streamed_info["pool_size"] == 14
    assert len(set(whole)) == 4
    assert set(info["timings"]) >= {"features_s", "scoring_s", "selection_s"}
    json.dumps(info)


@pytest.mark.parametrize("signal", ["activation", "atom_activation", "force_ntk"])
def test_scores_are_posterior_variance_given_the_labelled_set(model, signal):
    pool = _pool(10)
    options = FAST.get(signal, {})
    indices, scores, info = select_batch(_scorer(model, pool, signal, reference_size=5, **options), pool,
                                         batch_size=3)
    scorer = fit_scorer(model, LABELLED, signal=signal, reference_atoms=pool[:5], **options)
    variance = scorer.variance(pool)
    np.testing.assert_allclose(scores, variance[indices], rtol=1e-8)
    assert indices[0] == int(np.argmax(variance))
    assert info["conditional_scores"][0] == pytest.approx(scores[0])
    assert np.all(np.diff(info["conditional_scores"]) <= 1e-12)


def test_shortlist_and_exclude(model):
    pool = _pool(12)
    scorer = fit_scorer(model, LABELLED, reference_atoms=pool[:256])
    top, _, _ = select_batch(scorer, pool, rule="top", batch_size=3, shortlist_size=3)
    expected = np.argsort(-scorer.variance(pool), kind="stable")[:3]
    np.testing.assert_array_equal(top, expected)
    greedy, _, info = select_batch(scorer, pool, batch_size=3, shortlist_size=5, exclude=[int(expected[0])])
    assert info["shortlist_size"] == 5
    assert int(expected[0]) not in greedy


def test_kmeans_rule_is_reproducible(model):
    pool = _pool(12)
    first, _, _ = select_batch(_scorer(model, pool), pool, rule="kmeans++", batch_size=4, seed=3)
    again, _, _ = select_batch(_scorer(model, pool), pool, rule="kmeans++", batch_size=4, seed=3)
    np.testing.assert_array_equal(first, again)
    assert len(set(first)) == 4
    multi, _, _ = select_batch(_scorer(model, pool, "force_ntk", sketch_dim=4), pool, rule="kmeans++", batch_size=4)
    assert len(set(multi)) == 4


def test_random_mace_descriptor_baseline(model):
    pool = _pool(12)
    clone = random_mace_copy(model, seed=0)
    assert not torch.equal(next(clone.parameters()), next(model.parameters()))
    again = random_mace_copy(model, seed=0)
    for a, b in zip(clone.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not np.allclose(
        activation_features(clone, pool[:3]), activation_features(model, pool[:3])
    )
    # "descriptor" is the old name, still accepted for stored configurations
    indices, _, info = select_batch(_scorer(model, pool, "descriptor"), pool, batch_size=3)
    assert len(set(indices)) == 3 and info["signal"] == "random_mace"


def test_iter_pool_chunks_regroups():
    pool = _pool(7)
    sizes = [len(c) for c in iter_pool_chunks(lambda: [pool[:2], pool[2:3], pool[3:]], 3)]
    assert sizes == [3, 3, 1]
    assert [len(c) for c in iter_pool_chunks(pool, 10)] == [7]
    with pytest.raises(ValueError, match="chunk_size"):
        next(iter_pool_chunks(pool, 0))


def test_input_validation(model):
    pool = _pool(3)
    scorer = _scorer(model, pool)
    with pytest.raises(ValueError, match="signal"):
        _scorer(model, pool, "soap")
    with pytest.raises(ValueError, match="rule"):
        select_batch(scorer, pool, rule="best")
    with pytest.raises(ValueError, match="normalise"):
        fit_scorer(model, [])
    with pytest.raises(ValueError, match="has no option 'sketchdim'"):
        _scorer(model, pool, "ntk", sketchdim=4)
    with pytest.raises(ValueError, match="target"):
        select_batch(scorer, pool, rule="transductive", target="test")
    # a target the rule would ignore is refused, not dropped
    with pytest.raises(ValueError, match="rule 'greedy' has no target"):
        select_batch(scorer, pool, rule="greedy", target=pool)
    with pytest.raises(ValueError, match="sigma_quantile"):
        select_batch(scorer, pool, sigma_quantile=1.5)
    assert "random" not in SIGNALS  # random and committee are methods without feature rows


def test_calibration_recovers_the_scale():
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.1, 1.0, size=20000)
    errors = 3.0 * sigma * rng.normal(size=sigma.size)
    scale = calibrate_uncertainty(sigma, errors)
    assert scale == pytest.approx(3.0, rel=0.02)
    quality = uncertainty_quality(sigma, errors, scale)
    assert quality["coverage_1sigma"] == pytest.approx(0.683, abs=0.02)
    assert quality["rms_ratio"] == pytest.approx(1.0, abs=0.02)
    assert quality["spearman"] > 0.3
    with pytest.raises(ValueError, match="positive"):
        calibrate_uncertainty(np.zeros(3), np.ones(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_batch_on_cuda(model):
    pool = _pool(10)
    options = {"sketch_dim": 6}
    cpu, cpu_scores, _ = select_batch(_scorer(model, pool, "energy_force_ntk", device="cpu", **options), pool,
                                      batch_size=3)
    gpu, gpu_scores, _ = select_batch(_scorer(model, pool, "energy_force_ntk", device="cuda", **options), pool,
                                      batch_size=3)
    np.testing.assert_array_equal(cpu, gpu)
    np.testing.assert_allclose(cpu_scores, gpu_scores, rtol=1e-6)


def test_force_guard_removes_candidates_the_model_predicts_far_out(model):
    from tangentlab.acquisition.guards import force_guard, largest_predicted_force

    pool = _pool(12, seed=3)
    squeezed = pool[5].copy()
    squeezed.positions *= 0.7  # compressed bonds: far larger predicted forces than the others
    pool[5] = squeezed
    largest = largest_predicted_force(model, pool)
    assert largest.argmax() == 5
    bound = float(np.median(largest))
    exclude = force_guard(model, pool, bound)
    assert exclude == [int(i) for i in np.flatnonzero(largest > bound)] and 5 in exclude
    assert 0 < len(exclude) < len(pool)
    assert force_guard(model, pool, None) == []
    picked, _, _ = select_batch(_scorer(model, pool), pool, batch_size=4, exclude=exclude)
    assert not set(picked.tolist()) & set(exclude)
    with pytest.raises(ValueError, match="max_force must be positive"):
        force_guard(model, pool, -1.0)

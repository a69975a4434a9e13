"""Exploration engines (md, rattle, neb), bounds, guards and candidates, with a real tiny MACE.

The tiny model (tests/tiny_model.py) is random but real: the engines run ASE over it.
"""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase.build import molecule
from tiny_model import rattled_molecules

from tangentlab.config import Exploration
from tangentlab.exploration import (
    ENGINES,
    Bounds,
    Frame,
    Trajectory,
    Walker,
    candidates,
    explore,
    fragment_count,
    unphysical,
)

NAMES = ("H2O", "CH4", "NH3")
WIDE = Bounds(lower=0.0, upper=1e9)


def _seeds():
    return [(10 + k, atoms) for k, atoms in enumerate(rattled_molecules(NAMES, seed=1))]


def _settings(**kwargs) -> Exploration:
    options = {"engine": "md", "walkers": 3, "steps": 6, "sample_every": 2,
               "temperatures_K": [300.0, 600.0]}
    return Exploration(**{**options, **kwargs})


def _constant(frames):
    return np.full(len(frames), 0.5)


def _explore(model, settings, sigma=_constant, bounds=WIDE, seed=0, **kwargs):
    """Run `explore`: the walkers it ran and ``{walker index: (trajectory, candidates)}``."""
    ended = {}

    def on_trajectory(trajectory, kept):
        assert trajectory.walker.index not in ended, "on_end called twice for a walker"
        ended[trajectory.walker.index] = (trajectory, kept)

    walkers = explore(model, _seeds(), settings, sigma, bounds, seed=seed,
                      on_trajectory=on_trajectory, **kwargs)
    return walkers, ended


def _finite(frame: Frame) -> bool:
    return bool(np.isfinite(frame.atoms.positions).all() and np.isfinite(frame.sigma))


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "one-at-a-time"])
@pytest.mark.parametrize("steps", [6, 5])
def test_md_runs_and_ends_every_walker_once(model, batch, steps):
    settings = _settings(batch_walkers=batch, steps=steps)
    engine = ENGINES["md"]
    walkers = engine.walkers(settings, _seeds(), np.random.default_rng(0))
    calls, ended = [], []

    def judge(frames, owners):
        calls.append([w.index for w in owners])
        assert all(set(frame.info) <= {"charge", "multiplicity"} for frame in frames)
        return [(0.5, None)] * len(frames)

    engine.run(walkers, model, settings, judge, ended.append, np.random.default_rng(1))
    assert sorted(t.walker.index for t in ended) == [0, 1, 2]
    expected = [2, 4, 6] if steps == 6 else [2, 4, 5]
    # Batched walkers step together; one at a time, each runs to its end (and is stored) before
    # the next starts.
    assert calls == ([[0, 1, 2]] * 3 if batch else [[0]] * 3 + [[1]] * 3 + [[2]] * 3)
    assert [t.walker.index for t in ended] == [0, 1, 2]
    for trajectory in ended:
        assert [f.step for f in trajectory.frames] == expected
        assert trajectory.steps_run == steps and trajectory.stop_reason == "steps"
        assert trajectory.wall_s > 0
        assert all(_finite(f) and f.reason is None for f in trajectory.frames)
        seed = trajectory.walker.atoms
        for frame in trajectory.frames:
            assert (frame.atoms.numbers == seed.numbers).all()
            assert not np.allclose(frame.atoms.positions, seed.positions)  # it moved


def test_batched_and_one_at_a_time_md_run_the_same_walkers(model):
    runs = [_explore(model, _settings(batch_walkers=batch), seed=3) for batch in (True, False)]
    (batched, ended_b), (single, ended_s) = runs
    assert [(w.index, w.seed_structure_id, w.temperature_K) for w in batched] == \
           [(w.index, w.seed_structure_id, w.temperature_K) for w in single]
    for a, b in zip(batched, single, strict=True):
        assert np.array_equal(a.atoms.positions, b.atoms.positions)
    assert [w.temperature_K for w in batched] == [300.0, 600.0, 300.0]
    for ended in (ended_b, ended_s):
        assert sorted(ended) == [0, 1, 2]
        for trajectory, kept in ended.values():
            assert len(trajectory.frames) == 3 and all(_finite(f) for f in trajectory.frames)
            assert len(kept) == 3  # all in the wide bounds, all distinct
    # the same seed, the same trajectories
    again = _explore(model, _settings(batch_walkers=True), seed=3)[1]
    for index, (trajectory, _) in again.items():
        for f, g in zip(trajectory.frames, ended_b[index][0].frames, strict=True):
            assert np.array_equal(f.atoms.positions, g.atoms.positions)


def test_sigma_above_the_upper_bound_stops_and_is_not_kept(model):
    values = iter(np.arange(1, 100) * 0.1)  # sigma grows with each scored frame (one walker)

    def sigma(frames):
        return np.array([next(values) for _ in frames])

    settings = _settings(walkers=1, steps=40)
    _, ended = _explore(model, settings, sigma=sigma, bounds=Bounds(lower=0.15, upper=0.35))
    trajectory, kept = ended[0]
    assert trajectory.stop_reason == "sigma" and trajectory.steps_run == 8
    assert [(f.step, round(f.sigma, 6), f.reason) for f in trajectory.frames] == \
           [(2, 0.1, None), (4, 0.2, None), (6, 0.3, None), (8, 0.4, "sigma")]
    assert [f.step for f in kept] == [4, 6]
    assert trajectory.frames[-1] not in kept


def test_real_sigma_above_a_tiny_upper_bound_stops_at_the_first_frame(model):
    from tangentlab.acquisition import fit_scorer

    scorer = fit_scorer(model, [atoms for _, atoms in _seeds()])
    sigma = lambda frames: np.sqrt(scorer.variance(frames))  # noqa: E731
    tiny = Bounds(lower=1e-14, upper=1e-12)
    _, ended = _explore(model, _settings(walkers=2), sigma=sigma, bounds=tiny)
    for trajectory, kept in ended.values():
        assert trajectory.stop_reason == "sigma" and trajectory.steps_run == 2
        assert len(trajectory.frames) == 1 and trajectory.frames[0].sigma > 1e-12
        assert kept == []


def test_distance_guard_stops_a_trajectory(model):
    _, ended = _explore(model, _settings(min_distance=5.0))
    for trajectory, kept in ended.values():
        assert trajectory.stop_reason == "too_close" and trajectory.steps_run == 2
        assert [f.reason for f in trajectory.frames] == ["too_close"]
        assert np.isnan(trajectory.frames[0].sigma)  # not scored
        assert kept == []


def test_guards_fragmented_too_close_and_non_finite():
    water = molecule("H2O")
    seed_fragments = fragment_count(water, 2.0)
    assert seed_fragments == 1
    check = dict(min_distance=0.6, fragment_cutoff=2.0, seed_fragments=seed_fragments)
    assert unphysical(water, **check) is None
    apart = water.copy()
    apart.positions[1] += [8.0, 0.0, 0.0]  # one H pulled off
    assert fragment_count(apart, 2.0) == 2
    assert unphysical(apart, **check) == "fragmented"
    assert unphysical(apart, **{**check, "seed_fragments": 2}) is None
    close = water.copy()
    close.positions[1] = close.positions[0] + [0.3, 0.0, 0.0]
    assert unphysical(close, **check) == "too_close"
    broken = water.copy()
    broken.positions[2] = np.nan
    assert unphysical(broken, **check) == "non_finite"


def test_candidates_dedupe_by_content_and_cap_evenly():
    base = molecule("H2O")

    def frame(step, shift, sigma=0.5, reason=None):
        atoms = base.copy()
        atoms.positions[0, 0] += shift
        return Frame(step, atoms, sigma, reason)

    frames = [frame(k, 0.01 * k) for k in range(10)]
    frames.insert(3, frame(99, 0.01 * 2))                     # the same content as step 2
    frames.insert(6, frame(98, 0.01 * 4 + 1e-8))              # below the grid: step 4 again
    frames.append(frame(50, 0.5, reason="too_close"))         # unphysical
    frames.append(frame(51, 0.6, sigma=2.0))                  # above the bounds
    frames.append(frame(52, 0.7, sigma=0.01))                 # below the bounds
    trajectory = Trajectory(walker=Walker(index=0, atoms=base), frames=frames)
    bounds = Bounds(lower=0.1, upper=1.0)
    assert [f.step for f in candidates(trajectory, bounds, cap=100)] == list(range(10))
    assert [f.step for f in candidates(trajectory, bounds, cap=3)] == [0, 4, 9]
    assert [f.step for f in candidates(trajectory, bounds, cap=1)] == [0]
    assert candidates(Trajectory(walker=trajectory.walker), bounds, cap=3) == []


def test_skip_runs_only_the_other_walkers_and_the_walker_list_is_seeded(model):
    settings = _settings(walkers=4, steps=2)
    everything, ended = _explore(model, settings, seed=5)
    assert [w.index for w in everything] == [0, 1, 2, 3] and sorted(ended) == [0, 1, 2, 3]
    rest, ended_rest = _explore(model, settings, seed=5, skip={0, 2})
    assert [w.index for w in rest] == [1, 3] and sorted(ended_rest) == [1, 3]
    for walker in rest:
        same = everything[walker.index]
        assert walker.seed_structure_id == same.seed_structure_id
        assert walker.temperature_K == same.temperature_K
        assert np.array_equal(walker.atoms.positions, same.atoms.positions)
    assert _explore(model, settings, seed=5, skip={0, 1, 2, 3}) == ([], {})


def _water_pair(path, *extra):
    """H2O and H2O with one H swung to another angle (same bond length), in one file."""
    reactant = molecule("H2O")
    product = reactant.copy()
    oxygen, hydrogen = product.positions[0], product.positions[1]
    bond = np.linalg.norm(hydrogen - oxygen)
    product.positions[1] = oxygen + bond * np.array([0.0, 0.6, -0.8])
    ase.io.write(path, [reactant, product, *extra])
    return path


def test_neb_runs_and_returns_interior_frames(model, tmp_path):
    path = _water_pair(tmp_path / "water.xyz")
    settings = Exploration(engine="neb", neb_endpoints=[str(path)], neb_images=5, steps=6,
                           sample_every=2,
                           walkers=1)
    walkers, ended = _explore(model, settings)
    assert [w.index for w in walkers] == [0]
    trajectory, kept = ended[0]
    reactant, product = trajectory.walker.endpoints
    assert trajectory.walker.atoms is reactant
    assert not np.allclose(reactant.positions, product.positions)
    assert trajectory.stop_reason == "steps" and trajectory.steps_run == 6  # far from fmax
    # the 3 interior images every 2 steps
    assert [f.step for f in trajectory.frames] == [2, 2, 2, 4, 4, 4, 6, 6, 6]
    assert all(_finite(f) and f.reason is None for f in trajectory.frames)
    for frame in trajectory.frames:  # between the endpoints, not on them
        assert not np.allclose(frame.atoms.positions, reactant.positions)
        assert not np.allclose(frame.atoms.positions, product.positions)
    assert kept and trajectory.wall_s > 0


def test_neb_stops_converged_or_on_a_guard(model, tmp_path):
    path = _water_pair(tmp_path / "water.xyz")
    settings = Exploration(engine="neb", neb_endpoints=[str(path), str(path)], neb_images=4,
                           steps=20,
                           sample_every=5, fmax=1e6)
    _, ended = _explore(model, settings)
    assert sorted(ended) == [0, 1]
    for trajectory, _ in ended.values():
        assert trajectory.stop_reason == "converged" and trajectory.steps_run == 0
        assert [f.step for f in trajectory.frames] == [0, 0]
    guarded = Exploration(engine="neb", neb_endpoints=[str(path)], neb_images=4, steps=20,
                          sample_every=5,
                          min_distance=5.0)
    trajectory, kept = _explore(model, guarded)[1][0]
    assert trajectory.stop_reason == "too_close" and trajectory.steps_run == 5 and kept == []


def test_neb_walkers_ignore_the_seeds(tmp_path):
    path = _water_pair(tmp_path / "water.xyz")
    settings = Exploration(engine="neb", neb_endpoints=[str(path)] * 3)
    walkers = ENGINES["neb"].walkers(settings, [], np.random.default_rng(0))
    assert [w.index for w in walkers] == [0, 1, 2]
    assert all(w.temperature_K is None and w.seed_structure_id is None for w in walkers)


def test_bad_neb_endpoints_raise_naming_the_file(tmp_path):
    engine = ENGINES["neb"]
    three = _water_pair(tmp_path / "three.xyz", molecule("H2O"))
    one = tmp_path / "one.xyz"
    ase.io.write(one, molecule("H2O"))
    other = tmp_path / "other.xyz"
    ase.io.write(other, [molecule("H2O"), molecule("NH3")])
    swapped = tmp_path / "swapped.xyz"
    water = molecule("H2O")
    ase.io.write(swapped, [water, water[[1, 0, 2]]])
    for path in (three, one, other, swapped):
        good = _water_pair(tmp_path / "good.xyz")
        settings = Exploration(engine="neb", neb_endpoints=[str(good), str(path)])
        with pytest.raises(ValueError, match=path.name):
            engine.walkers(settings, [], np.random.default_rng(0))


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device on this machine")
def test_md_on_a_gpu_matches_the_walkers_and_stays_finite(tiny_model_file):
    """The md engine with the model on CUDA (the product's GPU path): every walker ends once,
    every frame is finite. Skipped without a GPU (CI has none)."""
    import torch

    from tangentlab.mace_model import load_model

    model = load_model(tiny_model_file, device="cuda", dtype=torch.float32)
    walkers, ended = _explore(model, _settings(steps=20, sample_every=5))
    assert sorted(ended) == [w.index for w in walkers] == [0, 1, 2]
    assert all(_finite(f) for trajectory, _ in ended.values() for f in trajectory.frames)


def test_several_engines_run_in_one_round_with_walkers_numbered_across_them(model):
    settings = _settings(engine=["md", "rattle"], walkers=2)
    walkers, ended = _explore(model, settings)
    assert [(w.index, w.engine) for w in walkers] == [(0, "md"), (1, "md"), (2, "rattle"), (3, "rattle")]
    assert sorted(ended) == [0, 1, 2, 3]
    assert {ended[i][0].walker.engine for i in (2, 3)} == {"rattle"}
    assert Exploration(engine="md").engine == ["md"] and settings.engines() == "md + rattle"
    for bad, message in (([], "give at least one engine"), (["md", "md"], "an engine is named twice")):
        with pytest.raises(ValueError, match=message):
            Exploration(engine=bad)

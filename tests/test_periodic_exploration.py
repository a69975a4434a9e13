"""Exploration on periodic seeds: batched MD of slabs with their constraints, a periodic NEB of an
adsorbate hopping between sites, and the slab guard, with a tiny real Cu/O/H MACE model."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase.build import add_adsorbate, fcc111
from ase.constraints import FixAtoms
from test_periodic import cu_slab

from tangentlab.config import Exploration
from tangentlab.exploration import ENGINES, explore, fragment_count, unphysical
from tangentlab.exploration.engines import ModelCalculator, _Packed
from tangentlab.exploration.explore import Bounds
from tangentlab.exploration.guards import fragments
from tangentlab.mace_model import predict

WIDE = Bounds(lower=0.0, upper=1e9)


@pytest.fixture(scope="module")
def cu_model(tmp_path_factory):
    from tiny_model import make_tiny_model

    from tangentlab.mace_model import load_model

    return load_model(
        make_tiny_model(tmp_path_factory.mktemp("cu") / "tiny-cuoh.model", elements=(1, 8, 29))
    )


def _slab_seeds():
    return [
        (k, cu_slab(adsorbate, site, rattle=0.05, seed=k))
        for k, (adsorbate, site) in enumerate([("O", "fcc"), ("H", "hcp"), ("OH", "ontop")])
    ]


def _fixed(atoms) -> np.ndarray:
    return atoms.constraints[0].index


def test_batched_md_of_slabs_keeps_fixed_atoms_and_steps_walkers_together(cu_model):
    settings = Exploration(
        engine="md",
        walkers=3,
        steps=8,
        sample_every=2,
        temperatures_K=[600.0, 900.0],
        batch_walkers=True,
    )
    engine = ENGINES["md"]
    seeds = _slab_seeds()
    walkers = engine.walkers(settings, seeds, np.random.default_rng(0))
    start = {w.index: w.atoms.positions.copy() for w in walkers}
    calls, ended = [], []

    def judge(frames, owners):
        calls.append([w.index for w in owners])
        return [(0.5, None)] * len(frames)

    engine.run(walkers, cu_model, settings, judge, ended.append, np.random.default_rng(1))
    assert calls == [[0, 1, 2]] * 4  # one group: periodic walkers no longer run one at a time
    for trajectory in ended:
        seed = start[trajectory.walker.index]
        fixed = _fixed(trajectory.walker.atoms)
        free = np.setdiff1d(np.arange(len(seed)), fixed)
        assert len(fixed) == 4 and len(trajectory.frames) == 4
        for frame in trajectory.frames:
            assert np.array_equal(frame.atoms.positions[fixed], seed[fixed])  # not a digit moved
            assert frame.atoms.pbc.tolist() == [True, True, False]
            assert np.array_equal(frame.atoms.cell.array, trajectory.walker.atoms.cell.array)
            assert np.array_equal(_fixed(frame.atoms), fixed)  # candidates keep the constraint
        assert np.abs(trajectory.frames[-1].atoms.positions[free] - seed[free]).max() > 1e-3


def test_one_at_a_time_md_keeps_fixed_atoms_too(cu_model):
    settings = Exploration(engine="md", walkers=2, steps=4, sample_every=2, batch_walkers=False)
    ended = []
    walkers = ENGINES["md"].walkers(settings, _slab_seeds(), np.random.default_rng(0))
    start = {w.index: w.atoms.positions.copy() for w in walkers}
    ENGINES["md"].run(
        walkers,
        cu_model,
        settings,
        lambda f, o: [(0.5, None)] * len(f),
        ended.append,
        np.random.default_rng(1),
    )
    for trajectory in ended:
        fixed = _fixed(trajectory.walker.atoms)
        assert np.array_equal(
            trajectory.frames[-1].atoms.positions[fixed], start[trajectory.walker.index][fixed]
        )


def test_batched_periodic_forces_are_each_walkers_own(cu_model):
    """The combined structure's forces are, walker by walker, those of the walker alone (its own
    cell and periodic images): the batch adds no interaction between walkers."""
    group = [atoms for _, atoms in _slab_seeds()]
    for atoms in group:
        atoms.set_velocities(np.zeros((len(atoms), 3)))
    settings = Exploration(engine="md")
    packed = _Packed(
        group, [300.0] * 3, ModelCalculator(cu_model), settings, np.random.default_rng(0), 4.0
    )
    combined = packed.combined.get_forces(apply_constraint=False)
    alone = np.concatenate([forces for _, forces in predict(cu_model, group)])
    assert np.allclose(combined, alone, atol=1e-10)
    assert packed.combined.calc.calls == 1


def _hop_endpoints(path):
    """O on Cu(111) in an fcc hollow and in the neighbouring hcp hollow; bottom layer fixed."""
    pair = []
    for site in ("fcc", "hcp"):
        slab = fcc111("Cu", size=(2, 2, 2), vacuum=5.0)
        add_adsorbate(slab, "O", 1.5, site)
        slab.info.pop("adsorbate_info", None)
        slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag == 2]))
        pair.append(slab)
    ase.io.write(path, pair, format="extxyz")
    return path


def test_neb_of_an_adsorbate_hopping_between_sites_on_a_periodic_slab(cu_model, tmp_path):
    path = _hop_endpoints(tmp_path / "hop.extxyz")
    settings = Exploration(
        engine="neb", neb_endpoints=[str(path)], neb_images=5, steps=4, sample_every=2, fmax=1e-9
    )
    ended = {}
    explore(
        cu_model,
        [],
        settings,
        lambda frames: np.full(len(frames), 0.5),
        WIDE,
        seed=0,
        on_trajectory=lambda trajectory, kept: ended.setdefault(
            trajectory.walker.index, (trajectory, kept)
        ),
    )
    trajectory, kept = ended[0]
    reactant, product = trajectory.walker.endpoints
    fixed = _fixed(reactant)
    assert len(fixed) == 4 and trajectory.stop_reason == "steps"
    assert [f.step for f in trajectory.frames] == [2, 2, 2, 4, 4, 4]
    oxygen = len(reactant) - 1
    for frame in trajectory.frames:
        assert frame.reason is None and frame.atoms.pbc.tolist() == [True, True, False]
        assert np.array_equal(frame.atoms.cell.array, reactant.cell.array)
        assert np.array_equal(frame.atoms.positions[fixed], reactant.positions[fixed])
        # the adsorbate is on its way between the two hollows, not on either
        o_xy = frame.atoms.positions[oxygen, :2]
        assert np.linalg.norm(o_xy - reactant.positions[oxygen, :2]) > 0.05
        assert np.linalg.norm(o_xy - product.positions[oxygen, :2]) > 0.05
    assert kept and all(np.array_equal(_fixed(f.atoms), fixed) for f in kept)


def test_slab_guard_lets_an_adsorbate_desorb_but_stops_a_breaking_slab():
    seed = cu_slab("OH", "fcc")
    cutoff = 3.0
    before = fragments(seed, cutoff)
    assert (before.total, before.extended, before.large, before.periodic) == (1, 1, 0, True)
    check = dict(min_distance=0.6, fragment_cutoff=cutoff, seed_fragments=before)

    desorbed = seed.copy()  # OH leaves the surface: 6 Å into the vacuum
    desorbed.positions[-2:, 2] += 6.0
    assert fragment_count(desorbed, cutoff) == 2
    assert unphysical(desorbed, **check) is None
    assert unphysical(desorbed, **check, desorbing_atoms=1) == "fragmented"  # OH is 2 atoms

    split = seed.copy()  # the top Cu layer and the OH lift off as a sheet of their own
    top = split.positions[:, 2] > split.positions[:8, 2].min() + 1.0
    split.positions[top, 2] += 4.0
    after = fragments(split, cutoff)
    assert after.extended == 2 and unphysical(split, **check) == "fragmented"


def test_molecular_guard_is_unchanged_by_the_slab_rule():
    from ase.build import molecule

    water = molecule("H2O")
    apart = water.copy()
    apart.positions[1] += [0, 0, 5.0]
    check = dict(min_distance=0.6, fragment_cutoff=2.0, seed_fragments=fragments(water, 2.0))
    assert unphysical(water, **check) is None
    assert unphysical(apart, **check) == "fragmented"  # a lone H from a molecule still stops it

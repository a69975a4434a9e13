"""Write the data files of the exploration example (examples/exploration), unlabelled.

- ``seeds.extxyz``: four small closed-shell H/C/N/O molecules from ASE's G2 set (CH3OH,
  HCOOH, CH3CHO, H3CNH2), each relaxed with GFN2-xTB (tblite, BFGS to 0.01 eV/Å). A campaign
  starts its exploration (MD with its current MACE model) from these.
- ``test_xtb_md.extxyz``: the independent test set: Langevin MD at 1000 K run with GFN2-xTB
  itself from each seed; 200 steps discarded, then a frame every 100 steps (18 per molecule).
  It is run with xTB, not with a MACE model, so that it samples what the reference potential
  visits and does not depend on where a campaign's model happens to take its own MD; a test
  set made by the model being tested would share its blind spots.
- ``rattled_pool.extxyz``: the baseline's fixed pool: 50 rattled copies of each seed
  (Gaussian displacements of 0.05, 0.1 and 0.15 Å in turn), none with two atoms closer than
  0.7 Å.

Every structure carries ``info["charge"] = 0`` and ``info["multiplicity"] = 1`` and no
energies or forces; the campaign labels them with its own xTB oracle. Everything is seeded,
so a rerun writes the same files.

    python scripts/exploration_example_data.py --out examples/exploration [--measure]

``--measure`` also labels the seeds, the pool and the test frames with GFN2-xTB (the test
frames' labels come from the MD run) and prints the shipped pretrained model's errors on them.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from time import perf_counter

import ase.io
import numpy as np
from ase import Atoms, units
from ase.build import molecule
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.optimize import BFGS
from tblite.ase import TBLite

SEED_NAMES = ("CH3OH", "HCOOH", "CH3CHO", "H3CNH2")
MD = {
    "temperature_K": 1000.0,
    "timestep_fs": 0.5,
    "friction_per_fs": 0.02,
    "discard": 200,
    "every": 100,
    "frames": 18,
    "seed": 2026,
}
RATTLE = {"copies": 50, "stdevs": (0.05, 0.1, 0.15), "min_distance": 0.7, "seed": 7}
BOND = 2.0  # Å: a frame is intact when its atoms form one connected graph with this cutoff


def xtb() -> TBLite:
    """A GFN2-xTB calculator for a neutral singlet."""
    return TBLite(method="GFN2-xTB", charge=0, multiplicity=1, verbosity=0)


def bare(atoms: Atoms, **info) -> Atoms:
    """Positions only, with charge, multiplicity and ``info`` (no cell, no results)."""
    return Atoms(atoms.numbers, atoms.positions, info={"charge": 0, "multiplicity": 1, **info})


def connected(atoms: Atoms, cutoff: float = BOND) -> bool:
    """
    Whether the atoms form one connected graph with bonds shorter than ``cutoff``.

    Parameters
    ----------
    atoms
        The structure.
    cutoff
        Bond length limit in Å.

    Returns
    -------
    bool
        True when no fragment has come off.
    """
    bonded = atoms.get_all_distances() < cutoff
    seen, todo = {0}, [0]
    while todo:
        for j in np.flatnonzero(bonded[todo.pop()]):
            if j not in seen:
                seen.add(int(j))
                todo.append(int(j))
    return len(seen) == len(atoms)


def make_seeds() -> list[Atoms]:
    """
    The G2 molecules in `SEED_NAMES`, relaxed with GFN2-xTB.

    Returns
    -------
    list[Atoms]
        One relaxed molecule per name, ``info["name"]`` set.
    """
    seeds = []
    for name in SEED_NAMES:
        atoms = molecule(name)
        atoms.calc = xtb()
        BFGS(atoms, logfile=None).run(fmax=0.01, steps=500)
        seeds.append(bare(atoms, name=name))
    return seeds


def xtb_md(seed: Atoms, rng: np.random.Generator) -> list[tuple[Atoms, float, np.ndarray]]:
    """
    Langevin MD of one molecule with GFN2-xTB, with the settings in `MD`.

    Parameters
    ----------
    seed
        The relaxed molecule.
    rng
        Random numbers for the initial velocities and the thermostat.

    Returns
    -------
    list[tuple[Atoms, float, numpy.ndarray]]
        The kept frames (positions only, ``info["origin"]`` set) with their xTB energy (eV)
        and forces (eV/Å).
    """
    atoms = seed.copy()
    atoms.calc = xtb()
    MaxwellBoltzmannDistribution(atoms, temperature_K=MD["temperature_K"], rng=rng)
    dyn = Langevin(
        atoms,
        MD["timestep_fs"] * units.fs,
        temperature_K=MD["temperature_K"],
        friction=MD["friction_per_fs"] / units.fs,
        rng=rng,
    )
    dyn.run(MD["discard"])
    frames = []
    for _ in range(MD["frames"]):
        dyn.run(MD["every"])
        origin = f"xtb-md {seed.info['name']} {MD['temperature_K']:.0f}K step {dyn.nsteps}"
        frames.append(
            (bare(atoms, origin=origin), atoms.get_potential_energy(), atoms.get_forces())
        )
    return frames


def rattled_pool(seeds: list[Atoms]) -> list[Atoms]:
    """
    `RATTLE`["copies"] rattled copies of each seed, too-close pairs rejected and redrawn.

    Parameters
    ----------
    seeds
        The relaxed molecules.

    Returns
    -------
    list[Atoms]
        The pool, ``info["origin"]`` naming seed, displacement and random seed.
    """
    rng = np.random.default_rng(RATTLE["seed"])
    pool = []
    for seed in seeds:
        for i in range(RATTLE["copies"]):
            stdev = RATTLE["stdevs"][i % len(RATTLE["stdevs"])]
            while True:
                atoms = bare(seed)
                atoms.positions += rng.normal(scale=stdev, size=atoms.positions.shape)
                distances = atoms.get_all_distances() + np.eye(len(atoms)) * 1e3
                if distances.min() >= RATTLE["min_distance"]:
                    break
            atoms.info["origin"] = f"rattled {seed.info['name']} stdev {stdev} copy {i}"
            pool.append(atoms)
    return pool


def measure(name: str, atoms_list: list[Atoms], labels: list[tuple[float, np.ndarray]]) -> None:
    """
    Print the shipped pretrained MACE model's energy and force MAE against xTB labels.

    Parameters
    ----------
    name
        What the structures are.
    atoms_list
        The structures.
    labels
        Their xTB energy (eV) and forces (eV/Å).
    """
    import mace  # noqa: F401  (before e3nn, as tangentlab requires)
    import torch

    from tangentlab.mace_model import load_model, predict
    from tangentlab.model_files import starting_weights

    path, _ = starting_weights(
        "tangentlab/data/tangentlab-hcno-xtb.model",
        os.path.join(tempfile.gettempdir(), "explore-data-model"),
    )
    results = predict(load_model(path, dtype=torch.float32), atoms_list)
    n = np.array([len(a) for a in atoms_list])
    e_err = np.array([abs(r[0] - e) for r, (e, _) in zip(results, labels, strict=True)]) / n
    f_err = np.concatenate(
        [np.abs(np.asarray(r[1]) - f).ravel() for r, (_, f) in zip(results, labels, strict=True)]
    )
    f_max = max(np.abs(f).max() for _, f in labels)
    print(
        f"{name}: {len(atoms_list)} structures, energy MAE {1e3 * e_err.mean():.1f} meV/atom,"
        f" force MAE {1e3 * f_err.mean():.1f} meV/Å, largest xTB force component"
        f" {f_max:.2f} eV/Å"
    )


def label(atoms_list: list[Atoms]) -> list[tuple[float, np.ndarray]]:
    """GFN2-xTB energy (eV) and forces (eV/Å) of each structure."""
    labels = []
    for atoms in atoms_list:
        atoms = atoms.copy()
        atoms.calc = xtb()
        labels.append((atoms.get_potential_energy(), atoms.get_forces()))
    return labels


def main() -> None:
    """Write the three files into ``--out``; with ``--measure`` print the model's errors."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("examples/exploration"))
    parser.add_argument("--measure", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = perf_counter()

    seeds = make_seeds()
    ase.io.write(args.out / "seeds.extxyz", seeds, format="extxyz")

    rng = np.random.default_rng(MD["seed"])
    md = [frame for seed in seeds for frame in xtb_md(seed, rng)]
    test = [atoms for atoms, _, _ in md]
    broken = [atoms.info["origin"] for atoms in test if not connected(atoms)]
    print(f"test frames not connected within {BOND} Å: {broken or 'none'}")
    ase.io.write(args.out / "test_xtb_md.extxyz", test, format="extxyz")

    pool = rattled_pool(seeds)
    ase.io.write(args.out / "rattled_pool.extxyz", pool, format="extxyz")
    print(
        f"wrote {len(seeds)} seeds, {len(test)} test frames, {len(pool)} pool structures"
        f" to {args.out} in {perf_counter() - start:.0f} s"
    )

    if args.measure:
        measure("seeds", seeds, label(seeds))
        measure("rattled pool", pool, label(pool))
        measure("xTB MD test set", test, [(e, f) for _, e, f in md])


if __name__ == "__main__":
    main()

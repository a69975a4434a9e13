"""Cu(111) slabs with O/H/OH adsorbates: the structures of the periodic starting model and example.

Every structure is a 3x3 Cu(111) slab of three layers (27 Cu, periodic in x and y, 6 Å of
vacuum on each side, the bottom layer held by ``FixAtoms``) with zero to three adsorbates
(O, H, OH) on fcc, hcp, bridge or top sites. Frames are snapshots of Langevin molecular
dynamics run with ASE's EMT at a ladder of temperatures, so that they cover what the slab and
its adsorbates do when hot: adsorbates hopping between sites, OH tilting, the top layer
buckling. EMT is the cheap labeller the shipped periodic model is pretrained on; a campaign
then fine-tunes it to another level of theory (GFN1-xTB in ``examples/surface.yaml``).

The same seed gives the same structures.
"""

from __future__ import annotations

import logging

import numpy as np
from ase import Atoms, units
from ase.build import add_adsorbate, fcc111, molecule
from ase.constraints import FixAtoms

ELEMENTS = ("H", "O", "Cu")
ADSORBATES = ("O", "H", "OH")
SITES = ("fcc", "hcp", "bridge", "ontop")
HEIGHTS = {"O": 1.3, "H": 1.0, "OH": 1.45}  # Å above the top layer on a hollow site, before MD
#: EMT MD runs that may fail (an OH bond constraint that does not converge in a hot run) before
#: generate_surface_structures gives up; a failed run's frames are dropped and the next run drawn.
MAX_SKIPPED_RUNS = 10
TOP_EXTRA = {"ontop": 0.5, "bridge": 0.2}  # Å added on sites with fewer metal neighbours
MAX_HEIGHT = 2.6  # Å above the top layer: adsorbates are pulled back beyond it during MD
SLAB_SIZE = (3, 3, 3)

logger = logging.getLogger(__name__)
VACUUM = 6.0


def clean_slab(metal: str = "Cu", size: tuple[int, int, int] = SLAB_SIZE,
               vacuum: float = VACUUM) -> Atoms:
    """The fcc(111) slab with its bottom layer held by ``FixAtoms``."""
    slab = fcc111(metal, size=size, vacuum=vacuum)
    bottom = slab.get_tags() == size[2]  # ase tags layers from the top (1) down
    slab.set_constraint(FixAtoms(mask=bottom))
    slab.set_tags(0)
    return slab


def adsorbate_slab(adsorbates: list[tuple[str, str]], rng: np.random.Generator, *,
                   metal: str = "Cu", size: tuple[int, int, int] = SLAB_SIZE) -> Atoms:
    """
    A slab with ``adsorbates`` (``(species, site)`` pairs) placed on distinct surface cells.

    Each adsorbate goes on its site in a randomly chosen surface unit cell (different cells for
    different adsorbates) and OH is tilted by a random angle; the ``FixAtoms`` constraint of the
    bottom layer is kept.
    """
    slab = clean_slab(metal, size)
    constraint = slab.constraints[0]
    slab.set_constraint()
    cells = rng.permutation(size[0] * size[1])
    for k, (species, site) in enumerate(adsorbates):
        offset = (int(cells[k] % size[0]), int(cells[k] // size[0]))
        if species == "OH":
            oh = molecule("OH")
            oh.rotate(float(rng.uniform(0, 30)), "x", center=oh.positions[0])
            add_adsorbate(slab, oh, HEIGHTS[species] + TOP_EXTRA.get(site, 0.0), site,
                          offset=offset, mol_index=0)
        else:
            add_adsorbate(slab, species, HEIGHTS[species] + TOP_EXTRA.get(site, 0.0), site,
                          offset=offset)
    slab.info.pop("adsorbate_info", None)
    slab.set_constraint(FixAtoms(indices=constraint.index))
    return slab


def random_adsorbates(rng: np.random.Generator, max_adsorbates: int = 3) -> list[tuple[str, str]]:
    """0 to ``max_adsorbates`` ``(species, site)`` pairs, one or two most often."""
    weights = np.array([0.1, 0.45, 0.3, 0.15])[: max_adsorbates + 1]
    n = int(rng.choice(np.arange(max_adsorbates + 1), p=weights / weights.sum()))
    return [(str(rng.choice(ADSORBATES)), str(rng.choice(SITES))) for _ in range(n)]


def md_frames(atoms: Atoms, temperature_K: float, n_frames: int, *, sample_every: int = 10,
              equilibrate: int = 40, timestep_fs: float = 1.0, seed: int = 0,
              rattle: float = 0.03, calculator=None) -> list[Atoms]:
    """
    Langevin MD frames of ``atoms`` at ``temperature_K`` (EMT unless a calculator is given).

    EMT's H and O parameters are rough: left alone, OH dissociates and hot adsorbates
    desorb. During the MD (not in the frames) an OH keeps its bond length (``FixBondLength``)
    and an ASE ``Hookean`` spring pulls an adsorbate back below ``MAX_HEIGHT`` above the top
    layer, so frames stay adsorbate-on-slab structures; each frame is then rattled by
    ``rattle`` Å (Gaussian) so that bond lengths vary. The first ``equilibrate`` steps are
    dropped; then one frame every ``sample_every`` steps. Frames keep the cell, pbc and
    constraints and carry ``info`` ``temperature_K`` and ``config_type`` ``md<T>K``; no
    labels are attached.
    """
    from ase.calculators.emt import EMT
    from ase.constraints import FixBondLength, Hookean
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    work = atoms.copy()
    metal = work.numbers == work.numbers[0]
    top = work.positions[metal, 2].max()
    fixed = work.constraints[0].index
    ceiling = (0.0, 0.0, 1.0, -(top + MAX_HEIGHT))
    springs = [Hookean(int(i), ceiling, k=5.0) for i in np.flatnonzero(~metal)]
    hydrogens = [int(i) for i in np.flatnonzero(work.numbers == 1)]
    for h in hydrogens:
        oxygens = np.flatnonzero(work.numbers == 8)
        if len(oxygens):
            distances = np.linalg.norm(work.positions[oxygens] - work.positions[h], axis=1)
            nearest = oxygens[np.argmin(distances)]
            if np.linalg.norm(work.positions[nearest] - work.positions[h]) < 1.3:
                springs.append(FixBondLength(h, int(nearest)))
    work.set_constraint([FixAtoms(indices=fixed), *springs])
    work.calc = calculator if calculator is not None else EMT()
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(work, temperature_K=temperature_K, rng=rng)
    dyn = Langevin(work, timestep_fs * units.fs, temperature_K=temperature_K, friction=0.02,
                   fixcm=False, rng=rng)
    dyn.run(equilibrate)
    frames = []
    for _ in range(n_frames):
        dyn.run(sample_every)
        positions = work.positions + rng.normal(scale=rattle, size=work.positions.shape)
        frame = Atoms(work.numbers, positions, cell=work.cell, pbc=work.pbc)
        frame.set_constraint(FixAtoms(indices=fixed))
        frame.info = {"temperature_K": float(temperature_K),
                      "config_type": f"md{int(temperature_K)}K",
                      "adsorbates": atoms.info.get("adsorbates", "")}
        frames.append(frame)
    return frames


def generate_surface_structures(n_structures: int, *, seed: int = 0,
                                temperatures_K: tuple[float, ...] = (300, 600, 900, 1200),
                                frames_per_run: int = 10, sample_every: int = 10,
                                max_adsorbates: int = 3) -> list[Atoms]:
    """
    ``n_structures`` EMT MD frames of Cu(111) slabs with random O/H/OH adsorbates.

    Parameters
    ----------
    n_structures
        Frames returned.
    seed
        Seed of every random choice (adsorbates, sites, velocities, thermostat).
    temperatures_K
        Temperatures of the MD runs, used in turn.
    frames_per_run
        Frames taken from one MD run (one adsorbate configuration at one temperature).
    sample_every
        MD steps (1 fs) between frames.
    max_adsorbates
        Most adsorbates on one slab.

    A run whose OH bond constraint does not converge (hot runs; ASE raises) is dropped whole
    and the next run drawn, so the frames of the runs before it are the same as without it;
    more than ``MAX_SKIPPED_RUNS`` such runs raise.

    Returns
    -------
    list[Atoms]
        Frames with the bottom layer's ``FixAtoms``, ``info["temperature_K"]``,
        ``info["adsorbates"]`` and ``info["config_type"]``.
    """
    rng = np.random.default_rng(seed)
    out: list[Atoms] = []
    run = skipped = 0
    while len(out) < n_structures:
        adsorbates = random_adsorbates(rng, max_adsorbates)
        slab = adsorbate_slab(adsorbates, rng)
        slab.info["adsorbates"] = " ".join(f"{s}@{site}" for s, site in adsorbates) or "clean"
        temperature = temperatures_K[run % len(temperatures_K)]
        n = min(frames_per_run, n_structures - len(out))
        run_seed = int(rng.integers(2**31))
        run += 1
        try:
            out.extend(md_frames(slab, temperature, n, sample_every=sample_every, seed=run_seed))
        except RuntimeError as error:  # ASE's FixBondLength: "Did not converge" on a hot OH
            skipped += 1
            if skipped > MAX_SKIPPED_RUNS:
                raise RuntimeError(
                    f"{skipped} of {run} EMT MD runs failed ({error}); last at {temperature} K"
                ) from error
            logger.warning("EMT MD run %d at %s K skipped: %s", run, temperature, error)
    return out

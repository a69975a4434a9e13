"""Broad H/C/N/O structure recipe for the shipped pretrained model and the quick-start pool.

Starting geometries are the H/C/N/O molecules and radicals of ASE's G2 collection (no
download needed). From each, the recipe draws distorted structures of five kinds:

- ``rattled``: equilibrium geometry with Gaussian displacements (0.03-0.15 Å),
- ``hot``: large displacements (0.15-0.30 Å), as in high-temperature MD snapshots,
- ``radical``: one hydrogen removed, then rattled,
- ``stretched``: one bond pulled to 1.2-2.6 times its length (bond breaking),
- ``encounter``: two small fragments placed 1.1-3.0 Å apart (reactive collisions).

Every structure passes :func:`tangentlab.structures.validate_atoms` (no overlapping atoms).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import molecule
from ase.collections import g2
from ase.data import covalent_radii

ELEMENTS = ("H", "C", "N", "O")
KINDS = ("rattled", "hot", "radical", "stretched", "encounter")

# One reactive system: small C/H/N/O combustion species and radicals (ASE G2 names). The
# quick-start pool draws from these, with bonds stretched towards transition-state lengths.
REACTIVE_SPECIES = ("H2", "O2", "H2O", "OH", "H2O2", "CO", "CO2", "H2CO", "HCO", "CH3OH", "CH3O", "CH4",
                    "CH3", "NH3", "NH2", "NO", "HCN", "N2")
REACTIVE_RECIPE = {"kinds": ("rattled", "radical", "stretched", "encounter"), "seed_names": REACTIVE_SPECIES,
                   "stretch_factors": (1.15, 1.6), "encounter_gaps": (1.5, 3.0)}
MIN_DISTANCE = 0.6


def seed_molecules(max_atoms: int = 12, names: tuple[str, ...] | None = None) -> list[Atoms]:
    """G2 molecules made only of H, C, N and O with at most ``max_atoms`` atoms.

    ``names`` restricts the seeds to these G2 names (e.g. the species of one reaction network).
    """
    unknown = set(names or ()) - set(g2.names)
    if unknown:
        raise ValueError(f"not in ASE's G2 collection: {sorted(unknown)}")
    seeds = []
    for name in names or g2.names:
        atoms = molecule(name)
        if len(atoms) <= max_atoms and set(atoms.get_chemical_symbols()) <= set(ELEMENTS):
            atoms.info["seed"] = name
            seeds.append(atoms)
    return seeds


def _bonds(atoms: Atoms) -> list[tuple[int, int]]:
    radii = covalent_radii[atoms.numbers]
    dist = atoms.get_all_distances()
    n = len(atoms)
    return [(i, j) for i in range(n) for j in range(i + 1, n) if dist[i, j] < 1.25 * (radii[i] + radii[j])]


def _min_distance(atoms: Atoms) -> float:
    if len(atoms) < 2:
        return np.inf
    dist = atoms.get_all_distances()
    return float(dist[np.triu_indices(len(atoms), 1)].min())


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def _rattle(atoms: Atoms, sigma: float, rng: np.random.Generator) -> Atoms:
    out = atoms.copy()
    out.positions += rng.normal(scale=sigma, size=out.positions.shape)
    return out


def _stretch(atoms: Atoms, rng: np.random.Generator, factors: tuple[float, float]) -> Atoms | None:
    bonds = _bonds(atoms)
    if not bonds:
        return None
    i, j = bonds[rng.integers(len(bonds))]
    out = atoms.copy()
    vec = out.positions[j] - out.positions[i]
    factor = rng.uniform(*factors)
    out.positions[j] = out.positions[i] + vec * factor
    return _rattle(out, 0.05, rng)


def _remove_hydrogen(atoms: Atoms, rng: np.random.Generator) -> Atoms | None:
    hydrogens = [a.index for a in atoms if a.symbol == "H"]
    if not hydrogens or len(atoms) < 2:
        return None
    out = atoms.copy()
    del out[int(rng.choice(hydrogens))]
    return _rattle(out, 0.05, rng)


def _encounter(small: list[Atoms], rng: np.random.Generator, gaps: tuple[float, float]) -> Atoms:
    a = small[rng.integers(len(small))].copy()
    b = small[rng.integers(len(small))].copy()
    for frag in (a, b):
        frag.positions = (frag.positions - frag.positions.mean(0)) @ _random_rotation(rng).T
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    target = rng.uniform(*gaps)
    # Move b out along `direction` until its closest contact with a is `target` Å.
    shift = 0.0
    b0 = b.positions.copy()
    for _ in range(200):
        b.positions = b0 + direction * shift
        gap = np.linalg.norm(a.positions[:, None] - b.positions[None], axis=-1).min()
        if gap >= target:
            break
        shift += 0.05
    out = a + b
    out.info = {}
    return out


def generate_structures(
    n_structures: int,
    *,
    seed: int = 0,
    max_atoms: int = 12,
    kinds: tuple[str, ...] = KINDS,
    weights: tuple[float, ...] | None = None,
    seed_names: tuple[str, ...] | None = None,
    stretch_factors: tuple[float, float] = (1.2, 2.6),
    encounter_gaps: tuple[float, float] = (1.1, 3.0),
) -> list[Atoms]:
    """Draw ``n_structures`` distorted H/C/N/O structures (see the module docstring).

    Parameters
    ----------
    n_structures
        Number of structures returned.
    seed
        Seed of the random generator; the same seed gives the same structures.
    max_atoms
        Largest structure size (seed molecules and encounter pairs alike).
    kinds
        Which kinds of distortion to draw from.
    weights
        Relative frequency of each kind (default: uniform).
    seed_names
        Only these G2 molecules as seeds and encounter partners (default: all H/C/N/O ones).
    stretch_factors
        Range of the factor a ``stretched`` bond is pulled to (times its length).
    encounter_gaps
        Range of the closest contact (Å) between the two fragments of an ``encounter``.

    Returns
    -------
    list[Atoms]
        Structures with ``info["config_type"]`` (the kind) and ``info["seed"]``.
    """
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown structure kinds {sorted(unknown)}; known: {KINDS}")
    rng = np.random.default_rng(seed)
    seeds = [m for m in seed_molecules(max_atoms, seed_names) if len(m) >= 2]
    small = seed_molecules(4, seed_names)
    p = np.full(len(kinds), 1.0 / len(kinds)) if weights is None else np.asarray(weights) / np.sum(weights)
    out: list[Atoms] = []
    while len(out) < n_structures:
        kind = kinds[rng.choice(len(kinds), p=p)]
        base = seeds[rng.integers(len(seeds))]
        if kind == "rattled":
            atoms = _rattle(base, rng.uniform(0.03, 0.15), rng)
        elif kind == "hot":
            atoms = _rattle(base, rng.uniform(0.15, 0.30), rng)
        elif kind == "radical":
            atoms = _remove_hydrogen(base, rng)
        elif kind == "stretched":
            atoms = _stretch(base, rng, stretch_factors)
        else:
            atoms = _encounter(small, rng, encounter_gaps)
        if atoms is None or len(atoms) > max_atoms or _min_distance(atoms) < MIN_DISTANCE:
            continue
        atoms.center()
        atoms.info = {"config_type": kind, "seed": base.info.get("seed", "pair")}
        if kind == "encounter":
            atoms.info["seed"] = "pair"
        out.append(atoms)
    return out


def isolated_atoms() -> list[Atoms]:
    """One isolated atom per element, for reference (E0) energies."""
    out = []
    for symbol in ELEMENTS:
        atoms = Atoms(symbol, positions=[[0.0, 0.0, 0.0]])
        atoms.info = {"config_type": "IsolatedAtom"}
        out.append(atoms)
    return out

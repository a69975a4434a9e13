"""A fixed (untrained) structure descriptor: Behler–Parrinello atom-centred symmetry functions.

The papers compare latent-space acquisition with fixed descriptors of the SOAP/ACSF kind.
This module gives one without a descriptor library: for every atom i,

- radial functions per neighbour element b and centre ``R_s`` on a grid:
  ``G2_i(b, R_s) = Σ_{j∈b} exp(-η (r_ij - R_s)²) f_c(r_ij)``;
- angular functions per unordered neighbour element pair (b, c) and (ζ, λ):
  ``G4_i(bc, ζ, λ) = 2^(1-ζ) Σ_{j<k} (1 + λ cos θ_ijk)^ζ exp(-η_a (r_ij² + r_ik² + r_jk²))
  f_c(r_ij) f_c(r_ik) f_c(r_jk)``,

with the cosine cutoff ``f_c(r) = ½ (cos(π r / r_c) + 1)`` for ``r < r_c``. Atom vectors are
pooled per centre element (sum and mean over the atoms of that element), so a structure is
one row of fixed length for a fixed element list: ``2 · E · (E · n_radial + E(E+1)/2 · 4)``.
Nothing here is learned: the rows depend on the geometry only, never on a model's weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations_with_replacement

import numpy as np
from ase import Atoms

#: (ζ, λ) of the angular functions.
ANGULAR_TERMS = ((1.0, 1.0), (1.0, -1.0), (4.0, 1.0), (4.0, -1.0))


def cosine_cutoff(r: np.ndarray, r_cut: float) -> np.ndarray:
    """``½ (cos(π r / r_c) + 1)`` inside the cutoff, 0 outside."""
    r = np.asarray(r, dtype=np.float64)
    return np.where(r < r_cut, 0.5 * (np.cos(np.pi * r / r_cut) + 1.0), 0.0)


@dataclass(frozen=True)
class SymmetryFunctions:
    """
    Atom-centred symmetry functions pooled per structure.

    Attributes
    ----------
    elements
        Atomic numbers the rows have blocks for (e.g. a model's elements); other elements
        are an error.
    r_cut
        Cutoff radius (Å).
    n_radial
        Radial centres ``R_s`` evenly spaced on ``[r_min, r_cut]``.
    r_min
        First radial centre (Å).
    angular_eta
        η of the angular functions (Å⁻²).
    """

    elements: tuple[int, ...]
    r_cut: float = 5.0
    n_radial: int = 8
    r_min: float = 0.5
    angular_eta: float = 0.05
    _index: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.elements:
            raise ValueError("SymmetryFunctions needs at least one element")
        if self.r_cut <= self.r_min or self.n_radial < 1:
            raise ValueError(
                f"need r_cut > r_min and n_radial >= 1, got r_cut={self.r_cut}, "
                f"r_min={self.r_min}, n_radial={self.n_radial}"
            )
        elements = tuple(sorted({int(z) for z in self.elements}))
        object.__setattr__(self, "elements", elements)
        object.__setattr__(self, "_index", {z: i for i, z in enumerate(elements)})

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """Unordered neighbour element index pairs of the angular block."""
        return list(combinations_with_replacement(range(len(self.elements)), 2))

    @property
    def atom_dim(self) -> int:
        """Length of one atom's vector."""
        return len(self.elements) * self.n_radial + len(self.pairs) * len(ANGULAR_TERMS)

    @property
    def dim(self) -> int:
        """Length of a structure's row (sum and mean pooling per centre element)."""
        return 2 * len(self.elements) * self.atom_dim

    def _species(self, atoms: Atoms) -> np.ndarray:
        try:
            return np.array([self._index[int(z)] for z in atoms.numbers], dtype=np.int64)
        except KeyError as exc:
            raise ValueError(
                f"element Z={exc.args[0]} in {atoms.get_chemical_formula()} is not one of "
                f"the descriptor's elements {list(self.elements)}"
            ) from None

    def atom_vectors(self, atoms: Atoms) -> np.ndarray:
        """
        Per-atom symmetry-function vectors.

        Parameters
        ----------
        atoms
            A structure (non-periodic; the cell is ignored).

        Returns
        -------
        np.ndarray
            (natoms, atom_dim).
        """
        species = self._species(atoms)
        n, n_el = len(atoms), len(self.elements)
        pos = np.asarray(atoms.positions, dtype=np.float64)
        dist = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)
        cut = cosine_cutoff(dist, self.r_cut)
        np.fill_diagonal(cut, 0.0)
        centres = np.linspace(self.r_min, self.r_cut, self.n_radial)
        width = (self.r_cut - self.r_min) / max(self.n_radial - 1, 1)
        eta = 1.0 / (2.0 * width**2)
        gauss = np.exp(-eta * (dist[:, :, None] - centres) ** 2) * cut[:, :, None]  # (n, n, R)
        onehot = np.eye(n_el)[species]  # (n, E)
        radial = np.einsum("ijr,je->ier", gauss, onehot).reshape(n, n_el * self.n_radial)

        angular = np.zeros((n, len(self.pairs), len(ANGULAR_TERMS)))
        if n >= 3:
            vec = pos[None, :, :] - pos[:, None, :]  # vec[i, j] = r_j - r_i
            with np.errstate(invalid="ignore", divide="ignore"):
                unit = vec / dist[:, :, None]
            unit = np.nan_to_num(unit)
            cos = np.einsum("ijx,ikx->ijk", unit, unit)  # cos θ_jik
            d2 = dist**2
            radial_part = np.exp(
                -self.angular_eta * (d2[:, :, None] + d2[:, None, :] + d2[None, :, :])
            )
            envelope = radial_part * cut[:, :, None] * cut[:, None, :] * cut[None, :, :]
            mask = np.triu(np.ones((n, n), dtype=bool), k=1)  # j < k, j, k != i via the cutoffs
            pair_of = {pair: p for p, pair in enumerate(self.pairs)}
            pair_index = np.array(
                [[pair_of[tuple(sorted((a, b)))] for b in species] for a in species]
            )
            for t, (zeta, lam) in enumerate(ANGULAR_TERMS):
                terms = 2.0 ** (1.0 - zeta) * (1.0 + lam * cos) ** zeta * envelope  # (i, j, k)
                terms = terms * mask[None, :, :]
                for p in range(len(self.pairs)):
                    angular[:, p, t] = terms[:, pair_index == p].sum(axis=1)
        return np.concatenate([radial, angular.reshape(n, -1)], axis=1)

    def structure_row(self, atoms: Atoms) -> np.ndarray:
        """
        One structure's row: per centre element, the sum then the mean of its atoms' vectors.

        Parameters
        ----------
        atoms
            A structure.

        Returns
        -------
        np.ndarray
            (dim,).
        """
        vectors = self.atom_vectors(atoms)
        species = self._species(atoms)
        blocks = []
        for pooling in ("sum", "mean"):
            for e in range(len(self.elements)):
                members = vectors[species == e]
                if len(members) == 0:
                    blocks.append(np.zeros(self.atom_dim))
                else:
                    blocks.append(members.sum(axis=0) if pooling == "sum" else members.mean(axis=0))
        return np.concatenate(blocks)

    def __call__(self, atoms_list: Sequence[Atoms]) -> np.ndarray:
        """Rows of structures, (n, dim)."""
        if len(atoms_list) == 0:
            return np.zeros((0, self.dim))
        return np.stack([self.structure_row(atoms) for atoms in atoms_list])

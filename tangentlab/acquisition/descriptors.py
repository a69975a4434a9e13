"""A fixed (untrained) structure descriptor: SOAP from dscribe, pooled per structure.

The papers compare latent-space acquisition with fixed descriptors of the SOAP/ACSF kind;
this is the SOAP power spectrum as dscribe computes it (``dscribe.descriptors.SOAP``, GTO
radial basis), with periodic images when a structure is periodic (its cell and ``pbc`` are
honoured: translating by a lattice vector or wrapping atoms into the cell does not change
its row). Every atom's power spectrum over the descriptor's elements is pooled per
structure as the sum then the mean over atoms, so a structure is one row of fixed length
``2 · dscribe's number of features`` for a fixed element list. Nothing here is learned: the
rows depend on the geometry only, never on a model's weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms

#: Rows longer than this would make the posterior's d x d matrix too big; name fewer
#: ``elements`` (e.g. those of the pool rather than all of a foundation model's).
MAX_DIM = 8192


@dataclass(frozen=True)
class SoapDescriptor:
    """
    SOAP power spectra pooled per structure (sum and mean over atoms).

    Attributes
    ----------
    elements
        Atomic numbers the rows have blocks for (e.g. a model's elements); other elements
        are an error.
    r_cut
        Cutoff radius (Å).
    n_max
        Radial basis functions.
    l_max
        Largest spherical-harmonic degree.
    sigma
        Width of the atomic Gaussians (Å).
    """

    elements: tuple[int, ...]
    r_cut: float = 5.0
    n_max: int = 3
    l_max: int = 2
    sigma: float = 0.5
    _soap: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.elements:
            raise ValueError("the SOAP descriptor needs at least one element")
        if self.r_cut < 1.0 or self.n_max < 1 or self.l_max < 0 or self.sigma <= 0:
            raise ValueError(
                f"need r_cut >= 1 Å, n_max >= 1, l_max >= 0 and sigma > 0, got r_cut="
                f"{self.r_cut}, n_max={self.n_max}, l_max={self.l_max}, sigma={self.sigma}"
            )
        from dscribe.descriptors import SOAP

        elements = tuple(sorted({int(z) for z in self.elements}))
        object.__setattr__(self, "elements", elements)
        soap = {
            periodic: SOAP(species=list(elements), r_cut=float(self.r_cut), n_max=self.n_max,
                           l_max=self.l_max, sigma=float(self.sigma), periodic=periodic)
            for periodic in (False, True)
        }
        object.__setattr__(self, "_soap", soap)
        if self.dim > MAX_DIM:
            raise ValueError(
                f"SOAP rows over {len(elements)} elements would have {self.dim} features "
                f"(at most {MAX_DIM}); name the elements of the pool in the signal's "
                "'elements' option"
            )

    @property
    def atom_dim(self) -> int:
        """Length of one atom's power spectrum."""
        return int(self._soap[False].get_number_of_features())

    @property
    def dim(self) -> int:
        """Length of a structure's row (sum and mean pooling)."""
        return 2 * self.atom_dim

    def _check(self, atoms: Atoms) -> None:
        unknown = sorted(set(int(z) for z in atoms.numbers) - set(self.elements))
        if unknown:
            raise ValueError(
                f"element Z={unknown[0]} in {atoms.get_chemical_formula()} is not one of "
                f"the descriptor's elements {list(self.elements)}"
            )

    def atom_vectors(self, atoms: Atoms) -> np.ndarray:
        """
        Per-atom SOAP power spectra.

        Parameters
        ----------
        atoms
            A structure; periodic along its ``pbc`` directions with its cell.

        Returns
        -------
        np.ndarray
            (natoms, atom_dim).
        """
        self._check(atoms)
        periodic = bool(np.any(atoms.pbc))
        vectors = self._soap[periodic].create(atoms, n_jobs=1)
        return np.asarray(vectors, dtype=np.float64).reshape(len(atoms), self.atom_dim)

    def structure_row(self, atoms: Atoms) -> np.ndarray:
        """
        One structure's row: the sum then the mean of its atoms' power spectra.

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
        return np.concatenate([vectors.sum(axis=0), vectors.mean(axis=0)])

    def __call__(self, atoms_list: Sequence[Atoms]) -> np.ndarray:
        """Rows of structures, (n, dim)."""
        if len(atoms_list) == 0:
            return np.zeros((0, self.dim))
        return np.stack([self.structure_row(atoms) for atoms in atoms_list])

"""When an exploration frame is no longer physical: atoms too close, or the structure falls apart.

Both are checked on every scored frame; either stops the trajectory and the frame is not kept.

What "falls apart" means depends on the seed:

- **Molecules** (no periodic direction): more connected fragments than the seed.
- **Periodic structures** (slabs, bulk cells): the substrate must stay whole, while small
  molecules may come and go. A fragment is *extended* when it is connected to its own periodic
  image (a slab, a bulk crystal, a polymer chain) and *finite* otherwise (an adsorbate that has
  desorbed, a molecule in a box). The frame fell apart when its number of extended fragments
  differs from the seed's (the slab split into sheets or broke up) or when it has more finite
  fragments of more than ``desorbing_atoms`` atoms than the seed (a cluster broke off). A finite
  fragment of at most ``desorbing_atoms`` atoms leaving the surface is an intended desorption,
  not a stop; the σ bound still stops a trajectory whose frames the model is unsure of.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.neighborlist import neighbor_list
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

#: Why a trajectory stopped, in the words `status` and the UI show.
STOP_REASONS = {
    "steps": "ran all its steps",
    "sigma": "σ passed the upper bound",
    "too_close": "atoms came too close",
    "fragmented": "fell apart into more fragments than its seed",
    "non_finite": "non-finite positions or forces",
    "converged": "converged (neb)",
}

#: Finite fragments of at most this many atoms may leave a periodic structure (a desorbing
#: adsorbate such as O, OH, CO or H2O) without stopping its trajectory.
DESORBING_ATOMS = 4


@dataclass(frozen=True)
class Fragments:
    """The connected fragments of a structure.

    Attributes
    ----------
    total
        Connected fragments.
    extended
        Fragments connected to their own periodic image (a slab, a bulk crystal).
    large
        Finite fragments of more than the ``desorbing_atoms`` they were counted with.
    periodic
        Whether the structure has a periodic direction.
    """

    total: int
    extended: int = 0
    large: int = 0
    periodic: bool = False

    def fell_apart_from(self, seed: Fragments) -> bool:
        """Whether a frame with these fragments fell apart from its ``seed`` (the module's rule)."""
        if not seed.periodic:
            return self.total > seed.total
        return self.extended != seed.extended or self.large > seed.large


def fragments(atoms: Atoms, cutoff: float, desorbing_atoms: int = DESORBING_ATOMS) -> Fragments:
    """
    The connected fragments of a structure: atoms within ``cutoff`` Å of each other are connected.

    Parameters
    ----------
    atoms
        The structure (periodic images count).
    cutoff
        Connection distance (Å).
    desorbing_atoms
        Finite fragments of more atoms than this count as ``large``.

    Returns
    -------
    Fragments
        Total, extended and large finite fragments.
    """
    i, j, shifts = neighbor_list("ijS", atoms, cutoff)
    n = len(atoms)
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    total, label = connected_components(graph, directed=False)
    if not atoms.pbc.any():
        return Fragments(total=int(total))
    # Unwrap each fragment by a walk over its bonds: a bond that reaches an atom at another
    # image than the walk put it at closes a loop through a periodic boundary.
    image = np.full((n, 3), np.iinfo(np.int64).min, dtype=np.int64)
    extended = np.zeros(total, dtype=bool)
    order = np.argsort(i, kind="stable")
    i, j, shifts = i[order], j[order], shifts[order]
    starts = np.searchsorted(i, np.arange(n + 1))
    for root in range(n):
        if image[root, 0] != np.iinfo(np.int64).min:
            continue
        image[root] = 0
        stack = [root]
        while stack:
            a = stack.pop()
            for k in range(starts[a], starts[a + 1]):
                b, seen_at = j[k], image[a] + shifts[k]
                if image[b, 0] == np.iinfo(np.int64).min:
                    image[b] = seen_at
                    stack.append(b)
                elif (image[b] != seen_at).any():
                    extended[label[a]] = True
    sizes = np.bincount(label, minlength=total)
    large = int(((~extended) & (sizes > desorbing_atoms)).sum())
    return Fragments(total=int(total), extended=int(extended.sum()), large=large, periodic=True)


def fragment_count(atoms: Atoms, cutoff: float) -> int:
    """
    Connected fragments of a structure: atoms within ``cutoff`` Å of each other are connected.

    Parameters
    ----------
    atoms
        The structure (periodic images count).
    cutoff
        Connection distance (Å).

    Returns
    -------
    int
        Number of connected components.
    """
    return fragments(atoms, cutoff).total


def unphysical(
    atoms: Atoms,
    *,
    min_distance: float,
    fragment_cutoff: float,
    seed_fragments: int | Fragments,
    desorbing_atoms: int = DESORBING_ATOMS,
) -> str | None:
    """
    The reason a frame is unphysical (a key of :data:`STOP_REASONS`), or None.

    Parameters
    ----------
    atoms
        The frame.
    min_distance
        Two atoms closer than this (Å) are too close.
    fragment_cutoff
        Connection distance of :func:`fragments` (Å).
    seed_fragments
        Fragments of the trajectory's seed (:func:`fragments`, or a plain count for a molecule):
        the frame fell apart by the module's rule.
    desorbing_atoms
        Periodic seeds: finite fragments of at most this many atoms may leave.
    """
    if not np.isfinite(atoms.positions).all():
        return "non_finite"
    if len(neighbor_list("i", atoms, min_distance)):
        return "too_close"
    seed = (
        seed_fragments
        if isinstance(seed_fragments, Fragments)
        else Fragments(total=int(seed_fragments))
    )
    if fragments(atoms, fragment_cutoff, desorbing_atoms).fell_apart_from(seed):
        return "fragmented"
    return None

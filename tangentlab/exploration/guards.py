"""When an exploration frame is no longer physical: atoms too close, or the structure falls apart.

Both are checked on every scored frame; either stops the trajectory and the frame is not kept.
"""

from __future__ import annotations

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
    i, j = neighbor_list("ij", atoms, cutoff)
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(len(atoms), len(atoms)))
    return int(connected_components(graph, directed=False)[0])


def unphysical(atoms: Atoms, *, min_distance: float, fragment_cutoff: float, seed_fragments: int) -> str | None:
    """
    The reason a frame is unphysical (a key of :data:`STOP_REASONS`), or None.

    Parameters
    ----------
    atoms
        The frame.
    min_distance
        Two atoms closer than this (Å) are too close.
    fragment_cutoff
        Connection distance of :func:`fragment_count` (Å).
    seed_fragments
        Fragments of the trajectory's seed: more than these means the structure fell apart.
    """
    if not np.isfinite(atoms.positions).all():
        return "non_finite"
    if len(neighbor_list("i", atoms, min_distance)):
        return "too_close"
    if fragment_count(atoms, fragment_cutoff) > seed_fragments:
        return "fragmented"
    return None

"""Force NTK rows from random force probes (the cheap force rows, ``force_probes=k``).

A structure's exact force rows are the 3N rows of its force Jacobian ``J = ∂F/∂θ``
(one per atom and Cartesian component). The probe rows replace them by k rows
``S Jᵀu_j / √k`` for random vectors ``u_j ∈ {±1}^{3N}`` (Rademacher, ``E[u uᵀ] = I``), so
that ``E[Σ_j (Jᵀu_j)(Jᵀu_j)ᵀ / k] = JᵀJ``: in expectation a structure's probe rows carry the
Gram matrix of its exact rows, which is all the posterior (the factor of A and the variance
``tr(J A⁻¹ Jᵀ)``) uses. An output-side sketch beside the parameter-side one.

``Jᵀu`` is the gradient of ``u·F = -d/dε E(r + εu)`` with respect to θ, a directional
derivative of the per-structure energy gradient along the displacement u. It is taken as a
finite difference of per-structure energy gradients (the ``per_sample`` pass,
`tangentlab.acquisition.ntk_per_sample`) at displaced positions on the same graph (edges and
periodic shifts unchanged): a forward difference with step 1e-6 Å in float64 (error ~1e-6
relative), a central one with step 1e-3 Å in float32. Cost: k + 1 (float64) or 2k (float32)
per-sample passes per batch, whatever the sketch dimension d and the number of atoms,
against d double-backward passes for the exact rows.

Probe designs (``design``):

- ``"independent"`` (the default): Rademacher vectors from a generator seeded by the sketch
  seed and a hash of the structure's atomic numbers and positions: the same structure gets
  the same rows in every call and batch, and two structures independent probes.
- ``"shared"``: common random numbers: Rademacher vectors seeded by the sketch seed and the
  atomic numbers only, so every structure with the same atoms in the same order gets the same
  probes and the structures being ranked share the probes' noise.
- ``"atom_blocks"``: shared as well, but each probe displaces only a block of the atoms: the
  3N coordinates are dealt to the k probes (an atom's three components to three different
  probes when k >= 3), each with a random sign, scaled by √k so that ``E[u uᵀ] = I`` still
  holds over the draw of the blocks. With k = 3N it gives the exact rows up to sign.

None of them ranked acac frames like the exact rows with k <= 4
(docs/benchmarks/force-ntk-cost.md).
"""

from __future__ import annotations

import copy
import math
import zlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
from ase import Atoms

#: Probe designs (see the module docstring).
DESIGNS = ("independent", "shared", "atom_blocks")

#: Finite-difference step (Å) and scheme per dtype.
STEPS = {torch.float64: (1e-6, "forward"), torch.float32: (1e-3, "central")}


def probe_vectors(atoms: Atoms, k: int, seed: int, design: str = "independent") -> np.ndarray:
    """
    The k probe vectors of one structure.

    Parameters
    ----------
    atoms
        The structure.
    k
        Number of probes.
    seed
        Seed (the sketch seed).
    design
        One of `DESIGNS`.

    Returns
    -------
    np.ndarray
        (k, N, 3) array with ``E[Σ_j u_j u_jᵀ] / k = I`` (entries ±1, or 0 and ±√k for
        ``"atom_blocks"``).
    """
    if design not in DESIGNS:
        raise ValueError(f"probe design must be one of {DESIGNS}, got {design!r}")
    key = zlib.crc32(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    if design == "independent":
        key = zlib.crc32(np.asarray(atoms.positions, dtype=np.float64).tobytes(), key)
    entropy = [int(seed), key, k] + ([DESIGNS.index(design)] if design != "independent" else [])
    rng = np.random.default_rng(np.random.SeedSequence(entropy))
    n = len(atoms)
    if design != "atom_blocks":
        return rng.integers(0, 2, size=(k, n, 3)).astype(np.float64) * 2.0 - 1.0
    order = rng.permutation(n)
    block = (order[:, None] * 3 + np.arange(3)[None, :]) % k  # atom a, component c -> probe
    signs = rng.integers(0, 2, size=(n, 3)).astype(np.float64) * 2.0 - 1.0
    vectors = np.zeros((k, n, 3))
    atom, component = np.meshgrid(np.arange(n), np.arange(3), indexing="ij")
    vectors[block, atom, component] = signs * math.sqrt(k)
    return vectors


def _displaced(batch, displacement: torch.Tensor):
    """The same graph with positions moved by ``displacement`` (edges, shifts kept)."""
    moved = copy.copy(batch)
    moved.positions = batch.positions + displacement
    return moved


def probe_rows(
    energy_rows: Callable[[object], torch.Tensor],
    batch,
    atoms_list: Sequence[Atoms],
    k: int,
    seed: int,
    dtype: torch.dtype,
    *,
    with_energy: bool,
    design: str = "independent",
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """
    Probe force rows (and optionally energy rows) of one batch.

    Parameters
    ----------
    energy_rows
        ``batch -> (B, d)`` sketched per-structure energy gradients ``S ∂E_b/∂θ``.
    batch
        A MACE batch of ``atoms_list``.
    atoms_list
        The batch's structures (for their probes).
    k
        Probes per structure.
    seed
        Seed of the probes.
    dtype
        The model's dtype (chooses step and scheme, see `STEPS`).
    with_energy
        Also return the energy rows at the undisplaced positions.
    design
        The probe design (`DESIGNS`).

    Returns
    -------
    energy
        (B, d) energy rows, or None.
    forces
        (B * k, d) rows, structure after structure, ``S ∂(u_j·F)/∂θ / √k``.
    """
    step, scheme = STEPS.get(dtype, STEPS[torch.float32])
    probes = [probe_vectors(atoms, k, seed, design) for atoms in atoms_list]
    base = energy_rows(batch) if (with_energy or scheme == "forward") else None
    columns = []
    for j in range(k):
        u = torch.as_tensor(
            np.concatenate([p[j] for p in probes]), device=batch.positions.device, dtype=dtype
        )
        plus = energy_rows(_displaced(batch, step * u))
        if scheme == "forward":
            derivative = (plus - base) / step
        else:
            derivative = (plus - energy_rows(_displaced(batch, -step * u))) / (2.0 * step)
        columns.append(-derivative)  # ∂(u·F)/∂θ = -d/dε ∂E(r + εu)/∂θ
    forces = torch.stack(columns, dim=1).reshape(len(atoms_list) * k, -1) / math.sqrt(k)
    return (base if with_energy else None), forces

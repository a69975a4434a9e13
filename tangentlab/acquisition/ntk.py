"""Finite-width neural-tangent-kernel (NTK) feature rows of a MACE model.

Notation: energy ``E_θ(x)``, forces ``F_θ(x) = -∂E/∂r``, parameters θ (P numbers, or the
subset selected by name prefixes). Every row is a linear image ``S v`` of a parameter
gradient ``v`` under a fixed d x P matrix S: a seeded random sketch
(`ParameterSketch`, ``E[SᵀS] = I`` so ``⟨Sv, Sw⟩ ≈ ⟨v, w⟩``) or, with ``sketch_dim=None``,
the identity on the selected parameters (exact rows).

- energy NTK: one row ``S ∂E/∂θ`` per structure.
- force NTK: 3N rows ``S ∂F_{a,c}/∂θ = -S ∂²E/∂θ∂r_{a,c}`` per structure (atom a,
  Cartesian component c, row ``3a + c``).
- energy-force NTK: the energy row scaled by ``w_E / N`` (per-atom energy) followed by
  the 3N force rows scaled by ``w_F``.

How they are computed (reverse mode only: `torch.func` transforms of a whole MACE forward
fail because MACE calls ``requires_grad_`` on the positions inside ``forward``), by ``method``:

- ``"per_sample"`` (energy rows, the default): per-structure gradients from one hooked
  forward and a vmapped gradient per module (`tangentlab.acquisition.ntk_per_sample`);
- ``"double_backward"`` (energy, force and joint rows): one reverse pass per sketch direction
  for the whole batch (`tangentlab.acquisition.ntk_double_backward`);
- ``"loop"``: the obvious per-structure loop of ``autograd.grad``
  (`tangentlab.acquisition.ntk_reference`); the reference for tests and benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence

import mace  # noqa: F401  (mace must be imported before e3nn)
import numpy as np
import torch
from ase import Atoms

from tangentlab.acquisition.ntk_double_backward import directional_rows
from tangentlab.acquisition.ntk_per_sample import PerSampleGradients
from tangentlab.acquisition.ntk_probes import DESIGNS, probe_rows
from tangentlab.acquisition.ntk_reference import (
    per_structure_force_jacobians,
    per_structure_gradients,
)
from tangentlab.acquisition.sketch import ParameterSketch, select_parameters
from tangentlab.mace_model import default_dtype, iter_batches, model_dtype

METHODS = ("per_sample", "double_backward", "loop")


class NTKFeaturizer:
    """
    Energy, force and energy-force NTK rows of one model with one fixed sketch.

    Build it once and call it on every chunk of structures (labelled set, pool chunks,
    validation set): all rows then share the same S.

    Parameters
    ----------
    model
        A MACE model (see `tangentlab.mace_model.load_model`); its parameters'
        ``requires_grad`` flags are restored after every call.
    parameters
        Which parameters (see `select_parameters`).
    sketch_dim
        d, or None for exact rows over the selected parameters.
    sketch
        ``"gaussian"`` or ``"rademacher"``.
    seed
        Seed of the sketch.
    batch_size
        Structures per forward pass.
    device
        Torch device of the batches; the model's device when None.
    method
        How energy rows are computed: ``"per_sample"`` (default), ``"double_backward"``
        or ``"loop"``. Force and joint rows always use ``"double_backward"`` except with
        ``"loop"``.
    direction_chunk
        Sketch directions per reverse pass in the double-backward method (vmapped with
        ``is_grads_batched``); None: 1 on CPU, 16 on CUDA.
    cache_bytes
        Passed to `ParameterSketch`.
    force_probes
        k: force rows as k random force probes per structure
        (`tangentlab.acquisition.ntk_probes`: k + 1 energy-gradient passes instead of d
        double-backward ones); None: the exact 3N rows.
    probe_design
        How the probes are drawn (`tangentlab.acquisition.ntk_probes.DESIGNS`):
        ``"independent"`` (per structure, the default), ``"shared"`` (the same probes for
        structures with the same atoms in the same order) or ``"atom_blocks"``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        parameters: str | Sequence[str] = "all",
        sketch_dim: int | None = 256,
        sketch: str = "gaussian",
        seed: int = 0,
        batch_size: int = 32,
        device: str | torch.device | None = None,
        method: str = "per_sample",
        direction_chunk: int | None = None,
        cache_bytes: int = 1 << 30,
        force_probes: int | None = None,
        probe_design: str = "independent",
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if force_probes is not None and int(force_probes) < 1:
            raise ValueError(f"force_probes must be a positive integer or None, got {force_probes}")
        if probe_design not in DESIGNS:
            raise ValueError(f"probe_design must be one of {DESIGNS}, got {probe_design!r}")
        self.force_probes = None if force_probes is None else int(force_probes)
        self.probe_design = probe_design
        self.seed = int(seed)
        self.model = model
        self.device = torch.device(
            device if device is not None else next(model.parameters()).device
        )
        self.dtype = model_dtype(model)
        self.batch_size = int(batch_size)
        self.method = method
        self.names = select_parameters(model, parameters)
        named = dict(model.named_parameters())
        self.parameters = [named[name] for name in self.names]
        self.sketch = ParameterSketch(
            self.names,
            [p.numel() for p in self.parameters],
            sketch_dim,
            kind=sketch,
            seed=seed,
            cache_bytes=cache_bytes,
        )
        if direction_chunk is None:
            direction_chunk = 16 if self.device.type == "cuda" else 1
        self.direction_chunk = max(1, int(direction_chunk))
        self._per_sample = PerSampleGradients(model, self.names, self.dtype, self.device)

    @property
    def dim(self) -> int:
        """Feature dimension d."""
        return self.sketch.dim

    # -- public rows --------------------------------------------------------------------

    def energy_rows(self, atoms_list: Sequence[Atoms]) -> np.ndarray:
        """
        Energy NTK rows ``S ∂E/∂θ``.

        Parameters
        ----------
        atoms_list
            Structures.

        Returns
        -------
        np.ndarray
            (n, d) float64.
        """
        rows = [self._batch_energy_rows(batch) for batch in self._batches(atoms_list)]
        return _stack([row.detach().cpu().numpy().astype(np.float64) for row in rows], self.dim)

    def force_rows(self, atoms_list: Sequence[Atoms]) -> tuple[np.ndarray, np.ndarray]:
        """
        Force NTK rows ``S ∂F/∂θ``: 3N rows per structure.

        Parameters
        ----------
        atoms_list
            Structures.

        Returns
        -------
        rows
            (Σ 3N, d) float64, structure after structure, row ``3a + c`` for atom a and
            component c.
        counts
            3N per structure.
        """
        rows = []
        counts = np.array([self._force_count(atoms) for atoms in atoms_list], dtype=np.int64)
        if self.force_probes is not None:
            for chunk, batch in self._chunks(atoms_list):
                rows.append(self._probe_rows(batch, chunk, with_energy=False)[1])
            return _stack(rows, self.dim), counts
        for batch in self._batches(atoms_list):
            if self.method == "loop":
                for jacobian in per_structure_force_jacobians(self.model, batch, self.names):
                    rows.append(self._project(torch.as_tensor(jacobian, device=self.device)))
            else:
                rows.append(self._directional(batch, energy=False, forces=True)[1])
        return _stack(rows, self.dim), counts

    def energy_force_rows(
        self,
        atoms_list: Sequence[Atoms],
        energy_weight: float = 1.0,
        force_weight: float = 1.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """
        Joint rows: ``(w_E/N) S ∂E/∂θ`` followed by ``w_F S ∂F/∂θ`` (3N rows).

        Parameters
        ----------
        atoms_list
            Structures.
        energy_weight
            w_E: weight of the per-atom energy row.
        force_weight
            w_F: weight of each force row.

        Returns
        -------
        rows
            (Σ (1 + 3N), d) float64, for each structure its energy row first.
        counts
            1 + 3N per structure.
        """
        pieces = []
        for chunk, batch in self._chunks(atoms_list):
            natoms = (batch.ptr[1:] - batch.ptr[:-1]).cpu().numpy()
            if self.force_probes is not None:
                energy, forces = self._probe_rows(batch, chunk, with_energy=True)
            elif self.method == "loop":
                energy = self._project(
                    torch.as_tensor(
                        per_structure_gradients(self.model, batch, self.names),
                        device=self.device,
                    )
                )
                forces = np.concatenate(
                    [
                        self._project(torch.as_tensor(jacobian, device=self.device))
                        for jacobian in per_structure_force_jacobians(self.model, batch, self.names)
                    ]
                )
            else:
                energy, forces = self._directional(batch, energy=True, forces=True)
            sizes = np.array([self._force_count(atoms) for atoms in chunk])
            starts = np.concatenate([[0], np.cumsum(sizes)])
            for b, n in enumerate(natoms):
                pieces.append(energy[b : b + 1] * (energy_weight / n))
                pieces.append(forces[starts[b] : starts[b + 1]] * force_weight)
        counts = np.array([1 + self._force_count(atoms) for atoms in atoms_list], dtype=np.int64)
        return _stack(pieces, self.dim), counts

    # -- machinery ----------------------------------------------------------------------

    def _batches(self, atoms_list: Sequence[Atoms]) -> list:
        with default_dtype(self.dtype):
            return list(iter_batches(self.model, atoms_list, self.batch_size, self.device))

    def _chunks(self, atoms_list: Sequence[Atoms]):
        """(structures, batch) pairs of at most ``batch_size`` structures."""
        for start in range(0, len(atoms_list), self.batch_size):
            chunk = list(atoms_list[start : start + self.batch_size])
            with default_dtype(self.dtype):
                batch = next(iter_batches(self.model, chunk, len(chunk), self.device))
            yield chunk, batch

    def _force_count(self, atoms: Atoms) -> int:
        """Force rows of one structure: k probes, or 3N exact rows."""
        return self.force_probes if self.force_probes is not None else 3 * len(atoms)

    def _batch_energy_rows(self, batch) -> torch.Tensor:
        """(B, d) energy rows of one batch by ``method``, as a tensor."""
        if self.method == "per_sample":
            return self._project(self._per_sample(batch), as_tensor=True)
        if self.method == "double_backward":
            rows = self._directional(batch, energy=True, forces=False)[0]
            return torch.as_tensor(rows, device=self.device)
        gradients = per_structure_gradients(
            self.model, batch, self.names, batch_size=self.batch_size
        )
        return self._project(torch.as_tensor(gradients, device=self.device), as_tensor=True)

    def _probe_rows(self, batch, chunk, *, with_energy: bool):
        """Energy rows (or None) and probe force rows of one batch, as float64 arrays."""
        energy, forces = probe_rows(self._batch_energy_rows, batch, chunk, self.force_probes,
                                    self.seed, self.dtype, with_energy=with_energy,
                                    design=self.probe_design)
        def to_numpy(rows):
            return None if rows is None else rows.detach().cpu().numpy().astype(np.float64)
        return to_numpy(energy), to_numpy(forces)

    def _project(
        self, gradients: torch.Tensor | list[torch.Tensor], as_tensor: bool = False
    ) -> np.ndarray | torch.Tensor:
        """(B, P) gradients, or one (B, numel) tensor per block, to (B, d) rows."""
        if isinstance(gradients, torch.Tensor):
            offsets = self.sketch.offsets
            gradients = [gradients[:, offsets[i] : offsets[i + 1]] for i in range(len(self.names))]
        if self.sketch.exact:
            rows = torch.cat(gradients, dim=1)
        else:
            rows = None
            for index, block_gradient in enumerate(gradients):
                block = self.sketch.block(index, block_gradient.device, block_gradient.dtype)
                term = block_gradient @ block.T
                rows = term if rows is None else rows + term
        return rows if as_tensor else rows.detach().cpu().numpy().astype(np.float64)

    def _directional(
        self, batch, *, energy: bool, forces: bool
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Energy rows (B, d) and force rows (3N_total, d) by double backward."""
        return directional_rows(self.model, self.parameters, self.sketch, batch, energy=energy,
                                forces=forces, direction_chunk=self.direction_chunk,
                                dtype=self.dtype, device=self.device)


def _stack(rows: list[np.ndarray], dim: int) -> np.ndarray:
    return np.concatenate(rows, axis=0) if rows else np.zeros((0, dim))

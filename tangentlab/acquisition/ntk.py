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
fail because MACE calls ``requires_grad_`` on the positions inside ``forward``):

- ``method="per_sample"`` (energy rows): one forward with hooks on the modules that own
  the selected parameters and one backward to those modules' outputs give, for every
  module call, its inputs and the cotangent δ of its output. MACE modules act row by row
  (one row per atom or per edge), so the gradient of structure b's energy with respect to
  a module's weights only involves that structure's rows: ``∂E_b/∂W = ∂/∂W Σ_{rows of b}
  ⟨δ_row, f(x_row; W)⟩``. This is evaluated for all structures at once with
  ``torch.func.vmap(torch.func.grad(...))`` over rows padded per structure, applied to the
  module alone (where torch.func works). Cost: about two forward-backward passes per
  batch instead of one backward per structure.
- ``method="double_backward"`` (energy, force and joint rows): with
  ``g(r, u) = ∂(Σ_b u_b E_b)/∂θ`` built with ``create_graph=True`` (u = 1 a dummy), the
  reverse pass of ``⟨g, s_k⟩`` for a sketch direction ``s_k`` gives, for the whole batch,
  ``∂⟨g, s_k⟩/∂u_b = ⟨∂E_b/∂θ, s_k⟩`` (energy column k) and
  ``-∂⟨g, s_k⟩/∂r = (∂F/∂θ) s_k`` (force column k, all atoms). One reverse pass per
  sketch direction per batch, optionally vmapped over several directions at once
  (``direction_chunk``, ``is_grads_batched``).
- ``method="loop"``: the obvious per-structure loop of ``autograd.grad``
  (`tangentlab.acquisition.ntk_reference`); the reference for tests and benchmarks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import mace  # noqa: F401  (mace must be imported before e3nn)
import numpy as np
import torch
from ase import Atoms
from torch.func import functional_call, grad, vmap

from tangentlab.acquisition.ntk_reference import (
    _gradients_enabled,
    per_structure_force_jacobians,
    per_structure_gradients,
)
from tangentlab.acquisition.sketch import ParameterSketch, select_parameters
from tangentlab.mace_model import (
    atoms_to_batch,
    default_dtype,
    iter_batches,
    model_cutoff,
    model_dtype,
    model_elements,
)

METHODS = ("per_sample", "double_backward", "loop")

def _owner_modules(
    model: torch.nn.Module, names: Sequence[str]
) -> dict[str, list[tuple[str, str]]]:
    """Map each selected parameter to the innermost hookable module that owns it."""
    modules = dict(model.named_modules())
    owners: dict[str, list[tuple[str, str]]] = {}
    for name in names:
        parts = name.split(".")
        for cut in range(len(parts) - 1, -1, -1):
            owner = ".".join(parts[:cut])
            module = modules.get(owner)
            if module is None or isinstance(
                module, (torch.nn.ParameterList, torch.nn.ParameterDict, torch.jit.ScriptModule)
            ):
                continue
            local = name[len(owner) + 1 :] if owner else name
            owners.setdefault(owner, []).append((name, local))
            break
    return owners


def _rank_in_group(group: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, int]:
    """Position of each row within its group (rows in any order) and the largest group."""
    counts = torch.bincount(group, minlength=n_groups)
    order = torch.argsort(group, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(group)
    rank[order] = torch.arange(group.numel(), device=group.device) - starts[group[order]]
    return rank, int(counts.max()) if group.numel() else 0


def _probe_atoms(model: torch.nn.Module) -> Atoms:
    """Four atoms in a tetrahedron well inside the cutoff: 4 nodes, 12 edges."""
    side = 0.5 * model_cutoff(model)
    corners = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float)
    return Atoms(
        numbers=[model_elements(model)[0]] * 4,
        positions=corners * side / (2.0 * math.sqrt(2.0)),
    )


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
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
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
        self._owners = _owner_modules(model, self.names)
        self._index = {name: i for i, name in enumerate(self.names)}
        self._row_kinds: dict[str, str] = {}

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
        rows = []
        for batch in self._batches(atoms_list):
            if self.method == "per_sample":
                rows.append(self._project(self._per_sample_gradients(batch)))
            elif self.method == "double_backward":
                rows.append(self._directional(batch, energy=True, forces=False)[0])
            else:
                gradients = per_structure_gradients(
                    self.model, batch, self.names, batch_size=self.batch_size
                )
                rows.append(self._project(torch.as_tensor(gradients, device=self.device)))
        return _stack(rows, self.dim)

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
        for batch in self._batches(atoms_list):
            if self.method == "loop":
                for jacobian in per_structure_force_jacobians(self.model, batch, self.names):
                    rows.append(self._project(torch.as_tensor(jacobian, device=self.device)))
            else:
                rows.append(self._directional(batch, energy=False, forces=True)[1])
        counts = np.array([3 * len(atoms) for atoms in atoms_list], dtype=np.int64)
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
        for batch in self._batches(atoms_list):
            natoms = (batch.ptr[1:] - batch.ptr[:-1]).cpu().numpy()
            if self.method == "loop":
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
            starts = np.concatenate([[0], np.cumsum(3 * natoms)])
            for b, n in enumerate(natoms):
                pieces.append(energy[b : b + 1] * (energy_weight / n))
                pieces.append(forces[starts[b] : starts[b + 1]] * force_weight)
        counts = np.array([1 + 3 * len(atoms) for atoms in atoms_list], dtype=np.int64)
        return _stack(pieces, self.dim), counts

    # -- machinery ----------------------------------------------------------------------

    def _batches(self, atoms_list: Sequence[Atoms]) -> list:
        with default_dtype(self.dtype):
            return list(iter_batches(self.model, atoms_list, self.batch_size, self.device))

    def _project(self, gradients: torch.Tensor | list[torch.Tensor]) -> np.ndarray:
        """(B, P) gradients, or one (B, numel) tensor per block, to (B, d) rows."""
        if isinstance(gradients, torch.Tensor):
            offsets = self.sketch.offsets
            gradients = [gradients[:, offsets[i] : offsets[i + 1]] for i in range(len(self.names))]
        if self.sketch.exact:
            return torch.cat(gradients, dim=1).detach().cpu().numpy().astype(np.float64)
        rows = None
        for index, block_gradient in enumerate(gradients):
            block = self.sketch.block(index, block_gradient.device, block_gradient.dtype)
            term = block_gradient @ block.T
            rows = term if rows is None else rows + term
        return rows.detach().cpu().numpy().astype(np.float64)

    def _learn_row_kinds(self) -> None:
        """Which owner modules act on atoms and which on edges, from a probe structure."""
        with default_dtype(self.dtype):
            probe = atoms_to_batch(self.model, [_probe_atoms(self.model)], self.device)
        calls = self._hooked_forward(probe)[1]
        n_nodes, n_edges = probe.num_nodes, probe.edge_index.shape[1]
        for owner, records in calls.items():
            rows = records[0][1].shape[0]
            self._row_kinds[owner] = {n_nodes: "node", n_edges: "edge"}.get(rows, "other")

    def _hooked_forward(self, batch):
        modules = dict(self.model.named_modules())
        calls: dict[str, list[tuple[tuple, torch.Tensor]]] = {owner: [] for owner in self._owners}

        def recorder(owner: str):
            def hook(module, args, output):
                calls[owner].append((args, output))

            return hook

        handles = [modules[owner].register_forward_hook(recorder(owner)) for owner in self._owners]
        try:
            with default_dtype(self.dtype), _gradients_enabled(self.parameters):
                output = self.model(batch.to_dict(), training=False, compute_force=False)
        finally:
            for handle in handles:
                handle.remove()
        return output, calls

    def _per_sample_gradients(self, batch) -> list[torch.Tensor]:
        """Per-structure ∂E_b/∂θ for the selected parameters: one (B, numel) per block."""
        if not self._row_kinds:
            self._learn_row_kinds()
        output, calls = self._hooked_forward(batch)
        n_graphs = batch.num_graphs
        n_nodes, n_edges = batch.num_nodes, batch.edge_index.shape[1]
        node_graph = batch.batch
        edge_graph = batch.batch[batch.edge_index[0]]
        records = [(owner, args, out) for owner, rs in calls.items() for args, out in rs]
        for owner, rs in calls.items():
            if not rs:
                raise RuntimeError(
                    f"module {owner!r} (owner of {self._owners[owner][0][0]}) was not called "
                    "as a module in the forward pass; use method='double_backward'"
                )
        with default_dtype(self.dtype), _gradients_enabled(self.parameters):
            cotangents = torch.autograd.grad(
                output["energy"].sum(),
                [out for _, _, out in records],
                allow_unused=True,
            )
        modules = dict(self.model.named_modules())
        blocks: list[torch.Tensor | None] = [None] * len(self.names)
        for (owner, args, out), cotangent in zip(records, cotangents, strict=True):
            rows = out.shape[0]
            kind = {n_nodes: "node", n_edges: "edge"}.get(rows, "other")
            if n_nodes == n_edges:
                kind = self._row_kinds.get(owner, "other")
            if kind == "other" or self._row_kinds.get(owner, kind) != kind:
                raise RuntimeError(
                    f"module {owner!r} does not act row by row on atoms or edges; "
                    "use method='double_backward'"
                )
            group = node_graph if kind == "node" else edge_graph
            rank, width = _rank_in_group(group, n_graphs)
            if cotangent is None:
                cotangent = torch.zeros_like(out)

            def pad(tensor: torch.Tensor, group=group, rank=rank, width=width) -> torch.Tensor:
                padded = tensor.new_zeros((n_graphs, width, *tensor.shape[1:]))
                padded[group, rank] = tensor
                return padded

            per_row = [torch.is_tensor(a) and a.dim() > 0 and a.shape[0] == rows for a in args]
            inputs = [
                pad(a.detach()) if batched else a for a, batched in zip(args, per_row, strict=True)
            ]
            local = {
                local_name: self.parameters[self._index[name]].detach()
                for name, local_name in self._owners[owner]
            }
            module = modules[owner]

            def contracted(weights, padded_cotangent, *module_args, module=module):
                result = functional_call(module, weights, module_args)
                return (result * padded_cotangent).sum()

            in_dims = (None, 0, *[0 if batched else None for batched in per_row])
            with default_dtype(self.dtype):
                per_graph = vmap(grad(contracted), in_dims=in_dims)(
                    local, pad(cotangent.detach()), *inputs
                )
            for name, local_name in self._owners[owner]:
                index = self._index[name]
                value = per_graph[local_name].reshape(n_graphs, -1)
                blocks[index] = value if blocks[index] is None else blocks[index] + value
        return [
            block
            if block is not None
            else torch.zeros(n_graphs, p.numel(), device=self.device, dtype=self.dtype)
            for block, p in zip(blocks, self.parameters, strict=True)
        ]

    def _directional(
        self, batch, *, energy: bool, forces: bool
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Energy columns (B, d) and force columns (3N_total, d) by double backward."""
        data = batch.to_dict()
        with default_dtype(self.dtype), _gradients_enabled(self.parameters):
            output = self.model(data, training=False, compute_force=False)
            positions = data["positions"]
            weights = torch.ones(
                batch.num_graphs, device=self.device, dtype=self.dtype, requires_grad=True
            )
            gradient = torch.autograd.grad(
                (output["energy"] * weights).sum(), self.parameters, create_graph=True
            )
            live = [i for i, g in enumerate(gradient) if g.requires_grad]
            targets = ([weights] if energy else []) + ([positions] if forces else [])
            energy_columns, force_columns = [], []
            for start in range(0, self.dim, self.direction_chunk):
                stop = min(start + self.direction_chunk, self.dim)
                results = self._reverse_directions(gradient, live, targets, start, stop)
                if energy:
                    energy_columns.append(results[0])
                if forces:
                    force_columns.append(-results[-1].reshape(stop - start, -1))
        energy_rows = (
            torch.cat(energy_columns).T.detach().cpu().numpy().astype(np.float64)
            if energy
            else None
        )
        force_rows = (
            torch.cat(force_columns).T.detach().cpu().numpy().astype(np.float64) if forces else None
        )
        return energy_rows, force_rows

    def _reverse_directions(self, gradient, live, targets, start, stop) -> list[torch.Tensor]:
        """Reverse passes of ⟨g, s_k⟩ for k in [start, stop): one (k, *target) per target."""
        width = stop - start
        zeros = [torch.zeros((width, *t.shape), device=t.device, dtype=t.dtype) for t in targets]
        if not live:
            return zeros
        directions = [
            self.sketch.block(i, self.device, self.dtype)[start:stop].reshape(
                width, *self.parameters[i].shape
            )
            for i in live
        ]
        outputs = [gradient[i] for i in live]
        if width == 1:
            inner = sum((g * s[0]).sum() for g, s in zip(outputs, directions, strict=True))
            grads = torch.autograd.grad(inner, targets, retain_graph=True, allow_unused=True)
            grads = [None if g is None else g.unsqueeze(0) for g in grads]
        else:
            grads = torch.autograd.grad(
                outputs,
                targets,
                grad_outputs=directions,
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=True,
            )
        return [z if g is None else g for g, z in zip(grads, zeros, strict=True)]


def _stack(rows: list[np.ndarray], dim: int) -> np.ndarray:
    return np.concatenate(rows, axis=0) if rows else np.zeros((0, dim))

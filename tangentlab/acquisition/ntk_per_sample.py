"""Per-structure energy gradients ∂E_b/∂θ from one hooked forward (the ``per_sample`` method).

One forward with hooks on the modules that own the selected parameters and one backward to
those modules' outputs give, for every module call, its inputs and the cotangent δ of its
output. MACE modules act row by row (one row per atom or per edge), so the gradient of
structure b's energy with respect to a module's weights only involves that structure's rows:
``∂E_b/∂W = ∂/∂W Σ_{rows of b} ⟨δ_row, f(x_row; W)⟩``. This is evaluated for all structures
at once with ``torch.func.vmap(torch.func.grad(...))`` over rows padded per structure, applied
to the module alone (where torch.func works; a transform of the whole MACE forward fails).
Cost: about two forward-backward passes per batch instead of one backward per structure.
`tangentlab.acquisition.ntk.NTKFeaturizer` projects the gradients to feature rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import mace  # noqa: F401  (mace must be imported before e3nn)
import numpy as np
import torch
from ase import Atoms
from torch.func import functional_call, grad, vmap

from tangentlab.acquisition.ntk_reference import gradients_enabled
from tangentlab.mace_model import atoms_to_batch, default_dtype, model_cutoff, model_elements


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


class PerSampleGradients:
    """
    Per-structure energy gradients of one model for a fixed list of parameters.

    Parameters
    ----------
    model
        A MACE model.
    names
        The selected parameters' names (see `tangentlab.acquisition.sketch.select_parameters`).
    dtype
        The model's dtype.
    device
        The batches' device.
    """

    def __init__(self, model: torch.nn.Module, names: Sequence[str], dtype: torch.dtype,
                 device: torch.device) -> None:
        self.model, self.names, self.dtype, self.device = model, list(names), dtype, device
        named = dict(model.named_parameters())
        self.parameters = [named[name] for name in self.names]
        self._owners = _owner_modules(model, self.names)
        self._index = {name: i for i, name in enumerate(self.names)}
        self._row_kinds: dict[str, str] = {}

    def __call__(self, batch) -> list[torch.Tensor]:
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
        with default_dtype(self.dtype), gradients_enabled(self.parameters):
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
            with default_dtype(self.dtype), gradients_enabled(self.parameters):
                output = self.model(batch.to_dict(), training=False, compute_force=False)
        finally:
            for handle in handles:
                handle.remove()
        return output, calls

"""Energy and force NTK rows by double backward (the ``double_backward`` method).

With ``g(r, u) = ∂(Σ_b u_b E_b)/∂θ`` built with ``create_graph=True`` (u = 1 a dummy), the
reverse pass of ``⟨g, s_k⟩`` for a sketch direction ``s_k`` gives, for the whole batch,
``∂⟨g, s_k⟩/∂u_b = ⟨∂E_b/∂θ, s_k⟩`` (energy column k) and ``-∂⟨g, s_k⟩/∂r = (∂F/∂θ) s_k``
(force column k, all atoms). One reverse pass per sketch direction per batch, optionally
vmapped over several directions at once (``direction_chunk``, ``is_grads_batched``).
`tangentlab.acquisition.ntk.NTKFeaturizer` calls it for force and joint rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import mace  # noqa: F401  (mace must be imported before e3nn)
import numpy as np
import torch

from tangentlab.acquisition.ntk_reference import gradients_enabled
from tangentlab.acquisition.sketch import ParameterSketch
from tangentlab.mace_model import default_dtype


def directional_rows(
    model: torch.nn.Module,
    parameters: Sequence[torch.nn.Parameter],
    sketch: ParameterSketch,
    batch,
    *,
    energy: bool,
    forces: bool,
    direction_chunk: int,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """
    Energy rows (B, d) and force rows (3N_total, d) of a batch by double backward.

    Parameters
    ----------
    model
        A MACE model.
    parameters
        The selected parameters, in the sketch's block order.
    sketch
        The d x P map S of the rows.
    batch
        A MACE batch on ``device``.
    energy, forces
        Which rows to compute (None for the other).
    direction_chunk
        Sketch directions per reverse pass.
    dtype, device
        The model's dtype and the batch's device.
    """
    data = batch.to_dict()
    with default_dtype(dtype), gradients_enabled(parameters):
        output = model(data, training=False, compute_force=False)
        positions = data["positions"]
        weights = torch.ones(batch.num_graphs, device=device, dtype=dtype, requires_grad=True)
        gradient = torch.autograd.grad(
            (output["energy"] * weights).sum(), parameters, create_graph=True
        )
        live = [i for i, g in enumerate(gradient) if g.requires_grad]
        targets = ([weights] if energy else []) + ([positions] if forces else [])
        energy_columns, force_columns = [], []
        for start in range(0, sketch.dim, direction_chunk):
            stop = min(start + direction_chunk, sketch.dim)
            results = _reverse_directions(
                parameters, sketch, gradient, live, targets, start, stop, dtype, device
            )
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


def _reverse_directions(
    parameters, sketch, gradient, live, targets, start, stop, dtype, device
) -> list[torch.Tensor]:
    """Reverse passes of ⟨g, s_k⟩ for k in [start, stop): one (k, *target) per target."""
    width = stop - start
    zeros = [torch.zeros((width, *t.shape), device=t.device, dtype=t.dtype) for t in targets]
    if not live:
        return zeros
    directions = [
        sketch.block(i, device, dtype)[start:stop].reshape(width, *parameters[i].shape)
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

"""The obvious per-structure NTK computations: references for tests and benchmarks (slow).

`per_structure_gradients` and `per_structure_force_jacobians` loop over structures with
``torch.autograd.grad``; the ``*_ntk_features`` functions build a one-off `NTKFeaturizer`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import mace  # noqa: F401  (mace must be imported before e3nn)
import numpy as np
import torch

from tangentlab.acquisition.sketch import select_parameters
from tangentlab.mace_model import atoms_to_batch, default_dtype, iter_batches, model_dtype


@contextlib.contextmanager
def gradients_enabled(parameters: Sequence[torch.nn.Parameter]) -> Iterator[None]:
    """Turn requires_grad on for the parameters and restore the previous flags after."""
    previous = [parameter.requires_grad for parameter in parameters]
    try:
        for parameter in parameters:
            parameter.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for parameter, flag in zip(parameters, previous, strict=True):
            parameter.requires_grad_(flag)


def _names(model: torch.nn.Module, parameters: str | Sequence[str]) -> list[str]:
    """Exact parameter names when every entry is one, else `select_parameters`."""
    known = {name for name, _ in model.named_parameters()}
    if not isinstance(parameters, str) and all(name in known for name in parameters):
        return list(parameters)
    return select_parameters(model, parameters)


def _as_batch(model: torch.nn.Module, structures, device: torch.device):
    if hasattr(structures, "to_dict"):
        return structures
    with default_dtype(model_dtype(model)):
        return atoms_to_batch(model, structures, device)


def _flat_gradient(grads, params) -> np.ndarray:
    """One row: the gradients of every parameter flattened and joined (zeros where unused)."""
    return (
        torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params, strict=True)])
        .detach()
        .cpu()
        .numpy()
    )


def per_structure_gradients(
    model: torch.nn.Module,
    structures,
    parameters: str | Sequence[str] = "all",
    batch_size: int = 32,
) -> np.ndarray:
    """
    Full per-structure energy gradients ``∂E_b/∂θ``, the obvious way (reference, slow).

    One forward pass per batch and one ``autograd.grad`` per structure.

    Parameters
    ----------
    model
        A MACE model.
    structures
        A list of structures or a MACE batch.
    parameters
        Exact parameter names (in the order wanted), or what `select_parameters` takes.
    batch_size
        Structures per forward pass (for a list).

    Returns
    -------
    np.ndarray
        (n, P_selected) float64, parameters in order, each flattened.
    """
    named = dict(model.named_parameters())
    chosen = [named[name] for name in _names(model, parameters)]
    device = next(model.parameters()).device
    if hasattr(structures, "to_dict"):
        batches = [structures]
    else:
        with default_dtype(model_dtype(model)):
            batches = list(iter_batches(model, structures, batch_size, device))
    rows = []
    for batch in batches:
        with default_dtype(model_dtype(model)), gradients_enabled(chosen):
            energy = model(batch.to_dict(), training=False, compute_force=False)["energy"]
            for b in range(batch.num_graphs):
                grads = torch.autograd.grad(energy[b], chosen, retain_graph=True, allow_unused=True)
                rows.append(_flat_gradient(grads, chosen))
    return np.stack(rows) if rows else np.zeros((0, sum(p.numel() for p in chosen)))


def per_structure_force_jacobians(
    model: torch.nn.Module, structures, parameters: str | Sequence[str] = "all"
) -> list[np.ndarray]:
    """
    Per-structure force Jacobians ``∂F/∂θ``, the obvious way (reference, slow).

    Forces with ``create_graph=True``, then one ``autograd.grad`` per force component.

    Parameters
    ----------
    model
        A MACE model.
    structures
        A list of structures or a MACE batch.
    parameters
        Exact parameter names (in the order wanted), or what `select_parameters` takes.

    Returns
    -------
    list[np.ndarray]
        Per structure a (3N, P_selected) array, row ``3a + c``.
    """
    named = dict(model.named_parameters())
    chosen = [named[name] for name in _names(model, parameters)]
    device = next(model.parameters()).device
    batch = _as_batch(model, structures, device)
    jacobians = []
    with default_dtype(model_dtype(model)), gradients_enabled(chosen):
        forces = model(batch.to_dict(), training=True, compute_force=True)["forces"]
        ptr = batch.ptr.cpu().numpy()
        for b in range(batch.num_graphs):
            rows = []
            for atom in range(ptr[b], ptr[b + 1]):
                for component in range(3):
                    grads = torch.autograd.grad(
                        forces[atom, component], chosen, retain_graph=True, allow_unused=True
                    )
                    rows.append(_flat_gradient(grads, chosen))
            jacobians.append(np.stack(rows))
    return jacobians

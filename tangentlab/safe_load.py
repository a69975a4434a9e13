"""The one place tangentlab calls ``torch.load``, always with ``weights_only=True``.

:func:`load_file` reads a weights-only file (tensors and plain data), or, with
``mace_model=True``, a pickled MACE ``.model`` with an allow-list of the MACE, e3nn and torch
classes a ScaleShiftMACE is made of (:data:`MACE_GLOBALS`): a file that needs anything else is
refused before any of it runs, and the compiled code inside a real model (e3nn's TorchScript,
``torch.fx`` graphs) is replaced by inert stand-ins that never compile or run it.
:mod:`tangentlab.model_files` builds the model files on it.
"""

from __future__ import annotations

import importlib
import io
from functools import cache
from pathlib import Path
from typing import Any

import mace  # noqa: F401  (mace must be imported before e3nn)
import torch

__all__ = ["MACE_GLOBALS", "load_file"]

#: What a pickled ScaleShiftMACE is made of, by the names its pickle uses (MACE 0.3, e3nn 0.4,
#: torch 2): checked on tangentlab's shipped model, MACE-MP-0-style (ZBL repulsion, Agnesi
#: transform) and MACE-OFF-style models built with MACE's constructor, and the MACE tutorial's
#: model. Constructing any of them runs no code from the file; names missing from the installed
#: versions are skipped.
MACE_GLOBALS = (
    "mace.modules.models.ScaleShiftMACE",
    "mace.modules.blocks.AtomicEnergiesBlock",
    "mace.modules.blocks.EquivariantProductBasisBlock",
    "mace.modules.blocks.LinearNodeEmbeddingBlock",
    "mace.modules.blocks.LinearReadoutBlock",
    "mace.modules.blocks.NonLinearReadoutBlock",
    "mace.modules.blocks.RadialEmbeddingBlock",
    "mace.modules.blocks.RealAgnosticInteractionBlock",
    "mace.modules.blocks.RealAgnosticResidualInteractionBlock",
    "mace.modules.blocks.ScaleShiftBlock",
    "mace.modules.irreps_tools.reshape_irreps",
    "mace.modules.radial.AgnesiTransform",
    "mace.modules.radial.BesselBasis",
    "mace.modules.radial.ChebychevBasis",
    "mace.modules.radial.GaussianBasis",
    "mace.modules.radial.PolynomialCutoff",
    "mace.modules.radial.SoftTransform",
    "mace.modules.radial.ZBLBasis",
    "mace.modules.symmetric_contraction.Contraction",
    "mace.modules.symmetric_contraction.SymmetricContraction",
    "e3nn.math._normalize_activation.normalize2mom",
    "e3nn.nn._activation.Activation",
    "e3nn.nn._fc.FullyConnectedNet",
    "e3nn.nn._fc._Layer",
    "e3nn.o3._irreps.Irrep",
    "e3nn.o3._irreps.Irreps",
    "e3nn.o3._irreps._MulIr",
    "e3nn.o3._linear.Instruction",
    "e3nn.o3._linear.Linear",
    "e3nn.o3._spherical_harmonics.SphericalHarmonics",
    "e3nn.o3._tensor_product._instruction.Instruction",
    "e3nn.o3._tensor_product._sub.FullyConnectedTensorProduct",
    "e3nn.o3._tensor_product._tensor_product.TensorProduct",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.container.ParameterList",
    "torch.nn.functional.silu",
    "torch.nn.functional.tanh",
    "torch.nn.functional.relu",
    "torch.nn.functional.sigmoid",
    "torch.abs",
    "torch.tanh",
)
# Compiled code inside a real model, replaced by inert stand-ins that never compile or run it:
# torch.fx graph modules (opt_einsum contractions) are rebuilt by exec-ing their pickled source.
_NOT_RUN = ("torch.fx.graph_module.reduce_graph_module", "torch.fx._symbolic_trace.Tracer")


class _NotRun(torch.nn.Module):
    """Stands in for compiled code of a pickled model (a ``torch.fx`` graph module, its tracer):
    keeps its tensors, never compiles or runs its source."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()


def _graph_module_stand_in(body: dict, _import_block: str) -> torch.nn.Module:
    stand_in = _NotRun()
    for key in ("_parameters", "_buffers"):
        values = body.get(key)
        if isinstance(values, dict):
            tensors = {k: v for k, v in values.items() if isinstance(v, torch.Tensor)}
            getattr(stand_in, key).update({k: v for k, v in tensors.items() if isinstance(k, str)})
    return stand_in


def _without_code(cls: type) -> type:
    """``cls`` with the plain ``torch.nn.Module.__setstate__``: e3nn's code-generating modules
    otherwise load the TorchScript stored in their state."""
    if getattr(cls, "__setstate__", None) is torch.nn.Module.__setstate__:
        return cls

    def __setstate__(self, state: dict) -> None:
        state = {k: v for k, v in dict(state).items() if k != "__codegen__"}
        torch.nn.Module.__setstate__(self, state)

    return type(cls.__name__, (cls,), {"__setstate__": __setstate__, "__module__": cls.__module__})


@cache
def _mace_globals() -> tuple[tuple[Any, str], ...]:
    """The allow-list for ``torch.serialization.safe_globals``: (object, name in the pickle)."""
    allowed = []
    for name in MACE_GLOBALS:
        module, _, attribute = name.rpartition(".")
        try:
            value = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError):
            continue
        if isinstance(value, type) and issubclass(value, torch.nn.Module):
            value = _without_code(value)
        allowed.append((value, name))
    allowed.append((_graph_module_stand_in, _NOT_RUN[0]))
    allowed.append((_NotRun, _NOT_RUN[1]))
    return tuple(allowed)


def load_file(file: str | Path | io.BytesIO, path: str | Path, *, mace_model: bool = False) -> Any:
    """
    Read a torch file with ``torch.load(weights_only=True)``: the one place tangentlab calls
    ``torch.load``. Nothing in the file can run code.

    Parameters
    ----------
    file
        The file, or its bytes.
    path
        The file's name, for errors.
    mace_model
        Also allow the classes a pickled MACE model is made of (:data:`MACE_GLOBALS`); their
        compiled code is not loaded, so the model read can only give its configuration and
        weights (:func:`starting_weights`).

    Returns
    -------
    Any
        What the file holds.

    Raises
    ------
    pickle.UnpicklingError
        If the file needs anything not allowed (``torch.load``'s error).
    """
    if not mace_model:
        return torch.load(file, map_location="cpu", weights_only=True)
    # Always explicit: `import mace` sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1, which turns every
    # torch.load that leaves out weights_only into a full (code-running) unpickle.
    with torch.serialization.safe_globals(list(_mace_globals())):
        return torch.load(file, map_location="cpu", weights_only=True)

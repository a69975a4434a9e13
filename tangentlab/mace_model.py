"""The MACE adapter: loading model files, batching structures, predictions.

MACE sets torch's global default dtype as a side effect of much of its code; every
function here runs inside `default_dtype` and leaves the caller's default unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import mace  # noqa: F401  (mace must be imported before e3nn)
import numpy as np
import torch
from ase import Atoms
from ase.data import chemical_symbols
from mace import data as mace_data
from mace.tools import torch_geometric
from mace.tools.utils import AtomicNumberTable

from tangentlab.model_files import default_dtype, read_weights


def load_model(
    path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float64, *,
    script: bool = False,
) -> torch.nn.Module:
    """
    Load a weights-only MACE model file for inference (never a pickled ``.model``).

    Parameters
    ----------
    path
        A file written by `tangentlab.model_files.save_weights` (registry model versions, the
        converted starting model).
    device
        Torch device to put the model on.
    dtype
        Floating-point dtype of the parameters and buffers.
    script
        TorchScript-compile e3nn's generated layer code (`tangentlab.model_files.read_weights`):
        for a model that is written out as a ``.model`` for users. Predictions are the same
        without it, and a model is built in a fraction of the time.

    Returns
    -------
    torch.nn.Module
        The model in eval mode, with ``requires_grad`` off on every parameter.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a weights-only MACE model file (a pickled ``.model`` included:
        `tangentlab.model_files.ModelFileError`, naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MACE model file not found: {path}")
    model = read_weights(path, device=device, dtype=dtype, script=script).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def model_elements(model: torch.nn.Module) -> list[int]:
    """
    Atomic numbers the model knows, in the order of its one-hot encoding.

    Parameters
    ----------
    model
        A MACE model.

    Returns
    -------
    list[int]
        Atomic numbers.
    """
    return [int(z) for z in model.atomic_numbers]


def model_cutoff(model: torch.nn.Module) -> float:
    """
    The model's radial cutoff in Å.

    Parameters
    ----------
    model
        A MACE model.

    Returns
    -------
    float
        The cutoff.
    """
    return float(model.r_max)


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """
    The floating-point dtype of the model's parameters.

    Parameters
    ----------
    model
        A MACE model.

    Returns
    -------
    torch.dtype
        The dtype.
    """
    return next(model.parameters()).dtype


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _heads(model: torch.nn.Module) -> tuple[list[str], str]:
    """The model's heads and the one to use: "Default" when present, else the last."""
    heads = list(getattr(model, "heads", None) or ["Default"])
    default = [head for head in heads if head.lower() == "default"]
    return heads, default[0] if default else heads[-1]


def _check_elements(model: torch.nn.Module, atoms_list: Sequence[Atoms]) -> None:
    known = set(model_elements(model))
    for index, atoms in enumerate(atoms_list):
        unknown = sorted({chemical_symbols[z] for z in atoms.numbers if int(z) not in known})
        if unknown:
            raise ValueError(
                f"structure {index} contains elements the model does not know: "
                f"{', '.join(unknown)} (model elements: {sorted(known)})"
            )


def atoms_to_graphs(
    model: torch.nn.Module,
    atoms_list: Sequence[Atoms],
    key_specification: mace_data.KeySpecification | None = None,
) -> list[mace_data.AtomicData]:
    """
    One MACE graph per structure, built with mace's own data code.

    Parameters
    ----------
    model
        The MACE model the graphs are for (its elements, cutoff, heads and dtype are used).
    atoms_list
        Structures; periodic cells are honoured.
    key_specification
        Which ``atoms.info``/``atoms.arrays`` keys become targets (e.g. reference energy and
        forces for training); None: no targets.

    Raises
    ------
    ValueError
        If a structure contains an element the model does not know.
    """
    _check_elements(model, atoms_list)
    z_table = AtomicNumberTable(model_elements(model))
    heads, head = _heads(model)
    key_specification = key_specification or mace_data.KeySpecification()
    with default_dtype(model_dtype(model)):
        return [
            mace_data.AtomicData.from_config(
                mace_data.config_from_atoms(atoms, key_specification=key_specification, head_name=head),
                z_table=z_table,
                cutoff=model_cutoff(model),
                heads=heads,
            )
            for atoms in atoms_list
        ]


def atoms_to_batch(
    model: torch.nn.Module, atoms_list: Sequence[Atoms], device: str | torch.device = "cpu"
) -> torch_geometric.Batch:
    """
    Turn structures into one MACE batch with mace's own data code.

    Parameters
    ----------
    model
        The MACE model the batch is for (its elements, cutoff, heads and dtype are used).
    atoms_list
        Structures; periodic cells are honoured.
    device
        Torch device of the batch.

    Returns
    -------
    mace.tools.torch_geometric.Batch
        The batch; ``batch.to_dict()`` is the model's input and ``batch.ptr`` delimits
        the atoms of each structure.

    Raises
    ------
    ValueError
        If a structure contains an element the model does not know, or the list is empty.
    """
    if len(atoms_list) == 0:
        raise ValueError("cannot build a MACE batch from an empty list of structures")
    return torch_geometric.Batch.from_data_list(atoms_to_graphs(model, atoms_list)).to(device)


def iter_batches(
    model: torch.nn.Module,
    atoms_list: Sequence[Atoms],
    batch_size: int,
    device: str | torch.device = "cpu",
) -> Iterator[torch_geometric.Batch]:
    """
    Yield MACE batches of consecutive structures, in order.

    Parameters
    ----------
    model
        The MACE model the batches are for.
    atoms_list
        Structures.
    batch_size
        Structures per batch (the last batch may be smaller).
    device
        Torch device of the batches.

    Yields
    ------
    mace.tools.torch_geometric.Batch
        One batch of at most ``batch_size`` structures.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for start in range(0, len(atoms_list), batch_size):
        yield atoms_to_batch(model, atoms_list[start : start + batch_size], device)


def predict(
    model: torch.nn.Module,
    atoms_list: Sequence[Atoms],
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> list[tuple[float, np.ndarray]]:
    """
    Energies and forces of structures, batched.

    Parameters
    ----------
    model
        A MACE model (see `load_model`).
    atoms_list
        Structures.
    batch_size
        Structures per forward pass.
    device
        Torch device of the batches; the model's device when None.

    Returns
    -------
    list[tuple[float, np.ndarray]]
        Per structure: total energy (eV) and forces (natoms, 3) in eV/Å, float64.
    """
    device = _model_device(model) if device is None else device
    results: list[tuple[float, np.ndarray]] = []
    with default_dtype(model_dtype(model)), torch.enable_grad():
        for batch in iter_batches(model, atoms_list, batch_size, device):
            output = model(batch.to_dict(), training=False, compute_force=True)
            energies = output["energy"].detach().cpu().numpy().astype(np.float64)
            forces = output["forces"].detach().cpu().numpy().astype(np.float64)
            ptr = batch.ptr.cpu().numpy()
            results.extend(
                (float(energies[i]), forces[ptr[i] : ptr[i + 1]].copy())
                for i in range(len(ptr) - 1)
            )
    return results

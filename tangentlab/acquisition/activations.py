"""Activation-kernel features: pooled invariant node features of every MACE layer.

For a structure x with atoms i, the row is the concatenation over layers l of
``Σ_i h_i^(l)`` (``"sum"``) and/or ``(1/N) Σ_i h_i^(l)`` (``"mean"``), where ``h_i^(l)``
are the invariant (0e) channels of layer l's node features. The activation kernel is
the dot product of standardised rows (`Standardizer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import mace  # noqa: F401  (mace must be imported before e3nn)
import numpy as np
import torch
from ase import Atoms

from e3nn import o3  # isort: skip
from mace.tools.scatter import scatter_sum

from tangentlab.mace_model import default_dtype, iter_batches, model_dtype

POOLINGS = ("sum", "mean")


def _parse_pooling(pooling: str) -> list[str]:
    parts = [part.strip() for part in pooling.split("+")]
    if not parts or any(part not in POOLINGS for part in parts) or len(set(parts)) != len(parts):
        raise ValueError(
            f"pooling must be 'sum', 'mean' or 'sum+mean', got {pooling!r}"
        )
    return parts


def invariant_columns(model: torch.nn.Module) -> np.ndarray:
    """
    Columns of MACE's ``node_feats`` output that hold invariant (0e) features.

    ``node_feats`` concatenates the output of every product block; within a layer the
    0e channels are located from the block's output irreps. This is what
    ``mace.modules.utils.extract_invariant`` does for MACE's usual irreps
    (``Nx0e+Nx1o+...``), without assuming that layout.

    Parameters
    ----------
    model
        A MACE model.

    Returns
    -------
    np.ndarray
        Column indices, layer by layer.
    """
    columns = []
    offset = 0
    for product in model.products:
        irreps = o3.Irreps(str(product.linear.irreps_out))
        for (_, irrep), block in zip(irreps, irreps.slices()):
            if irrep.l == 0 and irrep.p == 1:
                columns.extend(range(offset + block.start, offset + block.stop))
        offset += irreps.dim
    return np.asarray(columns, dtype=np.int64)


def activation_features(
    model: torch.nn.Module,
    atoms_list: Sequence[Atoms],
    batch_size: int = 32,
    device: str | torch.device | None = None,
    pooling: str = "sum+mean",
) -> np.ndarray:
    """
    Activation-kernel feature rows of structures.

    Parameters
    ----------
    model
        A MACE model (see `tangentlab.mace_model.load_model`).
    atoms_list
        Structures.
    batch_size
        Structures per forward pass; the rows do not depend on it.
    device
        Torch device of the batches; the model's device when None.
    pooling
        ``"sum"``, ``"mean"`` or ``"sum+mean"`` (both, sum block first).

    Returns
    -------
    np.ndarray
        Rows (n_structures, n_poolings * n_invariant_features), float64. Within a
        pooling block the layers come in order.
    """
    poolings = _parse_pooling(pooling)
    rows = []
    for batch, invariant in _invariant_node_features(model, atoms_list, batch_size, device):
        sums = scatter_sum(invariant, batch.batch, dim=0, dim_size=batch.num_graphs)
        counts = (batch.ptr[1:] - batch.ptr[:-1]).to(sums.dtype).unsqueeze(-1)
        pooled = {"sum": sums, "mean": sums / counts}
        rows.append(torch.cat([pooled[name] for name in poolings], dim=-1).cpu().numpy().astype(np.float64))
    if not rows:
        return np.zeros((0, len(poolings) * len(invariant_columns(model))))
    return np.concatenate(rows, axis=0)


def atom_features(
    model: torch.nn.Module,
    atoms_list: Sequence[Atoms],
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """
    Unpooled activation features: one row per atom, the invariant (0e) node features of
    every MACE layer ``h_i^(l)`` concatenated (the local-environment rows of the
    ``atom_activation`` signal).

    Returns
    -------
    np.ndarray
        Rows (total number of atoms, n_invariant_features), float64, structure after
        structure and within a structure in atom order.
    """
    rows = [invariant.cpu().numpy().astype(np.float64)
            for _, invariant in _invariant_node_features(model, atoms_list, batch_size, device)]
    if not rows:
        return np.zeros((0, len(invariant_columns(model))))
    return np.concatenate(rows, axis=0)


def _invariant_node_features(model, atoms_list, batch_size, device):
    """(batch, invariant node features of its atoms) per forward pass of ``batch_size`` structures."""
    columns = torch.as_tensor(invariant_columns(model))
    if device is None:
        device = next(model.parameters()).device
    columns = columns.to(device)
    with default_dtype(model_dtype(model)), torch.no_grad():
        for batch in iter_batches(model, atoms_list, batch_size, device):
            output = model(batch.to_dict(), training=False, compute_force=False)
            node_feats = output["node_feats"]
            if node_feats.shape[1] < int(columns.max()) + 1:
                raise ValueError(
                    f"node_feats has {node_feats.shape[1]} columns, expected the "
                    f"product blocks' {int(columns.max()) + 1}"
                )
            yield batch, node_feats.index_select(1, columns)


@dataclass(frozen=True)
class Standardizer:
    """
    Per-column standardisation fitted on a reference set of feature rows.

    Columns that are constant on the reference set keep unit scale (they are only
    centred), so no division by zero occurs.

    Attributes
    ----------
    mean
        Column means of the reference rows.
    std
        Column standard deviations (1 where a column is constant).
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, rows: np.ndarray, eps: float = 1e-12) -> Standardizer:
        """
        Fit on reference rows.

        Parameters
        ----------
        rows
            Reference feature rows (n, d), n >= 1.
        eps
            Standard deviations at or below ``eps`` times the largest column scale
            (or absolute ``eps``) count as zero.

        Returns
        -------
        Standardizer
            The fitted standardiser.
        """
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[0] == 0:
            raise ValueError(f"need a non-empty (n, d) array of rows, got shape {rows.shape}")
        mean = rows.mean(axis=0)
        std = rows.std(axis=0)
        scale = max(float(np.abs(rows).max()), 1.0)
        std = np.where(std <= eps * scale, 1.0, std)
        return cls(mean=mean, std=std)

    def transform(self, rows: np.ndarray) -> np.ndarray:
        """
        Standardise rows with the fitted mean and std.

        Parameters
        ----------
        rows
            Feature rows (n, d).

        Returns
        -------
        np.ndarray
            ``(rows - mean) / std``.
        """
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"rows have shape {rows.shape}, the standardizer has {self.mean.shape[0]} columns"
            )
        return (rows - self.mean) / self.std

    def to_dict(self) -> dict[str, list[float]]:
        """
        Plain lists for storage as JSON.

        Returns
        -------
        dict
            ``{"mean": [...], "std": [...]}``.
        """
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> Standardizer:
        """
        Rebuild from `to_dict` output.

        Parameters
        ----------
        data
            ``{"mean": [...], "std": [...]}``.

        Returns
        -------
        Standardizer
            The standardiser.
        """
        return cls(mean=np.asarray(data["mean"], float), std=np.asarray(data["std"], float))

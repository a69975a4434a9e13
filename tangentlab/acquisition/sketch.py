"""The fixed random sketch S (d x P) of NTK rows and the parameter subsets θ they cover.

``S`` is Gaussian N(0, 1)/√d or Rademacher ±1/√d, so ``E[SᵀS] = I`` and sketched inner
products approximate the full NTK. It is generated block by block (one block per parameter
tensor, slabs of ``_SKETCH_COLUMNS`` columns, each from its own generator seeded by
``(seed, crc32(parameter name), slab)``): the same seed gives the same S on every device and
for every subset that contains a parameter.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np
import torch

SKETCH_KINDS = ("gaussian", "rademacher")
#: Named parameter subsets; anything else is read as a list of name prefixes.
PARAMETER_PRESETS = ("all", "readouts", "last_layer")
#: Columns of a parameter block generated from one seed; fixed so that the sketch does
#: not depend on how it is generated or cached.
_SKETCH_COLUMNS = 4096
#: Exact rows (no sketch) over more parameters than this would make A (d x d) too big.
MAX_EXACT_DIM = 8192


def select_parameters(model: torch.nn.Module, parameters: str | Sequence[str] = "all") -> list[str]:
    """
    Names of the parameters an NTK is taken over.

    Parameters
    ----------
    model
        A MACE model.
    parameters
        ``"all"``; ``"readouts"`` (the readout blocks); ``"last_layer"`` (the readouts and
        the last interaction and product blocks); or a sequence of name prefixes such as
        ``["readouts.", "interactions.1."]``.

    Returns
    -------
    list[str]
        Parameter names in the model's order.

    Raises
    ------
    ValueError
        If nothing matches.
    """
    names = [name for name, _ in model.named_parameters()]
    if isinstance(parameters, str):
        if parameters == "all":
            return names
        if parameters == "readouts":
            prefixes: tuple[str, ...] = ("readouts.",)
        elif parameters == "last_layer":
            last = len(model.interactions) - 1
            prefixes = ("readouts.", f"interactions.{last}.", f"products.{last}.")
        else:
            raise ValueError(
                f"parameters must be one of {PARAMETER_PRESETS} or a list of name prefixes, "
                f"got {parameters!r}"
            )
    else:
        prefixes = tuple(parameters)
    selected = [name for name in names if name.startswith(prefixes)]
    if not selected:
        raise ValueError(f"no parameter name starts with any of {list(prefixes)}")
    return selected


class ParameterSketch:
    """
    A fixed d x P matrix S over named parameter blocks, generated block by block.

    ``sketch_dim=None`` gives the identity (exact rows over the blocks, d = P). Otherwise
    the entries are N(0, 1)/√d (``"gaussian"``) or ±1/√d (``"rademacher"``), so that
    ``E[SᵀS] = I``. The columns of a parameter block come in slabs of 4096, each drawn
    from its own generator seeded by ``(seed, crc32(parameter name), slab)``: a
    parameter's columns do not depend on which other parameters are selected, on the
    device, or on caching. Blocks are cached while the whole sketch fits in
    ``cache_bytes``; beyond that each use regenerates them, so S is never held whole.

    Parameters
    ----------
    names
        Parameter names (the blocks, in order).
    numels
        Number of entries of each parameter.
    sketch_dim
        d, or None for the identity.
    kind
        ``"gaussian"`` or ``"rademacher"``.
    seed
        Seed of the sketch.
    cache_bytes
        Largest total size (at 8 bytes an entry) that is kept in memory.
    """

    def __init__(
        self,
        names: Sequence[str],
        numels: Sequence[int],
        sketch_dim: int | None,
        kind: str = "gaussian",
        seed: int = 0,
        cache_bytes: int = 1 << 30,
    ) -> None:
        if kind not in SKETCH_KINDS:
            raise ValueError(f"sketch kind must be one of {SKETCH_KINDS}, got {kind!r}")
        if sketch_dim is not None and sketch_dim < 1:
            raise ValueError(f"sketch_dim must be a positive integer or None, got {sketch_dim}")
        self.names = list(names)
        self.numels = [int(n) for n in numels]
        self.total = sum(self.numels)
        self.exact = sketch_dim is None
        if self.exact and self.total > MAX_EXACT_DIM:
            raise ValueError(
                f"exact rows over {self.total} parameters would give a "
                f"{self.total}-dimensional feature space; choose a sketch_dim or a smaller "
                f"parameter subset (at most {MAX_EXACT_DIM} parameters)"
            )
        self.dim = self.total if sketch_dim is None else int(sketch_dim)
        self.kind = kind
        self.seed = int(seed)
        self.offsets = np.concatenate([[0], np.cumsum(self.numels)]).astype(np.int64)
        self._cache_enabled = self.dim * self.total * 8 <= cache_bytes
        self._cache: dict[tuple[int, str, torch.dtype], torch.Tensor] = {}

    def _generate(self, index: int) -> torch.Tensor:
        numel = self.numels[index]
        if self.exact:
            block = torch.zeros(self.dim, numel, dtype=torch.float64)
            start = int(self.offsets[index])
            block[start : start + numel] = torch.eye(numel, dtype=torch.float64)
            return block
        name_key = zlib.crc32(self.names[index].encode())
        slabs = []
        for slab, start in enumerate(range(0, numel, _SKETCH_COLUMNS)):
            width = min(_SKETCH_COLUMNS, numel - start)
            state = np.random.SeedSequence([self.seed, name_key, slab]).generate_state(2)
            generator = torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))
            if self.kind == "gaussian":
                values = torch.randn(self.dim, width, generator=generator, dtype=torch.float64)
            else:
                values = torch.randint(0, 2, (self.dim, width), generator=generator)
                values = values.to(torch.float64) * 2.0 - 1.0
            slabs.append(values)
        return torch.cat(slabs, dim=1) / math.sqrt(self.dim)

    def block(
        self, index: int, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64
    ) -> torch.Tensor:
        """
        The columns of S for one parameter block.

        Parameters
        ----------
        index
            Block index (position in ``names``).
        device
            Torch device of the result.
        dtype
            Dtype of the result.

        Returns
        -------
        torch.Tensor
            (d, numel) block.
        """
        key = (index, str(device), dtype)
        if key in self._cache:
            return self._cache[key]
        block = self._generate(index).to(device=device, dtype=dtype)
        if self._cache_enabled:
            self._cache[key] = block
        return block

    def dense(self) -> np.ndarray:
        """
        S as one (d, P) array (for tests and small models).

        Returns
        -------
        np.ndarray
            The sketch matrix.
        """
        return np.concatenate([self.block(i).numpy() for i in range(len(self.names))], axis=1)

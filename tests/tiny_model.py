"""A tiny, real, randomly initialised ScaleShiftMACE for fast tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import mace  # noqa: F401  (mace must be imported before e3nn)
import numpy as np
import torch
from e3nn import o3
from mace import modules

from tangentlab.mace_model import default_dtype
from tangentlab.model_files import write_model


def make_tiny_model(
    path: str | Path, elements: Sequence[int] = (1, 6, 7, 8), seed: int = 0
) -> Path:
    """
    Build and save a tiny ScaleShiftMACE (float64): a weights-only file and a standard ``.model``.

    Built with the constructor arguments mace's own tests use, shrunk: r_max 4 Å,
    two interactions, hidden irreps 8x0e+8x1o, max_ell 2, correlation 2, 6 radial
    basis functions.

    Parameters
    ----------
    path
        Where to write the model: ``<stem>.pt`` (weights-only, what tangentlab loads) and
        ``<stem>.model`` (the pickled module `MACECalculator` loads), as fine-tuning does.
    elements
        Atomic numbers the model knows.
    seed
        Seed of the random initialisation.

    Returns
    -------
    Path
        The weights-only file (the ``.model`` is ``path.with_suffix(".model")``).
    """
    path = Path(path)
    zs = sorted(int(z) for z in elements)
    with default_dtype(torch.float64):
        torch.manual_seed(seed)
        interaction = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
        model = modules.ScaleShiftMACE(
            r_max=4.0,
            num_bessel=6,
            num_polynomial_cutoff=5,
            max_ell=2,
            interaction_cls=interaction,
            interaction_cls_first=interaction,
            num_interactions=2,
            num_elements=len(zs),
            hidden_irreps=o3.Irreps("8x0e+8x1o"),
            MLP_irreps=o3.Irreps("8x0e"),
            gate=torch.nn.functional.silu,
            atomic_energies=-np.linspace(1.0, 4.0, len(zs)),
            avg_num_neighbors=4.0,
            atomic_numbers=zs,
            correlation=2,
            radial_type="bessel",
            radial_MLP=[16, 16],
            atomic_inter_scale=0.5,
            atomic_inter_shift=0.1,
        )
    return write_model(model, path)


def rattled_molecules(names, seed: int = 0, scale: float = 0.05):
    """G2 molecules by name with Gaussian displacements of ``scale`` Å (reproducible for ``seed``)."""
    import numpy as np
    from ase.build import molecule

    rng = np.random.default_rng(seed)
    structures = []
    for name in names:
        atoms = molecule(name)
        atoms.positions += rng.normal(scale=scale, size=atoms.positions.shape)
        structures.append(atoms)
    return structures


#: Foundation-model architectures, shrunk (8-16 channels, max_ell 2, correlation 2, which changes
#: no class): the MACE-MP-0 recipe (RealAgnostic first
#: interaction, then residual ones; 89 elements, r_max 6 Å, 10 Bessel functions, ZBL pair
#: repulsion and the Agnesi distance transform of MACE-MP-0b3) and the MACE-OFF23 recipe
#: (residual interactions, 10 organic elements, r_max 5 Å, 8 Bessel functions, invariant
#: hidden features as in MACE-OFF23 small).
FOUNDATION_STYLES = {
    "mace-mp": {
        "dtype": torch.float64,
        "elements": list(range(1, 90)),
        "kwargs": {
            "r_max": 6.0,
            "num_bessel": 10,
            "interaction_cls_first": "RealAgnosticInteractionBlock",
            "interaction_cls": "RealAgnosticResidualInteractionBlock",
            "hidden_irreps": "8x0e+8x1o",
            "pair_repulsion": True,
            "distance_transform": "Agnesi",
        },
    },
    "mace-off": {
        "dtype": torch.float32,
        "elements": [1, 6, 7, 8, 9, 15, 16, 17, 35, 53],
        "kwargs": {
            "r_max": 5.0,
            "num_bessel": 8,
            "interaction_cls_first": "RealAgnosticResidualInteractionBlock",
            "interaction_cls": "RealAgnosticResidualInteractionBlock",
            "hidden_irreps": "16x0e",
        },
    },
}


def make_foundation_style_model(path: str | Path, style: str, seed: int = 0) -> Path:
    """
    Build a randomly initialised ScaleShiftMACE of a foundation model's architecture with
    MACE's own constructor and save it as MACE's training does (``torch.save`` of the module).

    Parameters
    ----------
    path
        The ``.model`` file to write.
    style
        A key of :data:`FOUNDATION_STYLES` (``"mace-mp"``, ``"mace-off"``).
    seed
        Seed of the random initialisation.

    Returns
    -------
    Path
        ``path``.
    """
    spec = FOUNDATION_STYLES[style]
    kwargs = dict(spec["kwargs"])
    zs = spec["elements"]
    with default_dtype(spec["dtype"]):
        torch.manual_seed(seed)
        model = modules.ScaleShiftMACE(
            num_polynomial_cutoff=5,
            max_ell=2,
            num_interactions=2,
            num_elements=len(zs),
            MLP_irreps=o3.Irreps("16x0e"),
            gate=torch.nn.functional.silu,
            atomic_energies=-np.linspace(0.5, 5.0, len(zs)),
            avg_num_neighbors=10.0,
            atomic_numbers=zs,
            correlation=2,
            radial_type="bessel",
            radial_MLP=[16, 16, 16],
            atomic_inter_scale=0.8,
            atomic_inter_shift=0.0,
            **{
                **kwargs,
                "interaction_cls_first": modules.interaction_classes[
                    kwargs["interaction_cls_first"]
                ],
                "interaction_cls": modules.interaction_classes[kwargs["interaction_cls"]],
                "hidden_irreps": o3.Irreps(kwargs["hidden_irreps"]),
            },
        )
    path = Path(path)
    torch.save(model, path)
    return path

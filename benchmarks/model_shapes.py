"""MACE models of published architectures, built with mace's own constructors (random weights).

The published MACE-MP-0 and MACE-OFF23 files cannot be downloaded on a machine without
network access; what matters for tangentlab's cost and memory is their shape, which
``mace.modules.ScaleShiftMACE`` reproduces from the hyperparameters of their training
recipes:

=====================  =========  ===================  ======  ============  ===========
shape                  elements   hidden irreps        r_max   interactions  correlation
=====================  =========  ===================  ======  ============  ===========
``mace-mp-0-small``    89 (H-Ac)  128x0e               6 Å     2             3
``mace-mp-0-medium``   89 (H-Ac)  128x0e+128x1o        6 Å     2             3
``mace-off23-small``   10         96x0e                5 Å     2             3
``cuoh-small``         H, O, Cu   32x0e                4.5 Å   2             3
=====================  =========  ===================  ======  ============  ===========

All use 8 (OFF) or 10 (MP) Bessel functions, a polynomial cutoff of order 5, spherical
harmonics to max_ell 3, a 64x64x64 radial MLP, a 16x0e readout MLP, residual interactions
throughout, float64. Parameter counts: 3,847,696 (MP-0 small), 4,688,656 (MP-0 medium), as
the published 3.85 M and 4.69 M; 417,840 (OFF23 small).
``cuoh-small`` is the small periodic model of the force-NTK cost benchmark (its size is
the shipped molecular model's: 32 invariant channels).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np

with contextlib.redirect_stdout(sys.stderr):
    import mace  # noqa: F401  (mace must be imported before e3nn)
    import torch
    from e3nn import o3
    from mace import modules

SHAPES: dict[str, dict] = {
    "mace-mp-0-small": {
        "elements": list(range(1, 90)),
        "hidden_irreps": "128x0e",
        "r_max": 6.0,
        "num_bessel": 10,
        "first": "RealAgnosticResidualInteractionBlock",
        "avg_num_neighbors": 61.0,
    },
    "mace-mp-0-medium": {
        "elements": list(range(1, 90)),
        "hidden_irreps": "128x0e+128x1o",
        "r_max": 6.0,
        "num_bessel": 10,
        "first": "RealAgnosticResidualInteractionBlock",
        "avg_num_neighbors": 61.0,
    },
    "mace-off23-small": {
        "elements": [1, 6, 7, 8, 9, 15, 16, 17, 35, 53],
        "hidden_irreps": "96x0e",
        "r_max": 5.0,
        "num_bessel": 8,
        "first": "RealAgnosticResidualInteractionBlock",
        "avg_num_neighbors": 18.0,
    },
    "cuoh-small": {
        "elements": [1, 8, 29],
        "hidden_irreps": "32x0e",
        "r_max": 4.5,
        "num_bessel": 8,
        "first": "RealAgnosticResidualInteractionBlock",
        "avg_num_neighbors": 20.0,
    },
}


def build_model(shape: str, seed: int = 0) -> torch.nn.Module:
    """
    A randomly initialised float64 ``ScaleShiftMACE`` of one of the `SHAPES`.

    Parameters
    ----------
    shape
        A key of `SHAPES`.
    seed
        Seed of the random initialisation.

    Returns
    -------
    torch.nn.Module
        The model (float64, on the CPU).
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown model shape {shape!r}; choose from {sorted(SHAPES)}")
    spec = SHAPES[shape]
    zs = spec["elements"]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(seed)
        model = modules.ScaleShiftMACE(
            r_max=spec["r_max"],
            num_bessel=spec["num_bessel"],
            num_polynomial_cutoff=5,
            max_ell=3,
            interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes[spec["first"]],
            num_interactions=2,
            num_elements=len(zs),
            hidden_irreps=o3.Irreps(spec["hidden_irreps"]),
            MLP_irreps=o3.Irreps("16x0e"),
            gate=torch.nn.functional.silu,
            atomic_energies=-np.linspace(0.5, 5.0, len(zs)),
            avg_num_neighbors=spec["avg_num_neighbors"],
            atomic_numbers=zs,
            correlation=3,
            radial_type="bessel",
            radial_MLP=[64, 64, 64],
            atomic_inter_scale=1.0,
            atomic_inter_shift=0.0,
        )
    finally:
        torch.set_default_dtype(previous)
    return model


def write_shape(shape: str, path: str | Path, seed: int = 0) -> Path:
    """
    Build a `SHAPES` model and save it as MACE's training does (``torch.save`` of the module,
    a pickled ``.model``).

    Parameters
    ----------
    shape
        A key of `SHAPES`.
    path
        The ``.model`` file to write.
    seed
        Seed of the random initialisation.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_model(shape, seed), path)
    return path

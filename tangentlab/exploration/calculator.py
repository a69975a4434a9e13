"""An ASE calculator over a loaded MACE model (`tangentlab.mace_model.load_model`).

The exploration engines drive ASE's own integrators and optimisers (Langevin, NEB) with the
campaign's current model through this calculator. It calls `tangentlab.mace_model.predict`,
so it works on the weights-only model files of the registry, never on a pickled ``.model``.
"""

from __future__ import annotations

import torch
from ase.calculators.calculator import Calculator, all_changes

from tangentlab.mace_model import predict


class ModelCalculator(Calculator):
    """Energy and forces of a loaded MACE model for ASE.

    Parameters
    ----------
    model
        A model from `tangentlab.mace_model.load_model` (its device is used).
    """

    implemented_properties = ("energy", "free_energy", "forces")

    def __init__(self, model: torch.nn.Module, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        ((energy, forces),) = predict(self.model, [self.atoms])
        self.calls += 1
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}

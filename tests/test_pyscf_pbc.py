"""The periodic PySCF oracle (`pyscf-pbc`): one real periodic DFT label, and what it refuses.

Its validation against GPAW (three cells, energies and forces) is in
docs/reference/qm_validation.md and scripts/validate_pyscf_pbc.py; this test runs one tiny label.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from tangentlab.config import make_config
from tangentlab.oracles import QMFailure, make_oracle

# H2 in a 3 Å periodic cubic cell, PBE/gth-szv at the Γ point, with PySCF's own (converged)
# plane-wave grid (ke_cutoff None, 215 s here): the label that a coarser grid must approach.
H2_POSITIONS = [[0.0, 0.0, 0.0], [0.78, 0.1, 0.05]]
CONVERGED_ENERGY_EV = -33.58964
CONVERGED_FORCE_0 = [-5.57377, -0.68854, -0.34416]


def h2_cell() -> Atoms:
    return Atoms("H2", positions=H2_POSITIONS, cell=[3.0, 3.0, 3.0], pbc=True)


def test_one_periodic_dft_label_matches_the_converged_grid(tmp_path):
    oracle = make_oracle({"name": "pyscf-pbc", "ke_cutoff": 50.0, "num_threads": 1})
    result = oracle(h2_cell(), results_dir=tmp_path)
    assert result.level["code"] == "pyscf-pbc" and result.level["kpts"] == [1, 1, 1]
    assert result.level["ke_cutoff"] == 50.0 and result.level["basis"] == "gth-szv"
    # 50 Hartree is within 1 meV and 2 meV/Å of the converged grid; 20 Hartree is 8 meV and
    # 22 meV/Å off, with a net force of 0.9 eV/Å on the cell.
    assert abs(result.energy - CONVERGED_ENERGY_EV) < 2e-3
    assert np.abs(result.forces[0] - CONVERGED_FORCE_0).max() < 5e-3
    assert np.abs(result.forces.sum(axis=0)).max() < 0.1
    assert list(tmp_path.glob("**/pyscf.log*"))


def test_what_the_periodic_oracle_refuses(tmp_path):
    oracle = make_oracle({"name": "pyscf-pbc", "ke_cutoff": 20.0})
    with pytest.raises(QMFailure, match="no periodic direction"):
        oracle(Atoms("H2", positions=H2_POSITIONS), results_dir=tmp_path)
    slab_without_vacuum = Atoms(
        "H2", positions=H2_POSITIONS, cell=[3.0, 3.0, 0.0], pbc=[True, True, False]
    )
    with pytest.raises(QMFailure, match="vacuum"):
        oracle(slab_without_vacuum, results_dir=tmp_path)
    charged = h2_cell()
    charged.info.update(charge=1, multiplicity=2)
    with pytest.raises(QMFailure, match="neutral"):
        oracle(charged, results_dir=tmp_path)
    for spec, message in [
        ({"xc": "b3lyp"}, "hybrid"),
        ({"xc": "nonsense"}, "functional"),
        ({"basis": "gth-nonsense"}, "basis"),
        ({"pseudo": "nope"}, "pseudopotential"),
        ({"kpts": [2, 2]}, "kpts"),
        ({"smearing_eV": -0.1}, "smearing_eV"),
    ]:
        with pytest.raises(ValueError, match=message):
            make_oracle({"name": "pyscf-pbc", **spec})


def test_campaign_configuration_takes_the_periodic_oracle_and_its_threads():
    config = make_config(
        {
            "oracle": {
                "name": "pyscf-pbc",
                "basis": "gth-dzvp",
                "kpts": [2, 2, 1],
                "ke_cutoff": 80,
            },
            "qm": {"num_threads": 2},
        }
    )
    assert config.oracle.name == "pyscf-pbc" and config.oracle.kpts == [2, 2, 1]
    assert config.oracle.model_dump() == {
        "name": "pyscf-pbc",
        "basis": "gth-dzvp",
        "kpts": [2, 2, 1],
        "ke_cutoff": 80.0,
    }

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule

from tangentlab.structures import (
    InvalidStructureError,
    charge_and_multiplicity,
    content_hash,
    validate_atoms,
)


def test_valid_molecule_and_crystal_pass():
    validate_atoms(molecule("H2O"), allowed_elements=["H", "C", "N", "O"])
    validate_atoms(bulk("Cu", "fcc", a=3.6), allowed_elements=[29])


def test_default_multiplicity_follows_electron_count():
    assert charge_and_multiplicity(molecule("H2O")) == (0, 1)
    assert charge_and_multiplicity(molecule("OH")) == (0, 2)
    cation = molecule("H2O")
    cation.info["charge"] = 1
    assert charge_and_multiplicity(cation) == (1, 2)
    triplet = molecule("O2")
    triplet.info["spin"] = 3
    assert charge_and_multiplicity(triplet) == (0, 3)
    triplet.info["multiplicity"] = 1
    assert charge_and_multiplicity(triplet) == (0, 1)


def test_empty_structure_rejected():
    with pytest.raises(InvalidStructureError, match=r"pool\.xyz, structure 3: no atoms"):
        validate_atoms(Atoms(), where="pool.xyz, structure 3")


def test_non_finite_positions_rejected_naming_atom():
    atoms = molecule("CH4")
    atoms.positions[2, 1] = np.nan
    with pytest.raises(InvalidStructureError, match=r"s\.xyz, structure 0: non-finite.*atom 2"):
        validate_atoms(atoms, where="s.xyz, structure 0")


def test_overlap_names_pair_and_distance():
    atoms = Atoms("HHO", positions=[[0, 0, 0], [3, 0, 0], [3.2, 0, 0]])
    with pytest.raises(InvalidStructureError, match=r"atoms 1 and 2 are 0\.200 Å apart"):
        validate_atoms(atoms)
    validate_atoms(atoms, min_distance=0.1)


def test_periodic_image_overlap_rejected():
    atoms = Atoms("H", positions=[[0, 0, 0]], cell=[0.3, 5, 5], pbc=True)
    with pytest.raises(InvalidStructureError, match=r"atom 0 and its periodic image are 0\.300 Å"):
        validate_atoms(atoms)


def test_disallowed_element_named():
    with pytest.raises(InvalidStructureError, match="element Cl not in allowed"):
        validate_atoms(molecule("CH3Cl"), allowed_elements=["H", "C", "N", "O"])


@pytest.mark.parametrize(
    ("charge", "multiplicity"),
    [(0, 2), (0, 0), (1, 1), (11, 1), (0, 13), (0.5, 1)],
)
def test_impossible_charge_or_multiplicity(charge, multiplicity):
    atoms = molecule("H2O")  # 10 electrons
    atoms.info.update(charge=charge, multiplicity=multiplicity)
    with pytest.raises(InvalidStructureError, match=r"w: .*(charge|multiplicity)"):
        validate_atoms(atoms, where="w")


def test_possible_open_shell_states_pass():
    atoms = molecule("H2O")
    atoms.info.update(charge=0, multiplicity=3)
    validate_atoms(atoms)
    atoms.info.update(charge=-1, multiplicity=2)
    validate_atoms(atoms)


def test_content_hash_is_stable_below_grid_and_sensitive_above():
    atoms = molecule("H2O")
    reference = content_hash(atoms)
    jittered = atoms.copy()
    jittered.positions += 1e-9
    assert content_hash(jittered) == reference
    moved = atoms.copy()
    moved.positions[0, 0] += 1e-4
    assert content_hash(moved) != reference
    charged = atoms.copy()
    charged.info.update(charge=-1, multiplicity=2)
    assert content_hash(charged) != reference
    periodic = atoms.copy()
    periodic.cell = [10, 10, 10]
    periodic.pbc = True
    assert content_hash(periodic) != reference
    assert len(reference) == 64

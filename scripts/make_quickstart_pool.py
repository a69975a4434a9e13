"""Write the quick-start candidate pool that ships with tangentlab (unlabelled structures).

    python scripts/make_quickstart_pool.py tangentlab/data/quickstart_pool.extxyz
"""

from __future__ import annotations

import sys

import ase.io

from tangentlab.pretrain_data import generate_structures

# One reactive system, as a user's pool would be: small C/H/N/O combustion species and
# radicals (ASE G2 names), distorted, with bonds stretched towards transition-state lengths
# (1.15-1.6x), hydrogens removed and fragments meeting at 1.5-3 Å. A pool spread over all of
# G2, or with fully dissociated bonds, needs far more labels to generalise (docs/notes.md).
SPECIES = ("H2", "O2", "H2O", "OH", "H2O2", "CO", "CO2", "H2CO", "HCO", "CH3OH", "CH3O", "CH4", "CH3",
           "NH3", "NH2", "NO", "HCN", "N2")

if __name__ == "__main__":
    structures = [
        a for a in generate_structures(330, seed=7, max_atoms=6, kinds=("rattled", "radical", "stretched", "encounter"),
                                       seed_names=SPECIES, stretch_factors=(1.15, 1.6), encounter_gaps=(1.5, 3.0))
        if len(a) >= 2
    ][:300]
    for atoms in structures:
        atoms.info = {"config_type": atoms.info["config_type"], "seed": atoms.info["seed"]}
    ase.io.write(sys.argv[1], structures, format="extxyz")
    print(f"wrote {len(structures)} structures to {sys.argv[1]}")

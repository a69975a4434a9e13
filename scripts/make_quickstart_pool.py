"""Write the quick-start candidate pool that ships with tangentlab (unlabelled structures).

One reactive system, as a user's pool would be (`REACTIVE_RECIPE`): small C/H/N/O combustion
species, distorted, bonds stretched to 1.15-1.6x, hydrogens removed, fragments meeting at
1.5-3 Å. A pool spread over all of G2, or with fully dissociated bonds, needs far more labels
to generalise (CONTRIBUTING.md).

    python scripts/make_quickstart_pool.py tangentlab/data/quickstart_pool.extxyz
"""

from __future__ import annotations

import sys

import ase.io

from tangentlab.pretrain_data import REACTIVE_RECIPE, generate_structures

if __name__ == "__main__":
    structures = [
        a for a in generate_structures(330, seed=7, max_atoms=6, **REACTIVE_RECIPE)
        if len(a) >= 2
    ][:300]
    for atoms in structures:
        atoms.info = {"config_type": atoms.info["config_type"], "seed": atoms.info["seed"]}
    ase.io.write(sys.argv[1], structures, format="extxyz")
    print(f"wrote {len(structures)} structures to {sys.argv[1]}")

"""Write the quick-start candidate pool that ships with tangentlab (unlabelled structures).

    python scripts/make_quickstart_pool.py tangentlab/data/quickstart_pool.extxyz
"""

from __future__ import annotations

import sys

import ase.io

from tangentlab.pretrain_data import generate_structures

if __name__ == "__main__":
    # Single atoms carry no information beyond their reference energy: leave them out.
    structures = [a for a in generate_structures(420, seed=7, max_atoms=6) if len(a) >= 2][:400]
    for atoms in structures:
        atoms.info = {"config_type": atoms.info["config_type"], "seed": atoms.info["seed"]}
    ase.io.write(sys.argv[1], structures, format="extxyz")
    print(f"wrote {len(structures)} structures to {sys.argv[1]}")

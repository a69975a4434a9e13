"""Oracles: where labels come from, one module per kind, like quacc's recipes.

- `xtb`: GFN-xTB through quacc's tblite recipe (molecules and periodic cells).
- `emt`: ASE's EMT through quacc's emt recipe (fast periodic labels for tests and examples).
- `pyscf`: molecular HF/DFT with PySCF (`pyscf_calculator`), with an SCF stability step.
- `pyscf-pbc`: periodic Kohn-Sham DFT with PySCF's PBC module (GTH pseudopotentials).
- `recipe`: any quacc recipe by import path.
- `replay`: labels stored with the pool files (benchmarks).

`make_oracle(spec)` checks a spec and returns an `Oracle`; calling it labels one structure
and returns a `QMResult` or raises `QMFailure`. With a time limit the job runs in a child
process (`isolation.run_with_timeout`). A new kind is one module with an `Oracle` subclass
registered in `ORACLES` (`base.register`), imported here.
"""

from __future__ import annotations

from tangentlab.oracles.base import ORACLES, Oracle, make_oracle
from tangentlab.oracles.emt import EMTOracle
from tangentlab.oracles.pyscf import PySCFOracle
from tangentlab.oracles.pyscf_pbc import PySCFPBCOracle
from tangentlab.oracles.recipe import RecipeOracle
from tangentlab.oracles.replay import ReplayOracle
from tangentlab.oracles.results import QMFailure, QMResult
from tangentlab.oracles.xtb import XTBOracle

__all__ = [
    "ORACLES",
    "EMTOracle",
    "Oracle",
    "PySCFOracle",
    "PySCFPBCOracle",
    "QMFailure",
    "QMResult",
    "RecipeOracle",
    "ReplayOracle",
    "XTBOracle",
    "make_oracle",
]

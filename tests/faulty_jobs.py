"""A quacc-style job with injected faults, used as a recipe oracle by import path in tests.

By formula: H2 raises, O2 hangs, N2 kills its own process, CO2 takes
``$TANGENTLAB_TEST_SLOW_JOB_S`` seconds (default 5) longer; everything else is a real GFN2-xTB
single point through quacc's tblite recipe.
"""

from __future__ import annotations

import os
import signal
import time


def static_job(atoms, charge=0, spin_multiplicity=1, **kwargs):
    formula = atoms.get_chemical_formula()
    if formula == "H2":
        raise RuntimeError("injected failure")
    if formula == "O2":
        time.sleep(600)
    if formula == "CO2":
        time.sleep(float(os.environ.get("TANGENTLAB_TEST_SLOW_JOB_S", "5")))
    if formula == "N2":
        os.kill(os.getpid(), signal.SIGKILL)
    from quacc import strip_decorator
    from quacc.recipes.tblite.core import static_job as tblite_static

    return strip_decorator(tblite_static)(atoms, charge=charge, multiplicity=spin_multiplicity, verbosity=0)

"""The periodic benchmark's labeller (scripts/make_surface_data.py): SCF retries and spare frames.

A first SCF attempt capped at one iteration never converges, which stands in for the slab
frames whose GFN1-xTB SCF fails with tblite's defaults.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

pytest.importorskip("tblite")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_surface_data.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("make_surface_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cells():
    """Two small periodic Cu cells (one atom each): cheap GFN1-xTB labels."""
    first = bulk("Cu", "fcc", a=3.6)
    second = bulk("Cu", "fcc", a=3.7)
    return [first, second]


def test_a_frame_that_fails_scf_is_retried_and_noted(script, monkeypatch):
    monkeypatch.setattr(script, "SCF_ATTEMPTS", ({"max_iterations": 1}, {"max_iterations": 250}))
    labelled, seconds, notes = script.gfn1_label(_cells(), 1)
    assert len(labelled) == len(seconds) == 1
    assert np.isfinite(labelled[0].get_potential_energy())
    assert labelled[0].get_forces().shape == (1, 3)
    assert notes == [{"frame": 0, "scf": {"max_iterations": 250}}]


def test_a_frame_that_never_converges_is_replaced_by_the_next(script, monkeypatch):
    import tblite.ase
    from ase.calculators.calculator import CalculationFailed, all_changes

    class FailsOnMarkedFrames(tblite.ase.TBLite):
        """The real calculator, except that a frame marked ``never_converges`` fails."""

        def calculate(self, atoms=None, properties=None, system_changes=all_changes):
            if (atoms if atoms is not None else self.atoms).info.get("never_converges"):
                raise CalculationFailed("SCF not converged in 250 cycles")
            super().calculate(atoms, properties, system_changes)

    cells = _cells()
    reference, _, _ = script.gfn1_label(cells[1:])
    cells[0].info["never_converges"] = True
    monkeypatch.setattr(tblite.ase, "TBLite", FailsOnMarkedFrames)
    labelled, _, notes = script.gfn1_label(cells, 1)
    assert len(labelled) == 1
    assert labelled[0].get_potential_energy() == pytest.approx(reference[0].get_potential_energy())
    assert notes == [{"frame": 0, "skipped": "SCF not converged in 250 cycles"}]


def test_no_frame_converging_is_an_error_not_a_short_file(script, monkeypatch):
    monkeypatch.setattr(script, "SCF_ATTEMPTS", ({"max_iterations": 1},))
    with pytest.raises(RuntimeError, match="only 0 of 1 frames converged"):
        script.gfn1_label(_cells(), 1)

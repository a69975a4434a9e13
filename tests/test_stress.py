"""Stress labels: taken from an oracle that gives one (EMT), stored with the label, exported, and
used by fine-tuning when `finetune.stress_weight` is on (default off)."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from test_periodic import cu_slab

from cli import main
from db import campaigns, init_db, labels, make_engine, session_scope, structures
from tangentlab.config import FineTune
from tangentlab.finetune import FineTuneHyperparameters, _loss, labelled_batches
from tangentlab.oracles import make_oracle


def cu_bulk(seed: int) -> ase.Atoms:
    atoms = bulk("Cu", "fcc", a=3.55, cubic=True)  # compressed: a clear, non-zero stress
    atoms.rattle(0.05, seed=seed)
    return atoms


def test_emt_stress_is_taken_for_a_bulk_cell_and_not_for_a_slab(tmp_path):
    oracle = make_oracle({"name": "emt"})
    atoms = cu_bulk(0)
    result = oracle(atoms, results_dir=tmp_path)
    reference = atoms.copy()
    reference.calc = EMT()
    assert result.stress is not None and result.stress.shape == (6,)
    np.testing.assert_allclose(result.stress, reference.get_stress(voigt=True), atol=1e-10)
    assert np.abs(result.stress[:3]).min() > 1e-3  # compressed cell
    assert oracle(cu_slab("O"), results_dir=tmp_path).stress is None  # no volume of its own


def test_stress_is_stored_with_the_label_and_exported(tmp_path):
    from tiny_model import make_tiny_model

    url = f"sqlite:///{tmp_path / 's.db'}"
    engine = make_engine(url)
    init_db(engine)
    model = make_tiny_model(tmp_path / "cu.model", elements=(1, 8, 29))
    with session_scope(engine) as session:
        campaigns.create_campaign(session, "bulk", {"model": str(model), "oracle": {"name": "emt"}})
    pool = [cu_bulk(seed) for seed in range(2)] + [cu_slab("O")]
    ase.io.write(tmp_path / "pool.extxyz", pool)
    assert main(["--db", url, "import", "bulk", str(tmp_path / "pool.extxyz")]) == 0
    oracle = make_oracle({"name": "emt"})
    with session_scope(engine) as session:
        stored = [structures.structure_atoms(s) for s in structures.campaign_structures(session, 1)]
        ids = labels.ensure_labels(session, [a.info["structure_id"] for a in stored], oracle.level)
        for label_id, atoms in zip(ids, stored, strict=True):
            result = oracle(atoms, results_dir=tmp_path / "qm")
            labels.complete_label(
                session, label_id, result.energy, result.forces, stress=result.stress
            )
        zeros = np.zeros((len(stored[0]), 3))
        with pytest.raises(ValueError, match="stress has shape"):
            labels.complete_label(session, ids[0], -1.0, zeros, stress=[1.0])
        from_db = labels.labelled_atoms(session, 1)
    with_stress = [a for a in from_db if "REF_stress" in a.info]
    assert len(with_stress) == 2 and len(from_db) == 3  # the slab has none
    for atoms in with_stress:
        reference = atoms.copy()
        reference.calc = EMT()
        np.testing.assert_allclose(atoms.info["REF_stress"], reference.get_stress(), atol=1e-10)
    out = tmp_path / "labelled.extxyz"
    assert main(["--db", url, "export", "bulk", str(out)]) == 0
    exported = ase.io.read(out, ":")
    assert sum("REF_stress" in a.info for a in exported) == 2
    written = next(a for a in exported if "REF_stress" in a.info)
    match = next(a for a in with_stress if np.allclose(a.positions, written.positions))
    np.testing.assert_allclose(np.ravel(written.info["REF_stress"]), match.info["REF_stress"])


def test_stress_weight_is_off_by_default_and_adds_the_stress_error_when_on(tmp_path):
    from tiny_model import make_tiny_model

    from tangentlab.mace_model import load_model

    assert FineTune().stress_weight == 0.0 and FineTuneHyperparameters().stress_weight == 0.0
    model = load_model(make_tiny_model(tmp_path / "cu.model", elements=(1, 8, 29)))
    atoms_list = [cu_bulk(1), cu_bulk(2), cu_slab("O")]
    for atoms in atoms_list:
        atoms.calc = EMT()
        atoms.info["energy"] = atoms.get_potential_energy()
        atoms.arrays["forces"] = atoms.get_forces()
        if atoms.pbc.all():
            atoms.info["REF_stress"] = atoms.get_stress()
        atoms.calc = None
    (batch,) = labelled_batches(model, atoms_list, 8, "cpu")
    assert batch.stress_weight.tolist() == [1.0, 1.0, 0.0]  # the slab carries no stress
    off = float(_loss(model, batch, FineTuneHyperparameters(), training=False))
    on = float(_loss(model, batch, FineTuneHyperparameters(stress_weight=100.0), training=False))
    predicted = model(batch.to_dict(), training=False, compute_force=True, compute_stress=True)
    error = (predicted["stress"][:2] - batch.stress[:2]).detach().numpy()
    assert on - off == pytest.approx(100.0 * float(np.mean(error**2)), rel=1e-6)
    assert on > off

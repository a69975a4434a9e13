"""Periodic structures (slabs, bulk cells) through every stage, with real components.

Real oracles (ASE's EMT through quacc's `emt` recipe, GFN1-xTB through tblite), a real SQLite
database, a tiny real Cu/O/H MACE model (tests/tiny_model.py) and, in the slow test, a real
campaign process (`python -m cli start`) killed while it labels, resumed to its end in this
process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest
import yaml
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc111, molecule
from ase.constraints import FixAtoms

from cli import main
from db import (
    campaigns,
    init_db,
    labels,
    make_engine,
    registry,
    reports,
    rounds,
    session_scope,
    structures,
)
from tangentlab.oracles import QMFailure, make_oracle
from tangentlab.structures import (
    InvalidStructureError,
    content_hash,
    free_components,
    read_structures,
)

ADSORBATES = ("O", "H", "OH")
SITES = ("fcc", "hcp", "ontop", "bridge")


def cu_slab(
    adsorbate: str = "O", site: str = "fcc", *, rattle: float = 0.0, seed: int = 0
) -> Atoms:
    """A 2x2x2 Cu(111) slab (8 Cu, periodic in x and y) with an adsorbate; the bottom layer
    held by ``FixAtoms``."""
    slab = fcc111("Cu", size=(2, 2, 2), vacuum=5.0)
    bottom = slab.positions[:, 2] < slab.positions[:, 2].min() + 0.5
    if adsorbate == "OH":
        add_adsorbate(slab, molecule("OH"), 1.6, site)
    else:
        add_adsorbate(slab, adsorbate, 1.2 if adsorbate == "H" else 1.5, site)
    slab.set_constraint(FixAtoms(mask=np.r_[bottom, np.zeros(len(slab) - len(bottom), bool)]))
    slab.info.pop("adsorbate_info", None)
    if rattle:
        slab.rattle(rattle, seed=seed)
    return slab


def slab_pool(n: int, seed: int = 0) -> list[Atoms]:
    """``n`` rattled slabs: every adsorbate on every site, in turn, each with its own rattle."""
    rng = np.random.default_rng(seed)
    pool = []
    for i in range(n):
        adsorbate, site = ADSORBATES[i % 3], SITES[(i // 3) % 4]
        pool.append(
            cu_slab(adsorbate, site, rattle=float(rng.uniform(0.03, 0.15)), seed=seed * 1000 + i)
        )
    return pool


@pytest.fixture(scope="module")
def cu_model_file(tmp_path_factory) -> Path:
    """A tiny real (randomly initialised) H/O/Cu MACE model file."""
    from tiny_model import make_tiny_model

    return make_tiny_model(
        tmp_path_factory.mktemp("cu-model") / "tiny-cuoh.model", elements=(1, 8, 29)
    )


# --- oracles ------------------------------------------------------------------------------------


def test_emt_oracle_labels_a_constrained_slab_as_ase_does(tmp_path):
    from ase.calculators.emt import EMT

    slab = cu_slab("OH", "fcc", rattle=0.1, seed=3)
    oracle = make_oracle({"name": "emt"})
    result = oracle(slab, results_dir=tmp_path, timeout_s=60)  # in a child process

    reference = slab.copy()
    reference.calc = EMT()
    assert result.energy == pytest.approx(reference.get_potential_energy(), abs=1e-10)
    np.testing.assert_allclose(
        result.forces, reference.get_forces(apply_constraint=False), atol=1e-10
    )
    fixed = ~free_components(slab).any(axis=1)
    assert fixed.sum() == 4 and np.abs(result.forces[fixed]).max() > 1e-3  # raw forces, not zeroed
    assert oracle.level["method"] == "EMT" and oracle.level["code"] == "ase"


def test_emt_oracle_refuses_what_emt_cannot_label(tmp_path):
    oracle = make_oracle({"name": "emt"})
    with pytest.raises(QMFailure, match="EMT has no parameters for Fe"):
        oracle(bulk("Fe"), results_dir=tmp_path)
    charged = cu_slab("O")
    charged.info["charge"] = -2
    with pytest.raises(QMFailure, match="charge -2"):
        oracle(charged, results_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown keyword"):
        make_oracle({"name": "emt", "method": "GFN1-xTB"})


def test_gfn1_xtb_oracle_labels_a_periodic_cell(tmp_path):
    """The xtb oracle passes the cell and pbc to tblite: its label is tblite's periodic one,
    not the molecular one, and its forces are the derivative of its energy."""
    from tblite.ase import TBLite

    cell = bulk("Cu", "fcc", a=3.6, cubic=True)
    cell.rattle(0.05, seed=1)
    oracle = make_oracle({"name": "xtb", "method": "GFN1-xTB"})
    result = oracle(cell, results_dir=tmp_path)

    direct = cell.copy()
    direct.calc = TBLite(method="GFN1-xTB", verbosity=0)
    assert result.energy == pytest.approx(direct.get_potential_energy(), abs=1e-8)
    np.testing.assert_allclose(result.forces, direct.get_forces(), atol=1e-8)
    molecular = cell.copy()
    molecular.pbc = False
    molecular.calc = TBLite(method="GFN1-xTB", verbosity=0)
    assert abs(molecular.get_potential_energy() - result.energy) > 1.0

    step = 1e-3
    energies = []
    for sign in (1, -1):
        moved = cell.copy()
        moved.positions[1, 0] += sign * step
        energies.append(oracle(moved, results_dir=tmp_path).energy)
    assert result.forces[1, 0] == pytest.approx(-(energies[0] - energies[1]) / (2 * step), abs=2e-3)


# --- structures: cells, hashes, constraints ------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "pbc", "message"),
    [
        (np.zeros((3, 3)), True, "pbc is set along x, y, z but the cell vector there is zero"),
        (
            [[6, 0, 0], [0, 6, 0], [0, 0, 0]],
            True,
            "pbc is set along z but the cell vector there is zero",
        ),
        (
            [[6, 0, 0], [12, 0, 0], [0, 0, 6]],
            True,
            "degenerate cell: the periodic cell vectors (x, y, z)",
        ),
        (
            [[6, 0, 0], [6, 1e-4, 0], [0, 0, 0]],
            [True, True, False],
            "degenerate cell: the periodic cell vectors (x, y)",
        ),
    ],
)
def test_pbc_on_a_zero_or_degenerate_cell_is_refused_by_name(tmp_path, cell, pbc, message):
    path = tmp_path / "cells.extxyz"
    bad = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.3, 0.9, 0]], cell=cell, pbc=pbc)
    ase.io.write(path, [cu_slab("O"), bad])
    with pytest.raises(InvalidStructureError, match=r"cells\.extxyz, structure 1: ") as error:
        read_structures(path)
    assert message in str(error.value)


def test_a_slab_may_leave_its_non_periodic_cell_vector_unset(tmp_path):
    slab = fcc111("Cu", size=(2, 2, 2))  # no vacuum: the z cell vector is zero, pbc (T, T, F)
    assert list(slab.pbc) == [True, True, False] and slab.cell.lengths()[2] == 0
    path = tmp_path / "slab.extxyz"
    ase.io.write(path, slab)
    (read,) = read_structures(path)
    assert list(read.pbc) == [True, True, False]


def test_content_hash_tells_cells_and_periodicity_apart():
    slab = cu_slab("O")
    wider = slab.copy()
    wider.cell[0] *= 1.01
    molecular = slab.copy()
    molecular.pbc = False
    assert len({content_hash(slab), content_hash(wider), content_hash(molecular)}) == 3
    assert content_hash(slab) == content_hash(cu_slab("O"))


def test_bad_cell_on_import_is_an_error_line_and_stores_nothing(tmp_path, cu_model_file, capsys):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    engine = make_engine(url)
    init_db(engine)
    with session_scope(engine) as session:
        campaigns.create_campaign(
            session, "slab", {"model": str(cu_model_file), "oracle": {"name": "emt"}}
        )
    path = tmp_path / "pool.extxyz"
    ase.io.write(path, [*slab_pool(3), Atoms("Cu2", positions=[[0, 0, 0], [2.5, 0, 0]], pbc=True)])
    assert main(["--db", url, "import", "slab", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pool.extxyz, structure 3: pbc is set along x, y, z" in err
    with session_scope(engine) as session:
        assert (
            structures.campaign_structures(session, campaigns.get_campaign(session, "slab")) == []
        )


def test_constraints_cell_and_pbc_survive_database_and_export(tmp_path, cu_model_file, capsys):
    """import (extxyz with FixAtoms) -> database -> EMT label -> `tangentlab export` -> extxyz."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    engine = make_engine(url)
    init_db(engine)
    with session_scope(engine) as session:
        campaigns.create_campaign(
            session, "slab", {"model": str(cu_model_file), "oracle": {"name": "emt"}}
        )
    pool = slab_pool(4)
    path = tmp_path / "pool.extxyz"
    ase.io.write(path, pool)
    assert main(["--db", url, "import", "slab", str(path)]) == 0
    oracle = make_oracle({"name": "emt"})
    with session_scope(engine) as session:
        stored = [structures.structure_atoms(s) for s in structures.campaign_structures(session, 1)]
        ids = labels.ensure_labels(session, [a.info["structure_id"] for a in stored], oracle.level)
        for label_id, atoms in zip(ids, stored, strict=True):
            assert atoms.constraints  # read back from the database with the structure
            result = oracle(atoms, results_dir=tmp_path / "qm")
            labels.complete_label(session, label_id, result.energy, result.forces)
    out = tmp_path / "export" / "labelled.extxyz"
    assert main(["--db", url, "export", "slab", str(out)]) == 0
    exported = ase.io.read(out, ":")
    assert len(exported) == len(pool)
    for original, written in zip(pool, exported, strict=True):
        np.testing.assert_allclose(written.cell.array, original.cell.array, atol=1e-8)
        assert list(written.pbc) == [True, True, False]
        (constraint,) = written.constraints
        assert isinstance(constraint, FixAtoms)
        assert sorted(constraint.index) == sorted(original.constraints[0].index)
        assert content_hash(written) == content_hash(original)
        # labels are the raw forces on every atom, the fixed ones too
        assert np.abs(written.calc.results["forces"][constraint.index]).max() > 1e-3
    with session_scope(engine) as session:
        assert reports.export_extxyz(session, 1, tmp_path / "again.extxyz") == len(pool)


def test_force_errors_are_over_free_atoms_and_say_so():
    from tangentlab.metrics import error_metrics

    slab = cu_slab("O")
    ref = np.zeros((len(slab), 3))
    pred = np.zeros((len(slab), 3))
    fixed = ~free_components(slab).any(axis=1)
    pred[fixed] = 1.0  # errors on the fixed atoms only
    pred[~fixed] = 0.1
    free = error_metrics([(0.0, pred)], [(0.0, ref)], [len(slab)], [free_components(slab)])
    every = error_metrics([(0.0, pred)], [(0.0, ref)], [len(slab)])
    assert free["force_atoms"] == "free" and free["force_mae_mev_per_a"] == pytest.approx(100.0)
    assert every["force_atoms"] == "all"
    assert every["force_mae_mev_per_a"] == pytest.approx((4 * 1000.0 + 5 * 100.0) / 9)


# --- the model: periodic neighbour lists, mixed pools ---------------------------------------------


def test_model_uses_the_cell_and_mixes_periodic_and_molecular_structures(cu_model_file):
    """Predictions and activation features see periodic images (a slab differs from the same
    atoms without pbc), and a batch mixing slabs with a molecule gives each structure what
    it gets alone: mixed pools are supported."""
    from tangentlab.acquisition.activations import activation_features
    from tangentlab.mace_model import load_model, predict

    model = load_model(cu_model_file)
    slab = cu_slab("OH", "hcp", rattle=0.05, seed=2)
    cluster = slab.copy()
    cluster.pbc = False
    water = molecule("H2O")
    mixed = [slab, water, cluster, *slab_pool(2)]

    together = predict(model, mixed, batch_size=len(mixed))
    alone = [predict(model, [atoms])[0] for atoms in mixed]
    for (energy, forces), (energy_alone, forces_alone) in zip(together, alone, strict=True):
        assert energy == pytest.approx(energy_alone, abs=1e-8)
        np.testing.assert_allclose(forces, forces_alone, atol=1e-8)
    assert abs(together[0][0] - together[2][0]) > 1e-3  # periodic images count
    features = activation_features(model, mixed)
    assert np.abs(features[0] - features[2]).max() > 1e-6


# --- force errors: the config key, and what status and the UI say ---------------------------------


def _labelled_slab_campaign(tmp_path: Path, model: Path, config: dict | None = None) -> str:
    """A database with one campaign whose test set is three EMT-labelled slabs."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    engine = make_engine(url)
    init_db(engine)
    with session_scope(engine) as session:
        campaign = campaigns.create_campaign(
            session, "slab", {"model": str(model), "oracle": {"name": "emt"}, **(config or {})}
        )
        ase.io.write(tmp_path / "test.extxyz", slab_pool(3))
        pool = read_structures(tmp_path / "test.extxyz")
        structures.import_atoms(session, campaign, pool, [content_hash(a) for a in pool],
                                origin="test", split="test")
        rows = structures.campaign_structures(session, campaign)
        stored = [structures.structure_atoms(s) for s in rows]
        oracle = make_oracle({"name": "emt"})
        ids = labels.ensure_labels(session, [a.info["structure_id"] for a in stored], oracle.level)
        for label_id, atoms in zip(ids, stored, strict=True):
            result = oracle(atoms, results_dir=tmp_path / "qm")
            labels.complete_label(session, label_id, result.energy, result.forces)
        registry.register_model(session, campaign.id, str(model), hyperparameters={})
    return url


@pytest.mark.parametrize("force_atoms", ["free", "all"])
def test_force_atoms_key_decides_which_atoms_the_test_force_mae_is_over(
    tmp_path, cu_model_file, force_atoms
):
    """`targets.force_atoms` reaches the evaluation: 'free' leaves the slab's fixed bottom
    layer out, 'all' counts it; both record how many test atoms are fixed."""
    from prefect.logging import disable_run_logger

    from tangentlab.config import CampaignConfig
    from tangentlab.mace_model import load_model, predict
    from tasks.evaluate import evaluate_model

    config = CampaignConfig(pool=["p.extxyz"], targets={"force_atoms": force_atoms})
    assert config.targets.force_atoms == force_atoms
    url = _labelled_slab_campaign(tmp_path, cu_model_file)
    with disable_run_logger():
        metrics = evaluate_model.fn(url, 1, 1, "cpu", config.targets.force_atoms)
    assert metrics["force_atoms"] == force_atoms and metrics["n_fixed_atoms"] == 3 * 4

    with session_scope(make_engine(url)) as session:
        test = labels.labelled_atoms(session, 1, ["test"])
    predicted = predict(load_model(cu_model_file), test)
    errors = [np.abs(p - a.arrays["forces"]) for (_, p), a in zip(predicted, test, strict=True)]
    free = [free_components(a) for a in test]
    expected = (np.concatenate([e[m] for e, m in zip(errors, free, strict=True)]).mean()
                if force_atoms == "free" else np.concatenate([e.ravel() for e in errors]).mean())
    assert metrics["force_mae_mev_per_a"] == pytest.approx(expected * 1e3, rel=1e-6)


def test_unknown_force_atoms_value_is_refused_by_name():
    from tangentlab.config import CampaignConfig, ConfigError, make_config

    with pytest.raises((ConfigError, ValueError), match="force_atoms"):
        make_config({"pool": ["p.extxyz"], "targets": {"force_atoms": "mobile"}})
    assert CampaignConfig(pool=["p.extxyz"]).targets.force_atoms == "free"


def test_status_and_overview_say_the_force_mae_is_over_free_atoms():
    from flows.rendering import force_scope, result_lines

    slab = {"energy_mae_mev_per_atom": 1.0, "force_mae_mev_per_a": 2.0, "force_atoms": "free",
            "n_fixed_atoms": 12}
    molecule_set = {**slab, "n_fixed_atoms": 0}
    assert force_scope(slab) == " over free atoms"
    assert force_scope({**slab, "force_atoms": "all"}) == " over all atoms, fixed ones included"
    assert force_scope(molecule_set) == "" and force_scope(None) == ""
    lines = result_lines({"name": "s", "status": "budget_exhausted", "reason": "r", "labels": {},
                          "models": [{"id": 1, "round": None, "test": slab}]})
    assert "  (force MAE over free atoms of the test set)" in lines


# --- a periodic campaign, as a user runs it: killed, resumed, inspected, exported --------------


def _small_slab_pool(n: int, seed: int) -> list[Atoms]:
    """Rattled 2x2x2 Cu(111) slabs with O or H (9 atoms: ~0.3 s a periodic GFN1-xTB label)."""
    rng = np.random.default_rng(seed)
    return [
        cu_slab(("O", "H")[i % 2], SITES[(i // 2) % 4], rattle=float(rng.uniform(0.03, 0.12)),
                seed=seed * 1000 + i)
        for i in range(n)
    ]


@pytest.mark.slow
def test_periodic_campaign_killed_while_labelling_resumes_then_exports_cells_and_constraints(
    prefect_server, tmp_path, cu_model_file, capsys
):
    """SIGKILL `tangentlab start` while it labels round 1's slabs with periodic GFN1-xTB, then
    resume to the end: every label stored before the kill is kept, no finished QM job runs
    again, the labels keep the cells and the bottom layers' FixAtoms; `status` reports the
    campaign, the test errors are over free atoms, and `export` writes the cells, periodicity
    and constraints of the originals."""
    from sqlalchemy import func, select

    from db import Label

    pool = tmp_path / "pool.extxyz"
    ase.io.write(pool, _small_slab_pool(30, seed=4))
    name = "killed-slab"
    config = {
        "name": name,
        "pool": [str(pool)],
        "model": str(cu_model_file),
        "work_dir": str(tmp_path / "runs"),
        "test_size": 4,
        "initial_size": 4,
        "oracle": {"name": "xtb", "method": "GFN1-xTB"},
        "acquisition": {"signal": "activation", "batch_size": 6},
        "budgets": {"max_rounds": 1, "max_labels": 30},
        "targets": {"energy_mae_mev_per_atom": 0.01, "force_mae_mev_per_a": 0.01},  # never met
        "finetune": {"max_epochs": 1, "patience": 1, "min_steps_per_epoch": 2},
        "qm": {"timeout_s": 120},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    url = f"sqlite:///{tmp_path / 'c.db'}"
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "OMP_NUM_THREADS": "1"}
    jobs_log = tmp_path / "runs" / name / "qm_jobs.jsonl"

    def finished_jobs() -> list[int]:
        lines = jobs_log.read_text().splitlines() if jobs_log.exists() else []
        return [int(line.split('"label_id": ')[1].split(",")[0]) for line in lines]

    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen([sys.executable, "-m", "cli", "--db", url, "start", "c.yaml"],
                                 cwd=tmp_path, env=env, stdout=log, stderr=log,
                                 start_new_session=True)
    engine = make_engine(url)
    killed_at, deadline = None, time.time() + 900
    while time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
        try:
            with session_scope(engine) as session:
                round_1 = rounds.get_round(session, campaigns.get_campaign(session, name), 1)
                if round_1 is None:
                    continue
                ids = [e["structure_id"] for e in round_1.selected]
                done = session.scalar(select(func.count()).select_from(Label).where(
                    Label.structure_id.in_(ids), Label.status == "done"))
        except Exception:  # the database may not exist yet
            continue
        if 1 <= done < len(ids):
            os.killpg(first.pid, signal.SIGKILL)
            killed_at = done
            break
    first.wait(timeout=60)
    assert killed_at is not None, (tmp_path / "first.log").read_text()[-5000:]
    with session_scope(engine) as session:
        done_rows = session.scalars(select(Label).where(Label.status == "done"))
        done_before = {lab.id for lab in done_rows}
    assert set(finished_jobs()) == done_before  # every finished job was stored before the kill

    # The resume runs in this process (`tangentlab resume`'s entry point): what is checked is
    # what the killed process left, not a second process start.
    from tasks.context import release_context

    release_context()
    capsys.readouterr()
    assert main(["--db", url, "resume", name]) == 3  # budget used
    resumed = capsys.readouterr()

    jobs = finished_jobs()
    assert len(jobs) == len(set(jobs)), "a finished QM job ran again"
    with session_scope(engine) as session:
        all_labels = list(session.scalars(select(Label)))
        report = reports.campaign_report(session, campaigns.get_campaign(session, name))
        stored = [structures.structure_atoms(s) for s in structures.campaign_structures(session, 1)]
    done = {lab.id for lab in all_labels if lab.status == "done"}
    assert done == set(jobs) and done_before <= done, "a label was lost or ran twice"
    assert len(done) == 4 + 4 + 6 and report["labels"]["failed"] == 0
    assert [r["status"] for r in report["rounds"]] == ["evaluated"] * 2
    assert all(list(a.pbc) == [True, True, False] and a.constraints for a in stored)
    assert all(lab.level["method"] == "GFN1-xTB" for lab in all_labels)
    assert "campaign 'killed-slab': budget exhausted" in resumed.out, resumed.out + resumed.err

    assert main(["--db", url, "status", name, "--json"]) == 0
    report = yaml.safe_load(capsys.readouterr().out)
    report = report[0] if isinstance(report, list) else report
    assert report["name"] == name and report["status"] == "budget_exhausted"
    assert report["labels"]["done"] == 4 + 4 + 6 and report["labels"]["failed"] == 0
    assert main(["--db", url, "status", name]) == 0
    assert name in capsys.readouterr().out

    with session_scope(engine) as session:
        campaign = campaigns.get_campaign(session, name)
        versions = [v.metrics["test"] for v in registry.model_versions(session, campaign)]
    assert len(versions) == 3 and all(m["force_atoms"] == "free" for m in versions)
    assert all(np.isfinite(m["force_mae_mev_per_a"]) for m in versions)

    out = tmp_path / "labelled.extxyz"
    assert main(["--db", url, "export", name, str(out)]) == 0
    frames = ase.io.read(out, ":")
    assert len(frames) == 14
    originals = {content_hash(a): a for a in ase.io.read(pool, ":")}
    for frame in frames:
        original = originals[content_hash(frame)]  # same cell, pbc and positions
        assert list(frame.pbc) == [True, True, False]
        assert isinstance(frame.constraints[0], FixAtoms)
        assert sorted(frame.constraints[0].index) == sorted(original.constraints[0].index)


# --- the periodic starting model's data recipe and the shipped model ----------------------------


def test_surface_recipe_gives_constrained_adsorbate_slabs_reproducibly():
    from tangentlab.pretrain_surface import MAX_HEIGHT, generate_surface_structures

    frames = generate_surface_structures(6, seed=5, frames_per_run=3, sample_every=2)
    again = generate_surface_structures(6, seed=5, frames_per_run=3, sample_every=2)
    assert len(frames) == 6
    for frame, same in zip(frames, again, strict=True):
        np.testing.assert_array_equal(frame.positions, same.positions)
        assert list(frame.pbc) == [True, True, False] and frame.cell.lengths()[2] > 15
        (constraint,) = frame.constraints
        assert isinstance(constraint, FixAtoms) and len(constraint.index) == 9  # bottom layer
        copper = frame.numbers == 29
        assert copper.sum() == 27 and set(frame.numbers[~copper]) <= {1, 8}
        top = np.sort(frame.positions[copper, 2])[-9:].mean()
        # adsorbates stay on the slab (the MD's ceiling spring), none inside the bottom layer
        assert (frame.positions[~copper, 2] < top + MAX_HEIGHT + 1.0).all()
        assert frame.positions[constraint.index, 2].max() < frame.positions[copper, 2].min() + 0.5
    assert {f.info["temperature_K"] for f in frames} == {300.0, 600.0}


def test_surface_recipe_skips_an_md_run_whose_bond_constraint_fails(caplog):
    """The benchmark's 600 K test frames (seed 220600): the third EMT MD run's OH bond
    constraint does not converge. That run is dropped and the next one drawn; the runs before
    it give the frames they gave alone."""
    from tangentlab.pretrain_surface import generate_surface_structures

    recipe = dict(seed=220600, temperatures_K=(600,), frames_per_run=10, sample_every=5)
    with caplog.at_level("WARNING", logger="tangentlab.pretrain_surface"):
        frames = generate_surface_structures(22, **recipe)
    assert len(frames) == 22
    assert "EMT MD run 3 at 600 K skipped" in caplog.text
    first_two_runs = generate_surface_structures(20, **recipe)
    for frame, same in zip(frames[:20], first_two_runs, strict=True):
        np.testing.assert_array_equal(frame.positions, same.positions)



def test_shipped_periodic_model_matches_its_card_and_knows_cu_o_h(tmp_path):
    import hashlib
    import json

    from tangentlab.config import shipped_file
    from tangentlab.mace_model import load_model, predict
    from tangentlab.model_files import starting_weights

    path = Path(shipped_file("tangentlab-cuoh-emt.model"))
    card = json.loads(path.with_suffix(".json").read_text())
    assert hashlib.sha256(path.read_bytes()).hexdigest() == card["model_sha256"]
    assert card["level_of_theory"]["method"] == "EMT" and path.stat().st_size < 2_000_000
    weights, _ = starting_weights(path, tmp_path)  # as a campaign reads its starting .model
    model = load_model(weights)
    assert sorted(int(z) for z in model.atomic_numbers) == [1, 8, 29]
    ((energy, forces),) = predict(model, [cu_slab("OH", "fcc", rattle=0.05, seed=1)])
    assert np.isfinite(energy) and forces.shape == (10, 3) and np.isfinite(forces).all()

    # it learned EMT: forces on new MD frames of its recipe within ~2x its validation error
    from ase.calculators.emt import EMT

    from tangentlab.pretrain_surface import generate_surface_structures

    frames = generate_surface_structures(4, seed=99, frames_per_run=2, sample_every=5)
    errors = []
    for frame, (_, predicted) in zip(frames, predict(model, frames), strict=True):
        reference = frame.copy()
        reference.calc = EMT()
        errors.append(np.abs(predicted - reference.get_forces(apply_constraint=False)).mean())
    assert np.mean(errors) < 2 * card["metrics"]["valid_force_mae_mev_per_a"] / 1000


def test_surface_benchmark_presets_start_from_the_shipped_periodic_model(monkeypatch, tmp_path):
    from benchmarks.spec import make_spec, preset
    from tangentlab.config import shipped_file

    monkeypatch.setenv("TANGENTLAB_DATA", str(tmp_path))
    main_split, shift = make_spec(preset("surface")), make_spec(preset("surface-shift"))
    for spec in (main_split, shift):
        assert spec.model == shipped_file("tangentlab-cuoh-emt.model")
        assert len(spec.seeds) >= 5 and "random" in spec.methods
        signals = {m.split(":")[0] for m in spec.methods} - {"random"}
        assert signals == {"activation", "ntk", "force_ntk", "energy_force_ntk"}
    assert {"force_ntk", "force_ntk:transductive:test"} <= set(main_split.methods)
    assert shift.data.pool_files == [str(tmp_path.resolve() / "surface" / "md300K_pool.extxyz")]
    assert shift.data.test_files == [str(tmp_path.resolve() / "surface" / "md900K_test.extxyz")]

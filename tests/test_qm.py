from __future__ import annotations

import gzip
import inspect
import os
import signal
import time
from importlib.util import find_spec
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.units import Hartree
from pyscf import dft, gto, lib
from tblite.ase import TBLite

from tangentlab.oracles import ORACLES, QMFailure, make_oracle
from tangentlab.oracles.isolation import run_with_timeout
from tangentlab.oracles.pyscf import pyscf_static
from tangentlab.oracles.pyscf_calculator import PySCFCalculator
from tangentlab.oracles.xtb import xtb_static


def _sleep(atoms, **kwargs):
    time.sleep(120)


def _kill_self(atoms, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


def _raise(atoms, **kwargs):
    raise ValueError("geometry makes no sense")


def _distorted_water():
    atoms = molecule("H2O")
    atoms.positions += [[0.0, 0.02, -0.03], [0.01, -0.05, 0.04], [-0.02, 0.03, 0.06]]
    return atoms


def _pyscf_log(run_dir: str) -> str:
    path = Path(run_dir) / "pyscf.log.gz"
    if path.exists():
        return gzip.decompress(path.read_bytes()).decode()
    return (Path(run_dir) / "pyscf.log").read_text()


def test_xtb_static_matches_tblite(tmp_path):
    atoms = _distorted_water()
    result = xtb_static(atoms, results_dir=tmp_path)

    reference = atoms.copy()
    reference.calc = TBLite(method="GFN2-xTB", verbosity=0)
    assert result.energy == pytest.approx(reference.get_potential_energy(), abs=1e-6)
    np.testing.assert_allclose(result.forces, reference.get_forces(), atol=1e-6)
    assert result.forces.shape == (3, 3)
    assert Path(result.run_dir).parent == tmp_path
    assert result.wall_time > 0
    assert result.level == {
        "method": "GFN2-xTB",
        "basis": None,
        "code": "tblite",
        "code_version": result.level["code_version"],
    }
    assert result.level["code_version"]


def test_xtb_static_uses_charge_and_multiplicity(tmp_path):
    radical = molecule("OH")
    anion = molecule("OH")
    anion.info["charge"] = -1

    radical_result = xtb_static(radical, results_dir=tmp_path)
    anion_result = xtb_static(anion, results_dir=tmp_path)

    reference = molecule("OH")
    reference.calc = TBLite(method="GFN2-xTB", charge=0, multiplicity=2, verbosity=0)
    assert radical_result.energy == pytest.approx(reference.get_potential_energy(), abs=1e-6)
    reference.calc = TBLite(method="GFN2-xTB", charge=-1, multiplicity=1, verbosity=0)
    assert anion_result.energy == pytest.approx(reference.get_potential_energy(), abs=1e-6)
    assert anion_result.energy < radical_result.energy - 1.0


def test_pyscf_forces_match_finite_differences(tmp_path):
    atoms = _distorted_water()
    settings = {"xc": "hf", "basis": "sto-3g", "conv_tol": 1e-11, "num_threads": 1}
    result = pyscf_static(atoms, results_dir=tmp_path, **settings)

    calc = PySCFCalculator(**settings, verbose=0, directory=str(tmp_path / "fd"))
    step = 1e-3
    numerical = np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for k in range(3):
            energies = []
            for sign in (1, -1):
                displaced = atoms.copy()
                displaced.positions[i, k] += sign * step
                displaced.calc = calc
                energies.append(displaced.get_potential_energy())
            numerical[i, k] = -(energies[0] - energies[1]) / (2 * step)
    assert np.abs(result.forces).max() > 0.1
    np.testing.assert_allclose(result.forces, numerical, atol=1e-3)


def test_pyscf_water_wb97x_631gs(tmp_path):
    result = pyscf_static(molecule("H2O"), num_threads=1, results_dir=tmp_path)

    assert result.energy / Hartree == pytest.approx(-76.4, abs=0.05)
    assert np.abs(result.forces).max() < 0.5
    assert result.level == {
        "method": "wb97x",
        "basis": "6-31g*",
        "code": "pyscf",
        "code_version": result.level["code_version"],
    }
    assert "RKS" in _pyscf_log(result.run_dir)


def test_pyscf_radical_runs_unrestricted(tmp_path):
    # NH2 (2B1): its unpaired electron sits in a non-degenerate orbital, so the UKS energy is an
    # isolated minimum. OH would not do: its 2Pi hole may point anywhere around the bond, PySCF's
    # pruned grid makes that direction change the energy by up to 1e-6 Eh, and where an SCF stops
    # along it is arbitrary (installs differed by 5e-7 Eh).
    atoms = molecule("NH2")
    conv_tol = 1e-9
    result = pyscf_static(
        atoms, xc="b3lyp", basis="sto-3g", conv_tol=conv_tol, num_threads=1, results_dir=tmp_path
    )
    log = _pyscf_log(result.run_dir)

    mol = gto.M(
        atom=list(zip(atoms.get_chemical_symbols(), atoms.positions.tolist())),
        basis="sto-3g",
        spin=1,
        verbose=0,
    )
    mf = dft.UKS(mol)
    mf.xc = "b3lyp"
    mf.conv_tol = conv_tol
    with lib.with_omp_threads(1):
        reference = mf.kernel() * Hartree

    assert "UKS" in log
    # Same grid as the oracle (PySCF's default for this version), and the same minimum.
    assert f"grids dens level: {mf.grids.level}" in log
    assert "SCF internally stable after 0 restart(s)" in log
    # Each SCF stops once a cycle changes the energy by less than conv_tol and the orbital
    # gradient is below sqrt(conv_tol), within about conv_tol of the minimum; 10 x covers both.
    assert result.energy == pytest.approx(reference, abs=10 * conv_tol * Hartree)


def test_scf_not_converged_is_a_qm_failure(tmp_path):
    settings = {"xc": "hf", "basis": "sto-3g", "max_cycle": 1, "num_threads": 1}
    with pytest.raises(QMFailure) as failure:
        pyscf_static(molecule("H2O"), results_dir=tmp_path, **settings)

    assert failure.value.reason == "SCF not converged after 1 cycles"
    assert Path(failure.value.run_dir).name.startswith("failed-")
    assert "cycle= 1" in _pyscf_log(failure.value.run_dir)


def test_missing_dispersion_library_is_named(tmp_path):
    if find_spec("pyscf.dispersion") is not None:
        pytest.skip("pyscf-dispersion is installed")
    with pytest.raises(ImportError, match="pyscf-dispersion"):
        pyscf_static(molecule("H2"), xc="hf", dispersion="d3bj", results_dir=tmp_path)
    with pytest.raises(ImportError, match="pyscf-dispersion"):
        make_oracle({"name": "pyscf", "dispersion": "d3bj"})


def test_run_with_timeout_returns_the_child_result(tmp_path):
    atoms = _distorted_water()
    result = run_with_timeout(xtb_static, atoms, timeout_s=60, results_dir=tmp_path)

    assert result.energy == pytest.approx(xtb_static(atoms, results_dir=tmp_path).energy, abs=1e-8)
    assert Path(result.run_dir).parent == tmp_path


def test_run_with_timeout_kills_a_hanging_job(tmp_path):
    start = time.perf_counter()
    with pytest.raises(QMFailure) as failure:
        run_with_timeout(_sleep, molecule("H2"), timeout_s=1, results_dir=tmp_path)

    assert failure.value.reason == "timeout after 1 s"
    assert failure.value.run_dir == str(tmp_path)
    assert time.perf_counter() - start < 30


def test_run_with_timeout_reports_a_killed_child():
    with pytest.raises(QMFailure, match=r"QM process killed by signal 9 \(SIGKILL\)"):
        run_with_timeout(_kill_self, molecule("H2"), timeout_s=60)


def test_run_with_timeout_reraises_child_errors():
    with pytest.raises(QMFailure, match="ValueError: geometry makes no sense"):
        run_with_timeout(_raise, molecule("H2"), timeout_s=60)


def test_run_with_timeout_passes_scf_failures_through(tmp_path):
    with pytest.raises(QMFailure) as failure:
        run_with_timeout(
            pyscf_static,
            molecule("H2O"),
            timeout_s=60,
            xc="hf",
            basis="sto-3g",
            max_cycle=1,
            results_dir=tmp_path,
        )
    assert failure.value.reason == "SCF not converged after 1 cycles"
    assert Path(failure.value.run_dir).name.startswith("failed-")


def test_make_oracle_rejects_unknown_names_and_keywords():
    with pytest.raises(ValueError, match="orca"):
        make_oracle({"name": "orca"})
    with pytest.raises(ValueError, match="name"):
        make_oracle({"method": "GFN2-xTB"})
    with pytest.raises(ValueError, match="basis"):
        make_oracle({"name": "xtb", "basis": "6-31g*"})
    with pytest.raises(ValueError, match="functional"):
        make_oracle({"name": "pyscf", "functional": "b3lyp"})
    with pytest.raises(ValueError, match="GFN3-xTB"):
        make_oracle({"name": "xtb", "method": "GFN3-xTB"})
    with pytest.raises(ValueError, match="not-a-basis"):
        make_oracle({"name": "pyscf", "basis": "not-a-basis"})
    with pytest.raises(ValueError, match="wb98x"):
        make_oracle({"name": "pyscf", "xc": "wb98x"})


@pytest.mark.parametrize("name", sorted(ORACLES))
def test_oracle_settings_mirror_the_job_keywords_and_defaults(name):
    """The configuration section of each oracle takes the keywords its job function takes,
    with the same defaults (replay's required `files` may be left to the campaign's pool)."""
    oracle = ORACLES[name]
    fields = {k: f for k, f in oracle.settings_model.model_fields.items() if k != "name"}
    assert list(fields) == oracle.keywords()
    for key, parameter in inspect.signature(oracle.job).parameters.items():
        if key in fields and parameter.default is not inspect.Parameter.empty:
            same = (list(parameter.default) if isinstance(parameter.default, tuple)
                    else parameter.default)
            assert fields[key].default == same, key


def test_oracle_levels_and_retry_settings():
    xtb = make_oracle({"name": "xtb", "method": "GFN2-xTB"})
    dft_oracle = make_oracle({"name": "pyscf", "xc": "wb97x", "basis": "6-31g*", "max_cycle": 50})

    assert xtb.level["method"] == "GFN2-xTB"
    assert xtb.level["code"] == "tblite"
    assert dft_oracle.level["method"] == "wb97x"
    assert dft_oracle.level["basis"] == "6-31g*"
    assert dft_oracle.level["code"] == "pyscf"
    assert xtb.retry_kwargs(2) == {}
    assert dft_oracle.retry_kwargs(1) == {}
    assert dft_oracle.retry_kwargs(2) == {
        "level_shift": 0.25,
        "init_guess": "atom",
        "max_cycle": 100,
    }
    assert dft_oracle.retry_kwargs(3)["soscf"] is True


def test_oracle_labels_in_process_and_with_timeout(tmp_path):
    oracle = make_oracle({"name": "xtb"})
    atoms = molecule("CH4")

    in_process = oracle(atoms, results_dir=tmp_path / "a")
    isolated = oracle(atoms, results_dir=tmp_path / "b", timeout_s=60)

    assert isolated.energy == pytest.approx(in_process.energy, abs=1e-8)
    np.testing.assert_allclose(isolated.forces, in_process.forces, atol=1e-8)
    assert isolated.level == oracle.level
    assert Path(isolated.run_dir).parent == tmp_path / "b"


def test_oracle_retry_with_second_order_scf_reaches_the_same_energy(tmp_path):
    spec = {"name": "pyscf", "xc": "hf", "basis": "sto-3g", "num_threads": 1}
    oracle = make_oracle(spec)
    atoms = _distorted_water()

    first = oracle(atoms, results_dir=tmp_path, attempt=1)
    third = oracle(atoms, results_dir=tmp_path, attempt=3)

    assert third.energy == pytest.approx(first.energy, abs=1e-6)
    np.testing.assert_allclose(third.forces, first.forces, atol=1e-4)
    assert "SOSCF" in _pyscf_log(third.run_dir) or "Newton" in _pyscf_log(third.run_dir)


def test_oracle_turns_errors_into_qm_failures(tmp_path):
    oracle = make_oracle({"name": "xtb"})
    atoms = molecule("H2O")
    atoms.info["multiplicity"] = 2

    with pytest.raises(QMFailure, match="multiplicity 2 are impossible"):
        oracle(atoms, results_dir=tmp_path)


# --- any quacc recipe as the oracle -------------------------------------------------------

TBLITE_RECIPE = "quacc.recipes.tblite.core.static_job"


def _oh_radical():
    atoms = molecule("OH")
    atoms.info["multiplicity"] = 2
    return atoms


def test_recipe_oracle_runs_a_quacc_recipe_by_import_path(tmp_path):
    oracle = make_oracle({"name": "quacc", "recipe": TBLITE_RECIPE, "kwargs": {"method": "GFN1-xTB"},
                          "level": {"method": "GFN1-xTB"}})
    atoms = _oh_radical()

    in_process = oracle(atoms, results_dir=tmp_path / "a")
    child = oracle(atoms, results_dir=tmp_path / "b", timeout_s=60)
    direct = xtb_static(atoms, method="GFN1-xTB", results_dir=tmp_path / "c")

    # charge and multiplicity reach the recipe: the doublet's energy is the direct job's
    assert in_process.energy == pytest.approx(direct.energy, abs=1e-8)
    np.testing.assert_allclose(child.forces, direct.forces, atol=1e-8)
    assert Path(child.run_dir).is_dir() and Path(child.run_dir).is_relative_to(tmp_path / "b")
    assert oracle.level == {"method": "GFN1-xTB", "basis": None, "code": "tblite",
                            "recipe": TBLITE_RECIPE, "kwargs": {"method": "GFN1-xTB"}}


def test_recipe_without_spin_keywords_refuses_charged_structures(tmp_path):
    oracle = make_oracle({"name": "quacc", "recipe": "quacc.recipes.emt.core.static_job"})
    neutral = oracle(molecule("H2O"), results_dir=tmp_path)
    assert np.isfinite(neutral.energy) and neutral.forces.shape == (3, 3)

    cation = molecule("H2O")
    cation.info.update(charge=1, multiplicity=2)
    with pytest.raises(QMFailure, match="takes no charge/multiplicity keyword"):
        oracle(cation, results_dir=tmp_path)


def test_recipe_oracle_rejects_bad_specs_before_any_job():
    with pytest.raises(ValueError, match="needs 'recipe'"):
        make_oracle({"name": "quacc"})
    with pytest.raises(ValueError, match="cannot import module 'quacc.recipes.nowhere.core'"):
        make_oracle({"name": "quacc", "recipe": "quacc.recipes.nowhere.core.static_job"})
    with pytest.raises(ValueError, match="has no job function 'stattic_job'"):
        make_oracle({"name": "quacc", "recipe": "quacc.recipes.tblite.core.stattic_job"})
    with pytest.raises(ValueError, match="not a dotted import path"):
        make_oracle({"name": "quacc", "recipe": "static_job"})
    # ORCA's static_job names all its keywords, so a typo is caught without running ORCA
    with pytest.raises(ValueError, match=r"unknown keyword\(s\) \['functional'\] for recipe"):
        make_oracle({"name": "quacc", "recipe": "quacc.recipes.orca.core.static_job",
                     "kwargs": {"functional": "b3lyp"}})
    with pytest.raises(ValueError, match="come from each structure"):
        make_oracle({"name": "quacc", "recipe": "quacc.recipes.orca.core.static_job",
                     "kwargs": {"spin_multiplicity": 3}})
    with pytest.raises(ValueError, match="come from each structure"):
        make_oracle({"name": "quacc", "recipe": TBLITE_RECIPE, "kwargs": {"charge": 1}})
    with pytest.raises(ValueError, match="'level' must be a mapping"):
        make_oracle({"name": "quacc", "recipe": TBLITE_RECIPE, "level": {"functional": "x"}})
    spec = {"name": "quacc", "recipe": "quacc.recipes.orca.core.static_job",
            "kwargs": {"xc": "wb97x-d3bj", "basis": "def2-tzvp"}, "level": {"method": "wB97X-D3BJ"}}
    assert make_oracle(spec).level["code"] == "orca"


# --- replay: labels stored with the pool --------------------------------------------------


def _labelled_file(path: Path) -> tuple[Path, list]:
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for i, name in enumerate(["H2O", "NH3", "CH4"]):
        atoms = molecule(name)
        atoms.calc = SinglePointCalculator(atoms, energy=-10.0 - i,
                                           forces=np.full((len(atoms), 3), 0.1 * (i + 1)))
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")
    return path, frames


def test_replay_reveals_stored_labels_only_for_known_structures(tmp_path):
    path, frames = _labelled_file(tmp_path / "labelled.extxyz")
    oracle = make_oracle({"name": "replay", "files": [str(path)],
                          "reference_level": {"method": "made-up", "basis": None}})

    for i, atoms in enumerate(frames):
        bare = Atoms(atoms.numbers, atoms.positions)  # what the database gives back: no labels
        result = oracle(bare, results_dir=tmp_path, timeout_s=10)
        assert result.energy == -10.0 - i
        np.testing.assert_allclose(result.forces, np.full((len(atoms), 3), 0.1 * (i + 1)), rtol=1e-12)
    assert oracle.level["code"] == "replay" and oracle.level["method"] == "made-up"

    moved = frames[0].copy()
    moved.positions[0, 0] += 0.01
    with pytest.raises(QMFailure, match="no stored label for H2O"):
        oracle(moved)
    with pytest.raises(ValueError, match="not found"):
        make_oracle({"name": "replay", "files": [str(tmp_path / "missing.extxyz")]})
    with pytest.raises(ValueError, match="needs 'files'"):
        make_oracle({"name": "replay"})


# --- SCF stability --------------------------------------------------------------------------


def test_stability_analysis_leaves_an_excited_open_shell_solution(tmp_path):
    """H + O2 at the bent TS of H + O2 -> HO2 (H2-combustion irc_rxn09 frame 22).

    From the default guess the UHF lands in an excited state (3.6 eV above the ground state
    at UHF/STO-3G; at ωB97X-V/cc-pVTZ the same frame was 0.99 eV above the published label,
    docs/reference/qm_validation.md). Internal stability analysis finds the lower solution.
    """
    atoms = Atoms("O2H", [[0.4508, 0.27415, 0.0], [-0.67359, -0.14918, 0.0], [1.78723, -1.00025, 0.0]])
    settings = {"xc": "hf", "basis": "sto-3g", "num_threads": 1}

    unchecked = pyscf_static(atoms, stability=False, results_dir=tmp_path / "a", **settings)
    checked = pyscf_static(atoms, results_dir=tmp_path / "b", **settings)

    assert checked.energy < unchecked.energy - 1.0
    assert "stability restart 1" in _pyscf_log(checked.run_dir)
    assert "internally stable after 1 restart" in _pyscf_log(checked.run_dir)


def test_stability_step_skips_molecules_without_orbital_rotations(tmp_path):
    """A lone H atom in a minimal basis has no virtual orbital: nothing to analyse."""
    result = pyscf_static(Atoms("H", [[0, 0, 0]]), xc="hf", basis="sto-3g", results_dir=tmp_path)
    assert result.energy == pytest.approx(-0.46658185 * Hartree, abs=1e-4)

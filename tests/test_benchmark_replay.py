"""Replay benchmark: data preparation, analysis, the fixed descriptor, and a tiny real run.

The end-to-end test replays a few dozen small molecules labelled with GFN2-xTB (real quacc
jobs, well under a second each) through two methods and one acquisition round, with the
tiny MACE model, a real SQLite database and the session's Prefect server.
"""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import add_adsorbate, fcc111, molecule
from conftest import SHARED, write_pool

from benchmarks.analysis import comparison_table, labels_to_reach, path_errors
from benchmarks.data import campaign_configs, even_draw, prepare_data
from benchmarks.report import write_outputs
from benchmarks.spec import BenchmarkError, make_spec
from db import (
    campaigns,
    init_db,
    labels,
    leases,
    make_engine,
    registry,
    reports,
    rounds,
    session_scope,
    structures,
)
from tangentlab.acquisition import spearman
from tangentlab.acquisition.descriptors import SoapDescriptor
from tangentlab.config import FineTune, make_config

# ---------------------------------------------------------------- fixed descriptor


def test_soap_rows_are_invariant_and_sensitive():
    descriptor = SoapDescriptor((1, 6, 7, 8))
    atoms = molecule("CH3CH2OH")
    moved = atoms.copy()
    moved.rotate(37, "x")
    moved.rotate(-71, "z")
    moved.translate([1.0, -2.0, 3.0])
    permuted = atoms[[3, 1, 2, 0, 8, 5, 6, 7, 4]]
    rows = descriptor([atoms, moved, permuted])
    assert rows.shape == (3, descriptor.dim)
    np.testing.assert_allclose(rows[1], rows[0], rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(rows[2], rows[0], rtol=1e-8, atol=1e-8)
    stretched = atoms.copy()
    stretched.positions[0] += [0.1, 0.0, 0.0]
    assert np.abs(descriptor([stretched])[0] - rows[0]).max() > 1e-3


def test_soap_rows_of_a_slab_respect_periodicity():
    """A lattice translation or wrapping leaves a slab's row unchanged; the cell is used."""
    descriptor = SoapDescriptor((1, 8, 29), r_cut=4.5)
    slab = fcc111("Cu", size=(3, 3, 3), vacuum=6.0, periodic=True)
    add_adsorbate(slab, "O", 1.3, "fcc")
    add_adsorbate(slab, "H", 2.3, "fcc")
    slab.positions += np.random.default_rng(0).normal(scale=0.05, size=slab.positions.shape)
    shifted = slab.copy()
    shifted.translate(slab.cell[0] + 2 * slab.cell[1])
    wrapped = slab.copy()
    wrapped.translate(0.41 * slab.cell[0] - 0.73 * slab.cell[1])
    wrapped.wrap()
    open_slab = slab.copy()
    open_slab.pbc = False
    rows = descriptor([slab, shifted, wrapped, open_slab])
    np.testing.assert_allclose(rows[1], rows[0], rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(rows[2], rows[0], rtol=1e-8, atol=1e-8)
    # without periodic images the edge atoms lose neighbours: the cell is not ignored
    assert np.abs(rows[3] - rows[0]).max() > 1e-2 * np.abs(rows[0]).max()


def test_soap_rows_reject_unknown_elements():
    with pytest.raises(ValueError, match="Z=16"):
        SoapDescriptor((1, 8))([molecule("SH2")])


def test_fixed_descriptor_is_an_acquisition_method(tiny_model_file):
    from tangentlab.acquisition import SIGNALS, fit_scorer, select_batch
    from tangentlab.mace_model import load_model

    assert "fixed_descriptor" in SIGNALS
    assert (
        make_config({"acquisition": {"method": "fixed_descriptor"}}).acquisition.signal
        == "fixed_descriptor"
    )
    model = load_model(tiny_model_file)
    pool = [molecule(n) for n in ("H2O", "CH4", "NH3", "CO2", "HCN", "CH3OH", "H2CO", "C2H6")]
    labelled = [molecule("H2O"), molecule("CH4")]
    scorer = fit_scorer(model, labelled, signal="fixed_descriptor", reference_atoms=pool)
    picks, _, info = select_batch(scorer, pool, batch_size=3)
    assert info["feature_dim"] == SoapDescriptor((1, 6, 7, 8)).dim
    # the labelled molecules (identical geometry in the pool) are the least uncertain
    variance = scorer.variance(pool)
    assert variance[0] < variance[3] and variance[1] < variance[3]
    assert 0 not in picks and 1 not in picks and len(set(picks.tolist())) == 3


# ---------------------------------------------------------------- analysis


def test_labels_to_reach_interpolates_first_crossing():
    assert labels_to_reach([10, 20, 30], [5.0, 3.0, 1.0], 4.0) == pytest.approx(15.0)
    assert labels_to_reach([10, 20, 30], [5.0, 3.0, 1.0], 5.0) == 10.0
    assert labels_to_reach([10, 20, 30], [5.0, 3.0, 2.0], 1.0) is None
    # a dip below the target counts at its first crossing
    assert labels_to_reach([10, 20, 30], [5.0, 1.0, 3.0], 3.0) == pytest.approx(15.0)
    with pytest.raises(ValueError):
        labels_to_reach([10, 20], [1.0], 1.0)


def _curve(labels, energy, force):
    return {
        "labels": labels,
        "energy": energy,
        "force": force,
        "acquire_s": [0.1] * (len(labels) - 1),
    }


def test_comparison_table_uses_random_final_error_as_target():
    curves = {
        "random": [
            _curve([10, 20, 30], [9.0, 7.0, 5.0], [90, 70, 50]),
            _curve([10, 20, 30], [9.0, 7.0, 5.0], [90, 70, 50]),
        ],
        "ntk": [
            _curve([10, 20, 30], [9.0, 5.0, 4.0], [90, 80, 60]),
            _curve([10, 20, 30], [9.0, 5.0, 4.0], [90, 80, 60]),
        ],
    }
    table = comparison_table(curves)
    assert table["random"]["energy"]["labels_to_reach"] == pytest.approx(30.0)
    assert table["ntk"]["energy"]["labels_to_reach"] == pytest.approx(20.0)
    assert table["ntk"]["energy"]["reduction_vs_random"] == pytest.approx(1 / 3)
    assert table["ntk"]["force"]["labels_to_reach"] is None
    assert table["ntk"]["force"]["reduction_vs_random"] is None
    assert table["ntk"]["seeds"] == 2
    with pytest.raises(ValueError, match="random"):
        comparison_table({"ntk": curves["ntk"]})


def test_paired_reduction_compares_seeds_with_their_own_random_run():
    # seed 1 starts badly: random's mean final error is decided by it
    random = [
        {**_curve([10, 20, 30], [5.0, 4.0, 3.0], [50, 40, 30]), "seed": 0},
        {**_curve([10, 20, 30], [50.0, 40.0, 30.0], [500, 400, 300]), "seed": 1},
    ]
    kernel = [
        {**_curve([10, 20, 30], [5.0, 3.0, 2.0], [50, 45, 40]), "seed": 0},
        {**_curve([10, 20, 30], [50.0, 30.0, 20.0], [500, 450, 400]), "seed": 1},
    ]
    table = comparison_table({"random": random, "ntk": kernel})
    energy = table["ntk"]["energy"]
    assert energy["paired_labels"] == {"0": pytest.approx(20.0), "1": pytest.approx(20.0)}
    assert energy["paired_reduction_mean"] == pytest.approx(1 / 3)
    assert table["ntk"]["force"]["paired_not_reached"] == 2
    assert table["random"]["energy"]["paired_reduction"] == {"0": 0.0, "1": 0.0}


def test_spearman_and_path_errors():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    errors = path_errors([5.0, 5.5, 5.2], [1.0, 1.4, 1.1], natoms=2)
    assert errors["barrier_ref_mev"] == pytest.approx(400.0)
    assert errors["barrier_error_mev"] == pytest.approx(100.0)
    assert errors["relative_mae_mev"] == pytest.approx(200.0 / 3)


def test_even_draw_spreads_over_groups():
    rng = np.random.default_rng(0)
    picks = even_draw([range(100), range(3), range(50)], 30, rng)
    assert [len(p) for p in picks] == [14, 3, 13]
    assert all(len(set(p)) == len(p) for p in picks)


def test_spec_rejects_bad_input():
    with pytest.raises(BenchmarkError, match="random"):
        make_spec(
            {"name": "x", "data": {"pool_files": ["a"], "test_files": ["b"]}, "methods": ["ntk"]}
        )
    with pytest.raises(BenchmarkError, match="unknown methods"):
        make_spec(
            {
                "name": "x",
                "data": {"pool_files": ["a"], "test_files": ["b"]},
                "methods": ["random", "soap"],
            }
        )
    with pytest.raises(BenchmarkError, match="pool_size"):
        make_spec({"name": "x", "data": {"pool_files": ["a"], "test_files": ["b"], "pool_size": 0}})


# ---------------------------------------------------------------- data


@pytest.fixture(scope="module")
def labelled_files(tmp_path_factory) -> tuple[Path, Path]:
    """Two pool files and one test file of small molecules with GFN2-xTB labels."""
    from tangentlab.oracles.xtb import xtb_static

    folder = tmp_path_factory.mktemp("replay-data")
    structures = ase.io.read(write_pool(folder / "raw.extxyz", 44, seed=3, max_atoms=3), ":")
    for atoms in structures:
        result = xtb_static(atoms, results_dir=folder / "xtb")
        atoms.info["energy"] = result.energy
        atoms.arrays["forces"] = result.forces
    paths = (folder / "pool_a.extxyz", folder / "pool_b.extxyz", folder / "test.extxyz")
    ase.io.write(paths[0], structures[:17], format="extxyz")
    ase.io.write(paths[1], structures[17:34], format="extxyz")
    ase.io.write(paths[2], structures[34:], format="extxyz")
    return paths


def _spec(files, work_dir: Path, **overrides) -> dict:
    spec = {
        "name": "tiny",
        "data": {
            "pool_files": [str(files[0]), str(files[1])],
            "test_files": [str(files[2])],
            "pool_size": 30,
            "test_size": 8,
        },
        "methods": ["random", "fixed_descriptor:transductive:test:q0.9"],
        "seeds": [0],
        "initial_size": 6,
        "batch_size": 4,
        "rounds": 1,
        "work_dir": str(work_dir),
        "finetune": {"max_epochs": 1, "patience": 1, "min_steps_per_epoch": 2},
    }
    spec.update(overrides)
    return spec


def test_prepared_pool_counts_the_candidates_a_campaign_draws_from(tmp_path, tiny_model_file):
    """Repeated pool frames are one candidate and pool copies of test frames none: the
    manifest's ``pool_candidates`` is the pool a campaign of the benchmark draws from."""
    from tangentlab.structures import content_hash
    from tasks.setup import check_inputs

    frames = ase.io.read(write_pool(tmp_path / "raw.extxyz", 6, seed=5), ":")
    for i, atoms in enumerate(frames):
        atoms.info["energy"] = -1.0 - i
        atoms.arrays["forces"] = np.zeros((len(atoms), 3))
    a, b, c, d, e, f = frames
    ase.io.write(tmp_path / "pool.extxyz", [a, b, c, d, a, a, e, e], format="extxyz")
    ase.io.write(tmp_path / "test.extxyz", [e, f], format="extxyz")
    spec = make_spec({
        "name": "copies",
        "data": {"pool_files": [str(tmp_path / "pool.extxyz")],
                 "test_files": [str(tmp_path / "test.extxyz")], "pool_size": 8, "test_size": 2},
        "initial_size": 2, "batch_size": 1, "rounds": 1, "model": str(tiny_model_file),
        "work_dir": str(tmp_path / "work"),
    })
    manifest = prepare_data(spec)
    assert manifest["pool_size"] == 8 and manifest["pool_candidates"] == 4  # a, b, c, d
    config = make_config(campaign_configs(spec, manifest)[0])
    inputs = check_inputs(config)
    drawn_from = {content_hash(x) for frames in inputs.pool.values() for x in frames}
    assert len(drawn_from) == manifest["pool_candidates"] and inputs.removed_from_pool == 2


@pytest.mark.slow
def test_prepare_data_is_reproducible_and_checked(labelled_files, tmp_path):
    spec = make_spec(_spec(labelled_files, tmp_path))
    manifest = prepare_data(spec)
    assert manifest["pool_size"] == 30 and manifest["test_size"] == 8
    assert manifest["pool_per_file"] == {"pool_a.extxyz": 15, "pool_b.extxyz": 15}
    pool = ase.io.read(manifest["pool_file"], ":")
    assert all(
        np.isfinite(a.get_potential_energy()) and a.get_forces().shape == (len(a), 3) for a in pool
    )
    other = make_spec(_spec(labelled_files, tmp_path / "other"))
    assert (
        ase.io.read(prepare_data(other)["pool_file"], ":")[5].positions.tolist()
        == pool[5].positions.tolist()
    )
    assert prepare_data(spec) == manifest  # reused
    with pytest.raises(BenchmarkError, match="other data settings"):
        prepare_data(
            make_spec(
                _spec(labelled_files, tmp_path, data={**spec.data.model_dump(), "pool_size": 20})
            )
        )
    unlabelled = tmp_path / "unlabelled.extxyz"
    ase.io.write(unlabelled, [molecule("H2O")], format="extxyz")
    bad = _spec(labelled_files, tmp_path / "bad")
    bad["data"]["test_files"] = [str(unlabelled)]
    with pytest.raises(BenchmarkError, match="no stored energy"):
        prepare_data(make_spec(bad))
    assert not (tmp_path / "bad" / "tiny" / "data" / "manifest.json").exists()
    energy_only = molecule("H2O")
    energy_only.info["energy"] = -1.0
    ase.io.write(unlabelled, [energy_only], format="extxyz")
    with pytest.raises(BenchmarkError, match="structure 0 of .*unlabelled.extxyz has no stored forces"):
        prepare_data(make_spec(bad))
    assert not (tmp_path / "bad" / "tiny" / "data" / "manifest.json").exists()


@pytest.mark.slow
def test_replay_benchmark_end_to_end(prefect_server, labelled_files, tiny_model_file, tmp_path):
    from flows.benchmark import benchmark_replay

    spec = _spec(labelled_files, tmp_path, model=str(tiny_model_file), seeds=[0, 1])
    # another benchmark process runs one campaign: this one skips it and goes on
    busy = f"sqlite:///{tmp_path / 'tiny' / 'benchmark.db'}"
    (tmp_path / "tiny").mkdir(parents=True, exist_ok=True)
    init_db(make_engine(busy))
    # held for a day: the lease must not expire while the first pass runs, however slow
    lease, _ = leases.try_acquire(make_engine(busy), "tiny-random-s1", ttl_s=86400)
    partial = benchmark_replay(spec=spec)
    assert "tiny-random-s1" not in partial["campaigns"]
    assert partial["campaigns"]["tiny-random-s0"]["status"] == "budget_exhausted"
    leases.release(make_engine(busy), lease)
    results = benchmark_replay(spec=spec)  # the rest now
    url = results["database_url"]
    assert url == busy

    assert sorted(results["campaigns"]) == [
        "tiny-fixed_descriptor.transductive.test.q0.9-s0",
        "tiny-fixed_descriptor.transductive.test.q0.9-s1",
        "tiny-random-s0",
        "tiny-random-s1",
    ]
    assert results["initial_sets_identical"] == {"0": True, "1": True}
    for campaign in results["campaigns"].values():
        assert campaign["status"] == "budget_exhausted"
        assert campaign["curve"]["labels"] == [6, 10]
        assert all(np.isfinite(campaign["curve"]["force"]))
        # every test error comes with its interval over the test structures
        for value, (low, high) in zip(campaign["curve"]["force"], campaign["curve"]["force_interval"], strict=True):
            assert low <= value <= high
        assert campaign["curve"]["interval_level"] == 0.9
    # same seed, same initial set and training: round 0 errors are identical across methods
    s0 = [results["campaigns"][f"tiny-{m}-s0"]["curve"]
          for m in ("random", "fixed_descriptor.transductive.test.q0.9")]
    assert s0[0]["force"][0] == pytest.approx(s0[1]["force"][0])
    method = "fixed_descriptor:transductive:test:q0.9"
    assert set(results["table"]) == {"random", method}
    assert results["calibration"]["random"] == {}
    calibration = results["calibration"][method]
    paired = results["table"][method]["force"]["paired_difference"]
    assert paired["labels"] == [6, 10] and paired["mean"][0] == pytest.approx(0.0, abs=1e-9)
    assert paired["final"]["n"] == 2 and paired["final"]["half_width"] is not None

    stored_rho = {}
    with session_scope(make_engine(url)) as session:
        for name in results["campaigns"]:
            camp = campaigns.get_campaign(session, name)
            # labels stay hidden until acquired: only test, initial and one batch were revealed
            n_test = len(structures.campaign_structures(session, camp.id, split="test"))
            assert reports.label_counts(session, camp.id)["done"] == n_test + 6 + 4
            assert not labels.labelled(session, camp.id, "pool")
            done = rounds.campaign_rounds(session, camp.id)
            assert [r.metrics["test"]["force_mae_mev_per_a"] > 0 for r in done] == [True, True]
            final = registry.latest_model(session, camp)
            assert final.metrics["benchmark"]["n_test"] == n_test
            if "transductive" in name:  # its final model's sigma was ranked against its errors
                stored_rho[name] = final.metrics["benchmark"]["force_spearman"]
            if "transductive" in name:  # the round stored the rule, target, guard and diagnostics
                parameters = done[1].parameters
                assert parameters["rule"] == "transductive" and parameters["sigma_quantile"] == 0.9
                assert parameters["target"] == "test" and parameters["sigma_bound"] is not None
                assert parameters["diagnostics"]["picked"]["count"] == 4
                # the target is the test file's structures (positions only; their labels were
                # revealed for evaluation, never for acquisition)
                assert parameters["diagnostics"]["target"]["count"] == n_test
        versions = len(
            registry.model_versions(session, campaigns.get_campaign(session, "tiny-random-s0"))
        )
    # The calibration row is the seeds' stored rank correlations, each a real number (a sigma
    # that is missing, constant or NaN leaves none).
    rhos = [stored_rho[f"tiny-{method.replace(':', '.')}-s{seed}"] for seed in (0, 1)]
    assert all(np.isfinite(rho) and -1.0 <= rho <= 1.0 for rho in rhos), rhos
    assert calibration["per_seed_force"] == pytest.approx(rhos)
    assert calibration["force_spearman_mean"] == pytest.approx(np.mean(rhos))

    again = benchmark_replay(spec=spec)  # finished campaigns are skipped, not rerun
    assert again["table"] == results["table"]
    with session_scope(make_engine(url)) as session:
        assert (
            len(
                registry.model_versions(
                    session, campaigns.get_campaign(session, "tiny-random-s0")
                )
            )
            == versions
        )

    written = write_outputs(
        results, tmp_path / "out", "tangentlab benchmark replay --config tiny.yaml"
    )
    assert {p.suffix for p in written} == {".json", ".png", ".md"}
    stored = json.loads((tmp_path / "out" / "tiny.json").read_text())
    assert stored["command"].startswith("tangentlab benchmark replay")
    assert "| fixed descriptor (ACSF), transductive over test, σ² ≤ q0.9 | 2 |" in (
        tmp_path / "out" / "tiny.md"
    ).read_text()


def test_cli_rejects_unknown_preset_and_bad_config(tmp_path, capsys):
    from cli import main

    assert main(["benchmark", "replay", "no-such-preset"]) == 2
    assert "unknown preset 'no-such-preset'" in capsys.readouterr().err
    bad = tmp_path / "bench.yaml"
    bad.write_text("name: x\ndata: {pool_files: [a], test_files: [b]}\nmethods: [ntk]\n")
    assert main(["benchmark", "replay", "--config", str(bad)]) == 2
    assert "must include 'random'" in capsys.readouterr().err


def test_method_names_map_to_acquisition_sections():
    from benchmarks.methods import method_acquisition, method_label

    assert method_acquisition("default") == {}
    assert method_acquisition("random") == {"signal": "random"}
    assert method_acquisition("ntk") == {"signal": "ntk", "rule": "greedy"}
    assert method_acquisition("activation:lcmd:q0.95") == {
        "signal": "activation", "rule": "lcmd", "sigma_quantile": 0.95,
    }
    # without a target part a name means the pool, as it did before the default became `test`
    assert method_acquisition("activation:transductive")["target"] == "pool"
    assert method_acquisition("ntk:transductive:test") == {
        "signal": "ntk", "rule": "transductive", "target": "test",
    }
    assert method_label("ntk:transductive:test") == "energy NTK, transductive over test"
    assert method_label("ntk:transductive:pool") == "energy NTK, transductive"
    assert method_acquisition("ntk:transductive:f4.5")["max_force"] == 4.5
    assert method_label("default").startswith("default (")
    # force probes instead of the exact force rows: a signal option, named in the label
    assert method_acquisition("force_ntk:transductive:test:p4") == {
        "signal": "force_ntk", "rule": "transductive", "target": "test",
        "signal_options": {"force_probes": 4},
    }
    assert method_label("energy_force_ntk:transductive:test:p4") == (
        "joint energy-force NTK (4 force probes), transductive over test")
    # exact rows over the readouts only, sketched to d
    assert method_acquisition("force_ntk:transductive:test:r12") == {
        "signal": "force_ntk", "rule": "transductive", "target": "test",
        "signal_options": {"parameters": "readouts", "sketch_dim": 12},
    }
    assert method_label("force_ntk:transductive:test:r12") == (
        "force NTK (readouts, d = 12), transductive over test")
    for bad in ("force_ntk:greedy:r0", "force_ntk:greedy:rx"):
        with pytest.raises(ValueError):
            method_acquisition(bad)
    for bad in ("soap", "activation:best", "random:greedy", "ntk:greedy:x1", "ntk:transductive:tests",
                "ntk:greedy:pool", "activation:transductive:p4", "force_ntk:greedy:p0",
                "force_ntk:greedy:px"):
        with pytest.raises(ValueError):
            method_acquisition(bad)


def test_presets_read_the_data_root_from_the_environment(monkeypatch, tmp_path):
    from benchmarks.spec import preset, preset_names

    assert {"h2combustion", "acac", "h2-validation", "h2-heldout"} <= set(preset_names())
    monkeypatch.delenv("TANGENTLAB_DATA", raising=False)
    with pytest.raises(BenchmarkError, match="TANGENTLAB_DATA"):
        preset("h2combustion")
    monkeypatch.setenv("TANGENTLAB_DATA", str(tmp_path))
    files = preset("h2combustion")["data"]["pool_files"]
    assert files[0] == str(tmp_path.resolve() / "h2combustion" / "pool_rxn01.extxyz")
    assert make_spec(preset("h2-heldout")).data.pool_size >= 1000


def test_every_shipped_preset_and_stored_config_is_a_valid_specification(monkeypatch, tmp_path):
    """The presets and docs/benchmarks/configs are what the reported numbers were run with."""
    from benchmarks.spec import load_spec_data, preset, preset_names

    monkeypatch.setenv("TANGENTLAB_DATA", str(tmp_path))
    configs = sorted((Path(__file__).parents[1] / "docs" / "benchmarks" / "configs").glob("*.yaml"))
    assert configs
    for name in preset_names():
        assert make_spec(preset(name)).name == name
    for path in configs:  # results are written under the spec's name: it must be the file's
        assert make_spec(load_spec_data(path)).name == path.stem


def test_a_bad_finetune_key_is_refused_with_the_specification():
    with pytest.raises(BenchmarkError, match="finetune: max_epoch: Extra inputs are not permitted"):
        make_spec({"finetune": {"max_epoch": 30}})
    with pytest.raises(BenchmarkError, match="finetune: start: Input should be"):
        make_spec({"finetune": {"start": "yesterday"}})


def test_paired_difference_has_a_t_interval_over_seeds():
    from benchmarks.analysis import mean_with_interval, paired_difference

    random = [{**_curve([10, 20], [5.0, 4.0], [50, 40]), "seed": s} for s in (0, 1, 2)]
    method = [
        {**_curve([10, 20], [5.0, e], [50, f]), "seed": s}
        for s, e, f in ((0, 3.0, 30), (1, 3.5, 38), (2, 2.5, 35))
    ]
    result = paired_difference(method, random, "force")
    assert result["labels"] == [10, 20]
    assert result["mean"][0] == pytest.approx(0.0)
    assert result["per_seed"] == {"0": [0, -10], "1": [0, -2], "2": [0, -5]}
    # t(0.975, 2) = 4.303; std of (-10, -2, -5) with ddof 1 = 4.0415
    assert result["final"]["mean"] == pytest.approx(-17 / 3)
    assert result["final"]["half_width"] == pytest.approx(4.3027 * 4.0415 / np.sqrt(3), rel=1e-3)
    assert mean_with_interval([1.0])["half_width"] is None


# ---------------------------------------------------------------- selection headroom script

def test_selection_headroom_refuses_unknown_strategies_and_draws_file_picks_from_that_file():
    from benchmarks.selection_headroom import check_strategy, choose

    for good in ("random", "file:600K", "activation:transductive:test", "ntk:greedy"):
        check_strategy(good)
    for bad in ("file:", "foo:greedy", "activation:bar", "activation:greedy:elsewhere", "top"):
        with pytest.raises(ValueError, match="unknown strategy"):
            check_strategy(bad)
    sources = ["train_300K.xyz"] * 10 + ["train_600K.xyz"] * 10
    rest = np.arange(2, 20)
    picked = choose("file:600K", rest, 6, pool=None, test=None, initial=[0, 1], sources=sources, model=None, seed=0)
    assert len(set(picked)) == 6 and all(sources[i] == "train_600K.xyz" for i in picked)
    drawn = choose("random", rest, 18, pool=None, test=None, initial=[0, 1], sources=sources, model=None, seed=0)
    assert sorted(drawn) == list(rest)
    with pytest.raises(ValueError, match="10 pool structures match, 11 needed"):
        choose("file:600K", rest, 11, pool=None, test=None, initial=[0, 1], sources=sources, model=None, seed=0)


def test_selection_headroom_oracles_pick_the_largest_errors_or_draw_by_them():
    from benchmarks.selection_headroom import check_strategy, choose

    for oracle in ("oracle:top", "oracle:weighted"):
        check_strategy(oracle)
    with pytest.raises(ValueError, match="unknown strategy"):
        check_strategy("oracle:best")
    errors = np.array([9.0, 8.0, 1.0, 7.0, 0.0, 5.0, 0.0, 3.0])  # pool structure 0 is in the initial set
    rest = np.arange(1, 8)
    calls = []

    def oracle_errors():
        calls.append(1)
        return errors

    common = dict(pool=None, test=None, initial=[0], sources=None, model=None, seed=0, errors=oracle_errors)
    assert list(choose("oracle:top", rest, 3, **common)) == [1, 3, 5]
    for seed in range(20):
        drawn = choose("oracle:weighted", rest, 5, **{**common, "seed": seed})
        assert len(set(drawn)) == 5 and not {4, 6} & set(drawn)  # zero error: never drawn
    assert choose("random", rest, 2, **common) is not None and len(calls) == 21  # only oracles read errors


def test_force_errors_by_file_group_the_test_structures_by_their_source_file():
    from benchmarks.selection_headroom import _force_mae_by_file

    test = []
    for name, offset in (("b.xyz", 0.1), ("a.xyz", 0.3), ("b.xyz", 0.3)):
        atoms = molecule("H2O")
        atoms.info["source_file"], atoms.arrays["forces"] = name, np.zeros((3, 3))
        test.append((atoms, np.full((3, 3), offset)))
    by_file = _force_mae_by_file([a for a, _ in test], [(0.0, f) for _, f in test])
    assert list(by_file) == ["a.xyz", "b.xyz"]  # sorted names, structures pooled per file
    assert by_file == pytest.approx({"a.xyz": 300.0, "b.xyz": 200.0})


def test_read_labelled_puts_stored_labels_where_fine_tuning_reads_them(tmp_path):
    from ase.calculators.singlepoint import SinglePointCalculator

    from benchmarks.data import read_labelled

    labelled = molecule("H2O")
    labelled.calc = SinglePointCalculator(labelled, energy=-1.5, forces=np.full((3, 3), 0.25))
    ase.io.write(tmp_path / "ok.extxyz", [labelled])
    (frame,) = read_labelled(tmp_path / "ok.extxyz")
    assert frame.info["energy"] == -1.5 and np.allclose(frame.arrays["forces"], 0.25)
    ase.io.write(tmp_path / "bare.extxyz", [labelled, molecule("CO")])
    with pytest.raises(BenchmarkError, match="structure 1 of .*bare.extxyz has no stored energy"):
        read_labelled(tmp_path / "bare.extxyz")


@pytest.mark.skipif(not (SHARED / "data" / "acac").is_dir(), reason="needs ../shared/data/acac")
def test_fixed_setup_reads_the_presets_labelled_sets_and_a_max_epochs_budget_has_no_early_stop(tmp_path):
    from benchmarks.finetune_spread import fixed_setup

    setup = fixed_setup("acac", str(SHARED / "data"), tmp_path)
    assert (len(setup.pool), len(setup.test)) == (200, 120)
    assert all("energy" in a.info and "forces" in a.arrays for a in setup.pool + setup.test)
    assert setup.start.is_file() and setup.start.parent == tmp_path / "models"
    assert (setup.hyper["max_epochs"], setup.hyper["patience"]) == (15, 5)  # the preset's over the product's
    assert setup.hyper["energy_weight"] == FineTune().energy_weight  # the product's where the preset is silent
    fixed = fixed_setup("acac", str(SHARED / "data"), tmp_path / "fixed", max_epochs=7)
    assert (fixed.hyper["max_epochs"], fixed.hyper["patience"]) == (7, 7)


@pytest.mark.skipif(not (SHARED / "data" / "acac").is_dir(), reason="needs ../shared/data/acac")
def test_selection_headroom_refuses_too_few_labels_before_preparing_data(tmp_path):
    from benchmarks.selection_headroom import measure

    with pytest.raises(ValueError, match=r"--labels 20 must exceed the preset's initial set \(20\)"):
        measure("acac", str(SHARED / "data"), ["random"], [0], 20, tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing prepared


def test_finetune_sweep_grid_casts_values_refuses_unknown_keys_and_fixes_the_budget():
    from benchmarks.finetune_sweep import main, parse_grid, settings_of

    grid = parse_grid(["lr=0.002,0.01", "max_epochs=30,120"])
    assert grid == {"lr": [0.002, 0.01], "max_epochs": [30, 120]}
    assert isinstance(grid["max_epochs"][0], int)
    settings = settings_of(grid)
    assert len(settings) == 4 and {"lr": 0.01, "max_epochs": 120, "patience": 120} in settings
    assert settings_of(parse_grid(["max_epochs=50", "patience=5"])) == [{"max_epochs": 50, "patience": 5}]
    assert settings_of({}) == [{}]
    for bad, message in (("lr", "write KEY=V1"), ("learning_rate=1", "not a fine-tuning hyperparameter"),
                         ("max_epochs=ten", "invalid literal"), ("seed=3", "not a fine-tuning hyperparameter")):
        with pytest.raises(ValueError, match=message):
            parse_grid([bad])
    with pytest.raises(SystemExit):  # argparse's error, before any data is read
        main(["h2-validation", "--set", "energy_weight=1", "--weights", "30"])

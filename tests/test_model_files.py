"""Model files that cannot run code: the weights-only format, and the starting model read with
an allow-list of MACE's classes."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import write_pool
from tiny_model import FOUNDATION_STYLES, make_foundation_style_model, rattled_molecules

from db import campaigns, init_db, labels, make_engine, registry, session_scope, structures
from tangentlab.config import config_json, make_config, shipped_file
from tangentlab.finetune import finetune
from tangentlab.mace_model import default_dtype, load_model, predict
from tangentlab.model_files import ModelFileError, model_source, save_weights, starting_weights
from tangentlab.structures import content_hash
from tasks.setup import starting_model
from tasks.steps import starting_model_version as _starting_model

SHIPPED = Path(shipped_file("tangentlab-hcno-xtb.model"))
STRUCTURES = ["CH4", "H2O", "NH3", "CH3OH", "HCN", "CH3CHO"]


class _Payload:
    """Unpickles by calling ``eval`` on ``code``: any code, as a hostile ``.model`` file can."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return eval, (self.code,)


def _hostile_model(path: Path, marker: Path, real_model: Path | None = None) -> Path:
    """A pickled file whose unpickling writes ``marker`` (and returns ``real_model``, if given)."""
    code = f"__import__('pathlib').Path({str(marker)!r}).write_text('code ran')"
    if real_model is not None:
        code = f"({code}, __import__('torch').load({str(real_model)!r}, weights_only=False))[1]"
    torch.save(_Payload(code), path)
    return path


def _pickled_reference(path: Path, dtype: torch.dtype) -> torch.nn.Module:
    with default_dtype(dtype):
        model = torch.load(path, weights_only=False).to(dtype=dtype).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def foundation_style_files(tmp_path_factory) -> dict[str, Path]:
    """MACE-MP-style and MACE-OFF-style .model files, built with MACE's constructor."""
    folder = tmp_path_factory.mktemp("foundation")
    return {style: make_foundation_style_model(folder / f"{style}.model", style)
            for style in FOUNDATION_STYLES}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("which", ["tiny", "shipped", "mace-mp", "mace-off"])
def test_weights_only_round_trip_is_exact(which, dtype, tiny_model_file, tmp_path, request):
    """Every architecture tangentlab starts from is read with the allow-list alone (no code of
    the file compiled or run) into a model that predicts exactly as the fully unpickled one."""
    if which == "tiny":
        pickled = tiny_model_file.with_suffix(".model")
    elif which == "shipped":
        pickled = SHIPPED
    else:
        pickled = request.getfixturevalue("foundation_style_files")[which]
    reference = _pickled_reference(pickled, dtype)
    weights, source = starting_weights(pickled, tmp_path)
    assert source["pickled"] and weights.parent == tmp_path
    before = torch.get_default_dtype()
    model = load_model(weights, dtype=dtype)
    assert torch.get_default_dtype() == before
    expected, got = reference.state_dict(), model.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert all(torch.equal(a, b) for a, b in zip(reference.buffers(), model.buffers(), strict=True))
    atoms = rattled_molecules(STRUCTURES, seed=2)
    predict(reference, atoms[:1])  # the first forward pass of a process can differ in the last bit
    for (e_ref, f_ref), (e, f) in zip(
        predict(reference, atoms), predict(model, atoms), strict=True
    ):
        assert e == e_ref
        np.testing.assert_array_equal(f, f_ref)


def test_saved_weights_reload_identically(model, tmp_path):
    path = save_weights(model, tmp_path / "again.pt")
    again = load_model(path)
    # the weights bit for bit; the predictions to float32 round-off (a sum over neighbours may
    # be taken in another order by another thread count)
    reference, reloaded = model.state_dict(), again.state_dict()
    assert reloaded.keys() == reference.keys()
    for key, tensor in reference.items():
        assert torch.equal(reloaded[key], tensor), key
    atoms = rattled_molecules(STRUCTURES, seed=4)
    for (e_ref, f_ref), (e, f) in zip(predict(model, atoms), predict(again, atoms), strict=True):
        assert e == pytest.approx(e_ref, rel=1e-6, abs=1e-6)
        np.testing.assert_allclose(f, f_ref, rtol=1e-5, atol=1e-6)


def test_pickled_file_is_never_loaded_as_a_model(tiny_model_file, tmp_path):
    marker = tmp_path / "marker"
    hostile = _hostile_model(
        tmp_path / "round-001.pt", marker, tiny_model_file.with_suffix(".model")
    )
    with pytest.raises(ModelFileError, match=r"round-001\.pt is a pickled file"):
        load_model(hostile)
    with pytest.raises(ModelFileError, match=r"round-001\.pt is a pickled file"):
        finetune(hostile, rattled_molecules(["CH4"]), [], tmp_path / "child.model")
    # A genuine MACE .model is refused the same way: only the starting model is ever read.
    with pytest.raises(ModelFileError, match=r"tiny\.model is a pickled file"):
        load_model(tiny_model_file.with_suffix(".model"))
    assert not marker.exists()


def test_hostile_registry_model_is_refused_and_runs_no_code(tiny_model_file, tmp_path):
    """A registered model version replaced by a hostile pickle (same sha256: registered so) is
    refused by every loader that takes registry files, and its code never runs."""
    from tasks.evaluate import evaluate_model

    marker = tmp_path / "marker"
    (tmp_path / "models").mkdir()
    hostile = _hostile_model(
        tmp_path / "models" / "round-001.pt", marker, tiny_model_file.with_suffix(".model")
    )
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    engine = make_engine(url)
    init_db(engine)
    test = rattled_molecules(["CH4"])
    test[0].info.update(charge=0, multiplicity=1)
    with session_scope(engine) as session:
        campaign_id = campaigns.create_campaign(session, "hostile", {}).id
        structures.import_atoms(
            session, campaign_id, test, [content_hash(a) for a in test], origin="t", split="test"
        )
        structure_id = structures.campaign_structures(session, campaign_id)[0].id
        [label_id] = labels.ensure_labels(session, [structure_id], {"method": "test"})
        labels.complete_label(session, label_id, -1.0, np.zeros((5, 3)))
        version_id = registry.register_model(session, campaign_id, hostile).id
        path = registry.verified_model_path(
            session, version_id
        )  # the sha256 matches: registered so
    with pytest.raises(ModelFileError, match=r"round-001\.pt is a pickled file"):
        load_model(path)
    with pytest.raises(ModelFileError, match=r"round-001\.pt is a pickled file"):
        evaluate_model.fn(url, campaign_id, version_id)
    assert not marker.exists()


def test_starting_model_is_converted_once_and_its_sha256_recorded(tiny_model_file, tmp_path):
    pickled = tmp_path / "start.model"
    pickled.write_bytes(tiny_model_file.with_suffix(".model").read_bytes())
    digest = hashlib.sha256(pickled.read_bytes()).hexdigest()
    config = make_config(
        {"name": "trusted", "model": str(pickled), "work_dir": str(tmp_path / "runs")}
    )
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    engine = make_engine(url)
    init_db(engine)
    with session_scope(engine) as session:
        campaign_id = campaigns.create_campaign(session, "trusted", {}).id

    weights, source = starting_model(config)
    assert source == {
        "source_path": str(pickled.resolve()), "source_sha256": digest, "pickled": True
    }
    assert weights == tmp_path / "runs" / "trusted" / "models" / f"starting-{digest[:16]}.pt"
    assert model_source(weights) == {"source_path": str(pickled.resolve()), "source_sha256": digest}

    # Later uses read the converted file, not the .model.
    converted = weights.stat().st_mtime_ns
    version_id, _ = _starting_model(url, campaign_id, config)
    assert starting_model(config)[0] == weights and weights.stat().st_mtime_ns == converted
    with session_scope(engine) as session:
        version = registry.model_versions(session, campaign_id)[0]
        assert version.id == version_id and version.path == str(weights)
        assert version.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
        assert version.hyperparameters["source_sha256"] == digest
        assert version.hyperparameters["source_path"] == str(pickled.resolve())
        load_model(registry.verified_model_path(session, version_id))


def _hostile_files(tmp_path: Path, marker: Path, real_model: Path) -> dict[str, Path]:
    """Starting models whose reading would write ``marker``: a bare pickle (protocols 2 and 5),
    a torch.save zip, and a real MACE model with the payload as one more attribute."""
    code = f"__import__('pathlib').Path({str(marker)!r}).write_text('code ran')"
    files = {}
    for protocol in (2, 5):
        files[f"pickle-{protocol}"] = tmp_path / f"pickle-{protocol}.model"
        files[f"pickle-{protocol}"].write_bytes(pickle.dumps(_Payload(code), protocol=protocol))
    files["torch-zip"] = _hostile_model(tmp_path / "zip.model", marker)
    with default_dtype(torch.float64):
        model = torch.load(real_model, weights_only=False)  # the test's own file: trusted
    model.payload = _Payload(code)
    files["inside-a-real-model"] = tmp_path / "inside.model"
    torch.save(model, files["inside-a-real-model"])
    return files


def test_hostile_starting_model_is_refused_before_any_of_it_runs(tiny_model_file, tmp_path):
    marker = tmp_path / "marker"
    files = _hostile_files(tmp_path, marker, tiny_model_file.with_suffix(".model"))
    for kind, path in files.items():
        message = r"is not a readable MACE model file" if kind == "pickle-5" else (
            r"does not hold a MACE model tangentlab can read: it needs eval, which is not among "
            r"the MACE, e3nn and torch classes a MACE model is made of; refused before anything "
            r"in it ran")
        with pytest.raises(ModelFileError, match=rf"{path.name} {message}"):
            starting_weights(path, tmp_path / "models")
        assert not marker.exists(), kind
    assert not (tmp_path / "models").exists()


def test_weights_only_starting_model_is_used_as_it_is(tiny_model_file, tmp_path):
    weights, source = starting_weights(tiny_model_file, tmp_path / "models")
    assert weights == tiny_model_file.resolve() and not source["pickled"]
    assert source["source_sha256"] == hashlib.sha256(tiny_model_file.read_bytes()).hexdigest()
    assert not (tmp_path / "models").exists()


def test_a_starting_model_checked_once_is_checked_again_once_its_bytes_change(
        tiny_model_file, tmp_path):
    """The check of a weights-only starting model is not repeated for the same bytes in one
    process, and is for other bytes at the same path."""
    path = tmp_path / "start.pt"
    path.write_bytes(tiny_model_file.read_bytes())
    assert starting_weights(path, tmp_path / "models")[0] == path.resolve()
    assert starting_weights(path, tmp_path / "models")[0] == path.resolve()
    payload = torch.load(tiny_model_file, weights_only=True)
    payload["state_dict"] = {}  # still a weights-only file, no longer a model
    torch.save(payload, path)
    with pytest.raises(ModelFileError, match=r"start\.pt"):
        starting_weights(path, tmp_path / "models")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a model at all", "not a readable MACE model file"),
        (None, "does not hold a MACE model"),
    ],
)
def test_unusable_starting_model_is_named(tmp_path, content, message):
    path = tmp_path / "start.model"
    if content is None:
        torch.save(torch.nn.Linear(2, 2), path)
    else:
        path.write_bytes(content)
    with pytest.raises(ModelFileError, match=rf"start\.model.*{message}|{message}.*start\.model"):
        starting_weights(path, tmp_path / "models")
    assert not (tmp_path / "models").exists()  # nothing written


def test_configuration_names_only_mace_registry_entries(tiny_model_file, tmp_path):
    """A weights-only file names its classes and gate; others than MACE's own are refused."""
    payload = torch.load(tiny_model_file, weights_only=True)
    stored = json.loads(payload["config"])
    stored["config"]["gate"] = "os.system"
    payload["config"] = json.dumps(stored)
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(
        ModelFileError, match=r"edited\.pt: cannot rebuild the model: unknown gate 'os.system'"
    ):
        load_model(tmp_path / "edited.pt")
    payload["state_dict"] = {
        k: v for k, v in payload["state_dict"].items() if "linear.weight" not in k
    }
    payload["config"] = json.dumps({**stored, "config": {**stored["config"], "gate": "silu"}})
    torch.save(payload, tmp_path / "partial.pt")
    with pytest.raises(ModelFileError, match=r"partial\.pt: the stored weights do not fit"):
        load_model(tmp_path / "partial.pt")


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`tangentlab ARGS` (its entry point, `cli.main`) in this process, in ``tmp_path``; the
    exit code and output as a process gives them. A hostile file's code, if it ran, would run
    here and write the marker all the same."""
    from cli import main

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        patch.chdir(tmp_path)
        code = main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def test_start_with_a_hostile_starting_model_runs_none_of_it(tiny_model_file, tmp_path):
    """`tangentlab start` with a starting model whose unpickling writes a marker: one `error:`
    line naming what the file needs, exit 2, nothing stored, the marker never written."""
    marker = tmp_path / "marker"
    hostile = _hostile_files(tmp_path, marker, tiny_model_file.with_suffix(".model"))
    pool = write_pool(tmp_path / "pool.extxyz", 12)
    config = {"name": "hostile", "model": str(hostile["inside-a-real-model"]), "pool": [str(pool)],
              "work_dir": str(tmp_path / "runs"), "test_size": 2, "initial_size": 2,
              "oracle": {"name": "xtb", "method": "GFN2-xTB"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    done = _cli(tmp_path, "--db", f"sqlite:///{tmp_path / 'lab.db'}", "start", "c.yaml")
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: model: ")
    assert "it needs eval" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not marker.exists()
    assert not (tmp_path / "runs").exists()


def test_import_reads_the_registered_model_not_the_file_named_at_the_start(
    tiny_model_file, tmp_path
):
    """The starting `.model` replaced, after the campaign started, by a hostile pickle:
    `tangentlab import` reads the registered weights-only file and never the replaced file.
    Before a model is registered (a campaign stopped while labelling its test set) the replaced
    file is read with the allow-list: refused, its code not run."""
    marker = tmp_path / "marker"
    start = tmp_path / "start.model"
    start.write_bytes(tiny_model_file.with_suffix(".model").read_bytes())
    pool = write_pool(tmp_path / "pool.extxyz", 12)
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    engine = make_engine(url)
    init_db(engine)
    for name in ("registered", "early"):
        config = make_config({"name": name, "model": str(start), "pool": [str(pool)],
                              "work_dir": str(tmp_path / "runs")})
        with session_scope(engine) as session:
            campaign_id = campaigns.create_campaign(session, name, config_json(config)).id
        if name == "registered":
            _starting_model(url, campaign_id, config)  # as the campaign flow registers it
    hostile = _hostile_files(tmp_path, marker, tiny_model_file.with_suffix(".model"))
    start.write_bytes(hostile["inside-a-real-model"].read_bytes())

    more = write_pool(tmp_path / "more.extxyz", 5, seed=9)
    done = _cli(tmp_path, "--db", url, "import", "registered", str(more))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "imported 5 structures into 'registered'" in done.stdout
    assert not marker.exists()

    done = _cli(tmp_path, "--db", url, "import", "early", str(more))
    assert done.returncode == 2, done.stdout + done.stderr
    refused = "start.model does not hold a MACE model tangentlab can read: it needs eval"
    assert refused in done.stderr, done.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_a_mace_off23_small_sized_model_goes_through_a_round(tmp_path):
    """A starting model of MACE-OFF23 small's size (10 elements, 96x0e, r_max 5 Å, correlation
    3; mace's own constructor, random weights) converts, gives activation and force-aware NTK
    rows, fine-tunes and improves on the labels it was fine-tuned on."""
    from ase.calculators.emt import EMT

    from benchmarks.model_shapes import write_shape
    from tangentlab.acquisition.signals import make_featurizer
    from tangentlab.finetune import FineTuneHyperparameters
    from tangentlab.metrics import error_metrics

    weights, source = starting_weights(write_shape("mace-off23-small", tmp_path / "off.model"),
                                       tmp_path / "models")
    assert source["pickled"]
    model = load_model(weights)
    assert sum(p.numel() for p in model.parameters()) > 400_000
    train = rattled_molecules(["CH4", "H2O"], seed=3)
    for atoms in train:
        atoms.calc = EMT()
        atoms.info["energy"] = float(atoms.get_potential_energy())
        atoms.arrays["forces"] = atoms.get_forces().copy()
        atoms.calc = None
    activation, _ = make_featurizer(model, "activation")(train)
    joint, counts = make_featurizer(model, "energy_force_ntk", sketch_dim=8, force_probes=2)(train)
    assert activation.shape[0] == 2 and joint.shape == (6, 8) and list(counts) == [3, 3]
    assert np.all(np.isfinite(joint)) and np.abs(joint).max() > 0
    hyper = FineTuneHyperparameters(max_epochs=2, patience=2, batch_size=2, min_steps_per_epoch=2)
    result = finetune(weights, train, [], tmp_path / "round-1.model", hyper=hyper)
    refs = [(a.info["energy"], a.arrays["forces"]) for a in train]
    natoms = [len(a) for a in train]
    before = error_metrics(predict(model, train), refs, natoms)
    after = error_metrics(predict(load_model(result.path), train), refs, natoms)
    assert after["force_mae_mev_per_a"] < before["force_mae_mev_per_a"]

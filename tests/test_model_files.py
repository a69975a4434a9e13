"""Model files that cannot run code: the weights-only format, and the one pickled file loaded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_model import rattled_molecules

from db import campaigns, init_db, labels, make_engine, registry, session_scope, structures
from flows.campaign import _starting_model
from tangentlab.config import make_config, shipped_file
from tangentlab.finetune import finetune
from tangentlab.mace_model import default_dtype, load_model, predict
from tangentlab.model_files import ModelFileError, model_source, save_weights, starting_weights
from tangentlab.structures import content_hash
from tasks.setup import starting_model

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


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("which", ["tiny", "shipped"])
def test_weights_only_round_trip_is_exact(which, dtype, tiny_model_file, tmp_path):
    pickled = tiny_model_file.with_suffix(".model") if which == "tiny" else SHIPPED
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
    atoms = rattled_molecules(STRUCTURES, seed=4)
    for (e_ref, f_ref), (e, f) in zip(predict(model, atoms), predict(again, atoms), strict=True):
        assert e == e_ref
        np.testing.assert_array_equal(f, f_ref)


def test_pickled_file_is_never_loaded_as_a_model(tiny_model_file, tmp_path):
    marker = tmp_path / "marker"
    hostile = _hostile_model(
        tmp_path / "round-001.pt", marker, tiny_model_file.with_suffix(".model")
    )
    with pytest.raises(ModelFileError, match=r"round-001\.pt is a pickled file"):
        load_model(hostile)
    with pytest.raises(ModelFileError, match=r"round-001\.pt is a pickled file"):
        finetune(hostile, rattled_molecules(["CH4"]), [], tmp_path / "child.model")
    # A genuine MACE .model is refused the same way: only the starting model is ever unpickled.
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


def test_starting_model_is_the_one_pickle_loaded_once_and_its_sha256_recorded(
    tiny_model_file, tmp_path
):
    marker = tmp_path / "marker"
    hostile = _hostile_model(
        tmp_path / "start.model", marker, tiny_model_file.with_suffix(".model")
    )
    digest = hashlib.sha256(hostile.read_bytes()).hexdigest()
    config = make_config(
        {"name": "trusted", "model": str(hostile), "work_dir": str(tmp_path / "runs")}
    )
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    engine = make_engine(url)
    init_db(engine)
    with session_scope(engine) as session:
        campaign_id = campaigns.create_campaign(session, "trusted", {}).id

    # The named starting model is the documented trust boundary: unpickled (its code runs) once.
    weights, source = starting_model(config)
    assert marker.read_text() == "code ran"
    assert source == {
        "source_path": str(hostile.resolve()),
        "source_sha256": digest,
        "pickled": True,
    }
    assert weights == tmp_path / "runs" / "trusted" / "models" / f"starting-{digest[:16]}.pt"
    assert model_source(weights) == {"source_path": str(hostile.resolve()), "source_sha256": digest}

    # Later uses read the converted file: nothing is unpickled again.
    marker.unlink()
    version_id, _ = _starting_model(url, campaign_id, config)
    assert starting_model(config)[0] == weights
    assert not marker.exists()
    with session_scope(engine) as session:
        version = registry.model_versions(session, campaign_id)[0]
        assert version.id == version_id and version.path == str(weights)
        assert version.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
        assert version.hyperparameters["source_sha256"] == digest
        assert version.hyperparameters["source_path"] == str(hostile.resolve())
        load_model(registry.verified_model_path(session, version_id))
    assert not marker.exists()


def test_weights_only_starting_model_is_used_as_it_is(tiny_model_file, tmp_path):
    weights, source = starting_weights(tiny_model_file, tmp_path / "models")
    assert weights == tiny_model_file.resolve() and not source["pickled"]
    assert source["source_sha256"] == hashlib.sha256(tiny_model_file.read_bytes()).hexdigest()
    assert not (tmp_path / "models").exists()


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

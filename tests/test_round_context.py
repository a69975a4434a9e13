"""One round, one model load and one scorer fit: the context exploration and acquisition share.

A real SQLite campaign database and the tiny real MACE model; no Prefect server.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule

from db import (
    RoundStatus,
    campaigns,
    init_db,
    labels,
    make_engine,
    registry,
    session_scope,
    structures,
)
from tangentlab.acquisition.policy import REFERENCE_SIZE, fit_policy_scorer, reference_structures
from tangentlab.config import make_config
from tangentlab.structures import content_hash

LEVEL = {"method": "GFN2-xTB", "basis": None, "code": "tblite", "code_version": "test"}
NAMES = ["H2O", "CH4", "NH3", "CH3OH", "HCN", "H2CO", "C2H6", "CO2", "HCOOH", "CH3CHO"]


def _structures(n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        atoms = molecule(NAMES[i % len(NAMES)])
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.info.update(charge=0, multiplicity=1)
        out.append(atoms)
    return out


def _finish(session, campaign_id: int, structure_id: int, *, failure: str | None = None) -> None:
    (label_id,) = labels.ensure_labels(session, [structure_id], LEVEL)
    (structure,) = structures.structures_by_id(session, [structure_id])
    assert labels.claim_labels(session, campaign_id, labels.level_key(LEVEL), 1, "test") == [
        label_id
    ]
    if failure is not None:
        labels.fail_label(session, label_id, failure, "run", max_attempts=1)
    else:
        labels.complete_label(session, label_id, -10.0, np.zeros((structure.natoms, 3)), 1.0, "run")


@pytest.fixture
def lab(tmp_path, tiny_model_file):
    """A campaign with 4 training labels, a pool of 10 of which the first failed QM and the
    last two are round 1's exploration candidates; returns (url, campaign id, model id, ids)."""
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    init_db(make_engine(url))
    atoms = _structures(14, seed=2)
    with session_scope(make_engine(url)) as session:
        camp = campaigns.create_campaign(session, "context", {})
        ids = structures.import_atoms(
            session, camp, atoms, [content_hash(a) for a in atoms], origin="pool"
        ).structure_ids
        train, pool = ids[:4], ids[4:]
        structures.set_split(session, train, "train")
        for sid in train:
            _finish(session, camp.id, sid)
        _finish(session, camp.id, pool[0], failure="SCF did not converge")
        for found in structures.structures_by_id(session, pool[-2:]):
            found.provenance = {"round": 1, "engine": "md"}
        model = registry.register_model(
            session, camp, tiny_model_file, hyperparameters={"source": "test"}
        )
        return url, camp.id, model.id, {"train": train, "pool": pool}


def test_exploration_and_acquisition_share_one_model_and_one_fit(lab, monkeypatch):
    import tasks.context as context_module

    url, campaign_id, model_id, ids = lab
    config = make_config({"name": "context", "acquisition": {"method": "activation"}})
    loads, fits = [], []
    real_load = context_module.load_model
    monkeypatch.setattr(
        context_module, "load_model", lambda *a, **k: loads.append(a) or real_load(*a, **k)
    )
    real_fit = context_module.fit_policy_scorer
    monkeypatch.setattr(
        context_module, "fit_policy_scorer", lambda *a, **k: fits.append(a) or real_fit(*a, **k)
    )

    first = context_module.round_context(url, campaign_id, config, 1, model_id)
    scorer = first.scorer()  # exploration's σ
    again = context_module.round_context(url, campaign_id, config, 1, model_id)
    assert again is first and again.scorer() is scorer  # acquisition: the same fit
    assert len(loads) == 1 and len(fits) == 1
    # the reference rows: pool order, without the failed structure and the round's candidates
    kept = ids["pool"][1:-2]
    assert [a.info["structure_id"] for a in first.reference] == kept[:REFERENCE_SIZE]
    assert [a.info["structure_id"] for a in first.train] == ids["train"]
    # a resumed run (a new process) builds the same fit
    context_module.release_context()
    fresh = context_module.round_context(url, campaign_id, config, 1, model_id)
    assert fresh is not first and len(loads) == 2
    pool = first.reference + first.train
    np.testing.assert_allclose(fresh.scorer().variance(pool), scorer.variance(pool), rtol=1e-10)
    expected = fit_policy_scorer(
        first.model,
        first.train,
        reference_structures(first.reference),
        config.acquisition,
        config.device,
    )
    np.testing.assert_allclose(expected.variance(pool), scorer.variance(pool), rtol=1e-10)
    # another round (or model) is another context
    assert context_module.round_context(url, campaign_id, config, 2, model_id) is not fresh


def test_every_round_status_has_a_step():
    from flows.campaign import STEPS

    assert set(STEPS) == set(RoundStatus)


def test_random_acquisition_picks_through_the_signal_registry(lab, prefect_server, no_run_logger):
    """Feature signals are covered by every campaign test; random (the benchmarks' baseline)
    goes through its own entry of `tasks.acquire.SELECTORS`, which has one for every signal
    without feature rows the configuration accepts."""
    import tasks.acquire as acquire_module
    from db import rounds
    from tangentlab.config import FEATURELESS_METHODS

    assert set(acquire_module.SELECTORS) == set(FEATURELESS_METHODS)
    url, campaign_id, model_id, ids = lab
    signal = "random"
    config = make_config({"name": "context", "acquisition": {"signal": signal, "batch_size": 3}})
    assert acquire_module.acquire.fn(url, campaign_id, config, 1, model_id) == 3
    with session_scope(make_engine(url)) as session:
        round_ = rounds.get_round(session, campaign_id, 1)
        picked = [entry["structure_id"] for entry in round_.selected]
        scores = [entry["score"] for entry in round_.selected]
        assert round_.method == signal and round_.model_version_id == model_id
    assert len(set(picked)) == 3 and set(picked) <= set(ids["pool"][1:])  # never the failed one
    assert scores == [None, None, None]

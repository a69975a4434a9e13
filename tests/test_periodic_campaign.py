"""A periodic campaign to its targets with a real oracle: Cu(111) slabs with O/H/OH adsorbates,
labelled by EMT (ASE's calculator through quacc's `emt` recipe), starting from the shipped
Cu/O/H model, in-process with a real SQLite database and Prefect server."""

from __future__ import annotations

from pathlib import Path

import ase.io
import pytest

from db import campaigns, make_engine, reports, session_scope

SHIPPED = Path(__file__).resolve().parents[1] / "tangentlab" / "data" / "tangentlab-cuoh-emt.model"


@pytest.mark.slow
def test_slab_campaign_with_emt_labels_reaches_its_targets(prefect_server, tmp_path):
    from flows.campaign import campaign
    from tangentlab.pretrain_surface import generate_surface_structures

    pool = tmp_path / "pool.extxyz"
    ase.io.write(pool, generate_surface_structures(40, seed=11, frames_per_run=4, sample_every=3))
    config = {
        "name": "slab-emt", "pool": [str(pool)], "model": str(SHIPPED),
        "work_dir": str(tmp_path / "runs"), "test_size": 6, "initial_size": 6,
        "oracle": {"name": "emt"},
        "acquisition": {"signal": "activation", "batch_size": 4},
        "budgets": {"max_rounds": 2, "max_labels": 30},
        # Measured with these settings: energy MAE 35 (start), 56, 19 meV/atom after rounds 0-1
        # and force MAE 64 meV/Å throughout (the shipped model was pretrained on EMT labels of
        # such slabs; the energies come down with the reference energies refitted on the
        # labels, so two optimiser steps a round suffice). Point estimates decide: 6 test
        # structures give 90 % intervals far wider than these targets.
        "targets": {"energy_mae_mev_per_atom": 25.0, "force_mae_mev_per_a": 100.0,
                    "confidence": None},
        "finetune": {"max_epochs": 1, "patience": 1, "min_steps_per_epoch": 2},
    }
    url = f"sqlite:///{tmp_path / 'c.db'}"
    result = campaign(config=config, database_url=url)

    assert result["status"] == "targets_met", result["reason"]
    start, *trained = result["models"]
    assert start["test"]["energy_mae_mev_per_atom"] > 25.0  # the starting model misses
    final = trained[-1]["test"]
    assert final["energy_mae_mev_per_atom"] <= 25.0 and final["force_mae_mev_per_a"] <= 100.0
    assert final["force_atoms"] == "free" and final["n_fixed_atoms"] > 0
    with session_scope(make_engine(url)) as session:
        report = reports.campaign_report(session, campaigns.get_campaign(session, "slab-emt"))
    assert report["status"] == "targets_met" and report["labels"]["failed"] == 0

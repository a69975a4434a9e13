"""Pretraining flows: build a data set and train one of the shipped starting MACE models.

    tangentlab pretrain --out tangentlab/data --structures 4000 --epochs 30
    tangentlab pretrain --recipe surface --out tangentlab/data --structures 600 --epochs 6

The first (`pretrain`) is the molecular H/C/N/O model on GFN2-xTB labels, the second
(`pretrain_surface`) the periodic Cu/O/H one on EMT labels of Cu(111) slab MD frames
(:mod:`tangentlab.pretrain_surface`).

Steps: draw structures (:mod:`tangentlab.pretrain_data`), label each with quacc's tblite
GFN2-xTB job (failures are dropped and counted), train a small MACE from scratch with
``mace_run_train`` and write ``<name>.model`` plus ``<name>.json`` (the provenance record:
data recipe, size, seed, hyperparameters, validation errors, sha256).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tangentlab.oracles import QMFailure, make_oracle
from tangentlab.pretrain import (
    PretrainHyperparameters,
    provenance,
    train_from_scratch,
    write_training_file,
)
from tangentlab.pretrain_data import generate_structures
from tangentlab.pretrain_surface import generate_surface_structures

MAX_FORCE = 30.0  # eV/Å: structures beyond this are too violent to teach a starting model


@task(name="label pretraining structures", cache_policy=NO_CACHE)
def label_structures(structures: list, results_dir: str) -> tuple[list, int]:
    """GFN2-xTB energies and forces for every structure; failed or violent ones are dropped."""
    logger = get_run_logger()
    oracle = make_oracle({"name": "xtb", "method": "GFN2-xTB"})
    labelled, dropped = [], 0
    for k, atoms in enumerate(structures):
        try:
            result = oracle(atoms, results_dir=results_dir)
        except QMFailure as failure:
            logger.warning("structure %d dropped: %s", k, failure.reason)
            dropped += 1
            continue
        if np.abs(result.forces).max() > MAX_FORCE:
            dropped += 1
            continue
        atoms = atoms.copy()
        atoms.info["REF_energy"] = result.energy
        atoms.arrays["REF_forces"] = result.forces
        labelled.append(atoms)
        if (k + 1) % 500 == 0:
            logger.info("labelled %d/%d", k + 1, len(structures))
    return labelled, dropped


def _validation_errors(log_dir: Path) -> dict:
    """Final validation errors that mace_run_train printed (per-atom energy and force MAE)."""
    pattern = re.compile(r"Epoch (\d+):.*MAE_E_per_atom=\s*([\d.]+) meV, MAE_F=\s*([\d.]+) meV")
    best = {}
    for log in sorted(log_dir.glob("*.log")):
        for match in pattern.finditer(log.read_text()):
            best = {"epoch": int(match[1]), "valid_energy_mae_mev_per_atom": float(match[2]),
                    "valid_force_mae_mev_per_a": float(match[3])}
    return best


@flow(name="pretrain", log_prints=True)
def pretrain(
    out_dir: str = "tangentlab/data",
    name: str = "tangentlab-hcno-xtb",
    n_structures: int = 4000,
    seed: int = 2026,
    max_atoms: int = 12,
    epochs: int = 30,
    work_dir: str = "pretrain",
    device: str = "cpu",
) -> dict:
    """Generate, label and train; return the provenance record (also written as JSON)."""
    logger = get_run_logger()
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    seconds = {}
    start = time.perf_counter()
    structures = generate_structures(n_structures, seed=seed, max_atoms=max_atoms)
    labelled, dropped = label_structures(structures, str(work / "qm"))
    seconds["label"] = time.perf_counter() - start
    logger.info("%d structures labelled, %d dropped", len(labelled), dropped)
    train_file = write_training_file(labelled, work / "train.extxyz")
    hyper = PretrainHyperparameters(max_num_epochs=epochs)
    start = time.perf_counter()
    model = train_from_scratch(train_file, "average", work / "mace", name=name, hyper=hyper, device=device)
    seconds["train"] = time.perf_counter() - start
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(model, out / f"{name}.model")
    digest = hashlib.sha256((out / f"{name}.model").read_bytes()).hexdigest()
    record = provenance(
        recipe={"generator": "tangentlab.pretrain_data.generate_structures", "n_structures": n_structures,
                "seed": seed, "max_atoms": max_atoms, "max_force_eV_per_A": MAX_FORCE, "dropped": dropped,
                "multiplicity": "lowest consistent with the electron count", "charge": 0},
        n_structures=len(labelled), e0s="average (least squares on the training set, by mace_run_train)",
        hyper=hyper, metrics=_validation_errors(work / "mace" / "logs"), model_sha256=digest, seconds=seconds,
    )
    (out / f"{name}.json").write_text(json.dumps(record, indent=2))
    logger.info("wrote %s (sha256 %s)", out / f"{name}.model", digest)
    return record



SURFACE_MAX_FORCE = 20.0  # eV/Å: EMT frames beyond this (adsorbate collisions) are dropped
SURFACE_HYPER = {"r_max": 4.0, "max_num_epochs": 6, "patience": 3, "batch_size": 8}


@task(name="label surface structures with EMT", cache_policy=NO_CACHE)
def label_surface_structures(structures: list) -> tuple[list, int]:
    """EMT energies and raw forces (every atom, fixed ones too) from ASE's EMT calculator, the
    one quacc's `emt` recipe runs (called directly: a quacc job directory per structure costs
    ~20 times the EMT evaluation); structures with a force above ``SURFACE_MAX_FORCE`` are
    dropped and counted."""
    from ase.calculators.emt import EMT

    labelled, dropped = [], 0
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces(apply_constraint=False)
        atoms.calc = None
        if np.abs(forces).max() > SURFACE_MAX_FORCE:
            dropped += 1
            continue
        atoms.info["REF_energy"] = float(energy)
        atoms.arrays["REF_forces"] = forces
        labelled.append(atoms)
    return labelled, dropped


@flow(name="pretrain-surface", log_prints=True)
def pretrain_surface(
    out_dir: str = "tangentlab/data",
    name: str = "tangentlab-cuoh-emt",
    n_structures: int = 600,
    seed: int = 2026,
    epochs: int = 6,
    work_dir: str = "pretrain-surface",
    device: str = "cpu",
) -> dict:
    """EMT MD frames of Cu(111) with O/H/OH, EMT labels, a small MACE trained from scratch;
    return the provenance record (also written as ``<out_dir>/<name>.json``)."""
    logger = get_run_logger()
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    seconds = {}
    start = time.perf_counter()
    structures = generate_surface_structures(n_structures, seed=seed, frames_per_run=20,
                                             sample_every=5)
    seconds["md"] = time.perf_counter() - start
    start = time.perf_counter()
    labelled, dropped = label_surface_structures(structures)
    seconds["label"] = time.perf_counter() - start
    logger.info("%d structures labelled, %d dropped", len(labelled), dropped)
    train_file = write_training_file(labelled, work / "train.extxyz")
    hyper = PretrainHyperparameters(**{**SURFACE_HYPER, "max_num_epochs": epochs})
    start = time.perf_counter()
    model = train_from_scratch(train_file, "average", work / "mace", name=name, hyper=hyper,
                               device=device)
    seconds["train"] = time.perf_counter() - start
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(model, out / f"{name}.model")
    digest = hashlib.sha256((out / f"{name}.model").read_bytes()).hexdigest()
    record = provenance(
        recipe={"generator": "tangentlab.pretrain_surface.generate_surface_structures",
                "n_structures": n_structures, "seed": seed, "frames_per_run": 20, "sample_every": 5,
                "temperatures_K": [300, 600, 900, 1200], "max_force_eV_per_A": SURFACE_MAX_FORCE,
                "dropped": dropped,
                "slab": "Cu(111) 3x3, 3 layers, bottom layer FixAtoms, 6 Å vacuum",
                "adsorbates": "0-3 of O, H, OH on fcc/hcp/bridge/top sites"},
        n_structures=len(labelled),
        e0s="average (least squares on the training set, by mace_run_train)",
        hyper=hyper, metrics=_validation_errors(work / "mace" / "logs"), model_sha256=digest,
        seconds=seconds,
        level_of_theory={"method": "EMT", "code": "ase", "via": "ase.calculators.emt.EMT, "
                         "the calculator of quacc's emt static_job"},
    )
    (out / f"{name}.json").write_text(json.dumps(record, indent=2))
    logger.info("wrote %s (sha256 %s)", out / f"{name}.model", digest)
    return record

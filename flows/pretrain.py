"""Pretraining flow: build a data set and train one of the shipped starting MACE models.

    tangentlab pretrain --out tangentlab/data --structures 4000 --epochs 30
    tangentlab pretrain --recipe surface --out tangentlab/data --structures 600 --epochs 6

One flow, ``pretrain``, takes a recipe from :data:`RECIPES`: ``molecules`` is the H/C/N/O
model on GFN2-xTB labels (:mod:`tangentlab.pretrain_data`), ``surface`` the periodic Cu/O/H
one on EMT labels of Cu(111) slab MD frames (:mod:`tangentlab.pretrain_surface`).

Steps: draw structures, label each (failures and violent structures are dropped and counted),
train a small MACE from scratch with ``mace_run_train`` and write ``<name>.model`` plus
``<name>.json`` (the provenance record: data recipe, size, seed, hyperparameters, validation
errors, sha256).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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


SURFACE_MAX_FORCE = 20.0  # eV/Å: EMT frames beyond this (adsorbate collisions) are dropped
SURFACE_HYPER = {"r_max": 4.0, "patience": 3, "batch_size": 8}


@task(name="label surface structures with EMT", cache_policy=NO_CACHE)
def label_surface_structures(structures: list, results_dir: str) -> tuple[list, int]:
    """EMT energies and raw forces (every atom, fixed ones too) from ASE's EMT calculator, the
    one quacc's `emt` recipe runs (called directly: a quacc job directory per structure costs
    ~20 times the EMT evaluation, so ``results_dir`` stays unused); structures with a force
    above ``SURFACE_MAX_FORCE`` are dropped and counted."""
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


@dataclass(frozen=True)
class Recipe:
    """What a pretraining recipe decides: structures, their labeller, defaults, provenance."""

    name: str  # the model's file name (without .model)
    n_structures: int
    epochs: int
    work_dir: str
    generate: Callable[[int, int], list]  # (n_structures, seed) -> structures
    label: Callable[[list, str], tuple[list, int]]  # (structures, results_dir) -> (labelled, dropped)
    describe: Callable[[int, int, int], dict]  # (n_structures, seed, dropped) -> data recipe record
    hyper: dict = field(default_factory=dict)  # PretrainHyperparameters overrides
    level_of_theory: dict | None = None  # None: GFN2-xTB through quacc's tblite job


RECIPES: dict[str, Recipe] = {
    "molecules": Recipe(
        name="tangentlab-hcno-xtb", n_structures=4000, epochs=30, work_dir="pretrain",
        generate=lambda n, seed: generate_structures(n, seed=seed, max_atoms=12),
        label=label_structures,
        describe=lambda n, seed, dropped: {
            "generator": "tangentlab.pretrain_data.generate_structures", "n_structures": n,
            "seed": seed, "max_atoms": 12, "max_force_eV_per_A": MAX_FORCE, "dropped": dropped,
            "multiplicity": "lowest consistent with the electron count", "charge": 0},
    ),
    "surface": Recipe(
        name="tangentlab-cuoh-emt", n_structures=600, epochs=6, work_dir="pretrain-surface",
        generate=lambda n, seed: generate_surface_structures(n, seed=seed, frames_per_run=20,
                                                             sample_every=5),
        label=label_surface_structures,
        describe=lambda n, seed, dropped: {
            "generator": "tangentlab.pretrain_surface.generate_surface_structures",
            "n_structures": n, "seed": seed, "frames_per_run": 20, "sample_every": 5,
            "temperatures_K": [300, 600, 900, 1200], "max_force_eV_per_A": SURFACE_MAX_FORCE,
            "dropped": dropped, "slab": "Cu(111) 3x3, 3 layers, bottom layer FixAtoms, 6 Å vacuum",
            "adsorbates": "0-3 of O, H, OH on fcc/hcp/bridge/top sites"},
        hyper=SURFACE_HYPER,
        level_of_theory={"method": "EMT", "code": "ase", "via": "ase.calculators.emt.EMT, "
                         "the calculator of quacc's emt static_job"},
    ),
}


@flow(name="pretrain", log_prints=True)
def pretrain(
    recipe: str = "molecules",
    out_dir: str = "tangentlab/data",
    n_structures: int | None = None,
    seed: int = 2026,
    epochs: int | None = None,
    work_dir: str | None = None,
    device: str = "cpu",
) -> dict:
    """Generate, label and train with one of :data:`RECIPES` (``None`` takes the recipe's
    default); return the provenance record (also written as ``<out_dir>/<name>.json``)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown pretraining recipe {recipe!r}; choose from {sorted(RECIPES)}")
    logger, chosen = get_run_logger(), RECIPES[recipe]
    n_structures = n_structures or chosen.n_structures
    work = Path(work_dir or chosen.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    seconds, start = {}, time.perf_counter()
    structures = chosen.generate(n_structures, seed)
    seconds["generate"], start = time.perf_counter() - start, time.perf_counter()
    labelled, dropped = chosen.label(structures, str(work / "qm"))
    seconds["label"], start = time.perf_counter() - start, time.perf_counter()
    logger.info("%d structures labelled, %d dropped", len(labelled), dropped)
    hyper = PretrainHyperparameters(**{**chosen.hyper, "max_num_epochs": epochs or chosen.epochs})
    model = train_from_scratch(write_training_file(labelled, work / "train.extxyz"), "average",
                               work / "mace", name=chosen.name, hyper=hyper, device=device)
    seconds["train"] = time.perf_counter() - start
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(model, out / f"{chosen.name}.model")
    digest = hashlib.sha256((out / f"{chosen.name}.model").read_bytes()).hexdigest()
    record = provenance(
        recipe=chosen.describe(n_structures, seed, dropped), n_structures=len(labelled),
        e0s="average (least squares on the training set, by mace_run_train)", hyper=hyper,
        metrics=_validation_errors(work / "mace" / "logs"), model_sha256=digest, seconds=seconds,
        level_of_theory=chosen.level_of_theory,
    )
    (out / f"{chosen.name}.json").write_text(json.dumps(record, indent=2))
    logger.info("wrote %s (sha256 %s)", out / f"{chosen.name}.model", digest)
    return record

"""Train the small H/C/N/O MACE that ships with tangentlab (from scratch, on GFN2-xTB labels).

Training runs MACE's own ``mace_run_train`` in a subprocess: it is MACE's reference training
loop, and the subprocess keeps its global settings (torch default dtype, logging) out of ours.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms


@dataclass
class PretrainHyperparameters:
    """Architecture and optimiser settings of the shipped model (see docs/pretraining.md)."""

    r_max: float = 5.0
    num_channels: int = 32
    max_L: int = 0
    correlation: int = 3
    num_interactions: int = 2
    batch_size: int = 32
    lr: float = 0.01
    max_num_epochs: int = 30
    patience: int = 10
    energy_weight: float = 10.0
    forces_weight: float = 100.0
    ema_decay: float = 0.99
    valid_fraction: float = 0.1
    default_dtype: str = "float32"
    seed: int = 0


def write_training_file(atoms_list: list[Atoms], path: str | Path) -> Path:
    """Write labelled structures with ``REF_energy``/``REF_forces`` keys for ``mace_run_train``."""
    path = Path(path)
    out = []
    for atoms in atoms_list:
        energy = atoms.info.get("REF_energy", atoms.info.get("energy"))
        forces = atoms.arrays.get("REF_forces", atoms.arrays.get("forces"))
        if energy is None or forces is None:
            raise ValueError("every training structure needs an energy and forces")
        a = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        a.info = {"REF_energy": float(energy), "config_type": atoms.info.get("config_type", "Default")}
        a.arrays["REF_forces"] = np.asarray(forces, dtype=float)
        out.append(a)
    ase.io.write(path, out, format="extxyz")
    return path


def train_from_scratch(
    train_file: str | Path,
    e0s: dict[int, float] | str,
    work_dir: str | Path,
    *,
    name: str = "tangentlab-hcno-xtb",
    hyper: PretrainHyperparameters | None = None,
    device: str = "cpu",
    restart: bool = False,
) -> Path:
    """Train a ScaleShiftMACE from scratch with ``mace_run_train`` and return the ``.model`` path.

    Parameters
    ----------
    train_file
        extxyz file with ``REF_energy`` and ``REF_forces``.
    e0s
        Reference energies (eV) by atomic number, or ``"average"`` for MACE's least-squares
        fit on the training set.
    work_dir
        Folder for MACE's logs, checkpoints and the final model.
    name
        Model name (file ``<work_dir>/<name>.model``).
    hyper
        Architecture and optimiser settings.
    device
        ``cpu`` or ``cuda``.
    restart
        Continue from the latest checkpoint in ``work_dir`` (e.g. with more epochs).
    """
    hyper = hyper or PretrainHyperparameters()
    work_dir = Path(work_dir).resolve()
    train_file = Path(train_file).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    mace_run_train = shutil.which("mace_run_train") or str(Path(sys.executable).parent / "mace_run_train")
    cmd = [
        mace_run_train,
        f"--name={name}",
        f"--work_dir={work_dir}",
        f"--train_file={train_file}",
        f"--valid_fraction={hyper.valid_fraction}",
        f"--E0s={e0s if isinstance(e0s, str) else {int(z): float(e) for z, e in e0s.items()} }",
        "--model=MACE",
        f"--r_max={hyper.r_max}",
        f"--num_channels={hyper.num_channels}",
        f"--max_L={hyper.max_L}",
        f"--correlation={hyper.correlation}",
        f"--num_interactions={hyper.num_interactions}",
        f"--batch_size={hyper.batch_size}",
        f"--valid_batch_size={4 * hyper.batch_size}",
        f"--lr={hyper.lr}",
        f"--max_num_epochs={hyper.max_num_epochs}",
        f"--patience={hyper.patience}",
        f"--energy_weight={hyper.energy_weight}",
        f"--forces_weight={hyper.forces_weight}",
        "--ema",
        f"--ema_decay={hyper.ema_decay}",
        "--amsgrad",
        "--scaling=rms_forces_scaling",
        f"--default_dtype={hyper.default_dtype}",
        f"--device={device}",
        f"--seed={hyper.seed}",
        "--energy_key=REF_energy",
        "--forces_key=REF_forces",
        "--error_table=PerAtomMAE",
        "--save_cpu",
        *(["--restart_latest"] if restart else []),
    ]
    subprocess.run(cmd, check=True, cwd=work_dir)
    model = work_dir / f"{name}.model"
    if not model.exists():
        raise FileNotFoundError(f"mace_run_train finished without writing {model}")
    return model


def provenance(
    *,
    recipe: dict,
    n_structures: int,
    e0s: dict[int, float] | str,
    hyper: PretrainHyperparameters,
    metrics: dict,
    model_sha256: str,
    seconds: dict,
    level_of_theory: dict | None = None,
) -> dict:
    """The provenance record committed next to the shipped model (GFN2-xTB labels unless
    ``level_of_theory`` says otherwise)."""
    return {
        "data_recipe": recipe,
        "n_structures": n_structures,
        "level_of_theory": level_of_theory
        or {"method": "GFN2-xTB", "code": "tblite", "via": "quacc tblite static_job"},
        "e0s_eV": e0s if isinstance(e0s, str) else {str(z): e for z, e in e0s.items()},
        "hyperparameters": asdict(hyper),
        "metrics": metrics,
        "model_sha256": model_sha256,
        "seconds": seconds,
    }

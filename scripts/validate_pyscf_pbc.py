"""Validate the periodic PySCF oracle (`pyscf-pbc`) against GPAW on small cells and a slab.

Each structure is labelled through the oracle (PBE, GTH pseudopotentials, one basis per run)
and by GPAW (PBE, PAW, plane waves) at the same k-point mesh; the script writes energies of
each rattled structure relative to its ideal one, forces, finite-difference checks of the
oracle's forces, and the cost (wall time, peak memory) of every label. GPAW runs in a
separate interpreter (``--gpaw-python``, e.g. Debian's ``/usr/bin/python3`` with the ``gpaw``
and ``gpaw-data`` packages), since it is not a dependency of tangentlab.

    OMP_NUM_THREADS=1 python scripts/validate_pyscf_pbc.py \
        --out docs/reference/qm_validation_pbc.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms
from ase.build import bulk

from tangentlab.oracles.pyscf_pbc import pyscf_pbc_static

GPAW_SIDE = """
import json, sys, time, resource
import ase.io
from gpaw import GPAW, PW
out = []
for k, atoms in enumerate(ase.io.read(sys.argv[1], ":")):
    atoms.pbc = True
    atoms.calc = GPAW(mode=PW(float(sys.argv[3])), xc="PBE", kpts=(1, 1, 1), symmetry="off",
                      txt=None, occupations={"name": "fermi-dirac", "width": 0.01},
                      convergence={"energy": 1e-6, "forces": 1e-4})
    start = time.perf_counter()
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    out.append({"energy": energy, "forces": forces.tolist(), "wall_s": time.perf_counter() - start,
                "maxrss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    print(atoms.get_chemical_formula(), energy, out[-1]["wall_s"], file=sys.stderr, flush=True)
json.dump(out, open(sys.argv[2], "w"))
"""


def graphane(a: float = 2.54, vacuum_c: float = 8.0) -> Atoms:
    """A 1x1 cell of graphane (C2H2, chair): a 2D sheet periodic in x, y with vacuum in z."""
    cell = [[a, 0, 0], [-a / 2, a * np.sqrt(3) / 2, 0], [0, 0, vacuum_c]]
    frac = np.array([[1 / 3, 2 / 3], [2 / 3, 1 / 3]])
    xy = frac @ np.array(cell)[:2, :2]
    z0, dz, ch = vacuum_c / 2, 0.23, 1.10
    positions = [
        [*xy[0], z0 + dz],
        [*xy[1], z0 - dz],
        [*xy[0], z0 + dz + ch],
        [*xy[1], z0 - dz - ch],
    ]
    return Atoms("C2H2", positions=positions, cell=cell, pbc=[True, True, False])


def structures() -> list[tuple[str, Atoms]]:
    """(name, ideal structure): a covalent bulk cell, an ionic one and a 2D slab."""
    return [
        ("Si2 diamond (bulk)", bulk("Si", "diamond", a=5.43)),
        ("LiH rocksalt (bulk)", bulk("LiH", "rocksalt", a=4.0)),
        ("C2H2 graphane (slab, 8 Å cell)", graphane()),
    ]


def rattled(atoms: Atoms, seed: int) -> Atoms:
    out = atoms.copy()
    out.rattle(0.05, seed=seed)
    return out


def label(atoms: Atoms, basis: str, ke_cutoff: float, workdir: Path) -> dict:
    result = pyscf_pbc_static(
        atoms, basis=basis, ke_cutoff=ke_cutoff, num_threads=1, results_dir=workdir
    )
    return {
        "energy": result.energy,
        "forces": result.forces.tolist(),
        "wall_s": result.wall_time,
        "maxrss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def finite_difference(
    atoms: Atoms, forces: np.ndarray, basis: str, ke_cutoff: float, workdir: Path, h: float = 0.005
) -> dict:
    """Central difference of the oracle's energy along atom 0's largest force component."""
    axis = int(np.abs(forces[0]).argmax())
    energies = []
    for sign in (1, -1):
        moved = atoms.copy()
        moved.positions[0, axis] += sign * h
        energies.append(label(moved, basis, ke_cutoff, workdir)["energy"])
    return {
        "atom": 0,
        "axis": axis,
        "h_A": h,
        "analytic_eV_per_A": float(forces[0, axis]),
        "finite_difference_eV_per_A": float(-(energies[0] - energies[1]) / (2 * h)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["gth-szv"])
    parser.add_argument("--ke-cutoff", type=float, default=50.0, help="Hartree")
    parser.add_argument("--gpaw-python", default="/usr/bin/python3")
    parser.add_argument("--gpaw-ecut", type=float, default=500.0, help="eV")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pbc-validation-"))
    cells = [
        (name, ideal, rattled(ideal, seed=k + 1)) for k, (name, ideal) in enumerate(structures())
    ]
    flat = [a for _, ideal, moved in cells for a in (ideal, moved)]
    ase.io.write(work / "structures.extxyz", flat)
    gpaw_json = work / "gpaw.json"
    gpaw = subprocess.Popen(
        [
            args.gpaw_python,
            "-c",
            GPAW_SIDE,
            str(work / "structures.extxyz"),
            str(gpaw_json),
            str(args.gpaw_ecut),
        ]
    )
    report = {
        "command": "python " + " ".join(sys.argv),
        "ke_cutoff_Ha": args.ke_cutoff,
        "gpaw": {
            "mode": f"PW({args.gpaw_ecut:g} eV)",
            "xc": "PBE",
            "kpts": [1, 1, 1],
            "setups": "Debian gpaw-data",
        },
        "pyscf": {"xc": "pbe", "pseudo": "gth-pbe", "kpts": [1, 1, 1]},
        "machine": {
            "platform": platform.platform(),
            "cpu_threads": 1,
            "note": "2 shared cores; other jobs ran at the same time",
        },
        "structures": [],
    }
    for name, ideal, moved in cells:
        entry = {
            "name": name,
            "formula": ideal.get_chemical_formula(),
            "atoms": len(ideal),
            "pbc": ideal.pbc.tolist(),
            "cell": ideal.cell.array.round(4).tolist(),
            "rattled_positions": moved.positions.round(5).tolist(),
            "pyscf": {},
        }
        for basis in args.bases:
            ideal_label = label(ideal, basis, args.ke_cutoff, work)
            moved_label = label(moved, basis, args.ke_cutoff, work)
            entry["pyscf"][basis] = {"ideal": ideal_label, "rattled": moved_label}
            print(
                name,
                basis,
                moved_label["energy"],
                moved_label["wall_s"],
                file=sys.stderr,
                flush=True,
            )
        report["structures"].append(entry)
    name, _, moved = cells[1]
    forces = np.asarray(report["structures"][1]["pyscf"][args.bases[0]]["rattled"]["forces"])
    report["finite_difference"] = {
        "structure": name,
        "basis": args.bases[0],
        **finite_difference(moved, forces, args.bases[0], args.ke_cutoff, work),
    }
    if gpaw.wait() == 0:
        results = json.loads(gpaw_json.read_text())
        for k, entry in enumerate(report["structures"]):
            entry["gpaw"] = {"ideal": results[2 * k], "rattled": results[2 * k + 1]}
    summarise(report)
    args.out.write_text(json.dumps(report, indent=1) + "\n")


def summarise(report: dict) -> None:
    """Add, per structure and basis: ΔE (rattled - ideal) and force errors against GPAW."""
    for entry in report["structures"]:
        if "gpaw" not in entry:
            continue
        g_ideal, g_moved = entry["gpaw"]["ideal"], entry["gpaw"]["rattled"]
        g_delta = g_moved["energy"] - g_ideal["energy"]
        g_forces = np.asarray(g_moved["forces"])
        entry["summary"] = {"gpaw_delta_E_meV": 1000 * g_delta}
        for basis, labels in entry["pyscf"].items():
            delta = labels["rattled"]["energy"] - labels["ideal"]["energy"]
            diff = np.asarray(labels["rattled"]["forces"]) - g_forces
            entry["summary"][basis] = {
                "delta_E_meV": 1000 * delta,
                "delta_E_error_meV": 1000 * (delta - g_delta),
                "force_mae_meV_per_A": 1000 * float(np.abs(diff).mean()),
                "force_max_error_meV_per_A": 1000 * float(np.abs(diff).max()),
                "gpaw_force_mean_abs_meV_per_A": 1000 * float(np.abs(g_forces).mean()),
                "wall_s_rattled": labels["rattled"]["wall_s"],
            }


if __name__ == "__main__":
    main()

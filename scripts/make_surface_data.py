"""Cu(111) + O/H/OH slab frames for the periodic example and the periodic benchmark.

Frames are EMT Langevin MD snapshots (:mod:`tangentlab.pretrain_surface`), from seeds that the
shipped starting model (``tangentlab-cuoh-emt``, seed 2026) never saw::

    # the example's unlabelled pool (300, 500, 700 K) and hotter test frames (900 K)
    python scripts/make_surface_data.py example --out examples/surface

    # the benchmark's data, labelled once with periodic GFN1-xTB (tblite), ~10 min on an idle core
    python scripts/make_surface_data.py benchmark --out "$TANGENTLAB_DATA/surface"

The benchmark files are ``md<T>K_pool.extxyz`` (48 frames) and ``md<T>K_test.extxyz`` (12)
for T = 300, 600 and 900 K (pool and test frames from different MD runs, so different
adsorbate configurations; the pool-shift split's 300 K pool and 900 K test are labelled
first, and a rerun labels only the files that are missing), each frame with its GFN1-xTB
energy and raw forces on every atom (the fixed bottom layer too), cell, pbc and ``FixAtoms``
(``move_mask``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ase.io
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator

from tangentlab.pretrain_surface import generate_surface_structures

EXAMPLE = {"pool": ((300, 500, 700), 120, 11), "test_900K": ((900,), 24, 12)}
BENCHMARK_SIZES = {"pool": 48, "test": 12}
BENCHMARK_SEEDS = {"pool": 21, "test": 22}
#: Files in the order they are labelled: the pool-shift split's two first.
BENCHMARK_FILES = (("pool", 300), ("test", 900), ("pool", 600), ("pool", 900), ("test", 300),
                   ("test", 600))


def frames(temperatures: tuple[int, ...], n: int, seed: int) -> list:
    """``n`` frames over ``temperatures`` (10 per MD run, 5 fs apart, after 40 fs)."""
    return generate_surface_structures(n, seed=seed, temperatures_K=temperatures, frames_per_run=10,
                                       sample_every=5)


def gfn1_label(atoms_list: list) -> tuple[list, list[float]]:
    """GFN1-xTB (tblite, periodic) energy and raw forces of each frame, as the ``xtb`` oracle
    computes them (same calculator, without a quacc job directory per frame)."""
    from tblite.ase import TBLite

    out, seconds = [], []
    for atoms in atoms_list:
        work = atoms.copy()
        work.calc = TBLite(method="GFN1-xTB", verbosity=0)
        start = time.perf_counter()
        energy = work.get_potential_energy()
        forces = work.get_forces(apply_constraint=False)
        seconds.append(time.perf_counter() - start)
        work.calc = SinglePointCalculator(work, energy=energy, forces=forces)
        out.append(work)
    return out, seconds


def main(argv: list[str] | None = None) -> None:
    """Write the example's or the benchmark's files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["example", "benchmark"])
    parser.add_argument("--out", required=True, help="folder to write into")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.what == "example":
        for name, (temperatures, n, seed) in EXAMPLE.items():
            ase.io.write(out / f"{name}.extxyz", frames(temperatures, n, seed), format="extxyz")
            print(f"wrote {n} frames to {out / f'{name}.extxyz'}")
        return
    record_path = out / "labels.json"
    record = (json.loads(record_path.read_text()) if record_path.is_file()
              else {"level_of_theory": {"method": "GFN1-xTB", "code": "tblite"}, "files": {}})
    for split, temperature in BENCHMARK_FILES:
        path = out / f"md{temperature}K_{split}.extxyz"
        if path.is_file():
            print(f"{path} exists: kept")
            continue
        n = BENCHMARK_SIZES[split]
        seed = BENCHMARK_SEEDS[split] * 10000 + temperature
        labelled, seconds = gfn1_label(frames((temperature,), n, seed))
        ase.io.write(path, labelled, format="extxyz")
        record["files"][path.name] = {"frames": n, "label_s_median": float(np.median(seconds)),
                                      "label_s_total": float(np.sum(seconds))}
        print(f"wrote {n} GFN1-xTB-labelled frames to {path} ({np.sum(seconds):.0f} s)",
              flush=True)
        record_path.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()

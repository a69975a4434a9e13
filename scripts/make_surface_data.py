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
(``move_mask``). A frame whose SCF does not converge is retried with more iterations and gentler
mixing; one that never converges is replaced by the next MD frame, and ``labels.json`` notes
both (``scf_notes``).
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


#: SCF settings tried in turn for a frame (same level of theory: only the convergence aids
#: change): tblite's defaults, then more iterations with gentler Broyden mixing.
SCF_ATTEMPTS = ({}, {"max_iterations": 1000, "mixer_damping": 0.1})
#: Extra MD frames drawn per file to replace frames whose SCF never converges.
SPARE_FRAMES = 10


def gfn1_label(atoms_list: list, n: int | None = None) -> tuple[list, list[float], list[dict]]:
    """GFN1-xTB (tblite, periodic) energy and raw forces of the first ``n`` frames that converge,
    as the ``xtb`` oracle computes them (same calculator, without a quacc job directory per frame).

    A frame whose SCF does not converge with tblite's defaults is retried with the settings of
    `SCF_ATTEMPTS`; a frame that never converges is skipped (the next frame takes its place).
    Returns the labelled frames, the seconds of each label and one note per retried or
    skipped frame."""
    from ase.calculators.calculator import CalculationFailed
    from tblite.ase import TBLite

    n = len(atoms_list) if n is None else n
    out, seconds, notes = [], [], []
    for index, atoms in enumerate(atoms_list):
        if len(out) == n:
            break
        work = atoms.copy()
        start = time.perf_counter()
        for settings in SCF_ATTEMPTS:
            work.calc = TBLite(method="GFN1-xTB", verbosity=0, **settings)
            try:
                energy = work.get_potential_energy()
                forces = work.get_forces(apply_constraint=False)
                break
            except CalculationFailed as exc:
                problem = str(exc)
        else:
            notes.append({"frame": index, "skipped": problem})
            print(f"frame {index}: skipped ({problem})", flush=True)
            continue
        if settings:
            notes.append({"frame": index, "scf": settings})
            print(f"frame {index}: converged with {settings}", flush=True)
        seconds.append(time.perf_counter() - start)
        work.calc = SinglePointCalculator(work, energy=energy, forces=forces)
        out.append(work)
    if len(out) < n:
        raise RuntimeError(f"only {len(out)} of {n} frames converged: {notes}")
    return out, seconds, notes


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
        labelled, seconds, notes = gfn1_label(frames((temperature,), n + SPARE_FRAMES, seed), n)
        ase.io.write(path, labelled, format="extxyz")
        record["files"][path.name] = {"frames": n, "label_s_median": float(np.median(seconds)),
                                      "label_s_total": float(np.sum(seconds)),
                                      "scf_notes": notes}
        print(f"wrote {n} GFN1-xTB-labelled frames to {path} ({np.sum(seconds):.0f} s)",
              flush=True)
        record_path.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()

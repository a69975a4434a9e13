"""Foundation-sized starting models through the product: load, features, one round, evaluate.

For each shape of `benchmarks.model_shapes` (MACE-MP-0 small and medium, MACE-OFF23 small;
random weights built with mace's own constructors) it runs what a campaign does with a
starting model, timing each step on the CPU:

1. write the model as MACE's training does (a pickled ``.model``) and convert it with
   `tangentlab.model_files.starting_weights` (what ``tangentlab import`` and a campaign's
   start do), then load the weights-only file;
2. activation rows, energy NTK rows (``ntk``, d 256) and energy-force NTK rows
   (``energy_force_ntk``, d 64, 2 force probes) of the labelled structures, through
   `tangentlab.acquisition.signals.make_featurizer`;
3. one fine-tuning round (`tangentlab.finetune.finetune`, ``--epochs`` epochs) on EMT labels;
4. the energy and force errors of the fine-tuned model on held-out EMT labels.

Structures: small Cu(111) slabs with O and H (13 atoms, periodic) for the MACE-MP-0 shapes,
rattled G2 molecules (H, C, N, O) for MACE-OFF23. Memory: the process's peak RSS after each
step, and the sizes the NTK rows need by construction (the sketch S, d x P float64, is kept
only below 1 GiB and regenerated block by block above; per-sample gradients, B x P).

Example::

    OMP_NUM_THREADS=1 python -m benchmarks.foundation_models --threads 1 \\
        --out docs/benchmarks/foundation-models.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

with contextlib.redirect_stdout(sys.stderr):
    import mace  # noqa: F401  (mace must be imported before e3nn)
    import torch
    from ase.build import add_adsorbate, fcc111, molecule
    from ase.calculators.emt import EMT

    from benchmarks.force_ntk_cost import commit, machine_info
    from benchmarks.model_shapes import SHAPES, write_shape
    from tangentlab.acquisition.signals import make_featurizer
    from tangentlab.finetune import FineTuneHyperparameters, finetune
    from tangentlab.mace_model import load_model, predict
    from tangentlab.metrics import error_metrics
    from tangentlab.model_files import starting_weights

MOLECULES = ("CH4", "H2O", "NH3", "CH3OH", "C2H6", "HCN", "H2CO", "CH3NH2", "C2H4", "CO2")


def labelled(structures):
    """EMT energies and forces stored on the structures."""
    for atoms in structures:
        atoms.calc = EMT()
        atoms.info["energy"] = float(atoms.get_potential_energy())
        atoms.arrays["forces"] = atoms.get_forces().copy()
        atoms.calc = None
    return structures


def slabs(count: int, seed: int) -> list:
    """2x2x3 Cu(111) slabs with an O and an H at random places, rattled 0.05 Å."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0, periodic=True)
        for symbol, height in (("O", 1.3), ("H", 1.0)):
            x, y = rng.uniform(0, 1, size=2) @ slab.cell.array[:2, :2]
            add_adsorbate(slab, symbol, height, position=(x, y))
        slab.positions += rng.normal(scale=0.05, size=slab.positions.shape)
        out.append(slab)
    return labelled(out)


def molecules(count: int, seed: int) -> list:
    """Rattled G2 molecules (0.05 Å)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        atoms = molecule(MOLECULES[i % len(MOLECULES)])
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        out.append(atoms)
    return labelled(out)


def peak_rss_mib() -> float:
    """The process's peak resident memory so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_shape(shape: str, args, work: Path) -> dict:
    """All steps for one shape."""
    record: dict = {"shape": SHAPES[shape] | {"elements": len(SHAPES[shape]["elements"])}}
    make = slabs if shape.startswith("mace-mp") else molecules
    train, test = make(args.train, 0), make(args.test, 1)
    record["structures"] = {"train": len(train), "test": len(test),
                            "atoms": sorted({len(a) for a in train + test})}
    start = time.perf_counter()
    pickled = write_shape(shape, work / f"{shape}.model")
    weights, _ = starting_weights(pickled, work / "models")
    model = load_model(weights)
    parameters = int(sum(p.numel() for p in model.parameters()))
    record["load"] = {"seconds": time.perf_counter() - start, "parameters": parameters,
                      "model_file_mib": pickled.stat().st_size / 2**20,
                      "weights_file_mib": weights.stat().st_size / 2**20,
                      "peak_rss_mib": peak_rss_mib()}
    print(f"[{shape}] {record['load']}", file=sys.stderr, flush=True)
    features = {}
    for signal, options in (("activation", {}), ("ntk", {"sketch_dim": 256}),
                            ("energy_force_ntk", {"sketch_dim": 64, "force_probes": 2})):
        featurize = make_featurizer(model, signal, forward_batch_size=args.batch_size, **options)
        featurize(train[:1])  # warm-up
        start = time.perf_counter()
        rows, _ = featurize(train)
        seconds = time.perf_counter() - start
        features[signal] = {"seconds_per_structure": seconds / len(train),
                            "feature_dim": int(rows.shape[1]), "peak_rss_mib": peak_rss_mib()}
        if "sketch_dim" in options:
            d = options["sketch_dim"]
            features[signal]["sketch_mib"] = d * parameters * 8 / 2**20
            features[signal]["sketch_cached"] = d * parameters * 8 <= 1 << 30
            features[signal]["per_sample_gradients_mib_per_batch"] = (
                args.batch_size * parameters * 8 / 2**20)
        print(f"[{shape}] {signal}: {features[signal]}", file=sys.stderr, flush=True)
    record["features"] = features
    hyper = FineTuneHyperparameters(max_epochs=args.epochs, patience=args.epochs,
                                    batch_size=4, min_steps_per_epoch=1)
    result = finetune(weights, train, [], work / f"{shape}-round1.model", hyper=hyper)
    record["finetune"] = {"seconds": result.seconds, "epochs": result.epochs,
                          "seconds_per_epoch": result.seconds / max(result.epochs, 1),
                          "peak_rss_mib": peak_rss_mib()}
    print(f"[{shape}] finetune {record['finetune']}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    tuned = load_model(result.path)
    refs = [(a.info["energy"], a.arrays["forces"]) for a in test]
    natoms = [len(a) for a in test]
    before = error_metrics(predict(model, test), refs, natoms)
    after = error_metrics(predict(tuned, test), refs, natoms)
    record["evaluate"] = {"seconds": time.perf_counter() - start,
                          "before": before, "after": after}
    print(f"[{shape}] evaluate {record['evaluate']}", file=sys.stderr, flush=True)
    return record


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.foundation_models",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+",
                        default=["mace-off23-small", "mace-mp-0-small", "mace-mp-0-medium"],
                        choices=[s for s in SHAPES if s != "cuoh-small"])
    parser.add_argument("--train", type=int, default=8)
    parser.add_argument("--test", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8, help="structures per forward")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = {"command": "python -m benchmarks.foundation_models "
              + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": datetime.date.today().isoformat(), "commit": commit(),
              "machine": machine_info(args.threads), "models": {}}
    with tempfile.TemporaryDirectory(prefix="foundation-") as work:
        for shape in args.shapes:
            report["models"][shape] = run_shape(shape, args, Path(work))
    text = json.dumps(report, indent=2, default=float)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

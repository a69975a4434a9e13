"""The fine-tuning loss's energy weight on fixed training sets: test errors per weight.

The campaign's trainer weighs the per-atom energy MSE (eV²) by ``finetune.energy_weight`` and
the force MSE (eV²/Å²) by ``finetune.forces_weight`` (10). With errors of ~20 meV/atom and
~50 meV/Å the energy term is under 2 % of the loss, and a model can get the energy *between*
reaction channels of one composition wrong by a constant per channel (which no E0 refit can
fix). This script measures what the weight does, with acquisition out of the picture: for each
seed it draws ``--labels`` random frames of a benchmark's pool (the same frames for every
weight; the campaign's train/valid split fraction), fine-tunes the benchmark's starting model
on them once per energy weight, and prints the test errors, overall and per test file (the
mean signed per-atom energy error per file shows the channel offsets), as JSON.

    python -m benchmarks.finetune_weights h2-validation --weights 1 10 100 --seeds 0 1 \
        --labels 100 --threads 1 --out docs/benchmarks/finetune-weights.json

Choose on ``h2-validation`` (the decision split), never on the held-out channels.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from benchmarks.finetune_spread import fixed_setup, preset_parser, run_in_work_dir, test_errors
from tangentlab.finetune import FineTuneHyperparameters, finetune


def _errors(model_path: str, test) -> dict:
    out, predictions = test_errors(model_path, test)
    by_file: dict[str, list[float]] = {}
    for atoms, (energy, _) in zip(test, predictions, strict=True):
        by_file.setdefault(atoms.info["source_file"], []).append(
            1000 * (float(energy) - atoms.info["energy"]) / len(atoms))
    out["energy_mean_signed_mev_per_atom_by_file"] = {f: float(np.mean(v)) for f, v in sorted(by_file.items())}
    return out


def measure(name: str, data_root: str | None, weights: list[float], seeds: list[int], labels: int,
            work: Path, max_epochs: int | None = None) -> dict:
    """Test errors of fine-tunes on ``labels`` random pool frames, per seed and energy weight."""
    setup = fixed_setup(name, data_root, work, max_epochs)
    spec, pool, test, start, base = setup.spec, setup.pool, setup.test, setup.start, setup.hyper
    results: dict = {"preset": name, "labels": labels, "pool": len(pool), "test": len(test),
                     "finetune": base, "model": spec.model, "runs": []}
    for seed in seeds:
        picks = np.random.default_rng([seed, 11]).choice(len(pool), size=labels, replace=False)
        n_valid = round(spec.valid_fraction * labels)
        train = [pool[i] for i in picks[n_valid:]]
        valid = [pool[i] for i in picks[:n_valid]]
        for weight in weights:
            hyper = FineTuneHyperparameters(**{**base, "energy_weight": weight, "seed": seed})
            tick = time.perf_counter()
            result = finetune(start, train, valid, work / f"s{seed}-w{weight:g}.model", hyper=hyper)
            row = {"seed": seed, "energy_weight": weight, "seconds": time.perf_counter() - tick,
                   "best_epoch": result.best_epoch, **_errors(str(result.path), test)}
            results["runs"].append(row)
            print(json.dumps(row), flush=True)
    return results


def main(argv: list[str] | None = None) -> dict:
    """Command line: see the module docstring."""
    parser = preset_parser(__doc__)
    parser.add_argument("--weights", nargs="+", type=float, default=[1.0, 10.0, 100.0])
    parser.add_argument("--labels", type=int, default=100)
    args = parser.parse_args(argv)
    return run_in_work_dir(args.threads, args.out, lambda work: measure(
        args.preset, args.data_root, args.weights, args.seeds, args.labels, work, args.max_epochs))


if __name__ == "__main__":
    main()

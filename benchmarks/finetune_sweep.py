"""Fine-tuning hyperparameters on fixed training sets: test errors per setting.

Acquisition out of the picture: for each seed the script draws ``--labels`` random frames of a
benchmark's pool (the same frames for every setting; the campaign's train/valid split
fraction), fine-tunes the benchmark's starting model on them once per setting of the grid, and
prints the test errors, overall and per test file (the mean signed per-atom energy error per
file shows channel offsets), as JSON. The grid is the product of ``--set KEY=V1,V2,...``
options over the fields of `tangentlab.finetune.FineTuneHyperparameters` (``lr``,
``max_epochs``, ``energy_weight``, ...); ``--weights W1 W2`` is short for
``--set energy_weight=W1,W2``. A setting with ``max_epochs`` and no ``patience`` gets
``patience = max_epochs`` (a fixed training budget), like ``--max-epochs``.

The product's energy weight was chosen with it (the trainer weighs the per-atom energy MSE by
``energy_weight`` and the force MSE by ``forces_weight``; at weight 1 energies were under 2 %
of the loss), and the training budget was measured with it (docs/benchmarks/).

    python -m benchmarks.finetune_sweep h2-validation --weights 1 10 100 --seeds 0 1 \
        --labels 100 --threads 1 --out docs/benchmarks/finetune-weights.json
    python -m benchmarks.finetune_sweep h2-validation --set lr=0.002,0.01 max_epochs=30,120 \
        --seeds 0 1 --labels 100 --threads 1

Choose on ``h2-validation`` (the decision split), never on the held-out channels.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.finetune_spread import (
    by_source_file,
    fixed_budget,
    fixed_setup,
    preset_parser,
    run_in_work_dir,
    test_errors,
)
from tangentlab.finetune import FineTuneHyperparameters, finetune


def _errors(model_path: str, test) -> dict:
    out, predictions = test_errors(model_path, test)
    signed = [1000 * (float(energy) - atoms.info["energy"]) / len(atoms)
              for atoms, (energy, _) in zip(test, predictions, strict=True)]
    out["energy_mean_signed_mev_per_atom_by_file"] = {
        name: float(np.mean(rows)) for name, rows in by_source_file(test, signed).items()}
    return out


def parse_grid(settings: list[str]) -> dict[str, list]:
    """``["lr=0.002,0.01", "max_epochs=30"]`` → ``{"lr": [0.002, 0.01], "max_epochs": [30]}``,
    each value cast to the field's type; unknown fields and malformed entries are refused."""
    fields = {f.name: f.type for f in dataclasses.fields(FineTuneHyperparameters) if f.name != "seed"}
    casts = {"int": int, "float": float}  # the dataclass's annotations are strings (postponed evaluation)
    grid: dict[str, list] = {}
    for setting in settings:
        key, sep, values = setting.partition("=")
        if not sep or not values:
            raise ValueError(f"--set {setting!r}: write KEY=V1,V2,...")
        if key not in fields:
            raise ValueError(f"--set {setting!r}: {key!r} is not a fine-tuning hyperparameter; "
                             f"choose from {', '.join(fields)}")
        try:
            grid[key] = [casts[fields[key]](value) for value in values.split(",")]
        except ValueError as error:
            raise ValueError(f"--set {setting!r}: {error}") from None
    return grid


def settings_of(grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid (one empty setting for an empty grid); ``max_epochs``
    without ``patience`` means a fixed budget (``patience = max_epochs``)."""
    combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    return [{**fixed_budget(combo["max_epochs"]), **combo} if "max_epochs" in combo else combo for combo in combos]


def measure(name: str, data_root: str | None, grid: dict[str, list], seeds: list[int], labels: int,
            work: Path, max_epochs: int | None = None) -> dict:
    """Test errors of fine-tunes on ``labels`` random pool frames, per seed and setting."""
    setup = fixed_setup(name, data_root, work, max_epochs)
    spec, pool, test, start, base = setup.spec, setup.pool, setup.test, setup.start, setup.hyper
    results: dict = {"preset": name, "labels": labels, "pool": len(pool), "test": len(test),
                     "finetune": base, "grid": grid, "model": spec.model, "runs": []}
    for seed in seeds:
        picks = np.random.default_rng([seed, 11]).choice(len(pool), size=labels, replace=False)
        n_valid = round(spec.valid_fraction * labels)
        train = [pool[i] for i in picks[n_valid:]]
        valid = [pool[i] for i in picks[:n_valid]]
        for setting in settings_of(grid):
            hyper = FineTuneHyperparameters(**{**base, **setting, "seed": seed})
            tag = "-".join(f"{key}{value:g}" for key, value in setting.items())
            tick = time.perf_counter()
            result = finetune(start, train, valid, work / f"s{seed}-{tag}.model", hyper=hyper)
            row = {"seed": seed, **setting, "seconds": time.perf_counter() - tick,
                   "best_epoch": result.best_epoch, **_errors(str(result.path), test)}
            results["runs"].append(row)
            print(json.dumps(row), flush=True)
    return results


def main(argv: list[str] | None = None) -> dict:
    """Command line: see the module docstring."""
    parser = preset_parser(__doc__)
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=V1,V2",
                        help="a grid over fine-tuning hyperparameters (product of all KEYs)")
    parser.add_argument("--weights", nargs="+", type=float,
                        help="short for --set energy_weight=W1,W2,...")
    parser.add_argument("--labels", type=int, default=100)
    args = parser.parse_args(argv)
    try:
        grid = parse_grid(args.set)
    except ValueError as error:
        parser.error(str(error))
    if args.weights:
        if "energy_weight" in grid:
            parser.error("give the energy weights with --weights or --set energy_weight=..., not both")
        grid["energy_weight"] = args.weights
    return run_in_work_dir(args.threads, args.out, lambda work: measure(
        args.preset, args.data_root, grid, args.seeds, args.labels, work, args.max_epochs))


if __name__ == "__main__":
    main()

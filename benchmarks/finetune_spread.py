"""Fine-tuning noise: the spread over training seeds on one fixed training set, warm vs fresh.

A benchmark can only tell acquisition methods apart if fine-tuning itself moves the test
error less than the methods do. This script takes a finished benchmark campaign, keeps its
final training and validation labels fixed, and fine-tunes several training seeds twice:
warm-started from the model the campaign's last round started from (what a campaign does)
and fresh from the pretrained starting model. It prints the test errors per seed and their
spread as JSON.

    python -m benchmarks.finetune_spread --db URL --campaign NAME --seeds 0 1 2 --out spread.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.data import prepare_data, read_labelled
from benchmarks.paths import path_roots, portable_paths
from benchmarks.spec import DATA_VARIABLE, BenchmarkSpec, make_spec, preset
from db import campaigns, labels, make_engine, registry, session_scope
from tangentlab.config import FineTune, read_stored_config
from tangentlab.finetune import FineTuneHyperparameters, finetune
from tangentlab.mace_model import load_model, predict
from tangentlab.metrics import error_metrics
from tangentlab.model_files import starting_weights


def test_errors(model_path: str, test) -> tuple[dict[str, float], list[tuple[float, np.ndarray]]]:
    """Energy (meV/atom) and force (meV/Å) MAE of a model file on labelled structures, and
    its predictions."""
    predictions = predict(load_model(model_path), test)
    references = [(a.info["energy"], a.arrays["forces"]) for a in test]
    metrics = error_metrics(predictions, references, [len(a) for a in test])
    return {key: metrics[key] for key in ("energy_mae_mev_per_atom", "force_mae_mev_per_a")}, predictions


def by_source_file(test, rows) -> dict[str, list]:
    """``rows`` (one per test structure, in order) grouped by the structures' ``source_file``,
    files in sorted order: the per-file error breakdowns of the fixed-set scripts."""
    groups: dict[str, list] = {}
    for atoms, row in zip(test, rows, strict=True):
        groups.setdefault(atoms.info["source_file"], []).append(row)
    return dict(sorted(groups.items()))


def emit(results: dict, out: Path | None) -> dict:
    """Print the results as JSON, and write them to ``out`` too when given.

    Paths are stored relative to the data root and the repository (:mod:`benchmarks.paths`).
    """
    results = portable_paths(results, path_roots(data_root=os.environ.get(DATA_VARIABLE)))
    text = json.dumps(results, indent=1)
    if out:
        out.write_text(text)
    print(text)
    return results


def preset_parser(doc: str) -> argparse.ArgumentParser:
    """The command line the fixed-training-set scripts share: a preset, its data root, seeds,
    an epoch override, threads and an output file."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("preset", help="benchmark preset (its pool, test set, initial size, model, fine-tune)")
    parser.add_argument("--data-root", help="folder holding h2combustion/ and acac/ (default $TANGENTLAB_DATA)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--max-epochs", type=int,
                        help="instead of the preset's, with no early stop (a fixed training budget)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    return parser


@dataclass(frozen=True)
class FixedSetup:
    """What the fixed-training-set scripts fine-tune with: a preset's spec, its labelled pool
    and test structures, the starting weights and the fine-tune hyperparameters."""

    spec: BenchmarkSpec
    pool: list
    test: list
    start: Path
    hyper: dict


def fixed_budget(max_epochs: int) -> dict[str, int]:
    """A fixed training budget: ``max_epochs`` epochs with no early stop (patience = max_epochs)."""
    return {"max_epochs": max_epochs, "patience": max_epochs}


def fixed_setup(name: str, data_root: str | None, work: Path, max_epochs: int | None = None,
                check: Callable[[BenchmarkSpec], None] | None = None) -> FixedSetup:
    """The preset's data prepared in ``work``, the weights-only starting model a campaign
    makes, and the product's fine-tune defaults updated by the preset's; ``max_epochs`` sets a
    fixed training budget (no early stop). ``check(spec)`` runs before any data is prepared
    (a script's own argument checks that need the preset)."""
    spec = make_spec({**preset(name, data_root), "work_dir": str(work)})
    if check is not None:
        check(spec)
    manifest = prepare_data(spec)
    start, _ = starting_weights(spec.model, work / "models")
    hyper = FineTune(**spec.finetune).hyperparameters()  # checked; ``start`` is a campaign's, not a fine-tune's
    if max_epochs is not None:
        hyper.update(fixed_budget(max_epochs))
    return FixedSetup(spec, read_labelled(manifest["pool_file"]), read_labelled(manifest["test_file"]),
                      start, hyper)


def run_in_work_dir(threads: int, out: Path | None, measure_in) -> dict:
    """``measure_in(work)`` in a temporary folder with ``threads`` torch threads; emit its JSON."""
    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as work:
        results = measure_in(Path(work))
    return emit(results, out)


def measure(url: str, name: str, seeds: list[int], work: Path) -> dict:
    """Test errors of fine-tunes on the campaign's final labels, per start and seed."""
    with session_scope(make_engine(url)) as session:
        camp = campaigns.get_campaign(session, name)
        config = read_stored_config(camp.config)
        versions = registry.model_versions(session, camp)
        pretrained = registry.verified_model_path(session, versions[0].id)
        warm = registry.verified_model_path(session, versions[-2].id)
        train = labels.labelled_atoms(session, camp.id, ["train"])
        valid = labels.labelled_atoms(session, camp.id, ["valid"])
        test = labels.labelled_atoms(session, camp.id, ["test"])
    results: dict = {"campaign": name, "train": len(train), "valid": len(valid), "test": len(test)}
    for start, parent in (("warm", warm), ("fresh", pretrained)):
        rows = []
        for seed in seeds:
            hyper = FineTuneHyperparameters(**config.finetune.hyperparameters(), seed=seed)
            tick = time.perf_counter()
            result = finetune(parent, train, valid, work / f"{start}-{seed}.model", hyper=hyper)
            rows.append({"seed": seed, "seconds": time.perf_counter() - tick,
                         "best_epoch": result.best_epoch, **test_errors(str(result.path), test)[0]})
        forces = [r["force_mae_mev_per_a"] for r in rows]
        energies = [r["energy_mae_mev_per_atom"] for r in rows]
        results[start] = {
            "parent": parent,
            "runs": rows,
            "force_mean": float(np.mean(forces)), "force_std": float(np.std(forces, ddof=1)),
            "energy_mean": float(np.mean(energies)), "energy_std": float(np.std(energies, ddof=1)),
        }
    return results


def main(argv: list[str] | None = None) -> dict:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="the benchmark's database URL")
    parser.add_argument("--campaign", required=True, help="a finished campaign of that benchmark")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work:
        results = measure(args.db, args.campaign, args.seeds, Path(work))
    return emit(results, args.out)


if __name__ == "__main__":
    main()

"""Throughput and memory of the acquisition engine, against the obvious implementations.

Prints one JSON document (``--json``) or a short table. Not a test: numbers depend on the
machine. Example (see ``docs/reference/performance.md`` for measured runs)::

    tangentlab benchmark acquisition --json --model MODEL \\
        --replicate acac/train_300K.xyz --pool-size 10000 --signals activation ntk

For each signal it streams a pool through `tangentlab.acquisition.select_batch` and
reports structures per second for the features and for the scoring, the selection time,
and peak memory (the process's maximum resident set size, which only grows over a run;
with ``--tracemalloc`` the ``tracemalloc`` peak, which sees NumPy buffers but halves the
throughput of Python-heavy code; ``torch.cuda.max_memory_allocated`` on a GPU). On a
subset of the pool it also times the obvious implementations (a per-structure
``autograd.grad`` loop for NTK rows; a materialised candidate kernel for greedy selection)
and reports the speed-up.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import resource
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from benchmarks.paths import path_roots, portable_paths
from benchmarks.spec import DATA_VARIABLE

# mace prints a notice on import; keep stdout for the JSON report
with contextlib.redirect_stdout(sys.stderr):
    import mace  # noqa: F401  (mace must be imported before e3nn)

    from tangentlab.acquisition import (
        SIGNALS,
        PosteriorScorer,
        fit_scorer,
        iter_structure_files,
        select_batch,
    )
    from tangentlab.acquisition.ntk import NTKFeaturizer
    from tangentlab.acquisition.ntk_reference import (
        per_structure_force_jacobians,
        per_structure_gradients,
    )
    from tangentlab.acquisition.policy import REFERENCE_SIZE
    from tangentlab.acquisition.rules import greedy_grouped_posterior_variance
    from tangentlab.config import SHIPPED_MODEL, shipped_file
    from tangentlab.mace_model import load_model
    from tangentlab.model_files import starting_weights

SHIPPED = Path(shipped_file(SHIPPED_MODEL))
ALL_SIGNALS = tuple(SIGNALS)
DEFAULT_SKETCH_DIM = {name: s.options["sketch_dim"] for name, s in SIGNALS.items() if "sketch_dim" in s.options}


def replicated_structures(
    path: str | Path, perturbation: float = 0.02, seed: int = 0
) -> Iterator[Atoms]:
    """
    Endless stream of a file's structures, each copy with Gaussian position noise.

    Structure i is copy ``i // n`` of the file's structure ``i % n`` with noise of
    standard deviation ``perturbation`` Å drawn from ``default_rng((seed, i))``; nothing
    is kept but the file's structures, so memory does not grow with the stream.

    Parameters
    ----------
    path
        ASE-readable file.
    perturbation
        Standard deviation of the noise (Å).
    seed
        Seed of the noise.

    Yields
    ------
    ase.Atoms
        One structure.
    """
    import ase.io

    base = ase.io.read(str(path), index=":")
    for index in itertools.count():
        atoms = base[index % len(base)].copy()
        atoms.calc = None
        if index >= len(base):
            rng = np.random.default_rng((seed, index))
            atoms.positions += rng.normal(scale=perturbation, size=atoms.positions.shape)
        yield atoms


def _stream_factory(args: argparse.Namespace) -> Callable[[], Iterator[Atoms]]:
    if args.replicate:
        return lambda: replicated_structures(args.replicate, args.perturbation, args.seed)
    return lambda: iter_structure_files(args.pool_files)


def _signal_options(args: argparse.Namespace, signal: str) -> dict:
    options: dict = {"forward_batch_size": args.forward_batch_size}
    if signal in DEFAULT_SKETCH_DIM:
        options["sketch_dim"] = args.sketch_dim or DEFAULT_SKETCH_DIM[signal]
        options["parameters"] = args.parameters
        if args.direction_chunk:
            options["direction_chunk"] = args.direction_chunk
    return options


def _memory_mb() -> dict[str, float]:
    # ru_maxrss is in KiB on Linux
    memory = {"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if tracemalloc.is_tracing():
        memory["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
    if torch.cuda.is_available():
        memory["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return memory


def _obvious_features(
    model: torch.nn.Module, structures: Sequence[Atoms], signal: str, options: dict
) -> dict:
    """Structures per second of the per-structure autograd loop (+ projection by S)."""
    featurizer = NTKFeaturizer(
        model,
        parameters=options["parameters"],
        sketch_dim=options["sketch_dim"],
        batch_size=options["forward_batch_size"],
        direction_chunk=options.get("direction_chunk"),
    )
    dense = featurizer.sketch.dense().T  # generates and caches the sketch outside the timing
    natoms = [len(atoms) for atoms in structures]
    started = time.perf_counter()
    if signal == "ntk":
        fast = featurizer.energy_rows(structures)
    elif signal == "force_ntk":
        fast = featurizer.force_rows(structures)[0]
    else:
        fast = featurizer.energy_force_rows(structures)[0]
    fast_s = time.perf_counter() - started
    started = time.perf_counter()
    if signal == "ntk":
        slow = per_structure_gradients(model, structures, featurizer.names) @ dense
    else:
        jacobians = per_structure_force_jacobians(model, structures, featurizer.names)
        forces = [jacobian @ dense for jacobian in jacobians]
        if signal == "force_ntk":
            slow = np.concatenate(forces)
        else:
            energy = per_structure_gradients(model, structures, featurizer.names) @ dense
            slow = np.concatenate(
                [np.vstack([energy[b : b + 1] / natoms[b], forces[b]]) for b in range(len(forces))]
            )
    slow_s = time.perf_counter() - started
    return {
        "subset": len(structures),
        "obvious_structures_per_s": len(structures) / slow_s,
        "fast_structures_per_s": len(structures) / fast_s,
        "speedup": slow_s / fast_s,
        "max_abs_difference": float(np.max(np.abs(fast - slow))),
        "max_abs_value": float(np.max(np.abs(slow))),
    }


def _obvious_selection(
    scorer: PosteriorScorer,
    structures: Sequence[Atoms],
    labelled: Sequence[Atoms],
    batch: int,
    max_rows: int,
) -> dict:
    """Greedy selection with materialised kernels against the feature-space version.

    The candidates are the first structures of ``structures`` with at most ``max_rows``
    rows in all (the kernel is max_rows² numbers).
    """
    rows, counts = scorer.rows(structures)
    keep = int(np.searchsorted(np.cumsum(counts), max_rows, side="right"))
    rows, counts = rows[: int(counts[:keep].sum())], counts[:keep]
    train, _ = scorer.rows(labelled) if labelled else (np.zeros((0, rows.shape[1])), None)
    lam, reduce = scorer.regularization, scorer.reduce
    starts = np.concatenate([[0], np.cumsum(counts)])
    tracing = tracemalloc.is_tracing()
    if tracing:
        tracemalloc.reset_peak()
    started = time.perf_counter()
    kernel = rows @ rows.T
    if len(train):
        cross = rows @ train.T
        kernel -= cross @ np.linalg.solve(train @ train.T + lam * np.eye(len(train)), cross.T)
    picks = []
    for _ in range(min(batch, len(counts))):
        row_variance = np.diag(kernel)
        variance = np.add.reduceat(row_variance, starts[:-1])
        if reduce == "mean":
            variance = variance / counts
        variance[picks] = -np.inf
        pick = int(np.argmax(variance))
        picks.append(pick)
        block = slice(starts[pick], starts[pick + 1])
        inner = kernel[block, block] + lam * np.eye(block.stop - block.start)
        kernel -= kernel[:, block] @ np.linalg.solve(inner, kernel[block, :])
    kernel_s = time.perf_counter() - started
    kernel_peak = tracemalloc.get_traced_memory()[1] if tracing else None
    if tracing:
        tracemalloc.reset_peak()
    started = time.perf_counter()
    fast, _ = greedy_grouped_posterior_variance(scorer.chol, rows, counts, batch, lam, reduce)
    fast_s = time.perf_counter() - started
    fast_peak = tracemalloc.get_traced_memory()[1] if tracing else None
    result = {
        "subset": len(counts),
        "rows": int(rows.shape[0]),
        "kernel_s": kernel_s,
        "feature_space_s": fast_s,
        "speedup": kernel_s / fast_s,
        "kernel_matrix_mb": rows.shape[0] ** 2 * 8 / 2**20,
        "same_picks": bool(np.array_equal(fast, picks)),
    }
    if tracing:
        result["kernel_peak_mb"] = kernel_peak / 2**20
        result["feature_space_peak_mb"] = fast_peak / 2**20
    return result


def benchmark_signal(
    model: torch.nn.Module,
    labelled: Sequence[Atoms],
    pool: Callable[[], Iterator[Atoms]],
    signal: str,
    args: argparse.Namespace,
) -> dict:
    """
    Run `select_batch` for one signal over the pool and time the obvious versions.

    Parameters
    ----------
    model
        The MACE model.
    labelled
        Labelled structures.
    pool
        Callable returning a fresh iterator over the pool.
    signal
        Signal name.
    args
        Parsed command-line options.

    Returns
    -------
    dict
        The numbers for this signal.
    """
    options = _signal_options(args, signal)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    if tracemalloc.is_tracing():
        tracemalloc.reset_peak()
    tick = time.perf_counter()
    scorer = fit_scorer(model, labelled, signal=signal, reference_atoms=list(itertools.islice(pool(), REFERENCE_SIZE)),
                        chunk_size=args.chunk_size, device=args.device, **options)
    reference_s = time.perf_counter() - tick
    indices, _, info = select_batch(
        scorer,
        pool,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        shortlist_size=args.shortlist_size,
        rule=args.rule,
        seed=args.seed,
    )
    timings = {"reference_s": reference_s, **info["timings"]}
    timings["total_s"] += reference_s
    result = {
        "signal": signal,
        "pool_size": info["pool_size"],
        "feature_dim": info.get("feature_dim"),
        "picked": indices.tolist(),
        "timings": timings,
        "memory": _memory_mb(),
    }
    result["features_structures_per_s"] = info["pool_size"] / timings["features_s"]
    result["scoring_structures_per_s"] = info["pool_size"] / max(timings["scoring_s"], 1e-9)
    result["selection_s"] = timings["selection_s"]
    subset = list(itertools.islice(pool(), args.baseline_subset))
    loop_subset = args.ntk_loop_subset if signal == "ntk" else args.force_loop_subset
    if signal in DEFAULT_SKETCH_DIM and loop_subset:
        feature_subset = list(itertools.islice(pool(), loop_subset))
        result["obvious_features"] = _obvious_features(model, feature_subset, signal, options)
    if signal in ("force_ntk", "energy_force_ntk"):
        rows_each = 1 + 3 * max(len(atoms) for atoms in subset[:100]) if subset else 1
        subset = subset[: max(1, args.kernel_rows // rows_each + 1)]
    if subset:
        scorer = fit_scorer(
            model,
            labelled,
            signal=signal,
            reference_atoms=subset[:REFERENCE_SIZE],
            device=args.device,
            **options,
        )
        result["obvious_selection"] = _obvious_selection(
            scorer, subset, labelled, args.batch_size, args.kernel_rows
        )
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tangentlab benchmark acquisition", description=__doc__.split("\n")[0]
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pool-files", nargs="+", type=Path, help="stream these files")
    source.add_argument("--replicate", type=Path, help="replicate this file's structures")
    parser.add_argument("--perturbation", type=float, default=0.02, help="Å, for --replicate")
    parser.add_argument("--pool-size", type=int, default=2000)
    parser.add_argument("--labelled", type=int, default=20, help="first N structures of the source")
    parser.add_argument("--signals", nargs="+", default=["activation"], choices=ALL_SIGNALS)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--shortlist-size", type=int, default=None)
    parser.add_argument("--rule", default="greedy", choices=["greedy", "kmeans++", "top"])
    parser.add_argument("--forward-batch-size", type=int, default=64)
    parser.add_argument("--sketch-dim", type=int, default=None)
    parser.add_argument("--parameters", default="all", help="all, readouts or last_layer")
    parser.add_argument("--direction-chunk", type=int, default=None)
    parser.add_argument(
        "--baseline-subset",
        type=int,
        default=2000,
        help="pool structures for the materialised-kernel baseline (0: none)",
    )
    parser.add_argument(
        "--kernel-rows",
        type=int,
        default=6000,
        help="most candidate rows in the materialised kernel",
    )
    parser.add_argument(
        "--ntk-loop-subset",
        type=int,
        default=64,
        help="structures for the per-structure autograd loop, ntk (0: none)",
    )
    parser.add_argument(
        "--force-loop-subset",
        type=int,
        default=8,
        help="structures for the per-component autograd loop, force signals (0: none)",
    )
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="trace Python allocations for the peak (slows Python code about 2x)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """
    Command-line entry point.

    Parameters
    ----------
    argv
        Arguments (``sys.argv[1:]`` when None).

    Returns
    -------
    dict
        The report that was printed.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    model_path = args.model or (SHIPPED if SHIPPED.is_file() else None)
    if model_path is None:
        raise SystemExit(f"no --model given and the shipped model {SHIPPED} is missing")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    with tempfile.TemporaryDirectory() as tmp:  # --model is the user's file: read once (allow-list), converted
        model = load_model(starting_weights(model_path, tmp)[0], device=args.device, dtype=dtype)
    stream = _stream_factory(args)
    labelled = list(itertools.islice(stream(), args.labelled))

    def pool() -> Iterator[Atoms]:
        return itertools.islice(stream(), args.labelled, args.labelled + args.pool_size)

    atoms_counts = [len(atoms) for atoms in itertools.islice(pool(), 2000)]
    if args.tracemalloc:
        tracemalloc.start()
    report = {
        "device": args.device
        if args.device == "cpu"
        else torch.cuda.get_device_name(torch.device(args.device)),
        "processor": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": str(model_path),
        "dtype": args.dtype,
        "pool_source": (
            [str(p) for p in args.pool_files] if args.pool_files else str(args.replicate)
        ),
        "pool_size": args.pool_size,
        "labelled": len(labelled),
        "atoms_per_structure_mean": float(np.mean(atoms_counts)),
        "batch_size": args.batch_size,
        "chunk_size": args.chunk_size,
        "rule": args.rule,
        "tracemalloc": args.tracemalloc,
        "command": "tangentlab benchmark acquisition " + " ".join(argv),
        "results": [],
    }
    for signal in args.signals:
        report["results"].append(benchmark_signal(model, labelled, pool, signal, args))
    report["memory_end"] = _memory_mb()
    # the report names files relative to the data root or the repository, not by this machine's paths
    report = portable_paths(report, path_roots(data_root=os.environ.get(DATA_VARIABLE)))
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for result in report["results"]:
            print(
                f"{result['signal']:>18}: pool {result['pool_size']}, "
                f"features {result.get('features_structures_per_s', float('nan')):.1f}/s, "
                f"scoring {result.get('scoring_structures_per_s', float('nan')):.1f}/s, "
                f"selection {result['timings']['selection_s']:.2f} s, "
                f"max RSS {result['memory']['maxrss_mb']:.0f} MiB"
            )
    return report


if __name__ == "__main__":
    main()

"""Force NTK cost as a multiple of inference, and the probe rows' selection quality.

For each system (``acac``: the shipped molecular model on acetylacetone frames, 15 atoms;
``slab``: a ``cuoh-small`` model of `benchmarks.model_shapes` on rattled Cu(111) slabs with
O, OH and H adsorbates, 40 atoms, periodic) it measures in one process, one torch thread:

- **inference**: a MACE energy + force evaluation (``compute_force=True``), batched, timed
  (best of two) just before each variant, so that each ratio compares neighbouring timings
  on a machine whose load drifts;
- **exact**: the force and energy-force NTK rows over all 3N force components
  (``force_probes=None``, d double-backward passes per batch), sketch d;
- **probes k**: the same signals with k force probes per structure (``force_probes=k``),
  for each probe design of ``--probe-designs`` (independent per structure, shared by
  structures with the same atoms, or shared atom blocks;
  `tangentlab.acquisition.ntk_probes.DESIGNS`);
- **subsets** (``--subsets PARAMETERS:D:CHUNK``): exact rows over a parameter subset
  (``parameters=readouts`` or ``last_layer``) with sketch d, CHUNK directions per vmapped
  reverse pass (``direction_chunk``), for each sketch seed of ``--subset-seeds`` (default 1;
  ``PARAMETERS:D:CHUNK:SEEDS`` with comma-separated seeds overrides it for one subset), each
  timed ``--cost-repeats`` times (an inference timed just before each timing).

Each cost is seconds per structure divided by the inference's (probe variants: best of two).
Then the selection quality against the exact rows, for both signals: the labelled set is the
first ``--labelled`` structures, the pool the next ``--pool``; each scorer is fitted like a
campaign's (row normalisation on labelled + pool, A on the labelled rows, λ 1e-2) and gives
σ² of the pool and a greedy batch of ``--batch`` structures. The sketch's own error is the
agreement of two exact signals with independent sketches (seeds 0 and 1); the probe signal
is compared to the exact seed-0 signal with its own seed 1 (independent parameter sketch and
probes), so the two comparisons have the same form. Reported: the Spearman correlation of σ²
over the pool and the overlap of the greedy batches (shared picks / batch size). With
``--exact-labelled`` each probe variant is also scored with the exact rows of its sketch seed
for the labelled set (the pool keeps its probe rows): a diagnostic of how much of the probes'
error comes from the labelled set's A.

Each comparison carries a 95 % interval of its Spearman correlation: Fisher's (z = atanh ρ,
standard error √(1.06 / (n - 3)), Fieller et al. 1957) and a bootstrap over the pool's
structures (``--bootstrap`` resamples). ``subset_summary`` gathers each subset and d over its
sketch seeds: the seeds' Spearman and batch overlap (mean, min, max), the cost as a multiple of
inference over all timings (median, min, max), and a paired bootstrap interval of the seeds'
mean Spearman minus the exact seed-1 signal's (the sketch's own error): an interval that holds
0 means the subset is within the sketch's own error on this pool.

Example::

    OMP_NUM_THREADS=1 python -m benchmarks.force_ntk_cost --threads 1 \\
        --out docs/benchmarks/force-ntk-cost.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import re
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

with contextlib.redirect_stdout(sys.stderr):
    import mace
    import torch
    from ase.build import add_adsorbate, fcc111
    from ase.io import read
    from scipy.stats import rankdata, spearmanr

    from benchmarks.model_shapes import build_model
    from tangentlab.acquisition.ntk import NTKFeaturizer
    from tangentlab.acquisition.ntk_probes import DESIGNS, probe_vectors
    from tangentlab.acquisition.scorer import fit_rows
    from tangentlab.acquisition.select import select_batch
    from tangentlab.mace_model import default_dtype, iter_batches, load_model
    from tangentlab.model_files import starting_weights

SHIPPED = "tangentlab/data/tangentlab-hcno-xtb.model"
ACAC = "acac/train_300K.xyz"
SIGNALS = ("force_ntk", "energy_force_ntk")


def acac_system(data_root: Path, count: int, models_dir: Path):
    """The shipped model and ``count`` acac frames (every 5th frame of the 300 K MD)."""
    path, _ = starting_weights(SHIPPED, models_dir)
    frames = read(data_root / ACAC, f"::{5}")[:count]
    return load_model(path), frames, {"model": SHIPPED, "structures": f"{ACAC} every 5th frame"}


def slab_structures(count: int, seed: int = 0) -> list:
    """Rattled 3x3x4 Cu(111) slabs (periodic in x, y; 7 Å vacuum) with O, OH and H on top."""
    rng = np.random.default_rng(seed)
    structures = []
    for _ in range(count):
        slab = fcc111("Cu", size=(3, 3, 4), vacuum=7.0, periodic=True)
        cell = slab.cell.array
        for symbol, height in (("O", 1.3), ("O", 1.4), ("H", 1.0)):
            x, y = rng.uniform(0, 1, size=2) @ cell[:2, :2]
            add_adsorbate(slab, symbol, height + rng.uniform(0, 0.4), position=(x, y))
        # the OH hydrogen: above the second O
        add_adsorbate(slab, "H", 2.4, position=tuple(slab.positions[-2, :2]))
        slab.positions += rng.normal(scale=0.08, size=slab.positions.shape)
        structures.append(slab)
    return structures


def slab_system(count: int):
    """A ``cuoh-small`` model (random weights) and ``count`` slabs."""
    model = build_model("cuoh-small", seed=0)
    return model, slab_structures(count), {
        "model": "benchmarks.model_shapes cuoh-small (random weights)",
        "structures": "3x3x4 Cu(111) + O, OH, H, rattled 0.08 Å (slab_structures)",
    }


def seconds(function, repeats: int = 1) -> float:
    """Best wall time of ``repeats`` calls."""
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def inference(model, structures, batch_size: int) -> None:
    """Energies and forces of ``structures`` (what a MACE calculator computes)."""
    with default_dtype(torch.float64):
        for batch in iter_batches(model, structures, batch_size):
            model(batch.to_dict(), training=False, compute_force=True)


def quality(rows: dict, counts: dict, pool: list, n_labelled: int, batch: int) -> dict:
    """σ² over the pool and the greedy batch of each row set (already split per signal)."""
    out = {}
    for key, signal_rows in rows.items():
        signal = key[0]
        structure_counts = counts[key]
        starts = np.concatenate([[0], np.cumsum(structure_counts)])
        split = starts[n_labelled]
        labelled = (signal_rows[:split], structure_counts[:n_labelled])
        scorer = fit_rows(signal, None, labelled, signal_rows, 1e-2, "mean")
        pool_counts = structure_counts[n_labelled:]
        pool_rows = scorer.scaling.apply(signal_rows[split:])
        sigma2 = scorer.variance_of_rows(pool_rows, pool_counts)
        pool_starts = starts[n_labelled:] - split
        position = {id(atoms): i for i, atoms in enumerate(pool)}

        def cached(chunk, pool_starts=pool_starts, raw=signal_rows[split:],
                   pool_counts=pool_counts, position=position):
            ids = [position[id(atoms)] for atoms in chunk]
            parts = [raw[pool_starts[i] : pool_starts[i] + pool_counts[i]] for i in ids]
            return np.concatenate(parts), pool_counts[ids]

        picked, _, _ = select_batch(dataclasses.replace(scorer, featurizer=cached), pool,
                                    batch_size=batch, rule="greedy")
        out[key] = {"sigma2": sigma2, "batch": sorted(int(i) for i in picked)}
    return out


def split_joint(rows: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The force rows of energy-force rows (drop each structure's first, energy, row)."""
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    keep = np.ones(len(rows), dtype=bool)
    keep[starts] = False
    return rows[keep], counts - 1


def parse_subset(text: str, default_seeds: Sequence[int]) -> tuple[str, int, int, list[int]]:
    """``PARAMETERS:D:CHUNK[:SEEDS]`` (SEEDS comma-separated) as (parameters, d, chunk, seeds)."""
    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise ValueError(f"subset {text!r} is not PARAMETERS:D:CHUNK[:SEEDS]")
    try:
        dim, chunk = int(parts[1]), int(parts[2])
        seeds = [int(s) for s in parts[3].split(",")] if len(parts) == 4 else list(default_seeds)
    except ValueError:
        raise ValueError(f"subset {text!r}: D, CHUNK and SEEDS must be integers") from None
    if dim < 1 or chunk < 1 or not seeds:
        raise ValueError(f"subset {text!r}: D and CHUNK must be positive, SEEDS not empty")
    return parts[0], dim, chunk, seeds


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of ``a`` with the same row of ``b`` (ties averaged;
    NaN for a constant row)."""
    ra, rb = rankdata(a, axis=1), rankdata(b, axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    norm = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, (ra * rb).sum(axis=1) / np.where(norm > 0, norm, 1), np.nan)


def fisher_interval(rho: float, n: int, z: float = 1.959964) -> list[float]:
    """95 % interval of a Spearman correlation over n pairs: tanh(atanh ρ ± z √(1.06/(n-3)))."""
    centre = np.arctanh(np.clip(rho, -0.999999, 0.999999))
    half = z * np.sqrt(1.06 / (n - 3))
    return [float(np.tanh(centre - half)), float(np.tanh(centre + half))]


def bootstrap_spearman(reference: np.ndarray, variants: Sequence[np.ndarray], draws: int,
                       seed: int = 0, baseline: np.ndarray | None = None) -> dict:
    """95 % bootstrap intervals (over the pool's structures) of the mean Spearman of
    ``variants`` with ``reference`` and, with ``baseline``, of that mean minus the Spearman of
    ``baseline`` with ``reference`` (paired: the same resampled structures for both)."""
    reference = np.asarray(reference)
    idx = np.random.default_rng(seed).integers(0, len(reference), size=(draws, len(reference)))
    ref = reference[idx]
    mean = np.mean([spearman_rows(ref, np.asarray(v)[idx]) for v in variants], axis=0)
    out = {"spearman_bootstrap_95": [float(x) for x in np.nanpercentile(mean, [2.5, 97.5])]}
    if baseline is not None:
        difference = mean - spearman_rows(ref, np.asarray(baseline)[idx])
        out["minus_exact_seed1_bootstrap_95"] = [
            float(x) for x in np.nanpercentile(difference, [2.5, 97.5])]
    return out


_SUBSET_KEY = re.compile(r"^exact-(?P<parameters>.+)-d(?P<dim>\d+)-chunk(?P<chunk>\d+)"
                         r"-seed(?P<seed>\d+)$")


def subset_summary(scored: dict, costs: dict, batch: int, draws: int, sketch_dim: int) -> dict:
    """Each subset and d over its sketch seeds, next to the exact seed-1 signal (the sketch's
    own error), against the exact seed-0 signal: Spearman and overlap (mean, min, max), a
    paired bootstrap interval of the seeds' mean Spearman minus the seed-1 signal's, and the
    cost as a multiple of inference over all timings (median, min, max)."""
    out = {}
    keys = sorted({key for _, key in scored})
    groups: dict = {}
    for key in keys:
        match = _SUBSET_KEY.match(key)
        if match:
            name = f"{match['parameters']}-d{match['dim']}-chunk{match['chunk']}"
            groups.setdefault(name, []).append(key)
    for signal in SIGNALS:
        reference = scored[(signal, "exact-seed0")]
        baseline = scored.get((signal, "exact-seed1"))
        rows = {}
        for name, group in [(f"exact-all-d{sketch_dim}-seed1", ["exact-seed1"])] + sorted(groups.items()):
            if (signal, group[0]) not in scored:
                continue
            others = [scored[(signal, key)] for key in group]
            rhos = [float(spearmanr(reference["sigma2"], o["sigma2"]).statistic) for o in others]
            overlaps = [len(set(reference["batch"]) & set(o["batch"])) / batch for o in others]
            entry = {"seeds": [int(key.rsplit("seed", 1)[1]) for key in group],
                     "spearman_sigma2": rhos, "spearman_sigma2_mean": float(np.mean(rhos)),
                     "spearman_sigma2_min": min(rhos), "spearman_sigma2_max": max(rhos),
                     "greedy_batch_overlap": overlaps,
                     "greedy_batch_overlap_mean": float(np.mean(overlaps))}
            if draws:
                entry.update(bootstrap_spearman(
                    reference["sigma2"], [o["sigma2"] for o in others], draws,
                    baseline=None if name.startswith("exact-all") or baseline is None
                    else baseline["sigma2"]))
            ratios = [x for key in group
                      for x in costs[key].get("energy_force_ntk_x_inference_repeats",
                                              [costs[key]["energy_force_ntk_x_inference"]])]
            entry.update(cost_x_inference_median=float(np.median(ratios)),
                         cost_x_inference_min=min(ratios), cost_x_inference_max=max(ratios),
                         cost_timings=len(ratios))
            rows[name] = entry
        out[signal] = rows
    return out


def _exact_labelled(exact, exact_counts, probes, probe_counts, n_labelled):
    """The labelled structures' exact rows followed by the pool's probe rows."""
    exact_split = int(np.sum(exact_counts[:n_labelled]))
    probe_split = int(np.sum(probe_counts[:n_labelled]))
    return (np.concatenate([exact[:exact_split], probes[probe_split:]]),
            np.concatenate([exact_counts[:n_labelled], probe_counts[n_labelled:]]))


def synthetic_draws(joint, joint_counts, structures, args) -> dict:
    """Quality of ``args.draws`` probe draws per design and k, made from the exact rows.

    A structure's probe rows are ``uᵀ R / √k`` for its exact force rows R (what the
    finite differences compute, tests/test_ntk.py), so many draws of the probes cost no
    passes: same sketch (seed 0) as the reference, only the probes differ. Each draw is
    scored with probe rows for the labelled set too, and with its exact rows.
    """
    starts = np.concatenate([[0], np.cumsum(joint_counts)])
    energy = [joint[starts[i] : starts[i] + 1] for i in range(len(structures))]
    forces = [joint[starts[i] + 1 : starts[i + 1]] for i in range(len(structures))]
    reference_rows = {("energy_force_ntk", "exact"): joint}
    reference_counts = {("energy_force_ntk", "exact"): joint_counts}
    reference_rows[("force_ntk", "exact")], reference_counts[("force_ntk", "exact")] = (
        split_joint(joint, joint_counts))
    out = {}
    for design in args.probe_designs:
        for k in args.probes:
            rows, counts = dict(reference_rows), dict(reference_counts)
            for draw in range(args.draws):
                pieces = []
                for atoms, e, f in zip(structures, energy, forces, strict=True):
                    u = probe_vectors(atoms, k, 1000 + draw, design).reshape(k, -1)
                    pieces.append((e, u @ f / np.sqrt(k)))
                force_rows = np.concatenate([f for _, f in pieces])
                force_counts = np.full(len(structures), k)
                joint_rows = np.concatenate([np.concatenate([e, f]) for e, f in pieces])
                for signal, r, c in (("force_ntk", force_rows, force_counts),
                                     ("energy_force_ntk", joint_rows, force_counts + 1)):
                    rows[(signal, f"d{draw}")], counts[(signal, f"d{draw}")] = r, c
                    mixed = _exact_labelled(reference_rows[(signal, "exact")],
                                            reference_counts[(signal, "exact")], r, c,
                                            args.labelled)
                    rows[(signal, f"d{draw}+exact-labelled")] = mixed[0]
                    counts[(signal, f"d{draw}+exact-labelled")] = mixed[1]
            scored = quality(rows, counts, structures[args.labelled :], args.labelled,
                             args.batch)
            for signal in SIGNALS:
                reference = scored[(signal, "exact")]
                for suffix in ("", "+exact-labelled"):
                    rhos, overlaps = [], []
                    for draw in range(args.draws):
                        other = scored[(signal, f"d{draw}{suffix}")]
                        rhos.append(float(spearmanr(reference["sigma2"],
                                                    other["sigma2"]).statistic))
                        overlaps.append(len(set(reference["batch"]) & set(other["batch"]))
                                        / args.batch)
                    out[f"{signal}: probes{k}-{design}{suffix} vs exact-seed0"] = {
                        "draws": args.draws, "spearman_sigma2_mean": float(np.mean(rhos)),
                        "spearman_sigma2_min": min(rhos), "spearman_sigma2_max": max(rhos),
                        "greedy_batch_overlap_mean": float(np.mean(overlaps))}
    return out


def measure_system(name, model, structures, args) -> dict:
    """Costs and quality of one system."""
    n = args.labelled + args.pool
    structures = structures[:n]
    result: dict = {"atoms_per_structure": sorted({len(a) for a in structures}),
                    "periodic": bool(structures[0].pbc.any()),
                    "parameters": int(sum(p.numel() for p in model.parameters())),
                    "labelled": args.labelled, "pool": args.pool, "sketch_dim": args.sketch_dim}
    inference(model, structures[: args.batch_size], args.batch_size)  # warm-up (TorchScript)

    def timed(function, repeats: int = 1) -> tuple[float, float, object]:
        """Seconds per structure of ``function`` and of an inference timed just before it
        (the machine's load drifts: each ratio is taken against its neighbour)."""
        t_inf = seconds(lambda: inference(model, structures, args.batch_size), 2) / n
        held = {}
        t = seconds(lambda: held.update(value=function()), repeats) / n
        return t, t_inf, held["value"]

    rows, counts, costs = {}, {}, {}
    # (label, probes k, sketch seed, probe design, parameters, sketch dim, direction chunk)
    variants = [("exact", None, 0, None, "all", args.sketch_dim, 1),
                ("exact", None, 1, None, "all", args.sketch_dim, 1)]
    if args.draws_only:
        variants = variants[:1]
    for design in args.probe_designs if not args.draws_only else []:
        tag = "" if design == "independent" else f"-{design}"
        for seed in (1, 0):
            variants += [(f"probes{k}{tag}", k, seed, design, "all", args.sketch_dim, 1)
                         for k in args.probes]
    for subset in args.subsets if not args.draws_only else []:  # exact rows over a parameter subset, independent sketches
        parameters, dim, chunk, seeds = parse_subset(subset, args.subset_seeds)
        variants += [(f"exact-{parameters}-d{dim}-chunk{chunk}", None, seed, None, parameters,
                      dim, chunk) for seed in seeds]
    for label, k, seed, design, parameters, dim, chunk in variants:
        featurizer = NTKFeaturizer(model, sketch_dim=dim, seed=seed, parameters=parameters,
                                   batch_size=args.batch_size, force_probes=k,
                                   probe_design=design or "independent",
                                   direction_chunk=chunk, method="per_sample")
        featurizer.energy_force_rows(structures[:2])  # warm-up
        t_joint, t_inf, (joint, joint_counts) = timed(
            lambda f=featurizer: f.energy_force_rows(structures), 1 if k is None else 2)
        key = f"{label}-seed{seed}"
        cost = {"inference_s_per_structure": t_inf,
                "energy_force_ntk_s_per_structure": t_joint,
                "energy_force_ntk_x_inference": t_joint / t_inf}
        if parameters != "all" and args.cost_repeats > 1:  # more timings, each with its inference
            pairs = [(t_joint, t_inf)] + [
                timed(lambda f=featurizer: f.energy_force_rows(structures))[:2]
                for _ in range(args.cost_repeats - 1)]
            cost.update(inference_s_per_structure_repeats=[p[1] for p in pairs],
                        energy_force_ntk_s_per_structure_repeats=[p[0] for p in pairs],
                        energy_force_ntk_x_inference_repeats=[p[0] / p[1] for p in pairs])
        if k is not None and seed == 1:  # the force signal alone: k + 1 passes as well
            t_force, t_inf_force, _ = timed(lambda f=featurizer: f.force_rows(structures), 2)
            cost.update(force_ntk_s_per_structure=t_force,
                        force_ntk_x_inference=t_force / t_inf_force)
        elif k is None:  # exact force rows are the same d passes without the energy column
            cost.update(force_ntk_s_per_structure=t_joint, force_ntk_x_inference=t_joint / t_inf,
                        force_ntk_note="same double-backward passes as energy_force_ntk")
        costs[key] = cost
        print(f"[{name}] {key}: {cost}", file=sys.stderr, flush=True)
        rows[("energy_force_ntk", key)], counts[("energy_force_ntk", key)] = joint, joint_counts
        rows[("force_ntk", key)], counts[("force_ntk", key)] = split_joint(joint, joint_counts)
    if args.exact_labelled:  # diagnostic: exact rows for the labelled set, probes for the pool
        for signal in SIGNALS:
            for key in [key for s, key in list(rows) if s == signal and key.startswith("probes")]:
                exact_key = "exact-" + key.rsplit("-", 1)[1]
                mixed = _exact_labelled(rows[(signal, exact_key)], counts[(signal, exact_key)],
                                        rows[(signal, key)], counts[(signal, key)],
                                        args.labelled)
                rows[(signal, key + "+exact-labelled")] = mixed[0]
                counts[(signal, key + "+exact-labelled")] = mixed[1]
    result["cost"] = costs
    if args.draws:
        result["synthetic_draws"] = synthetic_draws(
            rows[("energy_force_ntk", "exact-seed0")], counts[("energy_force_ntk", "exact-seed0")],
            structures, args)
    if args.draws_only:
        return result
    scored = quality(rows, counts, structures[args.labelled :], args.labelled, args.batch)
    comparisons = {}
    for signal in SIGNALS:
        reference = scored[(signal, "exact-seed0")]
        for key in sorted({key for s, key in scored if s == signal and key != "exact-seed0"}):
            other = scored[(signal, key)]
            rho = float(spearmanr(reference["sigma2"], other["sigma2"]).statistic)
            overlap = len(set(reference["batch"]) & set(other["batch"])) / args.batch
            comparisons[f"{signal}: {key} vs exact-seed0"] = {
                "spearman_sigma2": rho, "greedy_batch_overlap": overlap,
                "spearman_fisher_95": fisher_interval(rho, args.pool)}
            if args.bootstrap:
                comparisons[f"{signal}: {key} vs exact-seed0"].update(bootstrap_spearman(
                    reference["sigma2"], [other["sigma2"]], args.bootstrap))
    result["quality"] = comparisons
    if args.subsets:
        result["subset_summary"] = subset_summary(scored, costs, args.batch, args.bootstrap,
                                                   args.sketch_dim)
    return result


def machine_info(threads: int) -> dict:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(),
            "load_average_1m_at_start": load, "torch_threads": threads,
            "python": platform.python_version(), "torch": torch.__version__,
            "mace": getattr(mace, "__version__", None)}


def commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       stderr=subprocess.DEVNULL).strip()
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.force_ntk_cost",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", nargs="+", default=["acac", "slab"],
                        choices=["acac", "slab"])
    parser.add_argument("--labelled", type=int, default=8)
    parser.add_argument("--pool", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8, help="greedy batch size")
    parser.add_argument("--probes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--probe-designs", nargs="+", default=["independent"],
                        choices=list(DESIGNS),
                        help="probe designs (tangentlab.acquisition.ntk_probes.DESIGNS)")
    parser.add_argument("--subsets", nargs="*", default=[],
                        help="exact rows over a parameter subset, each PARAMETERS:D:CHUNK "
                             "(e.g. readouts:64:1; CHUNK directions per vmapped reverse pass)")
    parser.add_argument("--subset-seeds", type=int, nargs="+", default=[1],
                        help="sketch seeds of each --subsets variant (0 is the reference's)")
    parser.add_argument("--cost-repeats", type=int, default=1,
                        help="timings of each --subsets variant (each after its own inference)")
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="bootstrap resamples of the pool for the Spearman intervals (0: none)")
    parser.add_argument("--exact-labelled", action="store_true",
                        help="also score each probe variant with the exact rows of the "
                             "labelled set (quality only: where the probes' error comes from)")
    parser.add_argument("--draws", type=int, default=0,
                        help="also score this many probe draws per design and k made from "
                             "the exact seed-0 rows (quality only; no extra passes)")
    parser.add_argument("--draws-only", action="store_true",
                        help="only the exact seed-0 rows and the --draws (no probe passes)")
    parser.add_argument("--sketch-dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8, help="structures per forward")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-root", default=os.environ.get("TANGENTLAB_DATA", "../shared/data"))
    parser.add_argument("--models-dir", default=None,
                        help="where the shipped model is converted (default: a temporary folder)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    for subset in args.subsets:
        try:
            parse_subset(subset, args.subset_seeds)
        except ValueError as error:
            parser.error(str(error))
    if args.cost_repeats < 1 or args.bootstrap < 0 or args.pool < 4:
        parser.error("--cost-repeats must be >= 1, --bootstrap >= 0 and --pool >= 4")
    torch.set_num_threads(args.threads)
    import tempfile

    models_dir = Path(args.models_dir or tempfile.mkdtemp(prefix="force-ntk-cost-"))
    report = {"command": "python -m benchmarks.force_ntk_cost " + " ".join(argv or sys.argv[1:]),
              "date": datetime.date.today().isoformat(), "commit": commit(),
              "machine": machine_info(args.threads), "systems": {}}
    n = args.labelled + args.pool
    for name in args.systems:
        if name == "acac":
            model, structures, about = acac_system(Path(args.data_root), n, models_dir)
        else:
            model, structures, about = slab_system(n)
        report["systems"][name] = {**about, **measure_system(name, model, structures, args)}
        text = json.dumps(report, indent=2)
        if args.out:  # after each system: a partial result survives an interrupted run
            Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

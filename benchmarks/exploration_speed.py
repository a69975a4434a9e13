"""Exploration throughput: MD steps per second per walker, batched against one walker at a time.

Measures the md exploration engine (`tangentlab.exploration.engines.ENGINES["md"]`: ASE's
Langevin integrator driving the model through `ModelCalculator`) for N walkers, with
``batch_walkers`` off (each walker its own Langevin, one model call per walker per step) and
on (all walkers packed far apart into one structure, one model call per step). With
``--torch-sim`` it also measures torch-sim's batched NVT Langevin (``torch_sim.nvt_langevin``
with ``torch_sim.models.mace.MaceModel``) on the same walkers, a candidate engine that is not a
dependency of tangentlab: install it into a scratch folder and name it with ``--torch-sim-path``::

    pip install --target "$TMPDIR/tsim-pkgs" --no-deps torch-sim-atomistic==0.3.0 vesin \\
        vesin-torch tables numexpr blosc2 py-cpuinfo
    python -m benchmarks.exploration_speed --walkers 1 2 4 8 16 --steps 50 --threads 1 \\
        --device cpu --torch-sim --out docs/benchmarks/exploration-speed.json

The judge is trivial (σ 0, never stop) so that σ scoring is not in the MD numbers; it is called
every ``sample_every`` steps as in a real exploration, with the frames built. The cost of a real
judge (guards and the acquisition scorer's σ) is timed separately, per frame. Each path is
warmed up (``sample_every`` steps) before it is timed, and the best of ``--repeats`` timed runs
is kept. Numbers depend on the machine and its load: see docs/benchmarks/exploration-speed.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.paths import path_roots, portable_paths

with contextlib.redirect_stdout(sys.stderr):
    import mace  # mace must be imported before e3nn
    import torch
    from ase import Atoms
    from ase.io import read

    from tangentlab.config import Exploration
    from tangentlab.exploration import engines as engines_module
    from tangentlab.exploration.engines import ENGINES
    from tangentlab.exploration.guards import fragment_count, unphysical
    from tangentlab.mace_model import load_model, model_cutoff
    from tangentlab.model_files import starting_weights

SHIPPED = "tangentlab/data/tangentlab-hcno-xtb.model"
SEEDS = "examples/exploration/seeds.extxyz"
MODELS_DIR = os.path.join(tempfile.gettempdir(), "explore-speed-model")


class _CountingCalculator(engines_module.ModelCalculator):
    """`ModelCalculator` that counts model calls over all instances (the engine makes one per run)."""

    total_calls = 0

    def calculate(self, *args, **kwargs) -> None:
        super().calculate(*args, **kwargs)
        type(self).total_calls += 1


class _CountingSplitCalculator(engines_module.SplitCalculator):
    """The batched periodic walkers' calculator, counted with `_CountingCalculator`'s calls."""

    def calculate(self, *args, **kwargs) -> None:
        super().calculate(*args, **kwargs)
        _CountingCalculator.total_calls += 1


def trivial_judge(frames: Sequence[Atoms], owners) -> list[tuple[float, str | None]]:
    return [(0.0, None)] * len(frames)


def settings_for(walkers: int, steps: int, batch: bool, sample_every: int) -> Exploration:
    return Exploration(
        engine="md", walkers=walkers, steps=steps, sample_every=sample_every, batch_walkers=batch
    )


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_ase(
    model,
    seeds,
    walkers: int,
    steps: int,
    batch: bool,
    sample_every: int,
    repeats: int,
    device: str,
) -> dict:
    """Best-of-``repeats`` wall time of the md engine for ``walkers`` walkers and ``steps`` steps."""
    engine = ENGINES["md"]
    seed_list = [(None, atoms) for atoms in seeds]

    def once(n_steps: int) -> tuple[float, int, int]:
        settings = settings_for(walkers, n_steps, batch, sample_every)
        group = engine.walkers(settings, seed_list, np.random.default_rng([0, 0]))
        ended = []
        _CountingCalculator.total_calls = 0
        _sync(device)
        start = time.perf_counter()
        engine.run(
            group, model, settings, trivial_judge, ended.append, np.random.default_rng([0, 1])
        )
        _sync(device)
        wall = time.perf_counter() - start
        assert len(ended) == walkers and all(t.steps_run == n_steps for t in ended)
        return wall, _CountingCalculator.total_calls, sum(len(t.walker.atoms) for t in ended)

    once(sample_every)  # warm-up
    runs = [once(steps) for _ in range(repeats)]
    wall, calls, atoms = min(runs)
    return {
        "wall_s": wall,
        "walls_s": [r[0] for r in runs],
        "model_calls": calls,
        "model_calls_per_step": calls / steps,
        "atoms": atoms,
        "steps_per_s_per_walker": walkers * steps / wall,
    }


def time_torch_sim(
    ts,
    model,
    seeds,
    walkers: int,
    steps: int,
    sample_every: int,
    repeats: int,
    device: str,
    dtype: torch.dtype,
) -> dict:
    """Best-of-``repeats`` wall time of torch-sim's batched NVT Langevin on the same walkers."""
    from torch_sim.models.mace import MaceModel
    from torch_sim.units import MetalUnits

    defaults = Exploration()
    settings = settings_for(walkers, steps, True, sample_every)
    group = ENGINES["md"].walkers(
        settings, [(None, a) for a in seeds], np.random.default_rng([0, 0])
    )
    atoms_list = [w.atoms for w in group]
    torch_device = torch.device(device)
    wrapped = MaceModel(
        model=model, device=torch_device, dtype=dtype, compute_forces=True, compute_stress=False
    )
    kT = (
        torch.tensor([w.temperature_K for w in group], device=torch_device, dtype=dtype)
        * MetalUnits.temperature
    )
    dt = torch.tensor(
        defaults.timestep_fs * 1e-3 * MetalUnits.time, device=torch_device, dtype=dtype
    )
    gamma = torch.tensor(
        defaults.friction_per_fs * 1e3 / MetalUnits.time, device=torch_device, dtype=dtype
    )
    sizes = [len(a) for a in atoms_list]
    bounds = np.cumsum([0, *sizes])

    def once(n_steps: int) -> tuple[float, int]:
        state = ts.io.atoms_to_state(atoms_list, device=torch_device, dtype=dtype)
        init, update = ts.nvt_langevin(wrapped, dt=dt, kT=kT, gamma=gamma, seed=0)
        _sync(device)
        start = time.perf_counter()
        state = init(state)
        calls = 1
        step = 0
        while step < n_steps:
            n = min(sample_every, n_steps - step)
            for _ in range(n):
                state = update(state)
                calls += 1
            step += n
            positions = state.positions.detach().cpu().numpy().astype(np.float64)
            frames = [
                Atoms(numbers=a.numbers, positions=positions[bounds[k] : bounds[k + 1]])
                for k, a in enumerate(atoms_list)
            ]
            trivial_judge(frames, group)
        _sync(device)
        wall = time.perf_counter() - start
        if not torch.isfinite(state.positions).all():
            raise RuntimeError("torch-sim positions are not finite")
        return wall, calls

    once(sample_every)  # warm-up
    runs = [once(steps) for _ in range(repeats)]
    wall, calls = min(runs)
    return {
        "wall_s": wall,
        "walls_s": [r[0] for r in runs],
        "model_calls": calls,
        "model_calls_per_step": calls / steps,
        "steps_per_s_per_walker": walkers * steps / wall,
    }


def judge_cost(
    model, seeds, walkers: int, steps: int, sample_every: int, repeats: int, device: str
) -> dict:
    """Per-frame cost of a real judge: the guards and σ from the acquisition scorer ("activation")."""
    from tangentlab.acquisition import fit_scorer

    # frames to judge: the last frames of a batched run
    engine = ENGINES["md"]
    settings = settings_for(walkers, steps, True, sample_every)
    group = engine.walkers(settings, [(None, a) for a in seeds], np.random.default_rng([0, 0]))
    ended = []
    engine.run(group, model, settings, trivial_judge, ended.append, np.random.default_rng([0, 1]))
    frames = [t.frames[-1].atoms for t in ended]
    # labelled set: the seeds and rattled copies of them
    rng = np.random.default_rng(0)
    labelled = []
    for copy in range(8):
        for atoms in seeds:
            atoms = atoms.copy()
            if copy:
                atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
            labelled.append(atoms)
    start = time.perf_counter()
    scorer = fit_scorer(model, labelled, signal="activation")
    fit_s = time.perf_counter() - start
    scorer.variance(frames)  # warm-up
    sigma_s = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        scorer.variance(frames)
        _sync(device)
        sigma_s.append(time.perf_counter() - start)
    cutoff = model_cutoff(model)
    seed_fragments = [fragment_count(t.walker.atoms, cutoff) for t in ended]
    guard_s = []
    for _ in range(repeats):
        start = time.perf_counter()
        for frame, fragments in zip(frames, seed_fragments, strict=True):
            unphysical(
                frame,
                min_distance=settings.min_distance,
                fragment_cutoff=cutoff,
                seed_fragments=fragments,
            )
        guard_s.append(time.perf_counter() - start)
    per_frame = min(sigma_s) / len(frames)
    return {
        "signal": "activation",
        "labelled_structures": len(labelled),
        "frames": len(frames),
        "fit_s": fit_s,
        "sigma_s_per_frame": per_frame,
        "guards_s_per_frame": min(guard_s) / len(frames),
        "sigma_s_per_walker_step": per_frame / sample_every,
    }


def machine_info(device: str, threads: int) -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "load_average_1m_at_start": os.getloadavg()[0],
        "torch_threads": torch.get_num_threads(),
        "requested_threads": threads,
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "mace": getattr(mace, "__version__", None),
    }
    import ase

    info["ase"] = ase.__version__
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def load_torch_sim(path: str):
    """Import torch-sim from a scratch folder; (module, None) or (None, error text)."""
    if path and path not in sys.path:
        sys.path.insert(0, path)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            import torch_sim as ts
            import torch_sim.models.mace
        return ts, None
    except Exception as exc:  # recorded in the results
        return None, f"{type(exc).__name__}: {exc}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--walkers", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--steps", type=int, default=50, help="MD steps per walker (timed)")
    parser.add_argument("--sample-every", type=int, default=10)
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per measurement; the best is kept"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        nargs="+",
        default=["float32"],
        help="model dtypes to measure, in turn (tasks/explore.py loads float64, load_model's default)",
    )
    parser.add_argument("--model", default=SHIPPED)
    parser.add_argument("--seeds", default=SEEDS)
    parser.add_argument(
        "--torch-sim", action="store_true", help="also measure torch-sim's batched Langevin"
    )
    parser.add_argument(
        "--torch-sim-path",
        default=os.path.join(tempfile.gettempdir(), "tsim-pkgs"),
        help="folder torch-sim is installed in (pip install --target)",
    )
    parser.add_argument("--no-judge-cost", action="store_true", help="skip the σ-scoring cost")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {args.device}: CUDA is not available on this machine; not measured.")
        return 0
    torch.set_num_threads(args.threads)
    engines_module.ModelCalculator = (
        _CountingCalculator  # count model calls (the engine builds one per run)
    )
    engines_module.SplitCalculator = _CountingSplitCalculator  # periodic walkers, batched

    with contextlib.redirect_stdout(sys.stderr):
        path, _ = starting_weights(args.model, MODELS_DIR)
        model = load_model(path, device=args.device, dtype=torch.float32)
    seeds = read(args.seeds, ":")
    ts, ts_error = (
        load_torch_sim(args.torch_sim_path)
        if args.torch_sim
        else (None, "not requested (--torch-sim)")
    )
    ts_version = None
    if ts is not None:
        from importlib.metadata import version

        with contextlib.suppress(Exception):
            ts_version = version("torch-sim-atomistic")

    defaults = Exploration()
    results = {
        "command": "python -m benchmarks.exploration_speed "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(args.device, args.threads),
        "model": {
            "file": args.model,
            "weights": str(path),
            "dtypes": args.dtype,
            "parameters": sum(p.numel() for p in model.parameters()),
            "r_max": model_cutoff(model),
            "class": type(model).__name__,
        },
        "molecules": [
            {"name": a.info.get("name", a.get_chemical_formula()), "atoms": len(a)} for a in seeds
        ],
        "settings": {
            "steps": args.steps,
            "sample_every": args.sample_every,
            "repeats": args.repeats,
            "timestep_fs": defaults.timestep_fs,
            "friction_per_fs": defaults.friction_per_fs,
            "temperatures_K": list(defaults.temperatures_K),
            "judge": "trivial (σ 0, never stops)",
        },
        "torch_sim": {
            "version": ts_version,
            "error": ts_error,
            "path": args.torch_sim_path if args.torch_sim else None,
        },
        "walkers": [],
        "judge_cost": [],
    }
    for dtype_name in args.dtype:
        dtype = getattr(torch, dtype_name)
        with contextlib.redirect_stdout(sys.stderr):
            model = load_model(path, device=args.device, dtype=dtype)
        print(f"\nmodel dtype {dtype_name}")
        measure(args, model, seeds, ts, dtype, dtype_name, results)
    if ts_error and args.torch_sim:
        print(f"\ntorch-sim not measured: {ts_error}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        roots = [
            *path_roots(out=Path(args.out).parent),
            (str(Path(MODELS_DIR).resolve()), "<models_dir>"),
            (str(Path(args.torch_sim_path).resolve()), "<torch_sim_path>"),
        ]
        roots.sort(key=lambda pair: len(pair[0]), reverse=True)
        Path(args.out).write_text(json.dumps(portable_paths(results, roots), indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 0


def measure(args, model, seeds, ts, dtype, dtype_name: str, results: dict) -> None:
    """Time every walker count for one model dtype; rows go to ``results``."""
    header = (
        f"{'N':>3} {'atoms':>5} | {'one-at-a-time':>13} {'batched':>9} {'torch-sim':>9} | "
        f"{'batched/one':>11} {'tsim/batched':>12}   (MD steps/s/walker; model calls/step one|batched|tsim)"
    )
    print(header)
    print("-" * len(header))
    for n in args.walkers:
        row = {"dtype": dtype_name, "walkers": n}
        row["one_at_a_time"] = time_ase(
            model, seeds, n, args.steps, False, args.sample_every, args.repeats, args.device
        )
        row["batched"] = time_ase(
            model, seeds, n, args.steps, True, args.sample_every, args.repeats, args.device
        )
        row["atoms"] = row["batched"].pop("atoms")
        row["one_at_a_time"].pop("atoms")
        if ts is not None:
            try:
                row["torch_sim"] = time_torch_sim(
                    ts,
                    model,
                    seeds,
                    n,
                    args.steps,
                    args.sample_every,
                    args.repeats,
                    args.device,
                    dtype,
                )
            except Exception as exc:  # recorded in the results
                row["torch_sim"] = {"error": f"{type(exc).__name__}: {exc}"}
        one = row["one_at_a_time"]["steps_per_s_per_walker"]
        batched = row["batched"]["steps_per_s_per_walker"]
        row["batched_over_one_at_a_time"] = batched / one
        tsim = row.get("torch_sim", {}).get("steps_per_s_per_walker")
        row["torch_sim_over_batched"] = tsim / batched if tsim else None
        results["walkers"].append(row)
        calls = "|".join(
            f"{row[k]['model_calls_per_step']:.2f}"
            if "model_calls_per_step" in row.get(k, {})
            else "-"
            for k in ("one_at_a_time", "batched", "torch_sim")
        )
        print(
            f"{n:>3} {row['atoms']:>5} | {one:>13.1f} {batched:>9.1f} "
            f"{tsim if tsim else float('nan'):>9.1f} | {row['batched_over_one_at_a_time']:>11.2f} "
            f"{row['torch_sim_over_batched'] or float('nan'):>12.2f}   {calls}",
            flush=True,
        )

    if not args.no_judge_cost:
        cost = judge_cost(
            model,
            seeds,
            max(args.walkers),
            2 * args.sample_every,
            args.sample_every,
            args.repeats,
            args.device,
        )
        results["judge_cost"].append({"dtype": dtype_name, **cost})
        print(
            f"\nreal judge, per frame ({cost['frames']} frames, scorer fit on {cost['labelled_structures']} "
            f"structures in {cost['fit_s']:.2f} s): σ ({cost['signal']}) {1e3 * cost['sigma_s_per_frame']:.2f} ms, "
            f"guards {1e3 * cost['guards_s_per_frame']:.3f} ms; σ per walker-step at sample_every "
            f"{args.sample_every}: {1e3 * cost['sigma_s_per_walker_step']:.3f} ms"
        )


if __name__ == "__main__":
    sys.exit(main())

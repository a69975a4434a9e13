"""The benchmark's data: pool and test files drawn from labelled data, and the campaigns.

A labelled data set is subsampled (seeded) into a candidate pool file and a test file; the
campaigns use the ``replay`` oracle, which reveals a structure's stored label only when the
campaign labels it. Every method starts from the same pretrained model, the same initial set
(drawn by the campaign seed, so identical across methods for one seed), the same batch size,
rounds and fine-tune settings, and the same test set; targets are unreachable so the budget
decides the stop.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.methods import method_acquisition, method_slug
from benchmarks.spec import BenchmarkError, BenchmarkSpec
from tangentlab.config import FEATURELESS_METHODS

UNREACHABLE = 1e-6  # meV: targets no model meets, so the label budget decides the stop
# (with ``confidence: None``: no target is ever declared out of reach either)


def _acquisition(spec: BenchmarkSpec, method: str) -> dict[str, Any]:
    section = {**method_acquisition(method), "batch_size": spec.batch_size}
    # each setting only where the method reads it (a campaign refuses one without effect)
    if section.get("signal") == "committee":
        section["committee_size"] = spec.committee_size
    if spec.regularization is not None and section.get("signal") not in FEATURELESS_METHODS:
        section["regularization"] = spec.regularization
    return section


def _read(path: str | Path):
    import ase.io

    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"data file not found: {path}")
    return ase.io.read(path, ":")


def read_labelled(path: str | Path):
    """The structures of a labelled file with their stored energy and forces copied into
    ``info["energy"]`` and ``arrays["forces"]`` (what the fine-tuning and the error metrics
    read; a prepared replay file keeps them on a SinglePointCalculator)."""
    from tangentlab.oracles.replay import stored_energy_forces

    frames = _read(path)
    for i, atoms in enumerate(frames):
        energy, forces = stored_energy_forces(atoms)
        if energy is None:
            raise BenchmarkError(f"structure {i} of {path} has no stored energy and forces")
        atoms.info["energy"], atoms.arrays["forces"] = energy, forces
    return frames


def _check_labels(frames, path: str | Path, forces: bool = True) -> None:
    from tangentlab.oracles.replay import stored_energy, stored_forces

    for i, atoms in enumerate(frames):
        if stored_energy(atoms) is None:
            raise BenchmarkError(f"structure {i} of {path} has no stored energy (replay needs labels)")
        if forces and stored_forces(atoms) is None:
            raise BenchmarkError(f"structure {i} of {path} has no stored forces (replay needs labels)")


def even_draw(
    groups: Sequence[Sequence[int]], size: int, rng: np.random.Generator
) -> list[list[int]]:
    """
    Draw ``size`` items spread evenly over groups (a group with too few gives all it has).

    Parameters
    ----------
    groups
        Candidate indices per group.
    size
        Total to draw.
    rng
        Generator.

    Returns
    -------
    list[list[int]]
        Sorted picks per group.
    """
    quota = [0] * len(groups)
    remaining = size
    open_groups = [g for g in range(len(groups)) if len(groups[g]) > 0]
    while remaining > 0 and open_groups:
        share = max(remaining // len(open_groups), 1)
        for g in list(open_groups):
            take = min(share, len(groups[g]) - quota[g], remaining)
            quota[g] += take
            remaining -= take
            if quota[g] == len(groups[g]):
                open_groups.remove(g)
            if remaining == 0:
                break
    return [
        sorted(int(i) for i in rng.choice(np.asarray(group), size=q, replace=False)) if q else []
        for group, q in zip(groups, quota)
    ]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare_data(spec: BenchmarkSpec) -> dict[str, Any]:
    """
    Write the pool and test files of a benchmark (once; later calls reuse and check them).

    The pool is drawn evenly from the pool files (after the ``low_energy`` filter when asked),
    the test set evenly from the test files, both with ``data.data_seed``. Every frame keeps its
    stored energy and forces (the replay oracle reveals them), plus ``info["source_file"]``;
    test frames also get ``info["ts_region"]``: the frame lies in the top ``ts_fraction`` of its
    file's energy range (near the transition state of an IRC).

    Parameters
    ----------
    spec
        The benchmark.

    Returns
    -------
    dict
        ``pool_file``, ``test_file``, sizes per source file, sha256 of both files, and
        ``pool_candidates``: the distinct pool structures that are not test structures, which
        is what a campaign draws its initial set from and picks among (a campaign merges
        repeated frames and takes test structures out of its pool).

    Raises
    ------
    BenchmarkError
        A data file is missing or unlabelled, or the files written earlier were changed.
    """
    out = Path(spec.work_dir) / spec.name / "data"
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        for key in ("pool_file", "test_file"):
            if _sha256(Path(manifest[key])) != manifest[f"{key}_sha256"]:
                raise BenchmarkError(
                    f"{manifest[key]} changed since it was prepared; use a new work_dir"
                )
        if manifest["data"] != spec.data.model_dump():
            raise BenchmarkError(
                f"{out} was prepared with other data settings; use a new name or work_dir"
            )
        return manifest
    import ase.io

    from tangentlab.oracles.replay import stored_energy

    data = spec.data
    rng = np.random.default_rng([data.data_seed, 7])
    pool_frames, pool_counts = [], {}
    groups, loaded = [], []
    for path in data.pool_files:
        frames = _read(path)
        _check_labels(frames, path)
        keep = np.arange(len(frames))
        if data.pool_filter == "low_energy":
            energies = np.array([stored_energy(a) for a in frames])
            keep = keep[energies <= np.quantile(energies, data.low_energy_quantile)]
        groups.append(keep)
        loaded.append(frames)
    for path, frames, picks in zip(data.pool_files, loaded, even_draw(groups, data.pool_size, rng)):
        for i in picks:
            frames[i].info["source_file"] = Path(path).name
            pool_frames.append(frames[i])
        pool_counts[Path(path).name] = len(picks)
    del loaded
    test_frames, test_counts = [], {}
    loaded = [_read(p) for p in data.test_files]
    for path, frames in zip(data.test_files, loaded):
        _check_labels(frames, path)
        energies = np.array([stored_energy(a) for a in frames])
        high = energies.max() - data.ts_fraction * (energies.max() - energies.min())
        for atoms, energy in zip(frames, energies):
            atoms.info["ts_region"] = bool(energy >= high)
            atoms.info["source_file"] = Path(path).name
    picks_per_file = even_draw([np.arange(len(f)) for f in loaded], data.test_size, rng)
    for path, frames, picks in zip(data.test_files, loaded, picks_per_file):
        test_frames.extend(frames[i] for i in picks)
        test_counts[Path(path).name] = len(picks)
    out.mkdir(parents=True, exist_ok=True)
    pool_file, test_file = out / "pool.extxyz", out / "test.extxyz"
    ase.io.write(pool_file, pool_frames, format="extxyz")
    ase.io.write(test_file, test_frames, format="extxyz")
    manifest = {
        "pool_file": str(pool_file),
        "test_file": str(test_file),
        "pool_file_sha256": _sha256(pool_file),
        "test_file_sha256": _sha256(test_file),
        "pool_size": len(pool_frames),
        "test_size": len(test_frames),
        "test_ts_region": int(sum(a.info["ts_region"] for a in test_frames)),
        "pool_candidates": pool_candidates(pool_frames, test_frames),
        "pool_per_file": pool_counts,
        "test_per_file": test_counts,
        "data": data.model_dump(),
    }
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return manifest




def pool_candidates(pool_frames, test_frames) -> int:
    """Distinct pool structures (by `tangentlab.structures.content_hash`) not in the test set."""
    from tangentlab.structures import content_hash

    test = {content_hash(a) for a in test_frames}
    return len({content_hash(a) for a in pool_frames} - test)


def campaign_name(spec: BenchmarkSpec, method: str, seed: int) -> str:
    """``<bench>-<method>-s<seed>``."""
    return f"{spec.name}-{method_slug(method)}-s{seed}"


def campaign_configs(spec: BenchmarkSpec, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """
    One campaign configuration per seed and method (seed-major, so early results span methods).

    Everything but the acquisition method (and the name) is the same within a seed; targets are
    unreachable so each campaign spends exactly the label budget.

    Returns
    -------
    list[dict]
        Configurations for `flows.campaign.campaign`.
    """
    configs = []
    for seed in spec.seeds:
        for method in spec.methods:
            configs.append(
                {
                    "name": campaign_name(spec, method, seed),
                    "pool": [manifest["pool_file"]],
                    "test_file": manifest["test_file"],
                    "initial_size": spec.initial_size,
                    "valid_fraction": spec.valid_fraction,
                    "model": spec.model,
                    "work_dir": str(Path(spec.work_dir) / spec.name / "runs"),
                    "seed": seed,
                    "device": spec.device,
                    "targets": {
                        "energy_mae_mev_per_atom": UNREACHABLE,
                        "force_mae_mev_per_a": UNREACHABLE,
                        # no "out of reach" stop either: every method spends the whole budget
                        "confidence": None,
                    },
                    "budgets": {
                        "max_labels": spec.budget,
                        "max_rounds": spec.rounds,
                        "max_wall_time_s": 1e9,
                    },
                    "oracle": {"name": "replay"},
                    "acquisition": _acquisition(spec, method),
                    "qm": {"max_attempts": 1, "timeout_s": 600},
                    "finetune": dict(spec.finetune),
                }
            )
    return configs

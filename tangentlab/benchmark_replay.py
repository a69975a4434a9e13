"""Replay benchmark: every acquisition method on a labelled data set replayed as the pool.

A labelled data set is subsampled (seeded) into a candidate pool file and a test file; the
campaigns use the ``replay`` oracle, which reveals a structure's stored label only when the
campaign labels it. Every method starts from the same pretrained model, the same initial set
(drawn by the campaign seed, so identical across methods for one seed), the same batch size,
rounds and fine-tune settings, and the same test set; targets are unreachable so the budget
decides the stop. This module holds the pure logic: data preparation, campaign
configurations, learning curves from the database, labels-to-reach, calibration numbers and
plots. ``flows/benchmark.py`` runs the campaigns and ``tangentlab benchmark replay`` is the
command.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tangentlab.config import SHIPPED_MODEL, shipped_file

#: Every method of the comparison, in report order (config ``acquisition.method`` names).
METHODS = (
    "random",
    "committee",
    "fixed_descriptor",
    "descriptor",
    "activation",
    "ntk",
    "force_ntk",
    "energy_force_ntk",
)
METHOD_LABELS = {
    "random": "random",
    "committee": "committee (force std)",
    "fixed_descriptor": "fixed descriptor (ACSF)",
    "descriptor": "random-init MACE activations",
    "activation": "activation kernel",
    "ntk": "energy NTK",
    "force_ntk": "force NTK",
    "energy_force_ntk": "joint energy-force NTK",
}
UNREACHABLE = 1e-6  # meV: targets no model meets, so the label budget decides the stop
SHARED_DATA = Path("/work/shared/data")
TUTORIAL_MODEL = Path("/work/shared/models/mace-tutorial-hco-swa.model")
H2_CHANNELS = ("01", "02", "03", "04", "08", "09", "10")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(_Section):
    """Where the pool and the test set come from and how they are subsampled."""

    pool_files: list[str] = Field(
        min_length=1, description="Labelled files replayed as the candidate pool."
    )
    test_files: list[str] = Field(
        min_length=1, description="Labelled files the test set is drawn from."
    )
    pool_size: int = Field(
        800, gt=0, description="Pool structures, drawn evenly from the pool files."
    )
    test_size: int = Field(
        200, gt=0, description="Test structures, drawn evenly from the test files."
    )
    pool_filter: Literal["none", "low_energy"] = Field(
        "none",
        description="'low_energy': keep only frames below the file's energy quantile (pool shift).",
    )
    low_energy_quantile: float = Field(0.3, gt=0, le=1)
    ts_fraction: float = Field(
        0.34,
        gt=0,
        le=1,
        description=(
            "Test frames in the top fraction of their file's energy range are flagged "
            "ts_region (report only)."
        ),
    )
    data_seed: int = Field(
        0, description="Seed of the subsampling (the same files for every method and seed)."
    )
    path_file: str | None = Field(
        None, description="Energies-only path (e.g. a NEB) predicted by each final model."
    )


class BenchmarkSpec(_Section):
    """One benchmark configuration: data, methods, seeds, budget and fine-tune settings."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    data: DataSpec
    methods: list[str] = Field(default_factory=lambda: list(METHODS))
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    model: str = Field(default_factory=lambda: shipped_file(SHIPPED_MODEL))
    initial_size: int = Field(20, gt=0)
    batch_size: int = Field(15, gt=0)
    rounds: int = Field(3, gt=0, description="Acquisition rounds after the initial set.")
    device: str = "cpu"
    work_dir: str = "/tmp/tangentlab-benchmark"
    committee_size: int = Field(3, ge=2)
    regularization: float = Field(1e-2, gt=0)
    valid_fraction: float = Field(0.15, ge=0, lt=1)
    finetune: dict[str, Any] = Field(default_factory=lambda: {"max_epochs": 15, "patience": 5})

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
        if "random" not in value:
            raise ValueError("methods must include 'random' (the reference of labels-to-reach)")
        return value

    @property
    def budget(self) -> int:
        """Training + validation labels at the end: the initial set plus every batch."""
        return self.initial_size + self.rounds * self.batch_size


class BenchmarkError(ValueError):
    """A benchmark specification or data set that cannot be used; the message says why."""


def make_spec(data: dict[str, Any]) -> BenchmarkSpec:
    """Validate a specification mapping; raise :class:`BenchmarkError` naming each problem."""
    try:
        return BenchmarkSpec.model_validate(data)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in exc.errors()
        ]
        raise BenchmarkError("invalid benchmark specification: " + "; ".join(problems)) from None


def presets(data_root: Path = SHARED_DATA) -> dict[str, dict[str, Any]]:
    """
    The benchmark configurations of ``docs/benchmarks`` (CPU sizes; scale with options).

    Returns
    -------
    dict
        Name -> specification mapping.
    """
    h2 = data_root / "h2combustion"
    acac = data_root / "acac"
    h2_data = {
        "pool_files": [str(h2 / f"pool_rxn{c}.extxyz") for c in H2_CHANNELS],
        "test_files": [str(h2 / f"irc_rxn{c}.extxyz") for c in H2_CHANNELS],
        "pool_size": 200,
        "test_size": 120,
    }
    return {
        "h2combustion": {"name": "h2combustion", "data": h2_data},
        "h2combustion-shift": {
            "name": "h2combustion-shift",
            "data": {**h2_data, "pool_filter": "low_energy", "low_energy_quantile": 0.3},
        },
        "h2combustion-tutorial": {
            "name": "h2combustion-tutorial",
            "data": h2_data,
            "model": str(TUTORIAL_MODEL),
        },
        "acac": {
            "name": "acac",
            "data": {
                "pool_files": [str(acac / "train_300K.xyz"), str(acac / "train_600K.xyz")],
                "test_files": [str(acac / "test_MD_300K.xyz"), str(acac / "test_MD_600K.xyz")],
                "pool_size": 200,
                "test_size": 120,
                "path_file": str(acac / "test_H_transfer.xyz"),
            },
        },
    }


# ---------------------------------------------------------------- data preparation


def _read(path: str | Path):
    import ase.io

    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"data file not found: {path}")
    return ase.io.read(path, ":")


def _check_labels(frames, path: str | Path, forces: bool = True) -> None:
    for i, atoms in enumerate(frames):
        has_energy = "energy" in atoms.info or (
            atoms.calc is not None and "energy" in atoms.calc.results
        )
        if not has_energy:
            raise BenchmarkError(
                f"structure {i} of {path} has no stored energy (replay needs labels)"
            )
        if (
            forces
            and "forces" not in atoms.arrays
            and (atoms.calc is None or "forces" not in atoms.calc.results)
        ):
            raise BenchmarkError(
                f"structure {i} of {path} has no stored forces (replay needs labels)"
            )


def _energy(atoms) -> float:
    if "energy" in atoms.info:
        return float(atoms.info["energy"])
    return float(atoms.calc.results["energy"])


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
        ``pool_file``, ``test_file``, sizes per source file, sha256 of both files.

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

    data = spec.data
    rng = np.random.default_rng([data.data_seed, 7])
    pool_frames, pool_counts = [], {}
    groups, loaded = [], []
    for path in data.pool_files:
        frames = _read(path)
        _check_labels(frames, path)
        keep = np.arange(len(frames))
        if data.pool_filter == "low_energy":
            energies = np.array([_energy(a) for a in frames])
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
        energies = np.array([_energy(a) for a in frames])
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
        "pool_per_file": pool_counts,
        "test_per_file": test_counts,
        "data": data.model_dump(),
    }
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return manifest


# ---------------------------------------------------------------- campaign configurations


def campaign_name(spec: BenchmarkSpec, method: str, seed: int) -> str:
    """``<bench>-<method>-s<seed>``."""
    return f"{spec.name}-{method}-s{seed}"


def campaign_configs(spec: BenchmarkSpec, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """
    One campaign configuration per seed and method (seed-major, so early results span methods).

    Everything but ``acquisition.method`` (and the name) is the same within a seed; targets are
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
                    },
                    "budgets": {
                        "max_labels": spec.budget,
                        "max_rounds": spec.rounds,
                        "max_wall_time_s": 1e9,
                    },
                    "oracle": {"name": "replay"},
                    "acquisition": {
                        "method": method,
                        "batch_size": spec.batch_size,
                        "regularization": spec.regularization,
                        "committee_size": spec.committee_size,
                    },
                    "qm": {"max_attempts": 1, "timeout_s": 600},
                    "finetune": dict(spec.finetune),
                }
            )
    return configs


# ---------------------------------------------------------------- analysis


def learning_curve(report: dict[str, Any]) -> dict[str, list[float]]:
    """
    Labels and test errors after every evaluated round, from `db.repository.campaign_report`.

    Returns
    -------
    dict
        ``labels`` (training + validation labels after the round), ``energy`` (meV/atom),
        ``force`` (meV/Å), ``acquire_s`` (per acquisition round, round 0 excluded).
    """
    labels, energy, force, acquire = [], [], [], []
    total = 0
    for r in report["rounds"]:
        total += r["selected"]
        if r["force_mae_mev_per_a"] is None:
            continue
        labels.append(total)
        energy.append(r["energy_mae_mev_per_atom"])
        force.append(r["force_mae_mev_per_a"])
        if r["number"] > 0:
            acquire.append(float(r["timings"].get("acquire_s", 0.0)))
    return {"labels": labels, "energy": energy, "force": force, "acquire_s": acquire}


def labels_to_reach(
    labels: Sequence[float], errors: Sequence[float], target: float
) -> float | None:
    """
    Labels at which a learning curve first reaches ``target`` (linear interpolation).

    Parameters
    ----------
    labels
        Increasing label counts.
    errors
        Error after each count.
    target
        Error to reach.

    Returns
    -------
    float or None
        The interpolated label count; None when the curve never reaches the target.
    """
    labels = np.asarray(labels, dtype=float)
    errors = np.asarray(errors, dtype=float)
    if labels.shape != errors.shape or labels.size == 0:
        raise ValueError(
            f"labels {labels.shape} and errors {errors.shape} must be equal, non-empty"
        )
    if errors[0] <= target:
        return float(labels[0])
    for i in range(1, len(errors)):
        if errors[i] <= target:
            frac = (errors[i - 1] - target) / (errors[i - 1] - errors[i])
            return float(labels[i - 1] + frac * (labels[i] - labels[i - 1]))
    return None


def _mean_curves(
    curves: list[dict[str, list[float]]], key: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, mean and std over seeds of one error, on the label points every curve has."""
    common = sorted(set.intersection(*(set(c["labels"]) for c in curves)))
    values = np.array([[c[key][c["labels"].index(x)] for x in common] for c in curves])
    return np.asarray(common, float), values.mean(axis=0), values.std(axis=0)


def comparison_table(curves: dict[str, list[dict[str, list[float]]]]) -> dict[str, dict[str, Any]]:
    """
    Per method and error: final error, labels to reach random's final error, reduction.

    The target is random acquisition's mean error (over seeds) at the end of its budget; the
    labels a method needs are read off its mean curve (`labels_to_reach`), and the reduction
    is ``1 - labels / labels_random`` with random's own count read the same way. Per-seed
    counts (each seed's curve against the same target) give the spread.

    Parameters
    ----------
    curves
        Method -> learning curves (one per finished seed).

    Returns
    -------
    dict
        Method -> {"energy": {...}, "force": {...}, "seeds": n}.
    """
    if "random" not in curves or not curves["random"]:
        raise ValueError("the table needs finished random campaigns (the reference)")
    table: dict[str, dict[str, Any]] = {}
    for key in ("energy", "force"):
        x_ref, mean_ref, _ = _mean_curves(curves["random"], key)
        target = float(mean_ref[-1])
        random_labels = labels_to_reach(x_ref, mean_ref, target)
        for method, method_curves in curves.items():
            if not method_curves:
                continue
            x, mean, _ = _mean_curves(method_curves, key)
            needed = labels_to_reach(x, mean, target)
            per_seed = [labels_to_reach(c["labels"], c[key], target) for c in method_curves]
            finals = [c[key][-1] for c in method_curves]
            table.setdefault(method, {"seeds": len(method_curves)})[key] = {
                "final_mean": float(np.mean(finals)),
                "final_std": float(np.std(finals)),
                "final_min": float(np.min(finals)),
                "final_max": float(np.max(finals)),
                "budget": float(x[-1]),
                "random_target": target,
                "labels_to_reach": needed,
                "random_labels_to_reach": random_labels,
                "reduction_vs_random": None if needed is None else 1.0 - needed / random_labels,
                "per_seed_labels_to_reach": per_seed,
                **_paired(method_curves, curves["random"], key),
            }
    return table


def _paired(method_curves: list[dict], random_curves: list[dict], key: str) -> dict[str, Any]:
    """
    Seed-paired labels-to-reach: each seed against random's final error with the same seed.

    The initial set differs between seeds and dominates the error at small budgets, so the
    mean-curve comparison can be decided by one unlucky seed; pairing by seed compares
    methods that started from the same initial set. Curves need a ``seed`` key (seeds
    without a random campaign are skipped).

    Returns
    -------
    dict
        ``paired_labels`` and ``paired_reduction`` per seed (None: not reached within the
        budget), ``paired_reduction_mean`` over the seeds that reached it and
        ``paired_not_reached`` (count).
    """
    by_seed = {c.get("seed"): c for c in random_curves}
    labels, reductions = {}, {}
    for curve in method_curves:
        reference = by_seed.get(curve.get("seed"))
        if reference is None or curve.get("seed") is None:
            continue
        target = reference[key][-1]
        own = labels_to_reach(reference["labels"], reference[key], target)
        needed = labels_to_reach(curve["labels"], curve[key], target)
        labels[str(curve["seed"])] = needed
        reductions[str(curve["seed"])] = None if needed is None else 1.0 - needed / own
    reached = [r for r in reductions.values() if r is not None]
    return {
        "paired_labels": labels,
        "paired_reduction": reductions,
        "paired_reduction_mean": float(np.mean(reached)) if reached else None,
        "paired_not_reached": sum(r is None for r in reductions.values()),
    }


def spearman(predicted: Sequence[float], actual: Sequence[float]) -> float:
    """Spearman rank correlation (NaN when either side is constant or fewer than 3 points)."""
    from scipy.stats import spearmanr

    predicted, actual = np.asarray(predicted, float), np.asarray(actual, float)
    ok = np.isfinite(predicted) & np.isfinite(actual)
    if ok.sum() < 3 or np.ptp(predicted[ok]) == 0 or np.ptp(actual[ok]) == 0:
        return float("nan")
    return float(spearmanr(predicted[ok], actual[ok]).statistic)


def per_structure_errors(preds, atoms_list) -> tuple[np.ndarray, np.ndarray]:
    """Per-structure |energy error| per atom (meV/atom) and force MAE (meV/Å)."""
    energy = np.array(
        [1e3 * abs(e - a.info["energy"]) / len(a) for (e, _), a in zip(preds, atoms_list)]
    )
    force = np.array(
        [1e3 * np.abs(f - a.arrays["forces"]).mean() for (_, f), a in zip(preds, atoms_list)]
    )
    return energy, force


def path_errors(
    predicted: Sequence[float], reference: Sequence[float], natoms: int
) -> dict[str, float]:
    """
    Errors of a predicted energy path (e.g. a NEB) against the reference path.

    Energies are compared relative to each path's first frame, so a constant offset (reference
    energies) does not count; the barrier is the highest frame minus the first.

    Returns
    -------
    dict
        ``relative_mae_mev`` (per frame, meV, whole molecule), ``relative_mae_mev_per_atom``,
        ``barrier_ref_mev``, ``barrier_pred_mev``, ``barrier_error_mev``.
    """
    pred = np.asarray(predicted, float) - predicted[0]
    ref = np.asarray(reference, float) - reference[0]
    mae = float(np.mean(np.abs(pred - ref))) * 1e3
    return {
        "relative_mae_mev": mae,
        "relative_mae_mev_per_atom": mae / natoms,
        "barrier_ref_mev": float(ref.max()) * 1e3,
        "barrier_pred_mev": float(pred.max()) * 1e3,
        "barrier_error_mev": float(pred.max() - ref.max()) * 1e3,
        "frames": int(len(ref)),
    }


def plot_learning_curves(
    curves: dict[str, list[dict[str, list[float]]]], path: Path, title: str
) -> Path:
    """
    Energy and force MAE vs labels: mean over seeds with the min–max band.

    Returns
    -------
    Path
        The PNG written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.get_cmap("tab10")
    for number, method in enumerate(m for m in METHODS if curves.get(m)):
        for ax, key in zip(axes, ("energy", "force")):
            x, mean, _ = _mean_curves(curves[method], key)
            values = np.array([[c[key][c["labels"].index(v)] for v in x] for c in curves[method]])
            style = "--" if method in ("random", "committee") else "-"
            ax.plot(
                x,
                mean,
                style,
                marker="o",
                ms=3,
                color=colors(number),
                label=f"{METHOD_LABELS[method]} (n={len(curves[method])})",
            )
            ax.fill_between(
                x, values.min(axis=0), values.max(axis=0), color=colors(number), alpha=0.07
            )
    axes[0].set_ylabel("test energy MAE (meV/atom)")
    axes[1].set_ylabel("test force MAE (meV/Å)")
    for ax in axes:
        ax.set_xlabel("labels (training + validation)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"{title}: mean over seeds, band = min–max")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def markdown_table(results: dict[str, Any]) -> str:
    """The README table of a benchmark's results."""
    table, calibration, timing = (
        results["table"],
        results["calibration"],
        results["acquisition_time"],
    )
    lines = [
        "| method | seeds | energy MAE at budget (meV/atom) | labels to random's E "
        "| E reduction (mean curves) | E reduction paired by seed "
        "| force MAE at budget (meV/Å) | labels to random's F | F reduction (mean curves) "
        "| F reduction paired by seed | Spearman σ vs force err. | acquisition s/round |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---|---:|---:|",
    ]

    def reach(entry: dict[str, Any]) -> tuple[str, str]:
        if entry["labels_to_reach"] is None:
            return f"> {entry['budget']:.0f}", "not reached"
        return f"{entry['labels_to_reach']:.1f}", f"{100 * entry['reduction_vs_random']:+.0f}%"

    def paired(entry: dict[str, Any]) -> str:
        seeds = entry.get("paired_reduction", {})
        return " / ".join("n.r." if r is None else f"{100 * r:+.0f}%" for r in seeds.values())

    for method in METHODS:
        if method not in table:
            continue
        e, f = table[method]["energy"], table[method]["force"]
        e_labels, e_red = reach(e)
        f_labels, f_red = reach(f)
        cal = calibration.get(method, {})
        rho = cal.get("force_spearman_mean")
        rho_text = "n/a" if rho is None else f"{rho:.2f} ± {cal['force_spearman_std']:.2f}"
        acq = timing.get(method, {}).get("acquire_s_per_round_mean")
        lines.append(
            f"| {METHOD_LABELS[method]} | {table[method]['seeds']} "
            f"| {e['final_mean']:.1f} ± {e['final_std']:.1f} | {e_labels} | {e_red} | {paired(e)} "
            f"| {f['final_mean']:.1f} ± {f['final_std']:.1f} | {f_labels} | {f_red} | {paired(f)} "
            f"| {rho_text} | {'' if acq is None else f'{acq:.1f}'} |"
        )
    return "\n".join(lines)


def summarize(
    spec: BenchmarkSpec, reports: dict[str, dict[str, Any]], evaluations: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """
    The benchmark's results from the campaign reports and the final-model evaluations.

    Parameters
    ----------
    spec
        The benchmark.
    reports
        Campaign name -> `db.repository.campaign_report` (finished campaigns).
    evaluations
        Campaign name -> the final model's stored ``benchmark`` metrics (calibration etc.).

    Returns
    -------
    dict
        ``curves``, ``table``, ``calibration``, ``acquisition_time``, ``path`` (when the spec
        has a path file), ``ts_region`` (final force MAE on the flagged test frames) and
        ``campaigns`` (status and wall time of each).
    """
    curves: dict[str, list[dict[str, list[float]]]] = {m: [] for m in spec.methods}
    calibration: dict[str, dict[str, Any]] = {}
    timing: dict[str, dict[str, Any]] = {}
    path: dict[str, dict[str, Any]] = {}
    ts: dict[str, dict[str, Any]] = {}
    campaigns = {}
    for method in spec.methods:
        rhos, rhos_e, acquire, committee_train, path_rows, ts_rows, rest_rows = (
            [],
            [],
            [],
            [],
            [],
            [],
            [],
        )
        for seed in spec.seeds:
            name = campaign_name(spec, method, seed)
            report = reports.get(name)
            if report is None or report["status"] not in ("budget_exhausted", "targets_met"):
                continue
            curve = {**learning_curve(report), "seed": seed}
            curves[method].append(curve)
            campaigns[name] = {
                "status": report["status"],
                "reason": report["stop_reason"],
                # round_wall_s covers label + fine-tune + evaluate; acquisition is timed apart
                "wall_s": sum(
                    r["timings"].get("round_wall_s", 0.0) + r["timings"].get("acquire_s", 0.0)
                    for r in report["rounds"]
                ),
                "curve": curve,
            }
            acquire.extend(curve["acquire_s"])
            committee_train.extend(
                r["timings"].get("committee_training_s", 0.0) for r in report["rounds"][1:]
            )
            evaluation = evaluations.get(name) or {}
            if evaluation.get("force_spearman") is not None:
                rhos.append(evaluation["force_spearman"])
                rhos_e.append(evaluation["energy_spearman"])
            if evaluation.get("path"):
                path_rows.append(evaluation["path"])
            if evaluation.get("ts_force_mae") is not None:
                ts_rows.append(evaluation["ts_force_mae"])
                rest_rows.append(evaluation["other_force_mae"])
        finite = [r for r in rhos if np.isfinite(r)]
        calibration[method] = (
            {}
            if not finite
            else {
                "force_spearman_mean": float(np.mean(finite)),
                "force_spearman_std": float(np.std(finite)),
                "energy_spearman_mean": float(np.nanmean(rhos_e)),
                "per_seed_force": rhos,
                "per_seed_energy": rhos_e,
            }
        )
        if acquire:
            timing[method] = {
                "acquire_s_per_round_mean": float(np.mean(acquire)),
                "acquire_s_total_mean": float(np.sum(acquire) / max(len(curves[method]), 1)),
                "committee_training_s_per_round_mean": float(np.mean(committee_train)),
            }
        if path_rows:
            path[method] = {
                key: float(np.mean([p[key] for p in path_rows])) for key in path_rows[0]
            }
            path[method]["barrier_error_std_mev"] = float(
                np.std([p["barrier_error_mev"] for p in path_rows])
            )
        if ts_rows:
            ts[method] = {
                "ts_force_mae_mean": float(np.mean(ts_rows)),
                "ts_force_mae_std": float(np.std(ts_rows)),
                "other_force_mae_mean": float(np.mean(rest_rows)),
            }
    finished = {m: c for m, c in curves.items() if c}
    results = {
        "name": spec.name,
        "spec": spec.model_dump(),
        "budget": spec.budget,
        "campaigns": campaigns,
        "table": comparison_table(finished) if finished.get("random") else {},
        "calibration": calibration,
        "acquisition_time": timing,
        "path": path,
        "ts_region": ts,
        "total_wall_s": float(sum(c["wall_s"] for c in campaigns.values())),
    }
    return results


# ---------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tangentlab benchmark replay",
        description="Replay a labelled data set as the pool and compare every acquisition method "
        "(learning curves, labels-to-reach, calibration, acquisition time).",
    )
    parser.add_argument(
        "preset",
        nargs="?",
        default="h2combustion",
        help=f"built-in configuration: {', '.join(presets())} (default h2combustion)",
    )
    parser.add_argument(
        "--config", type=Path, help="YAML/JSON benchmark specification (replaces the preset)"
    )
    parser.add_argument("--name", help="benchmark name (campaign prefix, work-dir folder)")
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, help="methods (must include random)"
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, help="campaign seeds (initial set, training)"
    )
    parser.add_argument("--pool-size", type=int)
    parser.add_argument("--test-size", type=int)
    parser.add_argument("--initial-size", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--max-epochs", type=int, help="fine-tune epochs per round")
    parser.add_argument("--model", help="starting MACE .model (default: the shipped model)")
    parser.add_argument("--device", help="cpu or cuda")
    parser.add_argument(
        "--work-dir", help="campaign runs, prepared data and the benchmark database"
    )
    parser.add_argument(
        "--db", help="database URL (default sqlite:///<work-dir>/<name>/benchmark.db)"
    )
    parser.add_argument(
        "--out", type=Path, help="folder for results JSON, PNG and table (default: none)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--summary-only", action="store_true", help="only summarise finished campaigns"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    return parser


def spec_from_args(args: argparse.Namespace) -> BenchmarkSpec:
    """The specification an invocation asks for: preset or file, then the options on top."""
    if args.config:
        try:
            data = yaml.safe_load(args.config.read_text()) or {}
        except FileNotFoundError:
            raise BenchmarkError(f"benchmark configuration not found: {args.config}") from None
    else:
        known = presets()
        if args.preset not in known:
            raise BenchmarkError(f"unknown preset {args.preset!r}; choose from {sorted(known)}")
        data = json.loads(json.dumps(known[args.preset]))
    data.setdefault("data", {})
    for option, key in (("pool_size", "pool_size"), ("test_size", "test_size")):
        if getattr(args, option) is not None:
            data["data"][key] = getattr(args, option)
    for option in (
        "name",
        "methods",
        "seeds",
        "initial_size",
        "batch_size",
        "rounds",
        "model",
        "device",
        "work_dir",
    ):
        if getattr(args, option) is not None:
            data[option] = getattr(args, option)
    if args.max_epochs is not None:
        data["finetune"] = {**data.get("finetune", {"patience": 5}), "max_epochs": args.max_epochs}
    return make_spec(data)


def write_outputs(results: dict[str, Any], out: Path, command: str) -> list[Path]:
    """Results JSON (with the command), learning-curve PNG and the markdown table."""
    out.mkdir(parents=True, exist_ok=True)
    name = results["name"]
    results = {**results, "command": command}
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(results, indent=1, default=float))
    written = [json_path]
    curves = {
        m: [c["curve"] for n, c in results["campaigns"].items() if n.startswith(f"{name}-{m}-s")]
        for m in METHODS
    }
    if any(curves.values()):
        written.append(plot_learning_curves(curves, out / f"{name}.png", name))
    if results["table"]:
        table_path = out / f"{name}.md"
        table_path.write_text(markdown_table(results) + "\n")
        written.append(table_path)
    return written


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """
    ``tangentlab benchmark replay``: run (or resume) a benchmark, then summarise it.

    Returns
    -------
    dict
        The results (printed as JSON with ``--json``).
    """
    args = _parser().parse_args(argv)
    spec = spec_from_args(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from flows.benchmark import benchmark_replay

    results = benchmark_replay(
        spec=spec.model_dump(), database_url=args.db, run=not args.summary_only
    )
    command = "tangentlab benchmark replay " + " ".join(sys.argv[3:] if argv is None else argv)
    if args.out:
        results["outputs"] = [str(p) for p in write_outputs(results, args.out, command)]
    if args.json:
        print(json.dumps(results, indent=1, default=float))
    else:
        if results["table"]:
            print(markdown_table(results))
        print(
            f"{len(results['campaigns'])} finished campaigns, "
            f"{results['total_wall_s']:.0f} s of campaign wall time"
        )
    return results

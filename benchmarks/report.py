"""The benchmark's summary: per-method tables, calibration, timings, plots and files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.analysis import comparison_table, learning_curve, mean_curves
from benchmarks.data import campaign_name
from benchmarks.methods import method_label
from benchmarks.paths import path_roots, portable_paths
from benchmarks.spec import DATA_VARIABLE, BenchmarkSpec


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
    colors = plt.get_cmap("tab20" if len(curves) > 10 else "tab10")
    for number, method in enumerate(m for m in curves if curves.get(m)):
        for ax, key in zip(axes, ("energy", "force")):
            x, mean, _ = mean_curves(curves[method], key)
            values = np.array([[c[key][c["labels"].index(v)] for v in x] for c in curves[method]])
            style = "--" if method in ("random", "committee") else "-"
            ax.plot(
                x,
                mean,
                style,
                marker="o",
                ms=3,
                color=colors(number),
                label=f"{method_label(method)} (n={len(curves[method])})",
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
        "| F reduction paired by seed | F − random at budget, paired (95 % CI) "
        "| Spearman σ vs force err. | acquisition s/round |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---:|",
    ]

    def reach(entry: dict[str, Any]) -> tuple[str, str]:
        if entry["labels_to_reach"] is None:
            return f"> {entry['budget']:.0f}", "not reached"
        return f"{entry['labels_to_reach']:.1f}", f"{100 * entry['reduction_vs_random']:+.0f}%"

    def paired(entry: dict[str, Any]) -> str:
        seeds = entry.get("paired_reduction", {})
        return " / ".join("n.r." if r is None else f"{100 * r:+.0f}%" for r in seeds.values())

    def difference(entry: dict[str, Any]) -> str:
        final = (entry.get("paired_difference") or {}).get("final")
        if not final or final["mean"] is None:
            return "n/a"
        half = final["half_width"]
        return f"{final['mean']:+.1f}" + ("" if half is None else f" ± {half:.1f}")

    for method in table:
        e, f = table[method]["energy"], table[method]["force"]
        e_labels, e_red = reach(e)
        f_labels, f_red = reach(f)
        cal = calibration.get(method, {})
        rho = cal.get("force_spearman_mean")
        rho_text = "n/a" if rho is None else f"{rho:.2f} ± {cal['force_spearman_std']:.2f}"
        acq = timing.get(method, {}).get("acquire_s_per_round_mean")
        lines.append(
            f"| {method_label(method)} | {table[method]['seeds']} "
            f"| {e['final_mean']:.1f} ± {e['final_std']:.1f} | {e_labels} | {e_red} | {paired(e)} "
            f"| {f['final_mean']:.1f} ± {f['final_std']:.1f} | {f_labels} | {f_red} | {paired(f)} "
            f"| {difference(f)} "
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
                "method": method,
                "seed": seed,
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
    table = comparison_table(finished) if finished.get("random") else {}
    results = {
        "name": spec.name,
        "spec": spec.model_dump(),
        "budget": spec.budget,
        "campaigns": campaigns,
        "table": {m: table[m] for m in spec.methods if m in table},
        "calibration": calibration,
        "acquisition_time": timing,
        "path": path,
        "ts_region": ts,
        "total_wall_s": float(sum(c["wall_s"] for c in campaigns.values())),
    }
    return results


def write_outputs(
    results: dict[str, Any], out: Path, command: str, data_root: str | Path | None = None
) -> list[Path]:
    """Results JSON (with the command), learning-curve PNG and the markdown table.

    Paths in the JSON are stored relative to the data root, the work folder, the output
    folder or the repository (:mod:`benchmarks.paths`); ``data_root`` defaults to the
    ``TANGENTLAB_DATA`` environment variable.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = results["name"]
    roots = path_roots(
        data_root=data_root or os.environ.get(DATA_VARIABLE),
        work_dir=(results.get("spec") or {}).get("work_dir"),
        out=out,
    )
    results = portable_paths({**results, "command": command}, roots)
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(results, indent=1, default=float))
    written = [json_path]
    curves: dict[str, list] = {}
    for campaign in results["campaigns"].values():
        curves.setdefault(campaign["method"], []).append(campaign["curve"])
    if any(curves.values()):
        written.append(plot_learning_curves(curves, out / f"{name}.png", name))
    if results["table"]:
        table_path = out / f"{name}.md"
        table_path.write_text(markdown_table(results) + "\n")
        written.append(table_path)
    return written

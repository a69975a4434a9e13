"""The figure of the asynchronous-rounds benchmark, drawn from its stored results.

    python -m benchmarks.async_figure docs/benchmarks/async-schedule.json \
        --out docs/benchmarks/async-schedule.png

Two panels over the QM worker counts: the wall time to the targets, and the labels trained on
by the model that met them, for ``sync``, ``async`` and ``async`` with the ``max_ahead`` cap
(the file's ``max_ahead`` entry). Each seed is a point, the line joins the means.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

#: (label, colour, marker) per arm.
ARMS = {
    "sync": ("sync", "tab:grey", "o"),
    "async": ("async", "tab:blue", "s"),
    "async capped": ("async, max_ahead {cap}", "tab:orange", "^"),
}


def arms(results: dict) -> dict[str, list[dict]]:
    """The runs of each arm: ``sync`` and ``async`` from ``runs``, the capped ones from ``max_ahead``."""
    out = {
        "sync": [r for r in results["runs"] if r["schedule"] == "sync"],
        "async": [r for r in results["runs"] if r["schedule"] == "async"],
    }
    capped = results.get("max_ahead")
    if capped:
        out["async capped"] = [r for r in capped["runs"] if r["schedule"] == "async"]
    return out


def figure(results: dict, out: Path) -> Path:
    """Draw the two panels to ``out`` (PNG) and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cap = (results.get("max_ahead") or {}).get("plan", {}).get("max_ahead", "")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = (("target_t_s", "wall time to the targets (simulated s)"),
              ("target_trained_on", "labels trained on at the targets"))
    for offset, (arm, runs) in zip((-0.06, 0.0, 0.06), arms(results).items()):
        label, colour, marker = ARMS[arm]
        workers = sorted({r["workers"] for r in runs})
        for ax, (key, _) in zip(axes, panels):
            means = []
            for w in workers:
                values = [r[key] for r in runs if r["workers"] == w and r[key] is not None]
                ax.scatter([w * (1 + offset)] * len(values), values, color=colour, marker=marker,
                           alpha=0.5, s=20)
                means.append(np.mean(values) if values else np.nan)
            ax.plot([w * (1 + offset) for w in workers], means, color=colour, marker=marker,
                    label=label.format(cap=cap))
    for ax, (_, ylabel) in zip(axes, panels):
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 4, 16], labels=["1", "4", "16"])
        ax.set_xlabel("QM workers")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{results['preset']}: synchronous vs asynchronous rounds (points: seeds)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="the benchmark's JSON")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    try:
        results = json.loads(args.results.read_text())
        runs = arms(results)
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"error: {args.results} is not an async-schedule result file: {exc}")
    if not any(runs.values()):
        raise SystemExit(f"error: {args.results} holds no runs")
    path = figure(results, args.out)
    print(path)
    return path


if __name__ == "__main__":
    main()

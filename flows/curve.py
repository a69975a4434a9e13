"""The learning curve of a campaign as a PNG: test energy and force MAE against training labels.

Pure (no database, no Prefect server): :mod:`flows.monitoring` publishes the image beside the
overview that :mod:`flows.rendering` writes.
"""

from __future__ import annotations

import io
from typing import Any


def learning_curve_png(points: list[tuple[str, int, float, float]], targets: Any) -> bytes:
    """Test energy and force MAE against training labels, as PNG bytes.

    ``points`` are ``(mark, training labels, energy MAE meV/atom, force MAE meV/Å)``; each
    point is marked (``start``, ``R0``, ``R1``, ...) and the targets are dashed lines. The
    background is transparent and the text a mid grey, so the figure reads on the UI's light
    and dark themes. A panel whose values span more than a factor of 30 gets a log axis with
    plain-number ticks (and says so); otherwise the axes are linear.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.9), dpi=100)
    fig.patch.set_alpha(0.0)
    panels = [("Energy MAE (meV/atom)", 2, targets.energy_mae_mev_per_atom),
              ("Force MAE (meV/Å)", 3, targets.force_mae_mev_per_a)]
    for i, (title, column, target) in enumerate(panels, start=1):
        _curve_panel(fig.add_subplot(1, 2, i), points, title, column, target)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", transparent=True)
    return buffer.getvalue()


def _curve_panel(ax, points: list[tuple[str, int, float, float]], title: str, column: int,
                 target: float) -> None:
    """One panel of the learning curve: ``points``' ``column`` against training labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    grey, line, target_colour = "#8c8c8c", "#3b82f6", "#f97316"
    ax.patch.set_alpha(0.0)
    xs = [p[1] for p in points]
    ys = [p[column] for p in points]
    values = [v for v in [*ys, target] if v is not None and v > 0]
    log = wants_log_axis(values)
    if points:
        ax.plot(xs, ys, "o-", color=line, lw=2, ms=6, label="test set")
        for mark, x, y in zip((p[0] for p in points), xs, ys):
            ax.annotate(mark, (x, y), textcoords="offset points", xytext=(0, 7), ha="center",
                        fontsize=9, color=grey)
    ax.axhline(target, ls="--", lw=1.5, color=target_colour, label=f"target {target:g}")
    if log:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_ylim(bottom=0, top=1.15 * max(values) if values else None)
    ax.margins(y=0.12)
    ax.set_xlabel("training labels", color=grey)
    ax.set_title(title + (" (log scale)" if log else ""), fontsize=11, color=grey)
    ax.tick_params(colors=grey, which="both")
    for spine in ax.spines.values():
        spine.set_color(grey)
    ax.grid(alpha=0.25, color=grey)
    legend = ax.legend(fontsize=9, frameon=False)
    for text in legend.get_texts():
        text.set_color(grey)


def wants_log_axis(values: list[float]) -> bool:
    """A log axis only when the positive values span more than a factor of 30."""
    values = [v for v in values if v is not None and v > 0]
    return bool(values) and max(values) / min(values) > 30


def curve_points(view: dict[str, Any]) -> list[tuple[str, int, float, float]]:
    """The learning curve's points (:func:`learning_curve_png`) of a campaign view."""
    rows, baseline = view["round_table"], view["starting_model_test"]
    points = [(f"R{r['round']}", r["labels"], r["energy_mae_meV_atom"], r["force_mae_meV_A"]) for r in rows
              if r["labels"] is not None and r["force_mae_meV_A"] is not None]
    if baseline:
        points.insert(0, ("start", 0, baseline["energy_mae_mev_per_atom"], baseline["force_mae_mev_per_a"]))
    return points

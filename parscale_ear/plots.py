"""Plots as PNG files, written atomically: line plots (loss curves, latency, ablations) and the one plot of quality
against sampling cost; skipped with a note where matplotlib is missing."""
from __future__ import annotations

import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from .files import atomic_path

MARKERS = ("o", "s", "^", "D", "v", "P")


@contextmanager
def _figure(path: str | os.PathLike, size: tuple[float, float], dpi: int):
    """(matplotlib, figure, axes) whose PNG goes to `path` atomically when the block ends; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker  # noqa: F401  (line_plot's tick labels)
    except ImportError:
        print(f"note: no plot {path} (pip install 'parscale-ear[plots]' for matplotlib)", file=sys.stderr)
        yield None
        return
    fig, ax = plt.subplots(figsize=size, dpi=dpi)
    try:
        yield matplotlib, fig, ax
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def line_plot(path: str | os.PathLike, series: dict, title: str = "", xlabel: str = "", ylabel: str = "",
              log_x: bool = False, log_y: bool = False) -> Path | None:
    """A PNG line plot of {name: (xs, ys)} or {name: (xs, ys, yerr)} (error bars, e.g. one standard
    deviation over seeds; None where a point has no spread) with matplotlib (the `plots` extra), axes,
    ticks and a legend outside the lines, written atomically. Without matplotlib: no file, one line on stderr."""
    if not any(math.isfinite(y) for xs_ys in series.values() for y in xs_ys[1]):
        raise ValueError("line_plot: nothing to plot")
    with _figure(path, (7.2, 4.0), 100) as drawn:
        if drawn is None:
            return None
        matplotlib, fig, ax = drawn
        for name, (xs, ys, *err) in series.items():
            yerr = [0.0 if e is None else e for e in err[0]] if err and err[0] is not None else None
            ax.errorbar(xs, ys, yerr=yerr, marker="o", markersize=3, linewidth=1.5, capsize=3, label=str(name))
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        if log_x:
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))  # 1, 2, 4, not 2^k
        if log_y:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        if len(series) > 1:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return Path(path)


def cost_plot(path: str | os.PathLike, series: dict[str, list[dict]], xlabel: str, ylabel: str, title: str = "",
              colors: list[str] | None = None) -> Path | None:
    """Quality against sampling cost: {name: points}, a point {"cost": x, "score": y} with an optional "note" (a
    label beside it, e.g. its passes per image) and "open" (an open marker, e.g. a smaller FID sample); each series
    a line through its points by cost, its own marker (and `colors`, else matplotlib's cycle), log-scale cost;
    written atomically (without matplotlib: no file, one line on stderr)."""
    if not any(math.isfinite(p["score"]) for points in series.values() for p in points):
        raise ValueError("cost_plot: nothing to plot")
    with _figure(path, (6.4, 4.2), 120) as drawn:
        if drawn is None:
            return None
        _, fig, ax = drawn
        for i, ((name, points), marker) in enumerate(zip(series.items(), MARKERS * len(series))):
            points = sorted(points, key=lambda p: p["cost"])
            style = {"color": colors[i]} if colors else {}
            (line,) = ax.plot([p["cost"] for p in points], [p["score"] for p in points], alpha=0.5, lw=1, **style)
            color = line.get_color()
            for p in points:
                ax.scatter(p["cost"], p["score"], marker=marker, color=color, zorder=3,
                           facecolors="none" if p.get("open") else color)
                if "note" in p:
                    ax.annotate(str(p["note"]), (p["cost"], p["score"]), textcoords="offset points", xytext=(4, 4),
                                fontsize=7, color=color)
            ax.scatter([], [], marker=marker, color=color, label=str(name))
        ax.set_xscale("log")
        ax.set(xlabel=xlabel, ylabel=ylabel)
        ax.set_title(title, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return Path(path)

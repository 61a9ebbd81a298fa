"""Line plots (loss curves, latency, ablations) as PNG files; skipped with a note where matplotlib is missing."""
from __future__ import annotations

import os
from pathlib import Path

from .files import atomic_path

def line_plot(path: str | os.PathLike, series: dict, title: str = "", xlabel: str = "", ylabel: str = "",
              log_x: bool = False, log_y: bool = False) -> Path | None:
    """A PNG line plot of {name: (xs, ys)} or {name: (xs, ys, yerr)} (error bars, e.g. one standard
    deviation over seeds; None where a point has no spread) with matplotlib (the `plots` extra), axes,
    ticks and a legend outside the lines, written atomically. Without matplotlib: no file, one line on stderr."""
    import math
    import sys

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print(f"note: no plot {path} (pip install 'parscale-ear[plots]' for matplotlib)", file=sys.stderr)
        return None
    if not any(math.isfinite(y) for xs_ys in series.values() for y in xs_ys[1]):
        raise ValueError("line_plot: nothing to plot")
    fig, ax = plt.subplots(figsize=(7.2, 4.0), dpi=100)
    try:
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
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return Path(path)

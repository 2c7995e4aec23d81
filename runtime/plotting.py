"""Line plots against keep ratio for eval and bench reports (matplotlib is optional: the ``plot`` extra)."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def plot_vs_keep_ratio(series: dict[str, list[tuple[float, float]]], path: Path, title: str, ylabel: str) -> bool:
    """One line per series of (keep ratio, value) points, log2 x axis; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed, so no plot: pip install 'atp-edge[plot]'")
        return False
    # "scorer / precision" labels: one colour per scorer, one line style per precision, so that a
    # 9 x 3 matrix stays readable; the legend goes outside the axes once it would cover the lines.
    groups = [label.split(" / ", 1) if " / " in label else [label, ""] for label in series]
    scorers = list(dict.fromkeys(g[0] for g in groups))
    variants = list(dict.fromkeys(g[1] for g in groups))
    colors = plt.get_cmap("tab10" if len(scorers) <= 10 else "tab20")
    styles = ["-", "--", ":", "-."]
    outside = len(series) > 8
    fig, ax = plt.subplots(figsize=(9, 4.5) if outside else (6, 4))
    for (label, pts), (scorer, variant) in zip(series.items(), groups):
        pts = sorted(pts)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=4, label=label,
                color=colors(scorers.index(scorer) % colors.N), linestyle=styles[variants.index(variant) % len(styles)])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("keep ratio")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if outside:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), ncol=1 if len(series) <= 18 else 2)
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True

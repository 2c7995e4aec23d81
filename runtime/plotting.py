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
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, pts in series.items():
        pts = sorted(pts)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("keep ratio")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True

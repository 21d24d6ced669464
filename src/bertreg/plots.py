"""PNG pictures of a run: validation curves per fold."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from bertreg import files


def pyplot():
    """matplotlib.pyplot on the Agg backend, imported only when a picture is drawn."""
    import matplotlib

    matplotlib.use("Agg")  # no screen on servers and in Kaggle's batch runs
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> None:
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    pyplot().close(fig)


def plot_curves(histories: dict[int, pd.DataFrame], metric: str, path: str | Path,
                best: Sequence[tuple[int, int, float]] = (), title: str = "") -> None:
    """Validation score against optimizer step, one line per fold, the best point of each marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for fold, hist in sorted(histories.items()):
        line, = ax.plot(hist["step"], hist["val_score"], marker=".", label=f"fold {fold}")
        for f, step, score in best:
            if f == fold:
                ax.scatter([step], [score], color=line.get_color(), s=60, zorder=3, edgecolor="black")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(title or f"validation {metric} per fold (circle: kept checkpoint)")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)

"""report.png: photo, overlay, albedo and the loss curves of every term on one sheet."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_report(path: Path, photo: np.ndarray, overlay: np.ndarray, albedo: np.ndarray,
                 history: dict[str, dict[str, list[tuple[int, float]]]], metrics: dict[str, float]) -> None:
    """``history``: stage -> loss term -> [(step, weighted value), ...] as the fit recorded it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(16, 9), dpi=100)
    gs = fig.add_gridspec(2, 3, height_ratios=[1.2, 1])
    for i, (img, title) in enumerate([(photo, "photo"), (overlay, "fit over photo"), (albedo, "albedo (UV)")]):
        ax = fig.add_subplot(gs[0, i])
        ax.imshow(img)
        ax.set_title(title)
        ax.axis("off")
    stages = [s for s in ("coarse", "fine") if history.get(s)]
    sub = gs[1, :].subgridspec(1, max(1, len(stages)))
    for j, stage in enumerate(stages):
        ax = fig.add_subplot(sub[0, j])
        for name, points in sorted(history[stage].items()):
            steps, values = zip(*points)
            if max(values) > 0:
                ax.plot(steps, values, label=name)
        ax.set_yscale("log")
        ax.set_xlabel(f"{stage} step")
        ax.set_ylabel("weighted loss")
        ax.set_title(f"{stage} stage")
        ax.legend(ncol=3, fontsize=7)
    text = ", ".join(f"{k} = {v:.3f}" for k, v in metrics.items())
    fig.suptitle(f"ganfit fit report   {text}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

"""report.png: photo, overlay, albedo and the loss curves of every term on one sheet."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_report(path: Path, photo: np.ndarray, overlay: np.ndarray, albedo: np.ndarray,
                 history: dict[str, list[float]], metrics: dict[str, float]) -> None:
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
    ax = fig.add_subplot(gs[1, :])
    for name, values in sorted(history.items()):
        if values:
            ax.plot(np.arange(len(values)), values, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("recorded step (coarse, then fine)")
    ax.set_ylabel("weighted loss")
    ax.legend(ncol=4, fontsize=8)
    text = ", ".join(f"{k} = {v:.3f}" for k, v in metrics.items())
    fig.suptitle(f"ganfit fit report   {text}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

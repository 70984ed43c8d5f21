"""Per-layer importance plot: a heads heatmap and the spread of FFN neuron scores per layer."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from autolite.io import atomic_file


def plot_importance(scores: dict[str, dict[str, list[float]]], path: str | Path, title: str = "") -> Path:
    """Write a PNG of ``scores`` (``{"heads"|"ffn": {layer key: scores}}``) to ``path`` atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [t for t in ("heads", "ffn") if scores.get(t)]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6 * max(1, len(panels)), 4.5), squeeze=False)
    for ax, target in zip(axes[0], panels):
        keys = list(scores[target])
        rows = [np.asarray(scores[target][k], dtype=float) for k in keys]
        rows = [r / r.mean() if r.mean() > 0 else r for r in rows]  # per layer: relative to its mean
        if target == "heads":
            width = max(len(r) for r in rows)
            grid = np.full((len(rows), width), np.nan)
            for i, r in enumerate(rows):
                grid[i, :len(r)] = r
            image = ax.imshow(grid, aspect="auto", cmap="viridis")
            fig.colorbar(image, ax=ax, label="score / layer mean")
            ax.set_xlabel("head")
            ax.set_title("attention heads")
        else:
            quantiles = np.array([np.quantile(r, [0.1, 0.5, 0.9]) for r in rows])
            ax.fill_betweenx(range(len(rows)), quantiles[:, 0], quantiles[:, 2], alpha=0.3, label="10-90%")
            ax.plot(quantiles[:, 1], range(len(rows)), marker="o", label="median")
            ax.invert_yaxis()
            ax.set_xlabel("neuron score / layer mean")
            ax.set_title("FFN neurons")
            ax.legend()
        ax.set_yticks(range(len(keys)))
        ax.set_yticklabels(keys, fontsize=7)
    fig.suptitle(title or "importance per layer (low = pruned first)")
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path

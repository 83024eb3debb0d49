"""Small plotting helpers shared by the pages, so every figure looks alike.

Book: every chapter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes

__all__ = ["heatmap", "plot_curves", "smooth"]


def _as_numpy(values) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=float)


def smooth(values: Sequence[float], window: int = 20) -> np.ndarray:
    """Moving average over `window` steps (shorter at the start), for noisy training curves."""
    values = _as_numpy(values)
    if window <= 1 or len(values) == 0:
        return values
    cumsum = np.cumsum(np.insert(values, 0, 0.0))
    out = np.empty_like(values)
    for i in range(len(values)):
        lo = max(0, i + 1 - window)
        out[i] = (cumsum[i + 1] - cumsum[lo]) / (i + 1 - lo)
    return out


def heatmap(
    matrix,
    ax: Axes | None = None,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    cmap: str = "viridis",
    colorbar: bool = True,
    **imshow_kwargs,
) -> Axes:
    """Show a 2-D array (a tensor or anything NumPy reads) as an image with a colour bar."""
    matrix = _as_numpy(matrix)
    if matrix.ndim != 2:
        raise ValueError(f"heatmap needs a 2-D array, got shape {matrix.shape}")
    ax = ax or plt.gca()
    image = ax.imshow(matrix, cmap=cmap, aspect="auto", interpolation="nearest", **imshow_kwargs)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return ax


def plot_curves(
    curves: Mapping[str, Sequence[float]],
    ax: Axes | None = None,
    title: str = "",
    xlabel: str = "step",
    ylabel: str = "loss",
    window: int = 1,
    logy: bool = False,
) -> Axes:
    """One line per named curve, optionally smoothed, on shared axes with a legend."""
    ax = ax or plt.gca()
    for label, values in curves.items():
        ax.plot(smooth(values, window), label=label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if logy:
        ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    return ax

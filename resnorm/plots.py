"""Figures of one run, drawn on matplotlib ``Figure`` objects (no pyplot, no global backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay


def plain(text: str) -> str:
    """``text`` as matplotlib should show it: as written. Matplotlib reads what lies between two
    ``$`` as math, so a class folder named ``cost_$5_to_$10`` would come out garbled, or not draw."""
    return str(text).replace("$", r"\$")


def curves(epochs: Sequence[int], series: Mapping[str, Mapping[str, Sequence[float]]], title: str = "") -> Figure:
    """One panel per quantity (e.g. loss, accuracy), one line per split (e.g. train, val)."""
    fig = Figure(figsize=(5 * len(series), 3.6), layout="constrained")
    for ax, (quantity, lines) in zip(fig.subplots(1, len(series), squeeze=False)[0], series.items()):
        for label, values in lines.items():
            ax.plot(epochs, values, label=plain(label), marker="." if len(epochs) < 30 else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel(quantity)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(plain(title))
    return fig


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str], title: str = "") -> Figure:
    size = max(4.0, 0.45 * len(classes) + 2)
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.subplots()
    ConfusionMatrixDisplay.from_predictions(
        y_true,
        y_pred,
        labels=np.arange(len(classes)),
        display_labels=[plain(c) for c in classes],
        ax=ax,
        colorbar=False,
        xticks_rotation="vertical" if len(classes) > 10 else "horizontal",
    )
    if title:
        ax.set_title(plain(title))
    return fig

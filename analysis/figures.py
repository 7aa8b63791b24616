"""The study's Figures 1-6: training curves of chosen configurations, from metric histories."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from matplotlib.figure import Figure

from analysis.runs import Histories, select
from analysis.tables import Row
from resnorm import names
from resnorm.norms import NORM_NAMES

LABELS = {
    names.TRAIN_LOSS: "train loss", names.VAL_LOSS: "val loss",
    names.TRAIN_ACCURACY: "train accuracy", names.VAL_ACCURACY: "val accuracy",
}
ACC_LOSS = (names.TRAIN_ACCURACY, names.VAL_ACCURACY, names.TRAIN_LOSS, names.VAL_LOSS)


@dataclass(frozen=True)
class FigureSpec:
    id: str
    title: str
    panels: tuple[str, ...]  # one metric key per panel
    series: tuple[Row, ...]  # one line per configuration in every panel


FIGURES = (
    FigureSpec("figure1", "Figure 1: torch_bn, SGD lr 1e-4 vs 0.1", ACC_LOSS,
               (Row("SGD lr 1e-4", {"norm": "torch_bn", "lr": 1e-4}), Row("SGD lr 0.1", {"norm": "torch_bn"}))),
    FigureSpec("figure2", "Figure 2: torch_bn, Adam lr 1e-4", ACC_LOSS,
               (Row("Adam lr 1e-4", {"norm": "torch_bn", "optimizer": "adam", "lr": 1e-4}),)),
    FigureSpec("figure3", "Figure 3: torch_bn vs bn", (names.TRAIN_LOSS, names.VAL_LOSS),
               (Row("torch_bn", {"norm": "torch_bn"}), Row("bn", {"norm": "bn"}))),
    FigureSpec("figure4", "Figure 4: train and val loss of every norm", (names.TRAIN_LOSS, names.VAL_LOSS),
               tuple(Row(n, {"norm": n}) for n in NORM_NAMES)),
    FigureSpec("figure5", "Figure 5: bn at batch 8 vs 128", (names.VAL_ACCURACY, names.TRAIN_LOSS, names.VAL_LOSS),
               tuple(Row(f"batch {b}", {"norm": "bn", "batch_size": b}) for b in (8, 128))),
    FigureSpec("figure6", "Figure 6: gn at batch 8 vs 128", (names.VAL_ACCURACY, names.TRAIN_LOSS, names.VAL_LOSS),
               tuple(Row(f"batch {b}", {"norm": "gn", "batch_size": b}) for b in (8, 128))),
)
MAIN_FIGURE = "figure4"


def mean_curve(histories: Histories, run_ids, key: str) -> tuple[pd.Series, pd.Series]:
    """Mean and std over runs, per epoch (std is NaN with one run)."""
    frame = pd.concat([histories(r, key) for r in run_ids], axis=1)
    return frame.mean(axis=1), frame.std(axis=1, ddof=1)


def build_figure(spec: FigureSpec, runs: pd.DataFrame, histories: Histories) -> tuple[Figure | None, list[str]]:
    """The figure (None when no series has runs) and the series that are missing."""
    found, missing = [], []
    for row in spec.series:
        chosen = select(runs, **row.selector())
        (found if not chosen.empty else missing).append((row, list(chosen["run_id"])))
    missing_text = [f"{row.label} ({row.describe()})" for row, _ in missing]
    if not found:
        return None, missing_text
    fig = Figure(figsize=(4.2 * len(spec.panels), 3.4), layout="constrained")
    axes = fig.subplots(1, len(spec.panels), squeeze=False)[0]
    for ax, key in zip(axes, spec.panels):
        for row, run_ids in found:
            mean, std = mean_curve(histories, run_ids, key)
            label = row.label if len(run_ids) == 1 else f"{row.label} (n={len(run_ids)})"
            ax.plot(mean.index, mean.values, label=label)
            if len(run_ids) > 1:
                ax.fill_between(mean.index, (mean - std).values, (mean + std).values, alpha=0.2)
        ax.set_title(LABELS.get(key, key))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.suptitle(spec.title)
    return fig, missing_text

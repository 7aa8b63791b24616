"""The study's Figures 1-6: training curves of configurations of the sweep, from metric histories."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, Formatter, MaxNLocator, PercentFormatter

from analysis.groups import Group, describe, differing
from analysis.runs import Histories
from analysis.tables import Row, matches, points, study_rows
from resnorm import names
from resnorm.plots import plain

LABELS = {
    names.TRAIN_LOSS: "train loss (log scale)",
    names.VAL_LOSS: "val loss (log scale)",
    names.TRAIN_ACCURACY: "train accuracy %",
    names.VAL_ACCURACY: "val accuracy %",
}
LOSSES = (names.TRAIN_LOSS, names.VAL_LOSS)
ACC_LOSS = (names.TRAIN_ACCURACY, names.VAL_ACCURACY, *LOSSES)
STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
BAND = "shaded: mean ± 1 sample sd over seeds"


@dataclass(frozen=True)
class FigureSpec:
    id: str
    title: str  # what every series shares; the series drawn are appended
    panels: tuple[str, ...]  # one metric key per panel
    series: tuple[Row, ...]  # one line per configuration in every panel


def _lr(s: dict) -> str:
    return f"lr {s['lr']:g}"


FIGURES = (
    FigureSpec(
        "figure1",
        "Figure 1: torch_bn with SGD",
        ACC_LOSS,
        study_rows(
            [p for p in points(norm="torch_bn", optimizer="sgd", augment=True, batch_size=32, scheduler="cosine")], _lr
        ),
    ),
    FigureSpec(
        "figure2", "Figure 2: torch_bn with Adam", ACC_LOSS, study_rows(points(norm="torch_bn", optimizer="adam"), _lr)
    ),
    FigureSpec(
        "figure3",
        "Figure 3: torch_bn vs the hand-written bn",
        LOSSES,
        study_rows([p for p in points("norm") if p["norm"] in ("torch_bn", "bn")], lambda s: s["norm"]),
    ),
    FigureSpec("figure4", "Figure 4: every norm, SGD lr 0.1", LOSSES, study_rows(points("norm"), lambda s: s["norm"])),
    FigureSpec(
        "figure5",
        "Figure 5: bn by batch size",
        (names.VAL_ACCURACY, *LOSSES),
        study_rows(points("batch_size", norm="bn"), lambda s: f"batch {s['batch_size']}"),
    ),
    FigureSpec(
        "figure6",
        "Figure 6: gn by batch size",
        (names.VAL_ACCURACY, *LOSSES),
        study_rows(points("batch_size", norm="gn"), lambda s: f"batch {s['batch_size']}"),
    ),
)


class FewMinorLabels(Formatter):
    """Minor tick labels of a log axis: none when it spans a decade or more (its major ticks say
    enough), else at most four, evenly spaced, as plain numbers (0.7, 0.9), never run together."""

    def __call__(self, x, pos=None) -> str:
        axis = self.axis
        if not isinstance(axis, Axis):  # not drawn on an axis yet
            return ""
        low, high = sorted(axis.get_view_interval())
        if low <= 0 or high / low >= 10:
            return ""
        shown = [t for t in axis.get_minorticklocs() if low <= t <= high]
        return f"{x:.3g}" if x in shown[:: max(1, math.ceil(len(shown) / 4))] else ""


def mean_curve(histories: Histories, run_ids, key: str) -> tuple[pd.Series, pd.Series]:
    """Mean and sample std over runs, per epoch (std is NaN with one run)."""
    frame = pd.concat([histories(r, key) for r in run_ids], axis=1)
    return frame.mean(axis=1), frame.std(axis=1, ddof=1)


def foundstudy_rows(spec: FigureSpec, groups: list[Group]) -> tuple[list[tuple[str, Group]], list[str]]:
    """(label, configuration) of every line to draw, and the series with no finished run."""
    found, missing = [], []
    for row in spec.series:
        matched = [g for g in groups if matches(g, row.selector()) and len(g.finished)]
        if not matched:
            missing.append(f"{row.label} ({row.describe()})")
        fields = differing(matched)
        found += [(row.label if len(matched) == 1 else f"{row.label} ({describe(g, fields)})", g) for g in matched]
    return found, missing


def _panel(ax, key: str, found: list[tuple[str, Group]], histories: Histories) -> None:
    scale = 100.0 if "accuracy" in key else 1.0
    positive = False  # a log axis needs a value above zero (a run whose history is gone has none)
    for i, (label, group) in enumerate(found):
        run_ids = list(group.finished["run_id"])
        mean, std = mean_curve(histories, run_ids, key)
        positive = positive or bool((mean > 0).any())
        text = plain(f"{label} (n={len(run_ids)})")
        ax.plot(
            mean.index,
            mean.values * scale,
            label=text,
            linestyle=STYLES[i % len(STYLES)],
            marker=MARKERS[i % len(MARKERS)],
            markersize=4,
        )
        if len(run_ids) > 1:
            ax.fill_between(mean.index, (mean - std).values * scale, (mean + std).values * scale, alpha=0.15)
    if key in LOSSES and positive:
        ax.set_yscale("log")  # one diverging epoch does not flatten the others
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))  # 0.25, 1.5, not 2 x 10^0
        # Minor ticks labelled only where the axis spans little (a few of them under a decade, all
        # under a third of one): labelling every one ran them together (0.7 0.8 0.9).
        ax.yaxis.set_minor_formatter(FewMinorLabels())
    else:
        ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    epochs = sorted({e for _, g in found for r in g.finished["run_id"] for e in histories(r, key).index})
    if epochs and epochs[-1] - epochs[0] <= 12:
        ax.set_xticks(range(int(epochs[0]), int(epochs[-1]) + 1))  # every epoch, whole numbers only
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(LABELS.get(key, key))
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)


def build_figure(spec: FigureSpec, groups: list[Group], histories: Histories) -> tuple[Figure | None, list[str]]:
    """The figure (None when no series has a finished run) and the series that are missing."""
    found, missing = foundstudy_rows(spec, groups)
    if not found:
        return None, missing
    fig = Figure(figsize=(3.6 * len(spec.panels), 3.6), layout="constrained")
    axes = fig.subplots(1, len(spec.panels), squeeze=False)[0]
    for ax, key in zip(axes, spec.panels):
        _panel(ax, key, found, histories)
    handles, labels = axes[0].get_legend_handles_labels()
    many = any(len(g.finished) > 1 for _, g in found)
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=min(len(labels), 4),
        fontsize="small",
        title=BAND if many else None,
        title_fontsize="small",
    )
    fig.suptitle(
        plain(
            f"{spec.title}: {', '.join(label for label, _ in found)}"
            if len(found) > 1
            else f"{spec.title}: {found[0][0]} only"
        )
    )
    return fig, missing

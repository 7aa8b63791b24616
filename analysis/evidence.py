"""What the study's claims compare: the study preset's configurations each claim names, the one
group of a sweep each matches, and the finished seeds' scores behind it (``analysis.claims``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from analysis.decisions import MIN_SEEDS
from analysis.groups import Group, describe, differing
from analysis.tables import ACCURACY, Row, matches, points
from resnorm import names
from resnorm.config import TrainConfig
from resnorm.norms import NORM_NAMES

TRAIN_ACCURACY = names.final_metric("train", "accuracy")
MARGIN = 0.01  # the smallest effect of interest, every claim's: one accuracy point
NOT_TESTABLE, INCONCLUSIVE = "not testable", "inconclusive"


def _row(label: str, vary: str = "", **where) -> Row:
    found = points(vary, **where)
    assert len(found) == 1, (label, found)  # the study preset has each point once
    return Row(label, found[0])


def name(row: Row) -> str:
    """Run-name form, plus the study settings a run name leaves out (weight decay, schedule) where they differ."""
    setting, default = row.selector(), TrainConfig()
    extra = [
        f"{k}={setting[k]:g}" if isinstance(setting[k], float) else f"{k}={setting[k]}"
        for k in ("weight_decay", "scheduler")
        if setting[k] != getattr(default, k)
    ]
    return ", ".join([row.describe(), *extra])


SGD = {n: _row(f"{n} SGD lr 0.1", "norm", norm=n) for n in NORM_NAMES}
ADAM = {n: _row(f"{n} Adam lr 1e-4", norm=n, optimizer="adam") for n in NORM_NAMES}
SLOW_SGD = {n: _row(f"{n} SGD lr 1e-4", norm=n, optimizer="sgd", lr=1e-4) for n in NORM_NAMES}
AUG_OFF = _row("augmentation off", "augment", norm="torch_bn", augment=False)
AUG_ON = _row("augmentation on", "augment", norm="torch_bn", augment=True)
BATCH = {(n, b): _row(f"{n} batch {b}", "batch_size", norm=n, batch_size=b) for n in ("bn", "gn") for b in (8, 128)}
COSINE = _row("cosine schedule", "scheduler", norm="torch_bn", scheduler="cosine")
STEP = _row("step schedule", "scheduler", norm="torch_bn", scheduler="step")
# The configurations each claim compares: an adaptive sweep adds seeds to these while the claim is open.
ROWS = {
    1: (AUG_OFF, AUG_ON),
    2: (*SGD.values(), *ADAM.values(), *SLOW_SGD.values()),
    3: (SGD["bn"], SGD["torch_bn"]),
    4: tuple(SGD.values()),
    5: tuple(BATCH.values()),
    6: (COSINE, STEP),
}


class Skip(Exception):
    """No test could be made: the verdict that leaves (not testable, inconclusive) and why."""

    def __init__(self, verdict: str, reason: str) -> None:
        super().__init__(reason)
        self.verdict, self.reason = verdict, reason


def find(groups: list[Group], rows: Sequence[Row]) -> list[Group]:
    """The one group each row matches; every missing configuration, or every row matching several, named."""
    missing, several, found = [], [], []
    for row in rows:
        match = [g for g in groups if matches(g, row.selector())]
        if not match:
            missing.append(f"{name(row)} ({row.label})")
        elif len(match) > 1:
            fields = differing(match)
            several.append(
                f"{len(match)} configurations match {name(row)} ("
                + " / ".join(describe(g, fields) for g in match)
                + ")"
            )
        else:
            found.append(match[0])
    if missing:
        raise Skip(NOT_TESTABLE, "missing " + "; ".join(missing))
    if several:
        raise Skip(NOT_TESTABLE, "; ".join(several) + "; analyse one budget at a time, they are never pooled")
    return found


def accuracies(group: Group) -> np.ndarray:
    """Test accuracy of every finished seed (NaN metrics left out)."""
    column = group.finished.get(ACCURACY)
    return np.array([], float) if column is None else column.astype(float).dropna().to_numpy()


def overfitting_gap(group: Group) -> np.ndarray:
    """best_train_accuracy - best_test_accuracy of every finished seed, the kept model's gap."""
    frame = group.finished
    if ACCURACY not in frame or TRAIN_ACCURACY not in frame:
        return np.array([], float)
    return (frame[TRAIN_ACCURACY].astype(float) - frame[ACCURACY].astype(float)).dropna().to_numpy()


def samples(
    groups: list[Group], rows: Sequence[Row], metric: Callable[[Group], np.ndarray] = accuracies
) -> tuple[list[np.ndarray], str]:
    """One sample per row, and a note naming rows with seeds that did not finish; Skip when a
    row is missing, ambiguous, or has fewer than MIN_SEEDS finished seeds."""
    found = find(groups, rows)
    samples = [metric(g) for g in found]
    short = [f"{r.label} has {len(s)}" for r, s in zip(rows, samples) if len(s) < MIN_SEEDS]
    if short:
        raise Skip(INCONCLUSIVE, f"needs seeds >= {MIN_SEEDS} ({'; '.join(short)} finished)")
    partial = [f"{r.label}: {g.seeds_text()}" for r, g in zip(rows, found) if not g.complete]
    note = f" (seeds finished/planned: {'; '.join(partial)}; tested on the finished ones)" if partial else ""
    return samples, note


def band(margin: float) -> str:
    """The margin in words: ``±1 accuracy point``."""
    points_ = round(margin * 100, 9)
    return f"±{points_:g} accuracy point{'' if points_ == 1 else 's'}"


STATEMENTS = {
    1: "Augmentation reduces overfitting (Table 1)",
    2: "SGD lr 0.1 beats Adam lr 1e-4 and SGD lr 1e-4 for every norm (Tables 3-5)",
    3: "The hand-written bn matches torch.nn.BatchNorm2d (Table 2)",
    4: "The seven norms rank in a clear order (Table 3)",
    5: "Batch size matters for bn but not for gn (Figures 5, 6)",
    6: "The cosine schedule is at least as good as the step schedule (Table 6)",
}


def phrases(margin: float = MARGIN) -> dict[int, str]:
    """Claim id -> the test used on it, in one phrase (the same whether or not the sweep allows it)."""
    m = band(margin)
    return {
        1: f"effect on torch_bn's train-test gap, off minus on: Welch t, found beyond 0 or negligible within {m}",
        2: f"14 effects, SGD lr 0.1 minus each alternative: Welch t, found beyond 0 or negligible within {m}, "
        "Holm over all",
        3: f"equivalence within {m}: TOST (two one-sided Welch t-tests)",
        4: f"each adjacent pair of the ranking: Welch t, better (beyond 0) or tied within {m} (TOST), "
        "Holm over the pairs",
        5: f"bn's batch effect found, gn's equivalent within {m} (TOST), and their interaction found: "
        "Holm over the three",
        6: f"non-inferiority of cosine minus step at -{m.lstrip('±')}: Welch t, the 95 % interval's ends",
    }

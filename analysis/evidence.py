"""What the study's claims compare: the study preset's configurations each claim names, the one
group of a sweep each matches, and the finished seeds' scores behind it (``analysis.claims``)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from analysis.decisions import AT_LEAST, EFFECT, EQUAL, MIN_SEEDS, Part
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
        1: f"effect on torch_bn's train-test gap, off minus on: t test, found beyond 0 or negligible within {m}",
        2: f"14 effects, SGD lr 0.1 minus each alternative: t tests, found beyond 0 or negligible within {m}, "
        "alpha shared over all",
        3: f"equivalence within {m}: TOST (two one-sided t tests at alpha / 2 each)",
        4: f"each adjacent pair of Table 3's ranking: t test, better (beyond 0) or tied within {m} (TOST), "
        "alpha shared over the 21 pairs",
        5: f"bn's batch effect found, gn's equivalent within {m} (TOST), and their interaction found: "
        "alpha shared over the three",
        6: f"non-inferiority of cosine minus step at -{m.lstrip('±')}: t test, the 95 % interval's ends",
    }


# --- what each claim compares: its parts ---------------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """What a claim compares in a sweep: its parts, a note on seeds that did not finish, and (claim 2)
    the comparisons that could not be made."""

    parts: tuple[Part, ...]
    note: str = ""
    skipped: tuple[tuple[str, Skip], ...] = ()  # (comparison, why), claim 2
    notes: tuple[str, ...] = ()  # one per part: seeds that did not finish (claim 2)
    ranking: tuple[str, ...] = ()  # claim 4: the norms in Table 3's order


def _part(
    name: str,
    kind: str,
    found: Sequence[Group],
    scores: Sequence[np.ndarray],
    weights: Sequence[float],
    direction: int = 1,
    key: str = "",
    bounds: tuple[float, float] | None = None,
) -> Part:
    return Part(
        name,
        kind,
        tuple(tuple(float(v) for v in s) for s in scores),
        tuple(weights),
        direction,
        tuple(g.config for g in found),
        key,
        bounds,
    )


def _pair(
    groups: list[Group], rows, name: str, kind: str, metric=accuracies, direction: int = 1, bounds=None
) -> Evidence:
    scores, note = samples(groups, rows, metric)
    return Evidence((_part(name, kind, find(groups, rows), scores, (1, -1), direction, bounds=bounds),), note)


def evidence_augmentation(groups: list[Group]) -> Evidence:
    """Claim 1: the train-test gap per seed measures overfitting; augmentation should shrink it, so the gap
    without augmentation minus the gap with it should be above zero."""
    gaps = (-2.0, 2.0)  # a train-test gap lies in [-1, 1], a difference of two in [-2, 2]
    return _pair(
        groups, (AUG_OFF, AUG_ON), "train-test gap, augmentation off minus on", EFFECT, overfitting_gap, 1, gaps
    )


def evidence_optimiser(groups: list[Group]) -> Evidence:
    """Claim 2: one effect per (norm, alternative), SGD lr 0.1 minus the alternative, expected above zero."""
    parts, notes, skipped = [], [], []
    for alt, rows in (("Adam lr 1e-4", ADAM), ("SGD lr 1e-4", SLOW_SGD)):
        for n in NORM_NAMES:
            name = f"{n}, SGD lr 0.1 minus {alt}"
            try:
                (found,) = _pair(groups, (SGD[n], rows[n]), name, EFFECT).parts
                parts.append(found)
                notes.append(samples(groups, (SGD[n], rows[n]))[1])
            except Skip as skip:
                skipped.append((f"{n}, SGD lr 0.1 vs {alt}", skip))
    if not parts:
        verdict = NOT_TESTABLE if any(s.verdict == NOT_TESTABLE for _, s in skipped) else INCONCLUSIVE
        raise Skip(verdict, f"none of the {len(skipped)} comparisons could be tested ({skipped[0][1].reason}, ...)")
    return Evidence(tuple(parts), skipped=tuple(skipped), notes=tuple(notes))


def evidence_batch_norm(groups: list[Group]) -> Evidence:
    """Claim 3: "matches" is a claim of equality, which a difference test cannot support (failing to
    find a difference is not evidence of none); an equivalence test within ±margin can."""
    return _pair(groups, (SGD["bn"], SGD["torch_bn"]), "test accuracy, bn minus torch_bn", EQUAL)


def evidence_ranking(groups: list[Group]) -> Evidence:
    """Claim 4: the ranking by mean test accuracy over every finished seed (Table 3's order), and every pair
    of norms, the upper one minus the lower: the pairs adjacent in the ranking are what the claim says, but
    which pairs are adjacent may change from look to look, so every pair is tested (Bonferroni over the 21)
    and the claim reads its adjacent ones."""
    rows = [SGD[n] for n in NORM_NAMES]
    scores, note = samples(groups, rows)
    found = dict(zip(NORM_NAMES, find(groups, rows)))
    by_norm = dict(zip(NORM_NAMES, scores))
    order = tuple(sorted(NORM_NAMES, key=lambda n: -by_norm[n].mean()))  # stable: ties keep the registry's order
    parts = tuple(
        _part(f"{x} minus {y}", EFFECT, (found[x], found[y]), (by_norm[x], by_norm[y]), (1, -1), key=pair_key(x, y))
        for x, y in itertools.combinations(order, 2)
    )
    return Evidence(parts, note, ranking=order)


def pair_key(x: str, y: str) -> str:
    """A pair of norms whichever is ranked above: ``bn|gn``, in the registry's order."""
    return "|".join(sorted((x, y), key=NORM_NAMES.index))


def evidence_batch_size(groups: list[Group]) -> Evidence:
    """Claim 5: "matters for bn but not gn" is three statements: bn's batch effect (8 minus 128) exists
    in either direction, gn's is within the margin, and the interaction (bn 8 - bn 128) - (gn 8 - gn 128)
    exists in bn's direction (a difference in significance is not a significant difference)."""
    rows = [BATCH[k] for k in (("bn", 8), ("bn", 128), ("gn", 8), ("gn", 128))]
    scores, note = samples(groups, rows)
    found = find(groups, rows)
    bn = _part("bn batch 8 minus 128", EFFECT, found[:2], scores[:2], (1, -1), direction=0)
    lean = 1 if bn.estimate.value >= 0 else -1
    parts = (
        bn,
        _part("gn batch 8 minus 128", EQUAL, found[2:], scores[2:], (1, -1)),
        _part("interaction (bn 8 - 128) - (gn 8 - 128)", EFFECT, found, scores, (1, -1, -1, 1), direction=lean),
    )
    return Evidence(parts, note)


def evidence_schedule(groups: list[Group]) -> Evidence:
    """Claim 6: the study kept cosine, so the claim is that cosine is at least as good as step: not worse
    by more than the margin (non-inferiority)."""
    return _pair(groups, (COSINE, STEP), "test accuracy, cosine minus step", AT_LEAST)


EVIDENCE: dict[int, Callable[[list[Group]], Evidence]] = {
    1: evidence_augmentation,
    2: evidence_optimiser,
    3: evidence_batch_norm,
    4: evidence_ranking,
    5: evidence_batch_size,
    6: evidence_schedule,
}

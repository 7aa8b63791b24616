"""The study's six claims, each tested on a sweep's configurations with the test that fits it, and
a one-line verdict each: supported, contradicted, inconclusive, or not testable in this sweep.

Every configuration a claim uses is a point of the study preset (``analysis.tables.points``),
matched to the sweep's groups the way the tables match their rows; a point that matches several
groups (runs that differ in, say, epochs) is never pooled. Effects are in accuracy points (the
runs log fractions). Distributions come from scipy.stats.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from analysis import stats
from analysis.evidence import (
    ADAM,
    AUG_OFF,
    AUG_ON,
    BATCH,
    COSINE,
    INCONCLUSIVE,
    MARGIN,
    NOT_TESTABLE,
    SGD,
    SLOW_SGD,
    STATEMENTS,
    STEP,
    Skip,
    accuracies,
    band,
    overfitting_gap,
    phrases,
    samples,
)
from analysis.groups import Group
from analysis.stats import NAN_CI, Estimate, contrast, improvement_interval, probability_of_improvement, tost, welch
from analysis.tables import Row
from resnorm.norms import NORM_NAMES

SUPPORTED, CONTRADICTED = "supported", "contradicted"
VERDICTS = (SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE)
POINTS, PROBABILITY = "accuracy points", "P(X > Y)"


@dataclass(frozen=True)
class Claim:
    """One claim of the study and what this sweep says about it."""

    id: int  # 1..6, in the study's order
    statement: str  # the study's claim, short
    test: str  # the test used, with its correction or margin
    verdict: str  # one of VERDICTS
    line: str  # the one line the report shows: verdict, effect, interval, seeds, or why there is none
    effect: float = math.nan  # in ``unit``: accuracy points, or a probability for claim 4
    ci: tuple[float, float] = NAN_CI  # (1 - alpha) interval of ``effect``, 95 % by default
    p: float = math.nan  # the p-value behind the verdict (Holm-adjusted, TOST, ...), when there is one
    seeds: str = ""  # finished seeds behind the effect, e.g. "3 vs 3"
    details: tuple[str, ...] = ()  # claim 2's comparisons, claim 4's adjacent pairs, claim 5's simple effects
    unit: str = POINTS


def _pts(x: float) -> str:
    return f"{x * 100:+.2f}"


def _ci(ci: tuple[float, float], level: str = "95 %") -> str:
    return f"[{level} CI {_pts(ci[0])}, {_pts(ci[1])}]"


def _vs(samples: Sequence[np.ndarray]) -> str:
    return " vs ".join(str(len(s)) for s in samples)


def _each(counts: Sequence[int]) -> str:
    low, high = min(counts), max(counts)
    return f"{low} per configuration" if low == high else f"{low}-{high} per configuration"


def _direction(value: float, p: float, alpha: float) -> str:
    if p < alpha:
        return SUPPORTED if value > 0 else CONTRADICTED
    return INCONCLUSIVE


# --- the claims ------------------------------------------------------------------------------------------------


def _points_ci(e: Estimate) -> tuple[float, float]:
    return e.ci[0] * 100, e.ci[1] * 100


def _difference(
    cid: int,
    test: str,
    groups: list[Group],
    rows: tuple[Row, Row],
    what: str,
    alpha: float,
    metric: Callable[[Group], np.ndarray] = accuracies,
) -> Claim:
    """Claims 1 and 6: Welch on mean(rows[0]) - mean(rows[1]); supported when significantly > 0,
    contradicted when significantly < 0."""
    (a, b), note = samples(groups, rows, metric)
    d = welch(a, b, 1 - alpha)
    verdict = _direction(d.value, d.p, alpha)
    lean = ""  # when inconclusive: which way the data lean, without calling it a finding
    if verdict == INCONCLUSIVE and d.value:
        lean = f"; the point estimate favours {rows[0 if d.value > 0 else 1].label}"
    elif verdict == INCONCLUSIVE:
        lean = "; the point estimate is 0"
    line = f"{verdict}: {what} = {_pts(d.value)} points {_ci(d.ci)}, Welch p = {d.p:.3g}, seeds {_vs((a, b))}{lean}"
    return Claim(cid, STATEMENTS[cid], test, verdict, line + note, d.value * 100, _points_ci(d), d.p, _vs((a, b)))


def claim_augmentation(groups: list[Group], test: str, alpha: float) -> Claim:
    """Claim 1: the train-test gap per seed measures overfitting; augmentation should shrink it."""
    return _difference(
        1, test, groups, (AUG_OFF, AUG_ON), "train-test gap, augmentation off minus on", alpha, overfitting_gap
    )


def claim_schedule(groups: list[Group], test: str, alpha: float) -> Claim:
    """Claim 6: the study kept cosine, so the claim is that cosine is at least as good as step."""
    return _difference(6, test, groups, (COSINE, STEP), "test accuracy, cosine minus step", alpha)


def claim_optimiser(groups: list[Group], test: str, alpha: float) -> Claim:
    """Claim 2: one Welch comparison per (norm, alternative), one Holm correction over all that could be tested.
    A universal claim: supported when every comparison is, contradicted by one significant counter-example."""
    tested: dict[tuple[str, str], tuple[Estimate, tuple[int, int], str]] = {}
    skipped: dict[tuple[str, str], Skip] = {}
    for alt, rows in (("Adam lr 1e-4", ADAM), ("SGD lr 1e-4", SLOW_SGD)):
        for n in NORM_NAMES:
            try:
                (a, b), note = samples(groups, (SGD[n], rows[n]))
                tested[(n, alt)] = (welch(a, b, 1 - alpha), (len(a), len(b)), note)
            except Skip as skip:
                skipped[(n, alt)] = skip
    adjusted = stats.holm({k: d.p for k, (d, _, _) in tested.items()})
    verdicts = {k: _direction(d.value, adjusted[k], alpha) for k, (d, _, _) in tested.items()}
    details = []
    for key in sorted((*tested, *skipped), key=lambda k: (k[1], NORM_NAMES.index(k[0]))):
        n, alt = key
        if key in skipped:
            details.append(f"{n}, SGD lr 0.1 vs {alt}: {skipped[key].verdict}: {skipped[key].reason}")
            continue
        d, (na, nb), note = tested[key]
        details.append(
            f"{n}, SGD lr 0.1 minus {alt} = {_pts(d.value)} points {_ci(d.ci)}, Holm-adjusted "
            f"p = {adjusted[key]:.3g}, seeds {na} vs {nb}: {verdicts[key]}{note}"
        )
    total = len(tested) + len(skipped)
    if not tested:
        verdict = NOT_TESTABLE if any(s.verdict == NOT_TESTABLE for s in skipped.values()) else INCONCLUSIVE
        where = " in this sweep" if verdict == NOT_TESTABLE else ""
        line = f"{verdict}{where}: none of the {total} comparisons could be tested (see details)"
        return Claim(2, STATEMENTS[2], test, verdict, line, details=tuple(details))
    counts = {v: sum(x == v for x in verdicts.values()) for v in (SUPPORTED, CONTRADICTED, INCONCLUSIVE)}
    verdict = CONTRADICTED if counts[CONTRADICTED] else SUPPORTED if counts[SUPPORTED] == total else INCONCLUSIVE
    if verdict == CONTRADICTED:  # the headline is the clearest counter-example
        shown, what = min((k for k in tested if verdicts[k] == CONTRADICTED), key=lambda k: adjusted[k]), "against"
    else:
        shown, what = max(tested, key=lambda k: (adjusted[k], -tested[k][0].value)), "least certain"
    d = tested[shown][0]
    others = [f"{counts[v]} {v}" for v in (CONTRADICTED, INCONCLUSIVE) if counts[v]]
    others += [f"{len(skipped)} not tested"] if skipped else []
    line = (
        f"{verdict}: supported for {counts[SUPPORTED]} of {total} comparisons"
        + (f" ({', '.join(others)})" if others else "")
        + f"; {what}: {shown[0]}, SGD lr 0.1 minus {shown[1]} = {_pts(d.value)} points {_ci(d.ci)}, "
        f"Holm-adjusted p = {adjusted[shown]:.3g}"
    )
    seeds = _each([n for _, pair, _ in tested.values() for n in pair])
    return Claim(
        2, STATEMENTS[2], test, verdict, line, d.value * 100, _points_ci(d), adjusted[shown], seeds, tuple(details)
    )


def claim_batch_norm(groups: list[Group], test: str, alpha: float, margin: float) -> Claim:
    """Claim 3: "matches" is a claim of equality, which a difference test cannot support (failing to
    find a difference is not evidence of none); TOST of bn - torch_bn within ±margin can."""
    (a, b), note = samples(groups, (SGD["bn"], SGD["torch_bn"]))
    d, inner = welch(a, b, 1 - alpha), welch(a, b, 1 - 2 * alpha)  # TOST at alpha <=> the 1 - 2 alpha interval
    p = max(tost(a, b, margin))
    margin_text, inner_ci = band(margin), _ci(inner.ci, f"{(1 - 2 * alpha) * 100:g} %")
    if p < alpha:
        verdict, why = SUPPORTED, f"equivalent: {inner_ci} lies inside {margin_text}"
    elif d.ci[0] > margin or d.ci[1] < -margin:
        verdict, why = (
            CONTRADICTED,
            f"{_ci(d.ci)} lies wholly outside {margin_text}: they differ by more than the margin",
        )
    else:
        verdict = INCONCLUSIVE
        why = (
            f"{inner_ci} is not inside {margin_text}, so equivalence is not shown (a difference that is not "
            f"significant is not evidence of equality)"
        )
    line = (
        f"{verdict}: test accuracy bn minus torch_bn = {_pts(d.value)} points, {why}; TOST p = {p:.3g}, "
        f"seeds {_vs((a, b))}{note}"
    )
    return Claim(3, STATEMENTS[3], test, verdict, line, d.value * 100, _points_ci(d), p, _vs((a, b)))


def _improvement_text(poi: float, ci: tuple[float, float], x: str, y: str, alpha: float) -> str:
    shown = "(no bootstrap interval)" if math.isnan(ci[0]) else f"[{(1 - alpha) * 100:g} % CI {ci[0]:.2f}, {ci[1]:.2f}]"
    return f"P({x} > {y}) = {poi:.2f} {shown}"


def claim_ranking(groups: list[Group], test: str, alpha: float) -> Claim:
    """Claim 4: a ranking holds when each norm beats the next one down; the probability of
    improvement says how often a seed of one beats a seed of the other, whatever the scale."""
    scores, note = samples(groups, [SGD[n] for n in NORM_NAMES])
    by_norm = dict(zip(NORM_NAMES, scores))
    order = sorted(NORM_NAMES, key=lambda n: -by_norm[n].mean())  # stable: ties keep the registry's order
    pairs = [
        (
            x,
            y,
            probability_of_improvement(by_norm[x], by_norm[y]),
            improvement_interval(by_norm[x], by_norm[y], 1 - alpha),
        )
        for x, y in zip(order, order[1:])
    ]
    details = tuple(
        f"{i}. {x} {by_norm[x].mean() * 100:.2f} % over {y} {by_norm[y].mean() * 100:.2f} %: "
        f"{_improvement_text(poi, ci, x, y, alpha)}, seeds {len(by_norm[x])} vs {len(by_norm[y])}"
        for i, (x, y, poi, ci) in enumerate(pairs, 1)
    )
    x, y, poi, ci = min(pairs, key=lambda q: -math.inf if math.isnan(q[3][0]) else q[3][0])
    verdict = SUPPORTED if all(c[0] > 0.5 for _, _, _, c in pairs) else INCONCLUSIVE  # NaN > 0.5 is False
    seeds = _each([len(s) for s in scores])
    line = (
        f"{verdict}: ranking {' > '.join(order)}; least certain adjacent pair: "
        f"{_improvement_text(poi, ci, x, y, alpha)}, seeds {seeds}{note}"
    )
    return Claim(4, STATEMENTS[4], test, verdict, line, poi, ci, math.nan, seeds, details, PROBABILITY)


def claim_batch_size(groups: list[Group], test: str, alpha: float) -> Claim:
    """Claim 5: "matters for bn but not gn" is an interaction of norm and batch size: the
    difference of the two simple effects, (bn 8 - bn 128) - (gn 8 - gn 128)."""
    scores, note = samples(groups, [BATCH[k] for k in (("bn", 8), ("bn", 128), ("gn", 8), ("gn", 128))])
    inter = contrast(scores, [1, -1, -1, 1], 1 - alpha)
    bn, gn = welch(scores[0], scores[1], 1 - alpha), welch(scores[2], scores[3], 1 - alpha)
    excludes = inter.ci[0] > 0 or inter.ci[1] < 0
    if excludes and abs(bn.value) > abs(gn.value):
        verdict = SUPPORTED
    elif excludes and abs(gn.value) > abs(bn.value):
        verdict = CONTRADICTED
    else:
        verdict = INCONCLUSIVE
    simple = tuple(
        f"{n} batch 8 minus 128 = {_pts(e.value)} points {_ci(e.ci)}, Welch p = {e.p:.3g}"
        for n, e in (("bn", bn), ("gn", gn))
    )
    seeds = "/".join(str(len(s)) for s in scores)
    line = (
        f"{verdict}: interaction = {_pts(inter.value)} points {_ci(inter.ci)}, df {inter.df:.1f}; "
        f"{'; '.join(simple)}; seeds {seeds} (bn 8/bn 128/gn 8/gn 128){note}"
    )
    return Claim(5, STATEMENTS[5], test, verdict, line, inter.value * 100, _points_ci(inter), inter.p, seeds, simple)


def check_claims(groups: list[Group], margin: float = MARGIN, alpha: float = stats.ALPHA) -> list[Claim]:
    """The six claims in order, each tested on ``groups`` (a sweep's configurations). ``margin``:
    claim 3's equivalence margin as a fraction (0.01 = one accuracy point); ``alpha``: every test's level."""
    if not 0 < margin < 1:
        raise ValueError(f"margin must be a fraction of accuracy in (0, 1), e.g. 0.01 for one point; got {margin}")
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must lie in (0, 0.5), e.g. 0.05; got {alpha}")
    test = phrases(alpha, margin)
    checks: dict[int, Callable[[], Claim]] = {
        1: lambda: claim_augmentation(groups, test[1], alpha),
        2: lambda: claim_optimiser(groups, test[2], alpha),
        3: lambda: claim_batch_norm(groups, test[3], alpha, margin),
        4: lambda: claim_ranking(groups, test[4], alpha),
        5: lambda: claim_batch_size(groups, test[5], alpha),
        6: lambda: claim_schedule(groups, test[6], alpha),
    }
    out = []
    for cid, check in checks.items():
        try:
            out.append(check())
        except Skip as skip:
            where = " in this sweep" if skip.verdict == NOT_TESTABLE else ""
            out.append(Claim(cid, STATEMENTS[cid], test[cid], skip.verdict, f"{skip.verdict}{where}: {skip.reason}"))
    return out

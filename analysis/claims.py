"""The study's six claims, each decided at one level against the margin (the smallest effect of
interest), with a one-line verdict each: supported, contradicted, inconclusive, or not testable in
this sweep. ``analysis.sequential`` chooses the level (one look at alpha for a sweep whose seeds
were fixed in advance; a share of alpha per round for an adaptive one) and says what would decide an
open claim.

Every configuration a claim uses is a point of the study preset (``analysis.evidence``), matched to
the sweep's groups the way the tables match their rows; a point that matches several groups (runs
that differ in, say, epochs) is never pooled. Each claim is a set of parts (``analysis.decisions``):

1. augmentation reduces overfitting: the train-test gap, off minus on, is an effect above zero;
2. SGD lr 0.1 beats Adam lr 1e-4 and SGD lr 1e-4 for every norm: 14 effects above zero, Holm over
   them; supported when all are found, contradicted by one found against it or negligible;
3. bn matches torch_bn: their difference is within the margin (equivalence);
4. the norms rank in a clear order: each adjacent pair of the ranking by mean is *better* (an effect
   found) or *tied* (negligible), Holm over the six; supported when every pair is decided and one at
   least is better, contradicted when every pair is tied (no order at all);
5. batch size matters for bn, not for gn: bn's batch effect found, gn's within the margin, and their
   interaction found in bn's direction, Holm over the three;
6. cosine is at least as good as step: cosine minus step is not below -margin (non-inferiority).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from analysis import stats
from analysis.decisions import (
    AT_LEAST,
    DIFFERENT,
    EFFECT,
    EQUAL,
    EQUIVALENT,
    FOUND,
    NEGLIGIBLE,
    NO_SPREAD,
    NOT_WORSE,
    WORSE,
    Decision,
    Open,
    Part,
    decide,
)
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
    find,
    overfitting_gap,
    phrases,
    samples,
)
from analysis.groups import Group
from analysis.stats import NAN_CI
from resnorm.norms import NORM_NAMES

SUPPORTED, CONTRADICTED = "supported", "contradicted"
VERDICTS = (SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE)
DECIDED = (SUPPORTED, CONTRADICTED)


@dataclass(frozen=True)
class Claim:
    """One claim of the study and what this sweep says about it."""

    id: int  # 1..6, in the study's order
    statement: str  # the study's claim, short
    test: str  # the test used, with its margin and correction
    verdict: str  # one of VERDICTS
    line: str  # the one line the report shows: verdict, effect, interval, seeds, or why there is none
    effect: float = math.nan  # accuracy points: the claim's effect, or its least certain part's
    ci: tuple[float, float] = NAN_CI  # its 1 - level interval, in points
    p: float = math.nan  # the p-value behind the verdict (Holm-adjusted over the claim's parts)
    seeds: str = ""  # finished seeds behind the effect, e.g. "3 vs 3"
    details: tuple[str, ...] = ()  # claim 2's comparisons, claim 4's adjacent pairs, claim 5's parts
    level: float = math.nan  # the alpha this verdict was reached at (a look's share in an adaptive sweep)
    parts: tuple[Part, ...] = ()  # what was tested, for the seeds a decision would take
    open_parts: tuple[Open, ...] = ()  # the parts still open, and the level a later look would test each at
    outcomes: tuple[str, ...] = ()  # each part's outcome (found, negligible, equivalent, ..., open), in order
    needed: str = ""  # an open claim: the seeds per configuration that would likely decide it, in words
    look: str = ""  # an adaptive sweep: the round the verdict comes from, in words

    @property
    def decided(self) -> bool:
        return self.verdict in DECIDED


def pts(x: float) -> str:
    """A fraction of accuracy as signed points, ``+1.23``."""
    return f"{x * 100:+.2f}"


def ci_text(ci: tuple[float, float], level: float) -> str:
    """``[95 % CI +0.12, +2.34]`` for a ``level`` in (0, 1)."""
    return f"[{level_text(level)} CI {pts(ci[0])}, {pts(ci[1])}]"


def interval_words(ci: tuple[float, float], level: float) -> str:
    """``95 % interval [+0.12, +2.34]``."""
    return f"{level_text(level)} interval [{pts(ci[0])}, {pts(ci[1])}]"


def level_text(level: float) -> str:
    """A confidence level as a percentage with the digits it needs: ``95 %``, ``98.65 %``."""
    return f"{round(level * 100, 4):g} %"


def _vs(sizes: Sequence[int]) -> str:
    return " vs ".join(map(str, sizes))


def _each(counts: Sequence[int]) -> str:
    low, high = min(counts), max(counts)
    return f"{low} per configuration" if low == high else f"{low}-{high} per configuration"


def _points_ci(ci: tuple[float, float]) -> tuple[float, float]:
    return ci[0] * 100, ci[1] * 100


def _why(d: Decision, margin: float, words: tuple[str, str] = ("", "")) -> str:
    """Why a part came out as it did, in a few words: the interval that decided it. ``words``: what a
    found effect means for the claim, when it helps to say (towards it, against it)."""
    e, m, below, alpha = d.part.estimate, band(margin), f"-{band(margin).lstrip('±')}", d.level
    narrow = interval_words(e.interval(1 - 2 * alpha), 1 - 2 * alpha)  # equivalence and negligibility
    wide = interval_words(e.interval(1 - alpha), 1 - alpha)  # non-inferiority
    low, high = e.interval(1 - alpha)
    if d.outcome == NO_SPREAD:
        alike = ", ".join(f"all {s[0] * 100:.2f} %" for s in d.part.samples)
        return f"no test: each configuration's seeds scored alike ({alike}), and identical seeds are not certainty"
    if d.outcome == NEGLIGIBLE:
        real = ", so although it is real (its interval clears zero) it is smaller than the margin"
        return f"negligible: its {narrow} lies inside {m}" + (real if low > 0 or high < 0 else "")
    if d.outcome == FOUND:
        said = words[0] if d.support > 0 else words[1] or ("against the claim" if d.part.direction else "")
        return f"found{': ' + said if said else ''} (its interval lies {'above' if e.value > 0 else 'below'} zero)"
    if d.outcome == EQUIVALENT:
        return f"equivalent: its {narrow} lies inside {m}"
    if d.outcome == DIFFERENT:
        return f"its interval lies wholly outside {m}: they differ by more than the margin"
    if d.outcome == NOT_WORSE:
        within = ", worse but within the margin" if high < 0 else ""
        return f"not worse: its {wide} starts above {below}{within}"
    if d.outcome == WORSE:
        return f"worse by more than the margin: its {wide} ends below {below}"
    if d.part.kind == EQUAL:
        return (
            f"its {narrow} is not inside {m}, so equivalence is not shown (a difference that is not "
            "significant is not evidence of equality)"
        )
    if d.part.kind == AT_LEAST:
        return f"its {wide} reaches both sides of {below}"
    open_ = f"neither beyond zero nor inside {m} (its {narrow})"
    if d.part.direction == 0:
        return open_
    lean = "is 0" if e.value == 0 else f"leans {'towards' if d.part.support(FOUND) > 0 else 'against'} the claim"
    return f"{open_}; the estimate {lean}"


# --- the claims: what each compares (its parts), then its verdict from the parts' decisions ----------------------


@dataclass(frozen=True)
class Evidence:
    """What a claim compares in a sweep: its parts, a note on seeds that did not finish, and (claim 2)
    the comparisons that could not be made."""

    parts: tuple[Part, ...]
    note: str = ""
    skipped: tuple[tuple[str, Skip], ...] = ()  # (comparison, why), claim 2
    notes: tuple[str, ...] = ()  # one per part: seeds that did not finish (claim 2)


def _part(
    name: str,
    kind: str,
    found: Sequence[Group],
    scores: Sequence[np.ndarray],
    weights: Sequence[float],
    direction: int = 1,
) -> Part:
    return Part(
        name,
        kind,
        tuple(tuple(float(v) for v in s) for s in scores),
        tuple(weights),
        direction,
        tuple(g.config for g in found),
    )


def _pair(groups: list[Group], rows, name: str, kind: str, metric=accuracies, direction: int = 1) -> Evidence:
    scores, note = samples(groups, rows, metric)
    return Evidence((_part(name, kind, find(groups, rows), scores, (1, -1), direction),), note)


def evidence_augmentation(groups: list[Group]) -> Evidence:
    """Claim 1: the train-test gap per seed measures overfitting; augmentation should shrink it, so the gap
    without augmentation minus the gap with it should be above zero."""
    return _pair(groups, (AUG_OFF, AUG_ON), "train-test gap, augmentation off minus on", EFFECT, overfitting_gap)


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
    """Claim 4: the ranking by mean test accuracy; each adjacent pair, the upper one minus the lower."""
    rows = [SGD[n] for n in NORM_NAMES]
    scores, note = samples(groups, rows)
    found = dict(zip(NORM_NAMES, find(groups, rows)))
    by_norm = dict(zip(NORM_NAMES, scores))
    order = sorted(NORM_NAMES, key=lambda n: -by_norm[n].mean())  # stable: ties keep the registry's order
    parts = tuple(
        _part(f"{x} minus {y}", EFFECT, (found[x], found[y]), (by_norm[x], by_norm[y]), (1, -1))
        for x, y in zip(order, order[1:])
    )
    return Evidence(parts, note)


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
WORDS = {1: ("the gap is smaller with augmentation", "against the claim: the gap is larger with augmentation")}


def _detail(d: Decision, margin: float) -> str:
    e = d.part.estimate
    shown = ci_text(e.interval(1 - d.level), 1 - d.level) if e.testable and d.level > 0 else "(no interval)"
    if d.look:  # an adaptive sweep's look: its own share of alpha, no Holm-adjusted p
        p = f", round {d.look} at alpha {d.level:.3g}"
    else:
        p = "" if math.isnan(d.p) else f", Holm-adjusted p = {d.p:.3g}"
    return f"{d.part.name} = {pts(e.value)} points {shown}{p}, seeds {_vs(d.part.sizes)}: {_why(d, margin)}"


def _least_certain(decisions: Sequence[Decision]) -> Decision:
    """The headline part: an open one with the largest p-value (untested ones first), else the largest p."""
    pool = [d for d in decisions if d.support == 0] or list(decisions)
    return max(pool, key=lambda d: math.inf if math.isnan(d.p) else d.p)


def compose(cid: int, ev: Evidence, decisions: Sequence[Decision], margin: float, alpha: float) -> Claim:
    """Claim ``cid``'s verdict and line from its parts' ``decisions`` (one per part of ``ev``, in order)."""
    supports = [d.support for d in decisions]
    details: list[str] = []
    if cid == 4:
        signs = [BETTER if d.outcome == FOUND else TIED if d.outcome == NEGLIGIBLE else "?" for d in decisions]
        order = [d.part.name.split(" minus ")[0] for d in decisions] + [decisions[-1].part.name.split(" minus ")[1]]
        ranking = order[0] + "".join(f" {s} {n}" for s, n in zip(signs, order[1:]))
        decided = sum(s != "?" for s in signs)
        verdict = INCONCLUSIVE if decided < len(signs) else SUPPORTED if BETTER in signs else CONTRADICTED
        legend = f"> better, {TIED} tied within {band(margin)}" + (", ? open" if "?" in signs else "")
        summary = {
            SUPPORTED: "every adjacent pair is decided",
            CONTRADICTED: "every adjacent pair is tied: no order",
            INCONCLUSIVE: f"{decided} of {len(signs)} adjacent pairs decided",
        }[verdict]
        shown = _least_certain(decisions)
        line = f"{verdict}: ranking {ranking} ({legend}); {summary}; least certain pair: {_detail(shown, margin)}"
        words = {BETTER: "better", TIED: "tied", "?": "open"}
        details = [f"{i}. {words[s]}: {_detail(d, margin)}" for i, (s, d) in enumerate(zip(signs, decisions), 1)]
    elif cid == 2:
        verdict = CONTRADICTED if -1 in supports else SUPPORTED if supports.count(1) == len(supports) else INCONCLUSIVE
        if ev.skipped and verdict == SUPPORTED:
            verdict = INCONCLUSIVE
        total = len(decisions) + len(ev.skipped)
        if verdict == CONTRADICTED:  # the headline is the clearest counter-example
            shown, what = min((d for d in decisions if d.support < 0), key=lambda d: d.p), "against"
        else:
            shown, what = _least_certain(decisions), "least certain"
        counts = [f"{supports.count(-1)} contradicted"] if -1 in supports else []
        counts += [f"{supports.count(0)} inconclusive"] if 0 in supports else []
        counts += [f"{len(ev.skipped)} not tested"] if ev.skipped else []
        line = (
            f"{verdict}: supported for {supports.count(1)} of {total} comparisons"
            + (f" ({', '.join(counts)})" if counts else "")
            + f"; {what}: {_detail(shown, margin)}"
        )
        word = {1: SUPPORTED, -1: CONTRADICTED, 0: INCONCLUSIVE}
        details = [f"{word[d.support]}: {_detail(d, margin)}{n}" for d, n in zip(decisions, ev.notes)]
        details += [f"{what_}: {skip.verdict}: {skip.reason}" for what_, skip in ev.skipped]
    elif cid == 5:
        verdict = CONTRADICTED if -1 in supports else SUPPORTED if all(s == 1 for s in supports) else INCONCLUSIVE
        words = ["bn's batch effect", "gn's batch effect", "the interaction"]
        head = "; ".join(f"{w} {_state(d, margin)}" for w, d in zip(words, decisions))
        shown = _least_certain(decisions)
        line = f"{verdict}: {head}; seeds {_seeds_of(cid, decisions)} (bn 8/bn 128/gn 8/gn 128)"
        details = [_detail(d, margin) for d in decisions]
    else:  # claims 1, 3 and 6: one part; its outcome is the verdict
        (shown,) = decisions
        verdict = {1: SUPPORTED, -1: CONTRADICTED}.get(shown.support, INCONCLUSIVE)
        e = shown.part.estimate
        tested = e.testable and shown.level > 0
        interval = ci_text(e.interval(1 - shown.level), 1 - shown.level) if tested else "(no interval)"
        at = f" (round {shown.look} at alpha {shown.level:.3g})" if shown.look else ""
        line = (
            f"{verdict}: {shown.part.name} = {pts(e.value)} points {interval}{at}; "
            f"{_why(shown, margin, WORDS.get(cid, ('', '')))}; seeds {_vs(shown.part.sizes)}"
        )
    e = shown.part.estimate
    return Claim(
        cid,
        STATEMENTS[cid],
        phrases(margin)[cid],
        verdict,
        line + ev.note,
        e.value * 100,
        _points_ci(e.interval(1 - shown.level)) if shown.level > 0 else NAN_CI,
        shown.p,
        _seeds_of(cid, decisions),
        tuple(details),
        shown.level,
        tuple(d.part for d in decisions),
        tuple(Open(d.part, alpha / len(decisions)) for d in decisions if d.support == 0),
        tuple(d.outcome for d in decisions),
    )


def _seeds_of(cid: int, decisions: Sequence[Decision]) -> str:
    """The finished seeds behind a claim's verdict, as its parts stood when decided: ``3 vs 3`` for one
    part, ``3/3/4/4`` for claim 5 (its interaction's four configurations), else per configuration."""
    if len(decisions) == 1:
        return _vs(decisions[0].part.sizes)
    if cid == 5:
        return "/".join(map(str, decisions[-1].part.sizes))
    return _each([n for d in decisions for n in d.part.sizes])


def _state(d: Decision, margin: float) -> str:
    """A part of claim 5 in a few words: its outcome and effect."""
    said = {
        FOUND: "found",
        NEGLIGIBLE: "negligible",
        EQUIVALENT: f"within {band(margin)}",
        DIFFERENT: f"beyond {band(margin)}",
        NO_SPREAD: "untested (no spread)",
    }.get(d.outcome, "open")
    return f"{said} ({pts(d.part.estimate.value)} points)"


TIED, BETTER = "≈", ">"


def check_claim(cid: int, groups: list[Group], margin: float = MARGIN, alpha: float = stats.ALPHA) -> Claim:
    """Claim ``cid`` tested once on ``groups`` (a sweep's configurations) at level ``alpha``, Holm over its
    parts, against ``margin`` (a fraction: 0.01 is one accuracy point)."""
    check_arguments(margin, alpha)
    try:
        ev = EVIDENCE[cid](groups)
    except Skip as skip:
        return skipped(cid, skip, margin, alpha)
    return compose(cid, ev, decide(ev.parts, margin, alpha), margin, alpha)


def check_arguments(margin: float, alpha: float) -> None:
    if not (math.isfinite(margin) and 0 < margin < 1):
        raise ValueError(f"margin must be a fraction of accuracy in (0, 1), e.g. 0.01 for one point; got {margin}")
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must lie in (0, 0.5), e.g. 0.05; got {alpha}")


def skipped(cid: int, skip: Skip, margin: float, alpha: float) -> Claim:
    """The claim of a sweep that cannot test it: not testable (a configuration missing) or inconclusive."""
    where = " in this sweep" if skip.verdict == NOT_TESTABLE else ""
    line = f"{skip.verdict}{where}: {skip.reason}"
    return Claim(cid, STATEMENTS[cid], phrases(margin)[cid], skip.verdict, line, level=alpha)


def check_claims(groups: list[Group], margin: float = MARGIN, alpha: float = stats.ALPHA) -> list[Claim]:
    """The six claims in order, each tested once at ``alpha`` (a sweep whose seeds were fixed in advance)."""
    return [check_claim(cid, groups, margin, alpha) for cid in EVIDENCE]

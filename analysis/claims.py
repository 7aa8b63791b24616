"""The study's six claims, each decided against the margin (the smallest effect of interest), with a
one-line verdict each: supported, contradicted, inconclusive, or not testable in this sweep.
``analysis.looks`` decides a claim's parts (one look at alpha for a sweep whose seeds were fixed in
advance; a share of alpha per round for an adaptive one); ``analysis.sequential`` says what would decide
an open claim and what an adaptive sweep's next round trains.

Every configuration a claim uses is a point of the study preset (``analysis.evidence``), matched to
the sweep's groups the way the tables match their rows; a point that matches several groups (runs
that differ in, say, epochs) is never pooled. Each claim is a set of parts (``analysis.decisions``),
alpha shared among them (Bonferroni, a share passing on only from a part with no null left that could
be true):

1. augmentation reduces overfitting: the train-test gap, off minus on, is an effect above zero;
2. SGD lr 0.1 beats Adam lr 1e-4 and SGD lr 1e-4 for every norm: 14 effects above zero; supported when
   all are found, contradicted by one found against it or negligible;
3. bn matches torch_bn: their difference is within the margin (equivalence);
4. the norms rank in a clear order: in Table 3's order (the ranking by mean over every finished seed),
   each adjacent pair is *better* (an effect found) or *tied* (negligible); every one of the 21 pairs is
   tested, since which are adjacent may change between looks; supported when every adjacent pair is
   decided and one at least is better, contradicted when every one is tied (no order at all);
5. batch size matters for bn, not for gn: bn's batch effect found, gn's within the margin, and their
   interaction found in bn's direction;
6. cosine is at least as good as step: cosine minus step is not below -margin (non-inferiority).

A decided claim's line quotes the look that decided it and the part decided there (the last to be decided
when supported, the first counter-example when contradicted); an open one, its least certain open part.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from analysis import stats
from analysis.decisions import FOUND, NEGLIGIBLE, Decision, Open, Part, Spending
from analysis.evidence import (
    EVIDENCE,
    INCONCLUSIVE,
    MARGIN,
    NOT_TESTABLE,
    STATEMENTS,
    Evidence,
    Skip,
    band,
    pair_key,
    phrases,
)
from analysis.groups import Group
from analysis.looks import Course, decide
from analysis.stats import NAN_CI
from analysis.wording import ci_text, detail, each, points_ci, pts, state, vs, why

SUPPORTED, CONTRADICTED = "supported", "contradicted"
VERDICTS = (SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE)
DECIDED = (SUPPORTED, CONTRADICTED)
TIED, BETTER = "≈", ">"
WORDS = {1: ("the gap is smaller with augmentation", "against the claim: the gap is larger with augmentation")}


@dataclass(frozen=True)
class Claim:
    """One claim of the study and what this sweep says about it."""

    id: int  # 1..6, in the study's order
    statement: str  # the study's claim, short
    test: str  # the test used, with its margin and correction
    verdict: str  # one of VERDICTS
    line: str  # the one line the report shows: verdict, effect, interval, seeds, or why there is none
    effect: float = math.nan  # accuracy points: the claim's effect, or its headline part's
    ci: tuple[float, float] = NAN_CI  # its 1 - level interval, in points
    p: float = math.nan  # the p-value behind the verdict (adjusted for the claim's parts, one look)
    seeds: str = ""  # finished seeds behind the effect, e.g. "3 vs 3"
    details: tuple[str, ...] = ()  # claim 2's comparisons, claim 4's adjacent pairs, claim 5's parts
    level: float = math.nan  # the alpha the headline part was tested at (a look's share in an adaptive sweep)
    parts: tuple[Part, ...] = ()  # what was tested, for the seeds a decision would take
    open_parts: tuple[Open, ...] = ()  # the parts still open, and the level a later look would test each at
    outcomes: tuple[str, ...] = ()  # each part's outcome (found, negligible, equivalent, ..., open), in order
    needed: str = ""  # an open claim: the seeds per configuration that would likely decide it, in words
    look: str = ""  # an adaptive sweep: the round the verdict comes from, in words

    @property
    def decided(self) -> bool:
        return self.verdict in DECIDED


def verdict_of(cid: int, supports: Sequence[int], skipped: int = 0) -> str:
    """A claim's verdict from its parts' supports (+1, -1, 0); claim 4 is read by ``_ranking``."""
    if cid in (1, 3, 6):
        return {1: SUPPORTED, -1: CONTRADICTED}.get(supports[0], INCONCLUSIVE)
    if -1 in supports:
        return CONTRADICTED
    return SUPPORTED if all(s == 1 for s in supports) and not skipped else INCONCLUSIVE


def headline(verdict: str, decisions: Sequence[Decision]) -> Decision:
    """The part a claim's line quotes: the part decided last, the least certain of them (supported), the
    first counter-example (contradicted), else the least certain open part (untested ones first, then the
    largest p)."""
    if verdict == SUPPORTED:  # the last look's; of one look, the least certain
        return max(decisions, key=lambda d: (d.look, -math.inf if math.isnan(d.p) else d.p))
    if verdict == CONTRADICTED:
        return min((d for d in decisions if d.support < 0), key=lambda d: (d.look, d.p))
    pool = [d for d in decisions if d.support == 0] or list(decisions)
    return max(pool, key=lambda d: math.inf if math.isnan(d.p) else d.p)


def _look(verdict: str, shown: Decision, rounds: int) -> str:
    if not rounds:
        return ""
    return f"round {shown.look} of {rounds}" if verdict in DECIDED and shown.look else f"open after round {rounds}"


def _single(cid: int, verdict: str, shown: Decision, margin: float) -> str:
    """Claims 1, 3 and 6: one part, whose outcome is the verdict."""
    e = shown.part.estimate
    tested = e.testable and shown.level > 0
    interval = ci_text(e.interval(1 - shown.level), 1 - shown.level) if tested else "(no interval)"
    at = f" (round {shown.look} at alpha {shown.level:.3g})" if shown.look else ""
    return (
        f"{verdict}: {shown.part.name} = {pts(e.value)} points {interval}{at}; "
        f"{why(shown, margin, WORDS.get(cid, ('', '')))}; seeds {vs(shown.part.sizes)}"
    )


def _optimiser(ev: Evidence, decisions: Sequence[Decision], verdict: str, shown: Decision, margin: float):
    """Claim 2: the count of comparisons supported, the headline one, and every comparison."""
    supports = [d.support for d in decisions]
    what = {SUPPORTED: "decided last", CONTRADICTED: "against"}.get(verdict, "least certain")
    counts = [f"{supports.count(-1)} contradicted"] if -1 in supports else []
    counts += [f"{supports.count(0)} inconclusive"] if 0 in supports else []
    counts += [f"{len(ev.skipped)} not tested"] if ev.skipped else []
    line = (
        f"{verdict}: supported for {supports.count(1)} of {len(decisions) + len(ev.skipped)} comparisons"
        + (f" ({', '.join(counts)})" if counts else "")
        + f"; {what}: {detail(shown, margin)}"
    )
    word = {1: SUPPORTED, -1: CONTRADICTED, 0: INCONCLUSIVE}
    details = [f"{word[d.support]}: {detail(d, margin)}{n}" for d, n in zip(decisions, ev.notes)]
    details += [f"{what_}: {skip.verdict}: {skip.reason}" for what_, skip in ev.skipped]
    return line, details


def _batch(verdict: str, decisions: Sequence[Decision], margin: float):
    """Claim 5: its three parts in a few words, then each in full."""
    words = ["bn's batch effect", "gn's batch effect", "the interaction"]
    head = "; ".join(f"{w} {state(d, margin)}" for w, d in zip(words, decisions))
    line = f"{verdict}: {head}; seeds {seeds_of(5, decisions)} (bn 8/bn 128/gn 8/gn 128)"
    return line, [detail(d, margin) for d in decisions]


def compose(
    cid: int,
    ev: Evidence,
    courses: Mapping[str, Course],
    margin: float,
    spending: Spending | None = None,
    rounds: int = 0,
) -> Claim:
    """Claim ``cid``'s verdict and line from what became of its parts (``courses``, by ``Part.ident``); an
    adaptive sweep's spending and the looks it has had (``rounds``); None and 0 for seeds fixed in advance."""
    if cid == 4:
        return _ranking(ev, courses, margin, (spending, rounds))
    decisions = [courses[p.ident].decision for p in ev.parts]
    verdict = verdict_of(cid, [d.support for d in decisions], len(ev.skipped))
    shown = headline(verdict, decisions)
    details: list[str] = []
    if cid == 2:
        line, details = _optimiser(ev, decisions, verdict, shown, margin)
    elif cid == 5:
        line, details = _batch(verdict, decisions, margin)
    else:
        line = _single(cid, verdict, shown, margin)
    return _claim(cid, verdict, line + ev.note, shown, details, decisions, courses, margin, (spending, rounds))


def _ranking(ev: Evidence, courses: Mapping[str, Course], margin: float, design: tuple[Spending | None, int]) -> Claim:
    """Claim 4: Table 3's order, each adjacent pair as its own decision left it (better, tied or open)."""
    order = ev.ranking
    decisions = [courses[pair_key(x, y)].decision for x, y in zip(order, order[1:])]
    signs = [BETTER if d.outcome == FOUND else TIED if d.outcome == NEGLIGIBLE else "?" for d in decisions]
    ranking = order[0] + "".join(f" {s} {n}" for s, n in zip(signs, order[1:]))
    decided = sum(s != "?" for s in signs)
    verdict = INCONCLUSIVE if decided < len(signs) else SUPPORTED if BETTER in signs else CONTRADICTED
    legend = f"> better, {TIED} tied within {band(margin)}" + (", ? open" if "?" in signs else "")
    summary = {
        SUPPORTED: "every adjacent pair is decided",
        CONTRADICTED: "every adjacent pair is tied: no order",
        INCONCLUSIVE: f"{decided} of {len(signs)} adjacent pairs decided",
    }[verdict]
    shown = headline(SUPPORTED if verdict == CONTRADICTED else verdict, decisions)
    which = {SUPPORTED: "decided last", CONTRADICTED: "decided last"}.get(verdict, "least certain")
    line = f"{verdict}: ranking {ranking} ({legend}); {summary}; {which} pair: {detail(shown, margin)}"
    words = {BETTER: "better", TIED: "tied", "?": "open"}
    details = [f"{i}. {words[s]}: {detail(d, margin)}" for i, (s, d) in enumerate(zip(signs, decisions), 1)]
    adjacent = {pair_key(x, y): courses[pair_key(x, y)] for x, y in zip(order, order[1:])}
    return _claim(4, verdict, line + ev.note, shown, details, decisions, adjacent, margin, design)


def _claim(
    cid: int,
    verdict: str,
    line: str,
    shown: Decision,
    details: Sequence[str],
    decisions: Sequence[Decision],
    courses: Mapping[str, Course],
    margin: float,
    design: tuple[Spending | None, int],
) -> Claim:
    """The claim from its composed line: ``design`` is (the spending, rounds looked at), None and 0 for seeds
    fixed in advance."""
    spending, rounds = design
    e = shown.part.estimate
    opened = tuple(Open(c.decision.part, c.share, c.spent, spending) for c in courses.values() if c.open)
    return Claim(
        cid,
        STATEMENTS[cid],
        phrases(margin)[cid],
        verdict,
        line,
        e.value * 100,
        points_ci(e.interval(1 - shown.level)) if shown.level > 0 else NAN_CI,
        shown.p,
        seeds_of(cid, decisions),
        tuple(details),
        shown.level,
        tuple(d.part for d in decisions),
        opened,
        tuple(d.outcome for d in decisions),
        look=_look(verdict, shown, rounds),
    )


def seeds_of(cid: int, decisions: Sequence[Decision]) -> str:
    """The finished seeds behind a claim's verdict, as its parts stood when decided: ``3 vs 3`` for one
    part, ``3/3/4/4`` for claim 5 (its interaction's four configurations), else per configuration."""
    if len(decisions) == 1:
        return vs(decisions[0].part.sizes)
    if cid == 5:
        return "/".join(map(str, decisions[-1].part.sizes))
    return each([n for d in decisions for n in d.part.sizes])


def check_claim(cid: int, groups: list[Group], margin: float = MARGIN, alpha: float = stats.ALPHA) -> Claim:
    """Claim ``cid`` tested once on ``groups`` (a sweep's configurations) at level ``alpha``, shared over its
    parts, against ``margin`` (a fraction: 0.01 is one accuracy point)."""
    check_arguments(margin, alpha)
    try:
        ev = EVIDENCE[cid](groups)
    except Skip as skip:
        return skipped(cid, skip, margin, alpha)
    return compose(cid, ev, decide([ev.parts], alpha, margin), margin)


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

"""When a claim is decided, and what would decide the rest: a sweep's design (seeds fixed in advance, or
an adaptive sweep's rounds), its claims under it (``analysis.looks`` decides each part over the looks),
what would likely decide an open claim, and what an adaptive sweep's next round trains.

A look is a round whose children have all ended; rounds are read from the sweep's plan (``sweep.json``:
each configuration's seeds with the round that planned them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import pandas as pd

from analysis import stats
from analysis.claims import Claim, check_arguments, check_claim, compose, skipped
from analysis.decisions import MIN_SEEDS, PILOT, RHO, Open, Spending, power, seeds_needed
from analysis.evidence import EVIDENCE, INCONCLUSIVE, MARGIN, ROWS, Evidence, Skip, find
from analysis.groups import Group
from analysis.looks import decide, view
from resnorm.config import TrainConfig

HOPELESS_POWER = 0.3  # an adaptive sweep adds no seeds to a claim that even max_seeds would likely leave open
GROWTH = 4  # a round at most quadruples a configuration's seeds: a spread estimated from 3 seeds is rough


@dataclass(frozen=True)
class Design:
    """How a sweep's seeds were chosen: fixed in advance (one look), or in rounds up to ``max_seeds``."""

    max_seeds: int = 0  # 0: fixed in advance
    # Each completed round: configuration (without its seed) -> every seed planned for it by the round's end.
    rounds: tuple[Mapping[TrainConfig, frozenset[int]], ...] = ()
    alpha: float = stats.ALPHA
    rho: float = RHO  # the shape of its spending (decisions.Spending)
    pilot: int = PILOT  # the seeds that spend none (the first round's)

    @property
    def spending(self) -> Spending | None:
        return Spending(self.max_seeds, self.rho, self.pilot) if self.adaptive else None

    @property
    def adaptive(self) -> bool:
        return self.max_seeds > 0

    def describe(self) -> str:
        spending = self.spending
        if spending is None:
            return (
                f"seeds fixed in advance: one look at alpha {self.alpha:g}, shared over each claim's parts "
                "(Bonferroni; a share passes on from a part with no null left that could be true)"
            )
        return (
            f"adaptive, {len(self.rounds)} round{'s' if len(self.rounds) != 1 else ''} looked at, up to "
            f"{self.max_seeds} seeds per configuration: each comparison {spending.describe()}, alpha "
            f"{self.alpha:g} shared over a claim's parts, each look at what it adds (Bonferroni over looks; error "
            "rates measured by simulation); intervals cut to the values an effect can take"
        )


def _looks(cid: int, groups: list[Group], design: Design) -> list[Evidence | Skip]:
    out: list[Evidence | Skip] = []
    for planned in design.rounds:
        try:
            out.append(EVIDENCE[cid](view(groups, planned)))
        except Skip as skip:
            out.append(skip)
    return out


def assess_claim(cid: int, groups: list[Group], design: Design, margin: float = MARGIN, explain: bool = True) -> Claim:
    """Claim ``cid`` of a sweep under its design; when open and ``explain``, with what would decide it."""
    check_arguments(margin, design.alpha)
    if not design.adaptive:
        claim = check_claim(cid, groups, margin, design.alpha)
    elif not design.rounds:
        claim = skipped(cid, Skip(INCONCLUSIVE, "no round has ended yet"), margin, design.alpha)
    else:
        evidence = _looks(cid, groups, design)
        last = evidence[-1]
        if isinstance(last, Skip):
            claim = skipped(cid, last, margin, design.alpha)
        else:
            parts = [() if isinstance(ev, Skip) else ev.parts for ev in evidence]
            courses = decide(parts, design.alpha, margin, design.spending)
            claim = compose(cid, last, courses, margin, design.spending, len(design.rounds))
    return claim if claim.decided or not explain else replace(claim, needed=needed(claim, design, margin))


def assess(groups: list[Group], design: Design, margin: float = MARGIN) -> list[Claim]:
    """The six claims of a sweep under its design, each open one with what would decide it."""
    return [assess_claim(cid, groups, design, margin) for cid in EVIDENCE]


def _seeds_now(claim: Claim) -> int:
    return min((n for o in claim.open_parts for n in o.part.sizes), default=0)


def needed(claim: Claim, design: Design, margin: float) -> str:
    """What would likely decide an open claim, in words: seeds per configuration for 80 % power at the
    observed spread and effect (an estimate from the seeds there are)."""
    if not claim.open_parts:
        return ""
    n = _seeds_now(claim)
    basis = f"the observed spread and effect, estimated from {n} seed{'s' if n != 1 else ''}"
    if any(o.part.estimate.sd == 0 for o in claim.open_parts):
        return "unknown: seeds that all scored alike give no spread to plan with; run more seeds"
    if design.adaptive:
        within = seeds_needed(claim.open_parts, margin, n + 1, design.max_seeds)
        if within is not None:
            return f"about {within} seeds per configuration (80 % power at the next look's alpha, {basis})"
    fixed = [Open(o.part, o.share) for o in claim.open_parts]  # one look at each part's share
    total = seeds_needed(fixed, margin, max(n + 1, 2), stats.MAX_SEEDS_ESTIMATE)
    beyond = f", more than max_seeds {design.max_seeds}" if design.adaptive else ""
    if total is None:
        return f"more than {stats.MAX_SEEDS_ESTIMATE:,} seeds per configuration ({basis})"
    return f"about {total} seeds per configuration{beyond} (80 % power at alpha {design.alpha:g}, {basis})"


def targets(
    claims: Sequence[Claim], design: Design, margin: float, groups: Sequence[Group] = ()
) -> dict[TrainConfig, int]:
    """The next round of an adaptive sweep: for each configuration of an open part, the seeds it should
    have, as many as 80 % power asks at the next look (capped at max_seeds, and at four times what it has:
    a spread estimated from a few seeds is rough). A part whose seeds have no spread gets twice as many.
    A claim that even max_seeds would likely leave open (its open parts all decided there with a chance
    under 30 %) gets none, so the budget goes where a claim can be decided. A configuration a claim compares
    that has fewer than 2 finished seeds (they failed) gets as many more as it lacks."""
    out: dict[TrainConfig, int] = dict(_repairs(claims, design, groups))
    for claim in claims:
        growing = [o for o in claim.open_parts if min(o.part.sizes) < design.max_seeds]
        if claim.decided or not growing:
            continue
        chance = math.prod(
            1.0 if o.part.estimate.sd == 0 else power(o.part, margin, design.max_seeds, o.level_at(design.max_seeds))
            for o in claim.open_parts
        )
        if chance < HOPELESS_POWER:
            continue
        for o in growing:
            now = min(o.part.sizes)
            if o.part.estimate.sd == 0:
                want = min(design.max_seeds, 2 * now)
            else:
                want = seeds_needed([o], margin, now + 1, design.max_seeds) or design.max_seeds
            want = min(want, GROWTH * now)
            for cfg in o.part.configs:
                out[cfg] = max(out.get(cfg, 0), want)
    return out


def _repairs(claims: Sequence[Claim], design: Design, groups: Sequence[Group]) -> Mapping[TrainConfig, int]:
    """Configurations of an untested claim (too few finished seeds on a side) with fewer than 2 finished
    seeds: the seeds they should have so that 2 more could finish, within max_seeds."""
    out: dict[TrainConfig, int] = {}
    for claim in claims:
        if claim.verdict != INCONCLUSIVE or claim.parts:
            continue
        try:
            found = find(list(groups), ROWS[claim.id])
        except Skip:
            continue
        for g in found:
            if len(g.finished) < MIN_SEEDS and len(g.planned) < design.max_seeds:
                out[g.config] = min(design.max_seeds, len(g.planned) + MIN_SEEDS - len(g.finished))
    return out


def rounds_table(claims: Sequence[Claim]) -> pd.DataFrame:
    """One row per claim as a round left it: verdict, where it was decided, effect and interval, seeds,
    and what would decide it (the parent run's ``rounds/round-{k}.json``)."""
    return pd.DataFrame.from_records(
        [
            {
                "claim": c.id,
                "statement": c.statement,
                "verdict": c.verdict,
                "look": c.look,
                "effect (points)": round(c.effect, 4) if not math.isnan(c.effect) else None,
                "ci low": round(c.ci[0], 4) if not math.isnan(c.ci[0]) else None,
                "ci high": round(c.ci[1], 4) if not math.isnan(c.ci[1]) else None,
                "seeds": c.seeds,
                "to decide it": c.needed,
            }
            for c in claims
        ]
    )

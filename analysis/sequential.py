"""When a claim is decided, and what would decide the rest.

A sweep whose seeds were fixed in advance has one look: every claim is tested once at alpha, Holm
over its parts (``analysis.claims.check_claim``).

An adaptive sweep (``seeds=auto``) trains in rounds, looks at the claims after each, and adds seeds
only where a claim is still open. Testing after every round and stopping once decided would inflate
false verdicts if every look used the whole alpha, so the design spends alpha over the looks
(a group-sequential design with alpha spending, Lan & DeMets 1983):

- a part's information at a look is the fewest finished seeds among its configurations over
  ``max_seeds`` (t in [0, 1]); by then it may have spent ``share * t`` (linear spending), and the
  look tests at what it adds, ``share * (t_k - t_{k-1})``. By Bonferroni's inequality the chances of a
  false outcome over all looks add up to at most ``share``, however many looks there are and whenever
  they come (the looks' correlation would allow more; leaving it out errs on the safe side);
- a part decided at a look stays decided. A claim's parts share alpha as Holm's procedure does:
  equally among the open ones, the share of every decided part passed on to the others, which are
  then tested again at every look with their larger share (the graphical group-sequential Holm
  procedure of Maurer & Bretz 2013, with equal weights);
- claim 4's parts are the adjacent pairs of each look's ranking, which may change between looks: it
  is tested whole at each look, at the alpha its seven configurations' information adds, Holm over
  its six pairs within the look, and decided at the first look where every pair is.

A look is a round whose children have all ended; rounds are read from the sweep's plan
(``sweep.json``: each configuration's seeds with the round that planned them).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import pandas as pd

from analysis import stats
from analysis.claims import EVIDENCE, Claim, check_arguments, check_claim, compose, skipped
from analysis.decisions import Decision, Open, Part, decide, power, seeds_needed, spending
from analysis.evidence import INCONCLUSIVE, MARGIN, Skip
from analysis.groups import Group
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

    @property
    def adaptive(self) -> bool:
        return self.max_seeds > 0

    def describe(self) -> str:
        if not self.adaptive:
            return f"seeds fixed in advance: one look at alpha {self.alpha:g}, Holm over each claim's parts"
        return (
            f"adaptive, {len(self.rounds)} round{'s' if len(self.rounds) != 1 else ''} looked at, up to "
            f"{self.max_seeds} seeds per configuration: alpha {self.alpha:g} spent linearly in the seeds each "
            "comparison has over max_seeds, each look at the alpha it adds (Bonferroni over looks), Holm over a "
            "claim's parts with the share of each decided part passed on"
        )


def view(groups: Sequence[Group], planned: Mapping[TrainConfig, frozenset[int]]) -> list[Group]:
    """The sweep as it stood at a look: each group's seeds planned by then (a group the round had not
    planned has none)."""
    out = []
    for g in groups:
        seeds = planned.get(g.config, frozenset())
        if set(g.planned) <= seeds and (not len(g.finished) or set(g.finished["seed"]) <= seeds):
            out.append(g)  # all of it was planned by then
            continue
        finished = g.finished[g.finished["seed"].isin(seeds)] if len(g.finished) else g.finished
        out.append(
            dataclasses.replace(
                g,
                planned=tuple(s for s in g.planned if s in seeds),
                finished=finished.reset_index(drop=True),
                problems=[p for p in g.problems if p["seed"] in seeds],
            )
        )
    return out


def fraction(part: Part, max_seeds: int) -> float:
    """A part's information fraction: the fewest finished seeds among its configurations over max_seeds."""
    return min(1.0, min(part.sizes) / max_seeds)


def _evidence(cid: int, views: Sequence[list[Group]]):
    out = []
    for v in views:
        try:
            out.append(EVIDENCE[cid](v))
        except Skip as skip:
            out.append(skip)
    return out


def _by_parts(cid: int, views: Sequence[list[Group]], design: Design, margin: float) -> Claim:
    """A claim whose parts stay the same from look to look: each part decided at its first decisive
    look, alpha shared among the open parts by Holm's rule, recycled as parts are decided."""
    evidence = _evidence(cid, views)
    last = evidence[-1]
    if isinstance(last, Skip):
        return skipped(cid, last, margin, design.alpha)
    names = [p.name for p in last.parts]
    looks = {name: [] for name in names}  # name -> [(round, part)]
    for k, ev in enumerate(evidence, 1):
        if not isinstance(ev, Skip):
            for p in ev.parts:
                if p.name in looks:
                    looks[p.name].append((k, p))
    decided: dict[str, Decision] = {}
    tried: dict[str, tuple[Decision, float]] = {}  # an open part: its last look, and the fraction spent by then
    while True:
        still = [n for n in names if n not in decided]
        if not still:
            break
        share, new = design.alpha / len(still), False
        for name in still:
            spent = 0.0
            for k, part in looks[name]:
                t = spending(fraction(part, design.max_seeds))
                level = share * (t - spent)
                if level <= 0:
                    continue
                spent = t
                outcome = part.outcome(margin, level)
                d = Decision(part, outcome, part.support(outcome), min(part.pvalues(margin)), level, k)
                tried[name] = (d, spent)
                if d.support:
                    decided[name], new = d, True
                    break
        if not new:
            break
    still = [n for n in names if n not in decided]
    final = []
    for name, part in zip(names, last.parts):
        if name in decided:
            final.append(decided[name])
        elif name in tried:
            final.append(tried[name][0])
        else:  # never tested: no information yet
            final.append(Decision(part, part.outcome(margin, 0.0), 0, math.nan, 0.0, 0))
    claim = compose(cid, last, final, margin, design.alpha)
    share = design.alpha / len(still) if still else 0.0
    opened = tuple(
        Open(d.part, share, tried[n][1] if n in tried else 0.0, design.max_seeds)
        for n, d in zip(names, final)
        if n in still
    )
    return replace(claim, open_parts=opened, look=_look(claim, final, len(views)))


def _whole(cid: int, views: Sequence[list[Group]], design: Design, margin: float) -> Claim:
    """Claim 4: tested whole at each look, at the alpha its configurations' information adds."""
    spent, claim = 0.0, None
    for k, ev in enumerate(_evidence(cid, views), 1):
        if isinstance(ev, Skip):
            claim = skipped(cid, ev, margin, design.alpha)
            continue
        t = spending(min(fraction(p, design.max_seeds) for p in ev.parts))
        level = design.alpha * (t - spent)
        if level <= 0:
            continue
        spent = t
        decisions = [replace(d, look=k) for d in decide(ev.parts, margin, level)]
        claim = compose(cid, ev, decisions, margin, level)
        share = design.alpha / len(ev.parts)
        opened = tuple(Open(d.part, share, spent, design.max_seeds) for d in decisions if d.support == 0)
        claim = replace(claim, open_parts=opened, look=_look(claim, decisions, len(views)))
        if claim.decided:
            break
    return claim or skipped(cid, Skip(INCONCLUSIVE, "no round has ended yet"), margin, design.alpha)


def _look(claim: Claim, decisions: Sequence[Decision], rounds: int) -> str:
    looked = [d.look for d in decisions if d.look]
    if claim.decided and looked:
        return f"round {max(looked)} of {rounds}"
    return f"open after round {rounds}"


def assess_claim(cid: int, groups: list[Group], design: Design, margin: float = MARGIN, explain: bool = True) -> Claim:
    """Claim ``cid`` of a sweep under its design; when open and ``explain``, with what would decide it."""
    check_arguments(margin, design.alpha)
    if not design.adaptive:
        claim = check_claim(cid, groups, margin, design.alpha)
    elif not design.rounds:
        claim = skipped(cid, Skip(INCONCLUSIVE, "no round has ended yet"), margin, design.alpha)
    else:
        views = [view(groups, planned) for planned in design.rounds]
        claim = (_whole if cid == 4 else _by_parts)(cid, views, design, margin)
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
    fixed = [Open(o.part, design.alpha / len(claim.open_parts)) for o in claim.open_parts]
    total = seeds_needed(fixed, margin, max(n + 1, 2), stats.MAX_SEEDS_ESTIMATE)
    beyond = f", more than max_seeds {design.max_seeds}" if design.adaptive else ""
    if total is None:
        return f"more than {stats.MAX_SEEDS_ESTIMATE:,} seeds per configuration ({basis})"
    return f"about {total} seeds per configuration{beyond} (80 % power at alpha {design.alpha:g}, {basis})"


def targets(claims: Sequence[Claim], design: Design, margin: float) -> dict[TrainConfig, int]:
    """The next round of an adaptive sweep: for each configuration of an open part, the seeds it should
    have, as many as 80 % power asks at the next look (capped at max_seeds, and at four times what it has:
    a spread estimated from a few seeds is rough). A part whose seeds have no spread gets twice as many.
    A claim that even max_seeds would likely leave open (its open parts all decided there with a chance
    under 30 %) gets none, so the budget goes where a claim can be decided."""
    out: dict[TrainConfig, int] = {}
    for claim in claims:
        growing = [o for o in claim.open_parts if min(o.part.sizes) < design.max_seeds]
        if not growing:
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

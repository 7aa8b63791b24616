"""How one comparison a claim makes is decided, against the smallest effect of interest (the margin).

A *part* is one effect in accuracy points (a contrast of configuration means, ``stats.Estimate``)
and what the claim says of it:

- ``EFFECT``: the effect exists (in the claimed direction, or either way). It is *found* when its
  interval lies beyond zero (two-sided test of no effect) and *negligible* when its 1 - 2 alpha
  interval lies inside ±margin (two one-sided tests, TOST). Negligible wins when both hold: an
  effect that is real but smaller than the margin is no effect worth the name, so it contradicts a
  claim that the effect exists.
- ``EQUAL``: the effect is within ±margin. *Equivalent* by TOST; *different* when the 1 - alpha
  interval lies wholly outside ±margin.
- ``AT_LEAST``: the effect is not below -margin (non-inferiority). *Not worse* when the 1 - alpha
  interval's lower end clears -margin; *worse* when its upper end lies below -margin (each side at
  alpha / 2, as the usual two-sided 95 % interval of a non-inferiority trial: at a truth of exactly
  -margin, where neither is true, the two together stay within alpha).

Each part tests two hypotheses that cannot both be true, so at most one of its outcomes can be a
false one; the smaller of its two p-values is its p-value under Holm's correction over a claim's
parts (a false outcome needs its own p-value under the level Holm gives the part, which Holm keeps
at alpha over the claim). A part whose samples have no spread has no test.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from analysis import stats
from analysis.stats import Estimate

EFFECT, EQUAL, AT_LEAST = "effect", "equal", "at least"
FOUND, NEGLIGIBLE = "found", "negligible"
EQUIVALENT, DIFFERENT = "equivalent", "different"
NOT_WORSE, WORSE = "not worse", "worse"
OPEN, NO_SPREAD, TOO_FEW = "open", "no spread", "too few seeds"
MIN_SEEDS = 2  # a sample variance needs two seeds


@dataclass(frozen=True)
class Part:
    """One effect a claim makes a statement about."""

    name: str  # e.g. "test accuracy, bn minus torch_bn"
    kind: str  # EFFECT, EQUAL or AT_LEAST
    samples: tuple[tuple[float, ...], ...]  # one per configuration, finished seeds' scores (fractions)
    weights: tuple[float, ...]
    direction: int = 1  # EFFECT: the sign the claim expects (+1, -1), or 0 for either
    configs: tuple = ()  # the configuration (TrainConfig without its seed) behind each sample

    @functools.cached_property
    def estimate(self) -> Estimate:
        return stats.contrast(self.samples, self.weights)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.samples)

    @property
    def testable(self) -> bool:
        return min(self.sizes) >= MIN_SEEDS and self.estimate.testable

    def pvalues(self, margin: float) -> tuple[float, float]:
        """The p-values of its two outcomes, in the order they are checked (the first wins when both
        fall under the level)."""
        e = self.estimate
        tost = max(e.p_above(-margin), e.p_below(margin))  # H0: |effect| >= margin
        if self.kind == EFFECT:
            return tost, e.p  # negligible, found
        if self.kind == EQUAL:
            beyond = min(1.0, 2 * min(e.p_above(margin), e.p_below(-margin)))  # its 1 - a interval outside ±margin
            return tost, beyond  # equivalent, different
        return min(1.0, 2 * e.p_above(-margin)), min(1.0, 2 * e.p_below(-margin))  # not worse, worse: alpha / 2 each

    def outcome(self, margin: float, level: float) -> str:
        """What this part's data say at ``level`` (the level Holm gives it; 0: not rejected)."""
        if min(self.sizes) < MIN_SEEDS:
            return TOO_FEW
        if not self.estimate.testable:
            return NO_SPREAD
        first, second = self.pvalues(margin)
        names = {EFFECT: (NEGLIGIBLE, FOUND), EQUAL: (EQUIVALENT, DIFFERENT), AT_LEAST: (NOT_WORSE, WORSE)}[self.kind]
        if level > 0 and first <= level:
            return names[0]
        if level > 0 and second <= level:
            return names[1]
        return OPEN

    def support(self, outcome: str) -> int:
        """+1 when ``outcome`` supports what the claim says of this part, -1 when it contradicts it, 0 open."""
        if outcome == FOUND:
            return 1 if self.direction == 0 or math.copysign(1, self.estimate.value) == self.direction else -1
        return {NEGLIGIBLE: -1, EQUIVALENT: 1, DIFFERENT: -1, NOT_WORSE: 1, WORSE: -1}.get(outcome, 0)


@dataclass(frozen=True)
class Decision:
    part: Part  # as it stood at the look that decided it (or at the last look, when still open)
    outcome: str
    support: int  # +1, -1, 0
    p: float  # the part's p-value (the smaller of its two), Holm-adjusted over the claim's parts
    level: float  # the level its intervals are shown at: the claim's alpha, or its look's share of it
    look: int = 0  # an adaptive sweep: the round it was decided at (or last tested at)


RHO = 1.0  # alpha spent by information fraction t: alpha * t ** RHO (Kim & DeMets' power family)


def spending(t: float) -> float:
    """The share of alpha an adaptive sweep may have spent by information fraction ``t``."""
    return min(1.0, max(0.0, t)) ** RHO


@dataclass(frozen=True)
class Open:
    """A part still open, and the level a later look would test it at with n seeds per configuration."""

    part: Part
    share: float  # its share of alpha (Holm's, over the claim's open parts)
    spent: float = 0.0  # the share of its alpha its looks have spent, spending(t) at its last look
    max_seeds: int = 0  # an adaptive sweep's cap; 0: a sweep of fixed seeds, one look at ``share``

    def level_at(self, n: int) -> float:
        if not self.max_seeds:
            return self.share
        return self.share * max(0.0, spending(n / self.max_seeds) - self.spent)


def decide(parts: Sequence[Part], margin: float, level: float) -> list[Decision]:
    """Every part decided at ``level``, Holm's correction over those that can be tested."""
    tested = [p for p in parts if p.testable]
    raw = [min(p.pvalues(margin)) for p in tested]
    levels = dict(zip(map(id, tested), stats.holm_levels(raw, level))) if level > 0 else {}
    adjusted = dict(zip(map(id, tested), stats.holm(dict(enumerate(raw))).values()))
    out = []
    for p in parts:
        outcome = p.outcome(margin, levels.get(id(p), 0.0))
        out.append(Decision(p, outcome, p.support(outcome), adjusted.get(id(p), math.nan), level))
    return out


# --- how many seeds a decision would take -----------------------------------------------------------------------


def _tost_power(effect: float, sd: float, margin: float, n: int, alpha: float) -> float:
    """Power of two one-sided tests at ``alpha`` each, at a true effect ``effect``: at least
    P(upper rejects) + P(lower rejects) - 1."""
    if abs(effect) >= margin:
        return 0.0
    low = stats.t_power((effect + margin) / sd, n, alpha)
    high = stats.t_power((margin - effect) / sd, n, alpha)
    return max(0.0, low + high - 1.0)


def power(part: Part, margin: float, n: int, alpha: float) -> float:
    """The chance that ``part`` is decided (either outcome) with ``n`` seeds of each configuration at
    level ``alpha``, if its effect and spread are what they look like now."""
    e = part.estimate
    if e.sd == 0:
        return 0.0
    d, sd = e.value, e.sd
    if part.kind == EFFECT:
        found = stats.t_power(abs(d) / sd, n, alpha, "two-sided")
        return max(found, _tost_power(d, sd, margin, n, alpha))
    if part.kind == EQUAL:
        different = stats.t_power((abs(d) - margin) / sd, n, alpha / 2)
        return max(different, _tost_power(d, sd, margin, n, alpha))
    return max(stats.t_power((d + margin) / sd, n, alpha / 2), stats.t_power((-margin - d) / sd, n, alpha / 2))


def seeds_needed(wanted: Sequence[Open], margin: float, low: int, high: int) -> int | None:
    """The fewest seeds per configuration in [low, high] at which every part of ``wanted`` would be
    decided with 80 % power, each at the level a look with that many seeds would test it at; None when
    even ``high`` would not do, or when a part's seeds have no spread to plan with."""
    need = low
    for w in wanted:
        if w.part.estimate.sd == 0:
            return None
        found = stats.smallest_n(lambda n, w=w: power(w.part, margin, n, w.level_at(n)), need, high)
        if found is None:
            return None
        need = found
    return need

"""How one comparison a claim makes is decided, against the smallest effect of interest (the margin).

A *part* is one effect in accuracy points (a contrast of configuration means, ``stats.Estimate``)
and what the claim says of it:

- ``EFFECT``: the effect exists (in the claimed direction, or either way). It is *found* when its
  interval lies beyond zero (two-sided test of no effect) and *negligible* when its 1 - 2 alpha
  interval lies inside ±margin (two one-sided tests, TOST). Negligible wins when both hold: an
  effect that is real but smaller than the margin is no effect worth the name, so it contradicts a
  claim that the effect exists.
- ``EQUAL``: the effect is within ±margin. *Equivalent* when the 1 - alpha interval lies inside ±margin
  (TOST, each side at alpha / 2); *different* when it lies wholly outside ±margin.
- ``AT_LEAST``: the effect is not below -margin (non-inferiority). *Not worse* when the 1 - alpha
  interval's lower end clears -margin; *worse* when its upper end lies below -margin.

Each part tests two null hypotheses. An ``EFFECT`` part's (no effect; an effect of the margin or more)
cannot both be true, so at most one of its outcomes can be a false one, each tested at the part's level.
An ``EQUAL`` or ``AT_LEAST`` part's can both be true at one point (an effect of exactly ±margin, or -margin),
so each side is tested at half the part's level (the two-sided 1 - alpha interval of a non-inferiority
trial): there, the two verdicts together stay within the level. One convention for both kinds.

A claim's parts share its alpha by Bonferroni's inequality, with Shaffer's logic for passing a share on:
a part's share goes to the others only once every null hypothesis of it that could still be true is
rejected - an ``EFFECT`` part both found and negligible - since a part decided on one of its nulls keeps
the other, possibly true, in the family (passing its share then, as Holm's procedure over parts would,
let two parts at no effect reach a false "found" 8 % of the time at alpha 5 %). A part whose samples have
no spread, on any side, has no test.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from analysis import stats
from analysis.stats import Estimate
from resnorm.sweep.planner import FIRST_ROUND_SEEDS

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
    key: str = ""  # what the part is from look to look, when its name changes (a pair of claim 4); else its name
    bounds: tuple[float, float] | None = None  # what the effect can be (None: of scores in [0, 1])

    @property
    def ident(self) -> str:
        return self.key or self.name

    @functools.cached_property
    def estimate(self) -> Estimate:
        return stats.contrast(self.samples, self.weights, self.bounds, conservative=True)

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
        if self.kind == EQUAL:  # each side at half the level: its 1 - a interval inside, or outside, ±margin
            beyond = min(1.0, 2 * min(e.p_above(margin), e.p_below(-margin)))
            return min(1.0, 2 * tost), beyond  # equivalent, different
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

    def settled(self, margin: float, level: float) -> bool:
        """Whether every null hypothesis of this part is rejected at ``level`` (an effect found and
        negligible): only then may its share of alpha pass to the claim's other parts."""
        return self.kind == EFFECT and self.testable and level > 0 and max(self.pvalues(margin)) <= level

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
    p: float  # the part's p-value (the smaller of its two), Bonferroni-adjusted over the claim's parts
    level: float  # the level its intervals are shown at: the claim's alpha, or its look's share of it
    look: int = 0  # an adaptive sweep: the round it was decided at (or last tested at)


# The spending's shape, measured (docs/benchmarks.md): each claim simulated alone (``benchmarks/design.py``) takes
# fewer trainings to decide at 0.3 than at 0.5, within alpha; the whole study (``benchmarks/study_sim.py``) 3 % fewer,
# a few more studies stopping claim 3 short of max_seeds.
RHO = 0.3
PILOT = FIRST_ROUND_SEEDS  # the first round's seeds: a pilot that spends no alpha


@dataclass(frozen=True)
class Spending:
    """How an adaptive sweep spends a part's alpha over its looks (Lan & DeMets' alpha spending, in Kim &
    DeMets' power family): once the configurations it compares have n finished seeds (the fewest among them),
    a part may have spent ``((n - pilot) / (max_seeds - pilot)) ** rho`` of its share. The first round's
    seeds are a pilot: they plan the next round and spend nothing, since a look at 3 seeds a side decides
    almost nothing (a t test on 2 degrees of freedom at a small level) and would leave every later look a
    smaller level. ``rho`` 1 spends linearly; a smaller one spends more at the first looks after the pilot,
    where claims are decided."""

    max_seeds: int
    rho: float = RHO
    pilot: int = PILOT

    def spent(self, n: int) -> float:
        """The share of its alpha a part may have spent once its configurations have ``n`` seeds."""
        if n >= self.max_seeds:
            return 1.0
        if n <= self.pilot:
            return 0.0
        return ((n - self.pilot) / (self.max_seeds - self.pilot)) ** self.rho

    def describe(self) -> str:
        shape = "linearly" if self.rho == 1 else f"as t^{self.rho:g}"
        return (
            f"spends its share of alpha {shape} in t = (n - {self.pilot}) / ({self.max_seeds} - {self.pilot}), "
            f"n the fewest seeds of its configurations (the first round's {self.pilot} a pilot that spends none)"
        )


@dataclass(frozen=True)
class Open:
    """A part still open, and the level a later look would test it at with n seeds per configuration."""

    part: Part
    share: float  # its share of alpha (over the claim's parts not yet settled)
    spent: float = 0.0  # the share of its alpha its looks have spent
    spending: Spending | None = None  # an adaptive sweep's; None: seeds fixed in advance, one look at ``share``

    def level_at(self, n: int) -> float:
        if self.spending is None:
            return self.share
        return self.share * max(0.0, self.spending.spent(n) - self.spent)


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


def _power_at(wanted: Open, margin: float, n: int) -> float:
    return power(wanted.part, margin, n, wanted.level_at(n))


def seeds_needed(wanted: Sequence[Open], margin: float, low: int, high: int) -> int | None:
    """The fewest seeds per configuration in [low, high] at which every part of ``wanted`` would be
    decided with 80 % power, each at the level a look with that many seeds would test it at; None when
    even ``high`` would not do, or when a part's seeds have no spread to plan with."""
    need = low
    for w in wanted:
        if w.part.estimate.sd == 0:
            return None
        found = stats.smallest_n(functools.partial(_power_at, w, margin), need, high)
        if found is None:
            return None
        need = found
    return need

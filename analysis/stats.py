"""Uncertainty and significance: the tables' intervals and letter groups, and the effects the
claims test (contrasts of independent means with their one- and two-sided p-values, and the power
of a test at a number of seeds). Distributions come from scipy (Student's t through scipy.special's
stdtr and nctdtr, the functions behind scipy.stats.t and nct, at a fraction of their cost); Holm's
correction and power by hand, each checked against statsmodels, which costs far more per call (see
``holm`` and ``t_power``)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

LEVEL = 0.95
ALPHA = 0.05
NAN_CI = (math.nan, math.nan)
METHOD_TEXT = (
    "Spread: sample standard deviation over seeds (n = finished seeds). 95 % CI: Student's t over "
    "seeds (shown cut at 0 and 100); with one seed, or seeds that all scored alike (marked ‡: identical "
    "scores are not a zero-width interval), the Clopper-Pearson binomial interval of the test split. "
    "Rows sharing a letter cannot be told apart: two-sided Welch t-tests on test accuracy between every pair of "
    "complete rows with at least 2 seeds that differ among themselves, Holm's step-down correction per table, "
    "alpha 0.05."
)


def spread(values: Sequence[float] | np.ndarray) -> bool:
    """Whether ``values`` (two or more) differ among themselves: equal seeds carry no estimate of their spread."""
    return len(values) > 1 and float(np.ptp(np.asarray(values, dtype=float))) > 0


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Student's t confidence interval of the mean of ``values`` (two or more that differ)."""
    if not spread(values):
        raise ValueError(f"a t interval needs two or more values that differ; got {list(values)}")
    n = len(values)
    mean = sum(values) / n
    low, high = stats.t.interval(level, n - 1, loc=mean, scale=stats.sem(values))
    return float(low), float(high)


def binomial_interval(accuracy: float, n_images: int, level: float = LEVEL) -> tuple[float, float]:
    """Clopper-Pearson interval of one run's accuracy over ``n_images`` test images."""
    hits = round(accuracy * n_images)
    ci = stats.binomtest(hits, n_images).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test; NaN (no test) when either sample has no spread: its seeds
    scored alike, which estimates no variance (scipy would warn of catastrophic cancellation)."""
    if not (spread(a) and spread(b)):
        return math.nan
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


# Holm's step-down procedure. statsmodels' ``multipletests(method="holm")`` computes the same (the tests
# check it against it), but runs ``gc.collect()`` on every call: 0.17 s in a process that holds torch,
# seconds per report and hours per simulation of the adaptive design.


def holm(pvalues: Mapping) -> dict:
    """Holm's step-down adjusted p-values, by key: the k-th smallest of m times m - k + 1, made
    non-decreasing, capped at 1."""
    ordered = sorted(pvalues, key=lambda k: pvalues[k])
    m, running, adjusted = len(ordered), 0.0, {}
    for k, key in enumerate(ordered):
        running = max(running, min(1.0, (m - k) * pvalues[key]))
        adjusted[key] = running
    return {k: adjusted[k] for k in pvalues}


def holm_levels(pvalues: Sequence[float], alpha: float) -> list[float]:
    """The level Holm's procedure at ``alpha`` rejects each hypothesis at, ``alpha / (m - k)`` for the
    k-th smallest p-value (from 0) while every smaller one was rejected; 0 where it is not rejected."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    levels = [0.0] * len(pvalues)
    for k, i in enumerate(order):
        level = alpha / (len(pvalues) - k)
        if not pvalues[i] <= level:
            break
        levels[i] = level
    return levels


def pairwise(samples: Mapping[str, Sequence[float]]) -> dict[tuple[str, str], float]:
    """Holm-adjusted Welch p-values of every pair of ``samples`` (label -> values) that can be tested;
    a pair with a side that has no spread is left out (it cannot be told apart)."""
    raw = {(a, b): welch_p(samples[a], samples[b]) for a, b in itertools.combinations(samples, 2)}
    return holm({k: p for k, p in raw.items() if not math.isnan(p)})


def _maximal_cliques(nodes: list[str], linked: set[frozenset]) -> list[set[str]]:
    """Bron-Kerbosch: every maximal set of nodes that are pairwise linked."""
    found: list[set[str]] = []

    def grow(r: set[str], p: list[str], x: list[str]) -> None:
        if not p and not x:
            found.append(r)
            return
        for v in list(p):
            near = [u for u in nodes if frozenset((u, v)) in linked]
            grow(r | {v}, [u for u in p if u in near], [u for u in x if u in near])
            p.remove(v)
            x.append(v)

    grow(set(), list(nodes), [])
    return found


def letters(
    means: Mapping[str, float], adjusted: Mapping[tuple[str, str], float], alpha: float = ALPHA
) -> dict[str, str]:
    """Compact letter display: rows that share a letter are not significantly different.

    Each letter is a maximal group of rows with no significant difference between any two (a pair
    missing from ``adjusted`` was not tested: not different); the letter ``a`` goes to the group
    holding the best mean, ``b`` to the next, and so on.
    """
    nodes = sorted(means, key=lambda k: -means[k])
    differ = {frozenset(pair) for pair, p in adjusted.items() if p < alpha}
    linked = {frozenset(pair) for pair in itertools.combinations(nodes, 2)} - differ
    groups = _maximal_cliques(nodes, linked)
    groups.sort(key=lambda g: (min(nodes.index(v) for v in g), -len(g)))
    out = {v: "" for v in nodes}
    for letter, group in zip("abcdefghijklmnopqrstuvwxyz", groups):
        for v in group:
            out[v] += letter
    return out


# --- the effects the claims test (analysis.claims) ---------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A weighted sum of independent means, sum_i w_i mean_i, with its standard error and degrees of
    freedom. ``se`` is 0 when a sample has no spread: then there is no test at all (identical seeds are
    not certainty, on either side), and every p-value is NaN. Its intervals are cut to ``bounds``, the
    values the effect can take (a difference of two accuracies lies in [-1, 1]): intersecting a valid
    interval with the parameter space keeps its coverage."""

    value: float
    se: float
    df: float
    sd: float  # the standard deviation of one seed's contrast, sqrt(sum_i w_i^2 s_i^2): what power is planned with
    bounds: tuple[float, float] = (-math.inf, math.inf)

    @property
    def testable(self) -> bool:
        return self.se > 0

    @property
    def p(self) -> float:
        """Two-sided p-value of H0: effect = 0 (NaN without a test)."""
        return min(1.0, 2 * min(self.p_above(0.0), self.p_below(0.0))) if self.testable else math.nan

    def p_above(self, bound: float) -> float:
        """One-sided p-value of H0: effect <= bound (small when the effect is surely above it)."""
        return float(special.stdtr(self.df, (bound - self.value) / self.se)) if self.testable else math.nan

    def p_below(self, bound: float) -> float:
        """One-sided p-value of H0: effect >= bound (small when the effect is surely below it)."""
        return float(special.stdtr(self.df, (self.value - bound) / self.se)) if self.testable else math.nan

    def interval(self, level: float = LEVEL) -> tuple[float, float]:
        """The two-sided ``level`` t interval (NaNs without a test)."""
        if not self.testable:
            return NAN_CI
        half = float(special.stdtrit(self.df, 0.5 + level / 2)) * self.se
        low, high = self.bounds
        return max(low, self.value - half), min(high, self.value + half)


def contrast(
    samples: Sequence[Sequence[float]],
    weights: Sequence[float],
    bounds: tuple[float, float] | None = None,
    conservative: bool = False,
) -> Estimate:
    """sum_i w_i mean_i over independent samples (each of 2 or more values): standard error
    sqrt(sum w_i^2 s_i^2 / n_i), degrees of freedom by Welch-Satterthwaite. Weights (1, -1) give
    Welch's t-test; (1, -1, -1, 1) a 2x2 interaction. A sample whose values are all equal has no
    estimate of its spread, so the contrast has no test (se 0). ``bounds``: what the effect can be; by
    default that of scores in [0, 1], sum of the negative weights to sum of the positive ones.

    ``conservative``: the degrees of freedom of the smallest sample, min(n_i) - 1 (Hsu 1938; Banerjee 1961
    for any contrast), whose t test keeps its level whatever the variances. Welch-Satterthwaite's does not at
    the small levels an adaptive sweep's looks use: at alpha 0.000179, 12 seeds against 5 with the smaller
    sample 3 times as spread, Welch's test rejected 7 times as often as it should, 12 against 3 up to 40
    times, and 5 against 5 twice as often (2 million simulated pairs each); Hsu's, at most its level."""
    arrays = [np.asarray(s, dtype=float) for s in samples]
    value = float(sum(w * a.mean() for w, a in zip(weights, arrays)))
    if bounds is None:
        bounds = (float(sum(min(w, 0) for w in weights)), float(sum(max(w, 0) for w in weights)))
    if not all(spread(a) for a, w in zip(arrays, weights) if w):
        return Estimate(value, 0.0, math.nan, 0.0, bounds)
    variances = [a.var(ddof=1) for a in arrays]
    terms = [w * w * v / len(a) for w, v, a in zip(weights, variances, arrays)]
    se = math.sqrt(sum(terms))
    sd = math.sqrt(sum(w * w * v for w, v in zip(weights, variances)))
    if conservative:
        df = float(min(len(a) for a, w in zip(arrays, weights) if w) - 1)
    else:
        df = se**4 / sum(t * t / (len(a) - 1) for t, a in zip(terms, arrays) if t > 0)
    return Estimate(value, se, df, sd, bounds)


def welch(a: Sequence[float], b: Sequence[float]) -> Estimate:
    """mean(a) - mean(b) by Welch's unequal-variance t-test."""
    return contrast([a, b], [1.0, -1.0])


# --- power: how many seeds a decision would take ---------------------------------------------------------------

TARGET_POWER = 0.8
MAX_SEEDS_ESTIMATE = 100_000  # "more than this" beyond it


def t_power(effect_size: float, n: int, alpha: float, alternative: str = "larger") -> float:
    """Power of a one-sample t-test at ``n`` observations - the contrast of one seed of every configuration,
    standardised by its standard deviation - as statsmodels' ``TTestPower.power`` computes it (the tests
    check it against it): the noncentral t's tail beyond the critical value, from scipy.special, which
    a simulation of the adaptive design calls a hundred thousand times (statsmodels' call costs 0.25 ms,
    through scipy.stats' per-call checks). Far in a tail ``nctdtr`` underflows to NaN, and statsmodels
    returns that NaN (an effect of 6 sd at 12 seeds has power NaN there); here the far tail is the 0 it
    is. A stand-in for the Welch test, whose degrees of freedom lie between n - 1 and k (n - 1)."""
    if n < 2 or alpha <= 0 or effect_size <= 0:
        return 0.0
    df, nc = n - 1, effect_size * math.sqrt(n)
    two = alternative == "two-sided"
    crit = float(special.stdtrit(df, 1 - (min(alpha, 1.0) / 2 if two else min(alpha, 0.5))))
    below = float(special.nctdtr(df, nc, crit))  # P(T' <= crit)
    if not math.isfinite(below):  # underflow far in a tail: nc well above crit, or well below
        below = 0.0 if nc > crit else 1.0
    lower = float(special.nctdtr(df, nc, -crit)) if two else 0.0  # P(T' <= -crit): the other side's rejection
    return min(1.0, max(0.0, 1 - below + (lower if math.isfinite(lower) else 0.0)))


def smallest_n(power_at: Callable[[int], float], low: int = 2, high: int = MAX_SEEDS_ESTIMATE) -> int | None:
    """The smallest n in [low, high] with ``power_at(n) >= TARGET_POWER`` (power grows with n), or None."""
    if power_at(high) < TARGET_POWER:
        return None
    while low < high:
        mid = (low + high) // 2
        if power_at(mid) >= TARGET_POWER:
            high = mid
        else:
            low = mid + 1
    return low

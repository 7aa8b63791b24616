"""Uncertainty and significance of a table's scores: confidence intervals, Welch tests, Holm's
correction and a compact letter display. Distributions come from scipy.stats."""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
ALPHA = 0.05
BOOTSTRAP_SEED = 0  # fixed, so a report rebuilt from the same runs shows the same intervals
BOOTSTRAP_RESAMPLES = 9999
NAN_CI = (math.nan, math.nan)
METHOD_TEXT = (
    "Spread: sample standard deviation over seeds (n = finished seeds). 95 % CI: Student's t over "
    "seeds (shown cut at 0 and 100); with one seed, the Clopper-Pearson binomial interval of the test split. "
    "Rows sharing a letter cannot be told apart: two-sided Welch t-tests on test accuracy between every pair of "
    "complete rows with at least 2 seeds, Holm's step-down correction per table, alpha 0.05."
)


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Student's t confidence interval of the mean of ``values`` (two or more)."""
    n = len(values)
    mean = sum(values) / n
    sem = stats.sem(values)  # sample std / sqrt(n)
    if sem == 0:
        return mean, mean
    low, high = stats.t.interval(level, n - 1, loc=mean, scale=sem)
    return float(low), float(high)


def binomial_interval(accuracy: float, n_images: int, level: float = LEVEL) -> tuple[float, float]:
    """Clopper-Pearson interval of one run's accuracy over ``n_images`` test images."""
    hits = round(accuracy * n_images)
    ci = stats.binomtest(hits, n_images).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test; 1.0 when both samples are constant and equal."""
    result = stats.ttest_ind(a, b, equal_var=False)
    p = float(result.pvalue)
    if math.isnan(p):  # zero variance in both: equal means cannot be told apart, unequal ones can
        return 1.0 if sum(a) / len(a) == sum(b) / len(b) else 0.0
    return p


def holm(pvalues: Mapping[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    """Holm's step-down adjusted p-values: the k-th smallest of m is multiplied by m - k + 1,
    made non-decreasing, and capped at 1."""
    ordered = sorted(pvalues.items(), key=lambda kv: kv[1])
    m, running, adjusted = len(ordered), 0.0, {}
    for k, (pair, p) in enumerate(ordered):
        running = max(running, min(1.0, (m - k) * p))
        adjusted[pair] = running
    return adjusted


def pairwise(samples: Mapping[str, Sequence[float]]) -> dict[tuple[str, str], float]:
    """Holm-adjusted Welch p-values of every pair of ``samples`` (label -> values)."""
    raw = {(a, b): welch_p(samples[a], samples[b]) for a, b in itertools.combinations(samples, 2)}
    return holm(raw)


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

    Each letter is a maximal group of rows with no significant difference between any two; the
    letter ``a`` goes to the group holding the best mean, ``b`` to the next, and so on.
    """
    nodes = sorted(means, key=lambda k: -means[k])
    linked = {frozenset(pair) for pair, p in adjusted.items() if p >= alpha}
    groups = _maximal_cliques(nodes, linked)
    groups.sort(key=lambda g: (min(nodes.index(v) for v in g), -len(g)))
    out = {v: "" for v in nodes}
    for letter, group in zip("abcdefghijklmnopqrstuvwxyz", groups):
        for v in group:
            out[v] += letter
    return out


# Effects the claims test (analysis.claims): contrasts of independent means, equivalence, and the
# probability of improvement.


@dataclass(frozen=True)
class Estimate:
    """A weighted sum of independent means with its Welch-Satterthwaite t interval and two-sided p (H0: 0)."""

    value: float
    se: float
    df: float
    ci: tuple[float, float]
    p: float


def contrast(samples: Sequence[Sequence[float]], weights: Sequence[float], level: float = LEVEL) -> Estimate:
    """sum_i w_i mean_i over independent samples (each of 2 or more values): standard error
    sqrt(sum w_i^2 s_i^2 / n_i), degrees of freedom by Welch-Satterthwaite. Weights (1, -1) give
    Welch's t-test; (1, -1, -1, 1) a 2x2 interaction. Zero variance everywhere: the estimate is exact."""
    arrays = [np.asarray(s, dtype=float) for s in samples]
    value = float(sum(w * a.mean() for w, a in zip(weights, arrays)))
    terms = [w * w * a.var(ddof=1) / len(a) for w, a in zip(weights, arrays)]
    se = math.sqrt(sum(terms))
    if se == 0:
        return Estimate(value, 0.0, math.inf, (value, value), 1.0 if value == 0 else 0.0)
    df = se**4 / sum(t * t / (len(a) - 1) for t, a in zip(terms, arrays))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    p = float(2 * stats.t.sf(abs(value) / se, df))
    return Estimate(value, se, df, (value - half, value + half), p)


def welch(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Estimate:
    """mean(a) - mean(b) by Welch's unequal-variance t-test."""
    return contrast([a, b], [1.0, -1.0], level)


def tost(a: Sequence[float], b: Sequence[float], margin: float) -> tuple[float, float]:
    """Two one-sided Welch t-tests (Schuirmann 1987) of d = mean(a) - mean(b): the p-values of
    H0 d <= -margin and of H0 d >= +margin. Equivalence within ±margin at level alpha when both
    are below alpha (the TOST p-value is the larger)."""
    d = welch(a, b)
    if d.se == 0:
        return (0.0 if d.value > -margin else 1.0), (0.0 if d.value < margin else 1.0)
    return float(stats.t.sf((d.value + margin) / d.se, d.df)), float(stats.t.cdf((d.value - margin) / d.se, d.df))


def _improvement(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.moveaxis(np.asarray(x, dtype=float), axis, -1)[..., :, None]
    y = np.moveaxis(np.asarray(y, dtype=float), axis, -1)[..., None, :]
    return np.mean((x > y) + 0.5 * (x == y), axis=(-2, -1))


def probability_of_improvement(x: Sequence[float], y: Sequence[float]) -> float:
    """P(X > Y) + 0.5 P(X = Y) over every pair of a seed of X and one of Y: the Mann-Whitney U
    statistic of x over n_x n_y, rliable's probability of improvement (Agarwal et al. 2021) on one task."""
    return float(_improvement(np.asarray(x), np.asarray(y)))


def improvement_interval(
    x: Sequence[float], y: Sequence[float], level: float = LEVEL, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float]:
    """Percentile bootstrap interval of the probability of improvement, x and y resampled
    independently (each needs 2 or more values); NaNs when the bootstrap forms no interval."""
    generator = np.random.default_rng(seed)
    # scipy 1.15 renamed random_state to rng; scipy itself reaches us through scikit-learn, unpinned.
    key = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"
    try:
        result = stats.bootstrap(
            (np.asarray(x, float), np.asarray(y, float)),
            _improvement,
            vectorized=True,
            paired=False,
            n_resamples=BOOTSTRAP_RESAMPLES,
            confidence_level=level,
            method="percentile",
            **{key: generator},
        )
    except ValueError:
        return NAN_CI
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return NAN_CI if math.isnan(low) or math.isnan(high) else (low, high)

"""Uncertainty and significance of a table's scores: confidence intervals, Welch tests, Holm's
correction and a compact letter display. Distributions come from scipy.stats."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

from scipy import stats

LEVEL = 0.95
ALPHA = 0.05
METHOD_TEXT = (
    "Spread: sample standard deviation over seeds (n = finished seeds). 95 % CI: Student's t over "
    "seeds (shown cut at 0 and 100); with one seed, the Clopper-Pearson binomial interval of the test split. Rows sharing a "
    "letter cannot be told apart: two-sided Welch t-tests on test accuracy between every pair of "
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


def letters(means: Mapping[str, float], adjusted: Mapping[tuple[str, str], float], alpha: float = ALPHA) -> dict[str, str]:
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

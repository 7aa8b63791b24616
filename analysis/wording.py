"""A claim's parts in words: effects in signed points, intervals at the level each was decided at, and why
a part came out as it did."""

from __future__ import annotations

import math
from collections.abc import Sequence

from analysis.decisions import (
    AT_LEAST,
    DIFFERENT,
    EQUAL,
    EQUIVALENT,
    FOUND,
    NEGLIGIBLE,
    NO_SPREAD,
    NOT_WORSE,
    OPEN,
    WORSE,
    Decision,
)
from analysis.evidence import band


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


def vs(sizes: Sequence[int]) -> str:
    return " vs ".join(map(str, sizes))


def each(counts: Sequence[int]) -> str:
    low, high = min(counts), max(counts)
    return f"{low} per configuration" if low == high else f"{low}-{high} per configuration"


def points_ci(ci: tuple[float, float]) -> tuple[float, float]:
    return ci[0] * 100, ci[1] * 100


def _unfound(d: Decision, m: str, below: str, narrow: str, wide: str) -> str:
    """Why a part is still open: what its interval does not show."""
    if d.part.kind == EQUAL:
        return (
            f"its {wide} is not inside {m}, so equivalence is not shown (a difference that is not "
            "significant is not evidence of equality)"
        )
    if d.part.kind == AT_LEAST:
        return f"its {wide} reaches both sides of {below}"
    open_ = f"neither beyond zero nor inside {m} (its {narrow})"
    if d.part.direction == 0:
        return open_
    e = d.part.estimate
    lean = "is 0" if e.value == 0 else f"leans {'towards' if d.part.support(FOUND) > 0 else 'against'} the claim"
    return f"{open_}; the estimate {lean}"


def why(d: Decision, margin: float, words: tuple[str, str] = ("", "")) -> str:
    """Why a part came out as it did, in a few words: the interval that decided it (1 - 2 alpha for an
    effect's negligibility, 1 - alpha otherwise). ``words``: what a found effect means for the claim, when
    it helps to say (towards it, against it)."""
    e, m, below, alpha = d.part.estimate, band(margin), f"-{band(margin).lstrip('±')}", d.level
    narrow = interval_words(e.interval(1 - 2 * alpha), 1 - 2 * alpha)
    wide = interval_words(e.interval(1 - alpha), 1 - alpha)
    low, high = e.interval(1 - alpha)
    if d.outcome == OPEN and alpha == 0:
        return "not tested yet: its seeds are the first round's, a pilot that plans the next round and spends no alpha"
    if d.outcome == NO_SPREAD:
        alike = ", ".join(f"all {s[0] * 100:.2f} %" for s in d.part.samples if len(set(s)) == 1)
        return f"no test: a configuration's seeds scored alike ({alike}), and identical seeds are not certainty"
    if d.outcome == NEGLIGIBLE:
        real = ", so although it is real (its interval clears zero) it is smaller than the margin"
        return f"negligible: its {narrow} lies inside {m}" + (real if low > 0 or high < 0 else "")
    if d.outcome == FOUND:
        said = words[0] if d.support > 0 else words[1] or ("against the claim" if d.part.direction else "")
        return f"found{': ' + said if said else ''} (its interval lies {'above' if e.value > 0 else 'below'} zero)"
    if d.outcome == EQUIVALENT:
        return f"equivalent: its {wide} lies inside {m}"
    if d.outcome == DIFFERENT:
        return f"its {wide} lies wholly outside {m}: they differ by more than the margin"
    if d.outcome == NOT_WORSE:
        within = ", worse but within the margin" if high < 0 else ""
        return f"not worse: its {wide} starts above {below}{within}"
    if d.outcome == WORSE:
        return f"worse by more than the margin: its {wide} ends below {below}"
    return _unfound(d, m, below, narrow, wide)


def detail(d: Decision, margin: float) -> str:
    """One part in full: its effect, interval (at the level it was tested at), the look or the adjusted p,
    its seeds and why it came out so."""
    e = d.part.estimate
    shown = ci_text(e.interval(1 - d.level), 1 - d.level) if e.testable and d.level > 0 else "(no interval)"
    if d.look:  # an adaptive sweep's look: its own share of alpha
        p = f", round {d.look} at alpha {d.level:.3g}"
    else:
        p = "" if math.isnan(d.p) else f", Bonferroni-adjusted p = {d.p:.3g}"
    return f"{d.part.name} = {pts(e.value)} points {shown}{p}, seeds {vs(d.part.sizes)}: {why(d, margin)}"


def state(d: Decision, margin: float) -> str:
    """A part of claim 5 in a few words: its outcome and effect."""
    said = {
        FOUND: "found",
        NEGLIGIBLE: "negligible",
        EQUIVALENT: f"within {band(margin)}",
        DIFFERENT: f"beyond {band(margin)}",
        NO_SPREAD: "untested (no spread)",
    }.get(d.outcome, "open")
    return f"{said} ({pts(d.part.estimate.value)} points)"

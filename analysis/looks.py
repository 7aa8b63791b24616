"""A claim's parts decided over the looks a sweep allows: one look at alpha for seeds fixed in advance;
for an adaptive sweep (``seeds=auto``), a look after each round, alpha spent over them.

Testing after every round and stopping once decided would inflate false verdicts if every look used the
whole alpha (10 % in simulation where 5 % was meant), so an adaptive sweep spends it (a group-sequential
design with alpha spending, Lan & DeMets 1983): a part's information at a look is the fewest finished seeds
among the configurations it compares; by then it may have spent ``share * spending.spent(n)``
(``decisions.Spending``: nothing on the first round's pilot seeds, all of it at ``max_seeds``), and each look
tests at what that adds. Bonferroni's inequality over the looks bounds
the chance of a false outcome by the part's share whenever the looks come; since each round's size depends
on what earlier looks saw, that bound is measured too, by simulating sweeps through this code
(``tests/test_sequential.py``), not only argued.

Within a claim, parts share alpha equally; a part's share passes to the others only once every null
hypothesis of it that could still be true is rejected (``Part.settled``, Shaffer's logic), the others being
tested again at every look with their larger share (recycling, as in Maurer & Bretz's graphical approach).
A part decided stays decided, and quotes the look that decided it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from analysis.decisions import Decision, Part, Spending
from analysis.groups import Group
from resnorm.config import TrainConfig


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


@dataclass(frozen=True)
class Course:
    """What became of one part over the looks: its decision (at the look that decided it, else its last),
    the share of alpha it holds and how much of it its looks have spent."""

    decision: Decision
    share: float
    spent: float  # the share of it spent by its last look; 1 for one look at alpha

    @property
    def open(self) -> bool:
        return self.decision.support == 0


def decide(
    looks: Sequence[Sequence[Part]], alpha: float, margin: float, spending: Spending | None = None
) -> dict[str, Course]:
    """The parts of the last look (by ``Part.ident``), each decided at its first decisive look. ``spending``
    None: seeds fixed in advance, one look at the whole share; else an adaptive sweep's."""
    history: dict[str, list[tuple[int, Part]]] = {p.ident: [] for p in looks[-1]}
    for k, parts in enumerate(looks, 1):
        for p in parts:
            if p.ident in history:
                history[p.ident].append((k, p))
    decided: dict[str, Decision] = {}
    settled: set[str] = set()
    tried: dict[str, tuple[Decision, float]] = {}
    while len(settled) < len(history):
        share = alpha / (len(history) - len(settled))
        passed = False
        for ident, seen in history.items():
            if ident not in decided:
                found = _first_decisive(seen, share, margin, spending, len(history))
                if found is not None:
                    tried[ident] = found
                    if found[0].support:
                        decided[ident] = found[0]
                        if found[0].part.settled(margin, found[0].level):
                            settled.add(ident)
                            passed = True
        if not passed:
            break
    share = alpha / max(1, len(history) - len(settled))
    out = {}
    for ident, seen in history.items():
        if ident in tried:
            d, spent = tried[ident]
            out[ident] = Course(decided.get(ident, d), share, spent)
        else:  # never tested: no information yet
            part = seen[-1][1]
            out[ident] = Course(Decision(part, part.outcome(margin, 0.0), 0, math.nan, 0.0, 0), share, 0.0)
    return out


def _first_decisive(
    seen: Sequence[tuple[int, Part]], share: float, margin: float, spending: Spending | None, parts: int
) -> tuple[Decision, float] | None:
    """A part's looks at ``share``: the first that decides it, else its last (None: never tested), with the
    fraction of its share spent by then."""
    spent, last = 0.0, None
    for k, part in seen:
        t = spending.spent(min(part.sizes)) if spending else 1.0
        level = share * (t - spent)
        if level <= 0:
            continue
        spent = t
        outcome = part.outcome(margin, level)
        p = min(part.pvalues(margin)) if part.testable else math.nan
        adjusted = p if spending else min(1.0, p * parts)  # one look: Bonferroni's adjusted p
        last = (Decision(part, outcome, part.support(outcome), adjusted, level, k if spending else 0), spent)
        if last[0].support:
            return last
    return last

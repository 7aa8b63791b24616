"""The adaptive design measured, not argued: simulated sweeps whose truth is known, decided by the
project's own decision code (``analysis.sequential``: looks, spending, shares, the next round), for a
choice of alpha spending. For each scenario it prints how often a false verdict came out (at the edges
of the nulls, where the design is weakest), with its Monte-Carlo standard error, and how many trainings
a sweep took until the claim was decided (or stopped). ``tests/test_sequential.py`` drives the same
simulator at the default spending.

    python benchmarks/design.py                 # every scenario: t^0.5 and t^0.3, from the first look or after a pilot
    python benchmarks/design.py --sims 400 --rho 1,0.5,0.3 --pilot 3

The truths are the study's at digits scale (README, "An adaptive study"): a seed's test accuracy spread
about 0.9 points within a configuration, claim 1's train-test gap about 0.55 points.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis import evidence  # noqa: E402
from analysis.claims import Claim, check_claim  # noqa: E402
from analysis.decisions import FOUND, NEGLIGIBLE, PILOT, RHO  # noqa: E402
from analysis.evidence import AUG_OFF, AUG_ON, SGD, STEP  # noqa: E402
from analysis.groups import Group  # noqa: E402
from analysis.sequential import Design, assess_claim, targets  # noqa: E402
from analysis.tables import ACCURACY, Row  # noqa: E402
from resnorm.config import TrainConfig  # noqa: E402
from resnorm.norms import NORM_NAMES  # noqa: E402

ALPHA, MARGIN = 0.05, 0.01
SD = 0.009  # a seed's test accuracy spread within a configuration (0.9 points)
GAP_SD = 0.0055  # claim 1's train-test gap spread


def config(row: Row) -> TrainConfig:
    return TrainConfig(**row.selector())


def groups_of(draws: dict[TrainConfig, np.ndarray], seeds: dict[TrainConfig, int], gaps=None) -> list[Group]:
    """One group per configuration with its first ``seeds[cfg]`` drawn test accuracies (train accuracy:
    test plus ``gaps[cfg]``, drawn too, for claim 1)."""
    out = []
    for cfg, n in seeds.items():
        test = draws[cfg][:n]
        train = test + (gaps[cfg][:n] if gaps and cfg in gaps else 0.0)
        frame = pd.DataFrame(
            {"run_id": [f"r{i}" for i in range(n)], "seed": range(n), ACCURACY: test, evidence.TRAIN_ACCURACY: train}
        )
        out.append(Group(cfg, "auto", tuple(range(n)), frame, []))
    return out


@dataclass(frozen=True)
class Sweep:
    claim: Claim
    rounds: int
    trainings: int  # seeds trained over every configuration the claim compares


def simulate(
    cid: int,
    truth,
    rng,
    max_seeds=40,
    rho: float = RHO,
    fixed: int = 0,
    gaps=None,
    naive: bool = False,
    pilot: int = PILOT,
) -> Sweep:
    """One simulated sweep of claim ``cid``'s configurations (``truth``: config -> (mean, sd)): 3 seeds
    each, then rounds as ``targets`` asks, until the claim is decided or asks for nothing; ``fixed``: that
    many seeds each, one look at alpha; ``naive``: every look at the whole alpha, as testing after each round
    without a design would; ``rho`` and ``pilot``: the spending's (``decisions.Spending``)."""
    draws = {c: rng.normal(m, s, max(max_seeds, fixed)) for c, (m, s) in truth.items()}
    gap_draws = {c: rng.normal(m, s, max(max_seeds, fixed)) for c, (m, s) in (gaps or {}).items()}
    if fixed:
        claim = check_claim(cid, groups_of(draws, dict.fromkeys(truth, fixed), gap_draws), MARGIN, ALPHA)
        return Sweep(claim, 1, fixed * len(truth))
    seeds, rounds = dict.fromkeys(truth, 3), []
    shape = Design(rho=rho, pilot=pilot)
    while True:
        rounds.append({c: frozenset(range(n)) for c, n in seeds.items()})
        design = replace(shape, max_seeds=max_seeds, rounds=tuple(rounds))
        groups = groups_of(draws, seeds, gap_draws)
        claim = assess_claim(cid, groups, design, MARGIN, explain=False)
        if naive:
            claim = check_claim(cid, groups, MARGIN, ALPHA)
        more = {} if claim.decided else {c: n for c, n in targets([claim], design, MARGIN).items() if n > seeds[c]}
        if not more:
            return Sweep(claim, len(rounds), sum(seeds.values()))
        seeds.update(more)


def mc_error(rate: float, n: int) -> float:
    return math.sqrt(max(rate, ALPHA) * (1 - max(rate, ALPHA)) / n)


def pts(mean: float, sd: float = SD) -> tuple[float, float]:
    return mean, sd


# name -> (claim, truth, gaps, the false verdict, or None where every decision is right)
SCENARIOS: dict[str, tuple[int, dict, dict | None, Callable[[Claim], bool] | None]] = {
    "claim 1, gap effect 0 (false: found)": (
        1,
        {config(AUG_OFF): pts(0.96), config(AUG_ON): pts(0.96)},
        {config(AUG_OFF): (0.01, GAP_SD), config(AUG_ON): (0.01, GAP_SD)},
        lambda c: c.outcomes[0] == FOUND,
    ),
    "claim 1, gap effect at the margin (false: negligible)": (
        1,
        {config(AUG_OFF): pts(0.96), config(AUG_ON): pts(0.96)},
        {config(AUG_OFF): (0.02, GAP_SD), config(AUG_ON): (0.01, GAP_SD)},
        lambda c: c.outcomes[0] == NEGLIGIBLE,
    ),
    "claim 1, gap effect 0.6 points (the study's)": (
        1,
        {config(AUG_OFF): pts(0.96), config(AUG_ON): pts(0.96)},
        {config(AUG_OFF): (0.016, GAP_SD), config(AUG_ON): (0.01, GAP_SD)},
        None,
    ),
    "claim 3, 1 point apart (false: equivalent or different)": (
        3,
        {config(SGD["bn"]): pts(0.97), config(SGD["torch_bn"]): pts(0.96)},
        None,
        lambda c: c.decided,
    ),
    "claim 3, equal (the study's)": (3, {config(SGD["bn"]): pts(0.96), config(SGD["torch_bn"]): pts(0.96)}, None, None),
    "claim 6, at -margin (false: either verdict)": (
        6,
        {config(STEP): pts(0.97), config(SGD["torch_bn"]): pts(0.96)},
        None,
        lambda c: c.decided,
    ),
    "claim 6, cosine 0.3 points better": (
        6,
        {config(STEP): pts(0.957), config(SGD["torch_bn"]): pts(0.96)},
        None,
        None,
    ),
}
# Claim 4 with two pairs tied (torch_bn and bn, gn and ln) among clearly ordered norms: what deciding a tied
# pair costs when the claim can be decided.
RANKED = dict(zip(NORM_NAMES, (0.96, 0.96, 0.90, 0.84, 0.78, 0.78, 0.72)))
SCENARIOS["claim 4, two tied pairs among clear steps"] = (
    4,
    {config(SGD[n]): pts(m) for n, m in RANKED.items()},
    None,
    lambda c: any(
        o == FOUND for o, p in zip(c.outcomes, c.parts) if {"torch_bn", "bn"} == set(p.name.split(" minus "))
    ),
)


def run(name: str, rho: float, pilot: int, sims: int, seed: int = 0) -> dict:
    cid, truth, gaps, false = SCENARIOS[name]
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    sweeps = [simulate(cid, truth, rng, rho=rho, gaps=gaps, pilot=pilot) for _ in range(sims)]
    rate = sum(map(false, (s.claim for s in sweeps))) / sims if false else math.nan
    decided = [s for s in sweeps if s.claim.decided]
    return {
        "scenario": name,
        "rho": rho,
        "pilot": pilot,
        "false verdicts %": round(rate * 100, 2) if false else None,
        "± MC error %": round(mc_error(rate, sims) * 100, 2) if false else None,
        "decided %": round(100 * len(decided) / sims, 1),
        "trainings, mean": round(float(np.mean([s.trainings for s in sweeps])), 1),
        "trainings to decide, mean": round(float(np.mean([s.trainings for s in decided])), 1) if decided else None,
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sims", type=int, default=2000)
    parser.add_argument("--rho", default="0.5,0.3", help="spending exponents to compare, comma-separated")
    parser.add_argument("--pilot", default="0,3", help="seeds that spend no alpha, to compare, comma-separated")
    parser.add_argument("--only", default="", help="scenarios whose name holds one of these texts (comma-separated)")
    args = parser.parse_args()
    rows = [
        run(name, float(rho), int(pilot), args.sims)
        for name in SCENARIOS
        if any(text in name for text in args.only.split(","))
        for rho in args.rho.split(",")
        for pilot in args.pilot.split(",")
    ]
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()

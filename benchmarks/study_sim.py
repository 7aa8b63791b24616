"""The whole adaptive study simulated: all 27 configurations of the study preset at once, with the
configurations the claims share (torch_bn SGD lr 0.1 is in five of them), each round planned and each
claim decided by the project's own code (``analysis.sequential``: ``assess``, then ``targets``), for a
choice of design. It prints the trainings a study takes (its mean and the Monte-Carlo error, over
simulated studies whose truth is the one below), its rounds, and how often each claim was decided.
``benchmarks/design.py`` measures the error rates, one claim at a time, at the edges of the nulls.

    python benchmarks/study_sim.py --sims 300                     # the default design
    python benchmarks/study_sim.py --designs "" "rho=0.5,pilot=0" "rho=0.3,max_seeds=24"

The truth: each configuration's test accuracy, mean and spread over seeds, as the study measured them at
digits scale (``-P preset=study -P seeds=auto -P image_size=8 -P n=1 -P epochs=15``, 178 trainings,
3 to 24 seeds per configuration; EPYC-a, 2026-12-07), and torch_bn's train-test gap with and without
augmentation (claim 1). Seeds are drawn independently and normally about them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.evidence import ROWS  # noqa: E402
from analysis.sequential import Design, assess, targets  # noqa: E402
from analysis.stats import ALPHA  # noqa: E402
from benchmarks.design import MARGIN, config, groups_of  # noqa: E402
from resnorm.sweep.planner import FIRST_ROUND_SEEDS, MAX_SEEDS  # noqa: E402

# Row label (analysis.evidence) -> test accuracy in points: mean, spread over seeds.
ACCURACY = {
    "torch_bn SGD lr 0.1": (97.36, 0.85),
    "bn SGD lr 0.1": (97.28, 0.91),
    "in SGD lr 0.1": (94.26, 1.50),
    "bin SGD lr 0.1": (97.47, 0.89),
    "ln SGD lr 0.1": (94.57, 1.88),
    "gn SGD lr 0.1": (95.11, 0.92),
    "nn SGD lr 0.1": (94.03, 1.09),
    "torch_bn Adam lr 1e-4": (60.19, 5.99),
    "bn Adam lr 1e-4": (60.06, 6.11),
    "in Adam lr 1e-4": (27.78, 5.17),
    "bin Adam lr 1e-4": (60.25, 5.94),
    "ln Adam lr 1e-4": (62.96, 5.94),
    "gn Adam lr 1e-4": (58.44, 5.21),
    "nn Adam lr 1e-4": (56.16, 8.51),
    "torch_bn SGD lr 1e-4": (18.02, 2.80),
    "bn SGD lr 1e-4": (18.02, 2.80),
    "in SGD lr 1e-4": (11.23, 2.78),
    "bin SGD lr 1e-4": (18.02, 2.80),
    "ln SGD lr 1e-4": (16.30, 2.06),
    "gn SGD lr 1e-4": (19.26, 2.67),
    "nn SGD lr 1e-4": (10.25, 1.86),
    "augmentation off": (98.08, 0.71),
    "bn batch 8": (97.41, 1.34),
    "bn batch 128": (95.68, 0.57),
    "gn batch 8": (93.58, 1.54),
    "gn batch 128": (92.84, 1.13),
    "step schedule": (95.89, 0.99),
}
GAP = {"augmentation off": (1.88, 0.62), "augmentation on": (0.87, 0.71)}  # train minus test accuracy, points


def truths() -> tuple[dict, dict]:
    """Configuration -> (mean, sd) of its test accuracy, and of claim 1's gap, as fractions."""
    same = {r.label: config(r) for rs in ROWS.values() for r in rs}
    accuracy = {same[label]: (mean / 100, sd / 100) for label, (mean, sd) in ACCURACY.items()}
    missing = {label for label, cfg in same.items() if cfg not in accuracy}
    assert not missing, f"no truth for {sorted(missing)}"  # rows sharing a configuration share its truth
    gaps = {same[label]: (mean / 100, sd / 100) for label, (mean, sd) in GAP.items()}
    return accuracy, gaps


def study(rng: np.random.Generator, accuracy: dict, gaps: dict, design: dict) -> tuple[int, int, dict[int, bool]]:
    """One simulated study: FIRST_ROUND_SEEDS of every configuration, then the rounds ``targets`` asks for
    until it asks for none. Its trainings, rounds, and which claims it decided."""
    max_seeds = design.get("max_seeds", MAX_SEEDS)
    draws = {c: rng.normal(m, s, max_seeds) for c, (m, s) in accuracy.items()}
    gap_draws = {c: rng.normal(m, s, max_seeds) for c, (m, s) in gaps.items()}
    seeds, rounds = dict.fromkeys(accuracy, FIRST_ROUND_SEEDS), []
    while True:
        rounds.append({c: frozenset(range(n)) for c, n in seeds.items()})
        plan = Design(**{**design, "max_seeds": max_seeds, "rounds": tuple(rounds), "alpha": ALPHA})
        groups = groups_of(draws, seeds, gap_draws)
        claims = assess(groups, plan, MARGIN)
        more = {c: n for c, n in targets(claims, plan, MARGIN, groups).items() if n > seeds[c]}
        if not more:
            return sum(seeds.values()), len(rounds), {c.id: c.decided for c in claims}
        seeds.update(more)


def parse(text: str) -> dict:
    """``rho=0.3,pilot=0,max_seeds=24`` -> its Design fields."""
    kinds = {"rho": float, "pilot": int, "max_seeds": int}
    out = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in kinds:
            raise SystemExit(f"unknown design field {key!r}; use {', '.join(kinds)}")
        out[key] = kinds[key](value)
    return out


def run(text: str, sims: int, seed: int = 0) -> dict:
    """``sims`` studies under one design; the same seed draws the same studies for every design."""
    accuracy, gaps = truths()
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    results = [study(rng, accuracy, gaps, parse(text)) for _ in range(sims)]
    trainings = np.array([r[0] for r in results], float)
    decided = {cid: 100 * np.mean([r[2][cid] for r in results]) for cid in range(1, 7)}
    return {
        "design": text or "default",
        "trainings, mean": round(float(trainings.mean()), 1),
        "± MC error": round(float(trainings.std(ddof=1) / np.sqrt(sims)), 1),
        "median": float(np.median(trainings)),
        "rounds, mean": round(float(np.mean([r[1] for r in results])), 2),
        "claims 1, 2, 3, 6 all decided %": round(
            100 * np.mean([all(r[2][c] for c in (1, 2, 3, 6)) for r in results]), 1
        ),
        **{f"{cid} decided %": round(v, 1) for cid, v in decided.items()},
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sims", type=int, default=300)
    parser.add_argument("--designs", nargs="*", default=[""], help="Design fields per design, e.g. rho=0.5,pilot=0")
    args = parser.parse_args()
    rows = [run(text, args.sims) for text in args.designs]
    with pd.option_context("display.width", 250):
        print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()

"""The adaptive design (analysis.sequential) through its real decision code: looks and their levels,
what a next round asks for, and - on many simulated sweeps whose truth is known - that testing after
every round and stopping once decided keeps false verdicts at or under alpha, where the same looks at
the whole alpha each do not, and that real effects are found. No MLflow, no process."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis import evidence
from analysis.claims import check_claim
from analysis.decisions import EQUIVALENT, FOUND, NEGLIGIBLE, NOT_WORSE, WORSE
from analysis.evidence import AUG_OFF, AUG_ON, BATCH, SGD, STEP
from analysis.groups import Group
from analysis.sequential import GROWTH, Design, assess_claim, targets
from analysis.tables import ACCURACY, Row
from resnorm.config import TrainConfig

ALPHA, MARGIN = 0.05, 0.01


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


def adaptive(cid, truth, rng, max_seeds=40, naive=False, gaps=None):
    """One simulated adaptive sweep of claim ``cid``'s configurations (``truth``: config -> (mean, sd)):
    3 seeds each, then rounds as ``targets`` asks, until the claim is decided or asks for nothing. With
    ``naive``, every look tests at the whole alpha (``check_claim``), as testing after each round without
    a design would. Returns the claim and the rounds."""
    draws = {c: rng.normal(m, s, max_seeds) for c, (m, s) in truth.items()}
    gap_draws = {c: rng.normal(m, s, max_seeds) for c, (m, s) in (gaps or {}).items()}
    seeds, rounds = dict.fromkeys(truth, 3), []
    while True:
        rounds.append({c: frozenset(range(n)) for c, n in seeds.items()})
        design = Design(max_seeds, tuple(rounds))
        groups = groups_of(draws, seeds, gap_draws)
        claim = assess_claim(cid, groups, design, MARGIN, explain=False)
        if naive:
            claim = check_claim(cid, groups, MARGIN, ALPHA)
        if claim.decided:
            return claim, len(rounds)
        more = {c: n for c, n in targets([claim], design, MARGIN).items() if n > seeds[c]}
        if not more:
            return claim, len(rounds)
        seeds.update(more)


def rate(results, false) -> float:
    return sum(map(false, results)) / len(results)


def bound(n: int) -> float:
    """alpha plus twice the Monte-Carlo standard error of a rate near alpha from n simulations."""
    return ALPHA + 2 * math.sqrt(ALPHA * (1 - ALPHA) / n)


SIMS = 400


def sims(cid, truth, seed, n=SIMS, **kw):
    rng = np.random.default_rng(seed)
    return [adaptive(cid, truth, rng, **kw)[0] for _ in range(n)]


# --- looks, levels and rounds --------------------------------------------------------------------------------------


def test_each_look_tests_at_the_alpha_its_new_seeds_add():
    bn, tb = config(SGD["bn"]), config(SGD["torch_bn"])
    rng = np.random.default_rng(3)
    draws = {bn: 0.97 + rng.normal(0, 0.002, 40), tb: 0.97 + rng.normal(0, 0.002, 40)}
    first = {bn: frozenset(range(3)), tb: frozenset(range(3))}
    second = {bn: frozenset(range(12)), tb: frozenset(range(12))}
    groups = groups_of(draws, {bn: 12, tb: 12})
    claim = assess_claim(3, groups, Design(40, (first, second)), MARGIN)
    # Round 1 spends alpha * 3/40 and decides nothing on 3 seeds; round 2 tests at alpha * (12 - 3)/40.
    assert claim.verdict == "supported" and claim.look == "round 2 of 2"
    assert claim.level == pytest.approx(ALPHA * 9 / 40)
    assert "[98.875 % CI" in claim.line and "(round 2 at alpha 0.0112)" in claim.line
    assert "its 97.75 % interval" in claim.line  # equivalence: the 1 - 2 alpha interval of the look
    # The same runs with seeds fixed in advance: one look at the whole alpha.
    fixed = assess_claim(3, groups, Design(), MARGIN)
    assert fixed.level == ALPHA and fixed.look == "" and "95 % CI" in fixed.line


def test_a_part_decided_early_stays_decided_and_passes_its_share_on():
    """Claim 5's bn effect and interaction are plain at round 1; gn's equivalence needs more seeds. Holm's
    shares of the decided parts pass to gn's, which is tested at every look with the whole alpha."""
    cfgs = [config(BATCH[k]) for k in (("bn", 8), ("bn", 128), ("gn", 8), ("gn", 128))]
    rng = np.random.default_rng(5)
    # gn: no batch effect, seeds spread so that 12 of them show it within the margin at the whole alpha of their
    # look but not at a third of it.
    spread_ = rng.permutation(np.linspace(-1, 1, 12))
    spread_ = np.concatenate([spread_ / spread_.std(ddof=1) * 0.009, np.zeros(28)])
    draws = {
        cfgs[0]: 0.80 + rng.normal(0, 0.002, 40),
        cfgs[1]: 0.95 + rng.normal(0, 0.002, 40),
        cfgs[2]: 0.945 + spread_,
        cfgs[3]: 0.945 + spread_,
    }
    looks = ({c: frozenset(range(3)) for c in cfgs}, {c: frozenset(range(3 if c in cfgs[:2] else 12)) for c in cfgs})
    groups = groups_of(draws, {c: len(looks[1][c]) for c in cfgs})
    claim = assess_claim(5, groups, Design(40, looks), MARGIN)
    assert claim.outcomes == (FOUND, EQUIVALENT, FOUND) and claim.verdict == "supported"
    assert "round 1 at alpha" in claim.details[0] and "round 1 at alpha" in claim.details[2]
    # gn's looks at the whole alpha once the others were decided: round 2 adds 9 of 40 seeds' worth of it.
    assert f"round 2 at alpha {ALPHA * 9 / 40:.3g}" in claim.details[1] and claim.look == "round 2 of 2"


def test_the_next_round_goes_to_open_parts_within_the_cap_and_four_times_what_they_have():
    bn, tb = config(SGD["bn"]), config(SGD["torch_bn"])
    draws = {bn: np.array([0.970, 0.962, 0.975]), tb: np.array([0.965, 0.971, 0.960])}
    design = Design(40, ({bn: frozenset(range(3)), tb: frozenset(range(3))},))
    claim = assess_claim(3, groups_of(draws, {bn: 3, tb: 3}), design, MARGIN)
    want = targets([claim], design, MARGIN)
    assert claim.verdict == "inconclusive" and set(want) == {bn, tb}
    assert len(set(want.values())) == 1 and 3 < want[bn] <= min(40, GROWTH * 3)
    # The same spread with the difference at the margin itself: neither equivalence nor a difference beyond the
    # margin can be shown, and max_seeds would not change that.
    far = {bn: np.array([0.981, 0.970, 0.9755]), tb: draws[tb]}
    hopeless = assess_claim(3, groups_of(far, {bn: 3, tb: 3}), design, MARGIN)
    assert hopeless.verdict == "inconclusive" and targets([hopeless], design, MARGIN) == {}
    # Seeds that all scored alike: nothing to plan with, so twice as many.
    flat = {bn: np.full(3, 0.97), tb: np.full(3, 0.96)}
    alike = assess_claim(3, groups_of(flat, {bn: 3, tb: 3}), design, MARGIN)
    assert targets([alike], design, MARGIN) == {bn: 6, tb: 6}


def test_a_round_not_ended_is_not_a_look_and_a_sweep_without_one_decides_nothing():
    bn, tb = config(SGD["bn"]), config(SGD["torch_bn"])
    claim = assess_claim(3, groups_of({bn: np.ones(3), tb: np.ones(3)}, {bn: 3, tb: 3}), Design(40, ()), MARGIN)
    assert claim.verdict == "inconclusive" and "no round has ended yet" in claim.line


# --- false verdicts under optional stopping, and real effects found ------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "cid", "truth", "false"),
    [
        # Claim 3 at the edge of the margin: one point apart is not "within one point" (nor beyond it).
        (
            "equal, at the margin",
            3,
            ((SGD["bn"], (0.98, 0.008)), (SGD["torch_bn"], (0.97, 0.008))),
            lambda c: c.outcomes[0] == EQUIVALENT,
        ),
        # Claim 6 at exactly -margin: neither "not worse" nor "worse" is true (each side tests at alpha / 2).
        (
            "at least as good, at -margin",
            6,
            ((STEP, (0.98, 0.006)), (SGD["torch_bn"], (0.97, 0.006))),
            lambda c: c.decided,
        ),
        # Claim 4 with seven equal norms: any "better" is false.
        (
            "ranking of equals",
            4,
            tuple((SGD[n], (0.96, 0.008)) for n in evidence.NORM_NAMES),
            lambda c: FOUND in c.outcomes,
        ),
        # Claim 5 with gn's batch effect at the margin: its equivalence is false, and so is the claim.
        (
            "gn at the margin",
            5,
            tuple(zip(BATCH.values(), ((0.90, 0.006), (0.95, 0.006), (0.95, 0.006), (0.94, 0.006)))),
            lambda c: c.verdict == "supported",
        ),
    ],
    ids=["equal at the margin", "at least as good at -margin", "ranking of equals", "gn at the margin"],
)
def test_false_verdicts_stay_at_or_under_alpha_over_the_rounds(name, cid, truth, false):
    truth = {config(r): v for r, v in truth}
    n = SIMS if cid != 4 else SIMS // 2  # claim 4 compares seven configurations: twice the cost of a simulation
    results = sims(cid, truth, seed=cid, n=n)
    assert rate(results, false) <= bound(n), (name, rate(results, false))


@pytest.mark.slow
def test_no_effect_is_found_where_there_is_none_and_a_negligible_one_is_not_called_negligible_at_the_margin():
    """Claim 1's gap effect: at 0, "found" either way is false; at exactly the margin, "negligible" is."""
    off, on = config(AUG_OFF), config(AUG_ON)
    truth = {off: (0.96, 0.006), on: (0.96, 0.006)}
    at_zero = sims(1, truth, seed=11, gaps={off: (0.01, 0.003), on: (0.01, 0.003)})
    assert rate(at_zero, lambda c: c.outcomes[0] == FOUND) <= bound(SIMS)
    at_margin = sims(1, truth, seed=12, gaps={off: (0.02, 0.003), on: (0.01, 0.003)})
    assert rate(at_margin, lambda c: c.outcomes[0] == NEGLIGIBLE) <= bound(SIMS)


@pytest.mark.slow
def test_the_same_looks_at_the_whole_alpha_each_inflate_false_verdicts():
    """The harness can see what the design prevents: at the margin of claim 6, testing each round at 0.05 and
    stopping once decided gives false verdicts well above alpha."""
    truth = {config(STEP): (0.98, 0.006), config(SGD["torch_bn"]): (0.97, 0.006)}
    naive = sims(6, truth, seed=6, naive=True)
    assert rate(naive, lambda c: c.decided) > bound(SIMS)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("cid", "truth", "found", "power"),
    [
        (3, ((SGD["bn"], (0.970, 0.006)), (SGD["torch_bn"], (0.970, 0.006))), EQUIVALENT, 0.8),
        (6, ((STEP, (0.96, 0.006)), (SGD["torch_bn"], (0.97, 0.006))), NOT_WORSE, 0.9),
        (6, ((STEP, (0.99, 0.006)), (SGD["torch_bn"], (0.97, 0.006))), WORSE, 0.9),
    ],
)
def test_real_effects_are_found(cid, truth, found, power):
    results = sims(cid, {config(r): v for r, v in truth}, seed=20 + cid, n=200)
    assert rate(results, lambda c: c.outcomes[0] == found) >= power

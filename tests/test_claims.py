"""analysis/claims.py on hand-made configurations whose answers are known: each claim can come out
supported, contradicted, inconclusive or not testable; the statistics agree with scipy's own tests
and with hand computations; configurations are never pooled. No MLflow, no process: well under 10 s."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats import weightstats as ws
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from analysis import decisions, evidence, present, stats
from analysis.claims import Claim, check_claims
from analysis.decisions import AT_LEAST, EQUAL, Open, Part
from analysis.evidence import ADAM, AUG_OFF, AUG_ON, BATCH, SGD, SLOW_SGD, STEP
from analysis.groups import Group
from analysis.sequential import Design, assess
from analysis.tables import ACCURACY, Row
from resnorm.config import TrainConfig
from resnorm.norms import NORM_NAMES


def spread(mean: float, sd: float = 0.002, n: int = 3) -> list[float]:
    """n values with the given mean and (for n = 3) sample standard deviation ``sd``."""
    return list(np.linspace(mean - sd, mean + sd, n)) if n > 1 else [mean]


def group(row: Row, test: list[float], train: list[float] | None = None, failed: int = 0, **override) -> Group:
    """The configuration of ``row`` (changed by ``override``, e.g. epochs) with one finished run per
    value of ``test`` and ``failed`` more planned seeds that failed."""
    cfg = dataclasses.replace(TrainConfig(**row.selector()), **override)
    n = len(test)
    finished = pd.DataFrame(
        {
            "run_id": [f"{cfg.run_name()}-e{cfg.epochs}-s{s}" for s in range(n)],
            "seed": list(range(n)),
            ACCURACY: test,
            evidence.TRAIN_ACCURACY: train if train is not None else [1.0] * n,
            "best_val_accuracy": test,
            "status": ["FINISHED"] * n,
        }
    )
    problems = [
        {"seed": n + i, "status": "FAILED", "run_id": f"failed{i}", "error": "loss became nan"} for i in range(failed)
    ]
    return Group(cfg, "auto", tuple(range(n + failed)), finished, problems)


SEEDS = 6  # a whole sweep's seeds per configuration: 3 cannot tie two norms at the share each of 21 pairs gets


def sweep(**changed: Group) -> list[Group]:
    """Every configuration of the study preset, 6 seeds each, SGD lr 0.1 clearly best, bn and
    torch_bn equivalent, norms 2 points apart; ``changed`` replaces groups by key (see KEYS)."""
    base: dict[str, Group] = {}
    for i, n in enumerate(NORM_NAMES):
        mean = 0.96 - 0.02 * i if n != "bn" else 0.9605  # bn within a twentieth of a point of torch_bn
        base[f"sgd_{n}"] = group(SGD[n], spread(mean, 0.001, SEEDS))
        base[f"adam_{n}"] = group(ADAM[n], spread(mean - 0.10, n=SEEDS))
        base[f"slow_{n}"] = group(SLOW_SGD[n], spread(mean - 0.30, n=SEEDS))
    base["aug_off"] = group(AUG_OFF, spread(0.85, n=SEEDS), train=[1.0] * SEEDS)
    base["step"] = group(STEP, spread(0.93, n=SEEDS))
    for (n, b), mean in zip(BATCH, (0.80, 0.95, 0.94, 0.945)):
        base[f"{n}{b}"] = group(BATCH[(n, b)], spread(mean, n=SEEDS))
    base.update(changed)
    return [g for g in base.values() if g is not None]


def by_id(groups: list[Group], **kwargs) -> dict[int, Claim]:
    return {c.id: c for c in check_claims(groups, **kwargs)}


# --- the statistics against scipy, statsmodels and by hand -------------------------------------------------------


def test_welch_difference_and_interval_agree_with_scipy():
    a, b = [0.91, 0.93, 0.92, 0.95], [0.80, 0.86, 0.83]
    d = stats.welch(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert d.value == pytest.approx(np.mean(a) - np.mean(b))
    assert d.p == pytest.approx(ref.pvalue) and d.p == pytest.approx(stats.welch_p(a, b))
    assert d.interval(0.95) == pytest.approx(tuple(ref.confidence_interval(0.95)))
    assert d.interval(0.9) == pytest.approx(tuple(ref.confidence_interval(0.9)))
    assert d.df == pytest.approx(ref.df)


def test_one_sided_and_equivalence_p_values_agree_with_statsmodels():
    a, b, margin = np.array([0.950, 0.955, 0.948, 0.952]), np.array([0.946, 0.951, 0.953]), 0.01
    d = stats.welch(a, b)
    for bound in (-margin, 0.0, margin):
        larger = ws.ttest_ind(a, b, alternative="larger", usevar="unequal", value=bound)[1]
        smaller = ws.ttest_ind(a, b, alternative="smaller", usevar="unequal", value=bound)[1]
        assert d.p_above(bound) == pytest.approx(larger) and d.p_below(bound) == pytest.approx(smaller)
    # A claim's part tests with the smallest sample's degrees of freedom (Hsu's, which keep their level at the
    # small alphas of an adaptive sweep's looks), and an equivalence at alpha / 2 a side: twice the TOST p.
    assert ws.ttost_ind(a, b, -margin, margin, usevar="unequal")[0] == pytest.approx(
        max(d.p_above(-margin), d.p_below(margin))
    )  # Welch's TOST, by statsmodels
    df = min(len(a), len(b)) - 1
    hsu = max(sps.t.sf((d.value + margin) / d.se, df), sps.t.sf((margin - d.value) / d.se, df))
    part = Part("a minus b", EQUAL, (tuple(a), tuple(b)), (1, -1))
    assert part.estimate.df == df and part.pvalues(margin)[0] == pytest.approx(2 * hsu)
    assert Part("a minus b", EQUAL, (tuple(a), tuple(b)), (1, -1)).pvalues(0.001)[0] > 0.05  # not within 0.1


def test_holm_agrees_with_statsmodels_and_says_each_level():
    p = {"w": 0.01, "x": 0.04, "y": 0.03, "z": 0.005}
    adjusted = multipletests(list(p.values()), alpha=0.05, method="holm")
    assert list(stats.holm(p).values()) == pytest.approx(list(adjusted[1]))
    # By hand: 0.005 <= 0.05/4 and 0.01 <= 0.05/3, then 0.03 > 0.05/2 stops the procedure.
    assert stats.holm_levels(list(p.values()), 0.05) == pytest.approx([0.05 / 3, 0.0, 0.0, 0.05 / 4])
    assert [lv > 0 for lv in stats.holm_levels(list(p.values()), 0.05)] == list(adjusted[0])


def test_the_interaction_interval_agrees_with_a_hand_computation():
    samples = [[0.80, 0.82, 0.79], [0.95, 0.96, 0.94, 0.95], [0.93, 0.94], [0.945, 0.94, 0.95]]
    est = stats.contrast(samples, [1, -1, -1, 1])
    means = [np.mean(s) for s in samples]
    terms = [np.var(s, ddof=1) / len(s) for s in samples]
    se = math.sqrt(sum(terms))
    df = se**4 / sum(t**2 / (len(s) - 1) for t, s in zip(terms, samples))  # Welch-Satterthwaite
    value = (means[0] - means[1]) - (means[2] - means[3])
    half = sps.t.ppf(0.975, df) * se
    assert est.value == pytest.approx(value)
    assert est.df == pytest.approx(df) and est.interval(0.95) == pytest.approx((value - half, value + half))
    assert est.p == pytest.approx(2 * sps.t.sf(abs(value) / se, df))


def test_seeds_that_scored_alike_are_not_certainty_and_raise_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's "catastrophic cancellation" on identical rows would fail here
        assert math.isnan(stats.welch_p([0.9, 0.9, 0.9], [0.9, 0.9, 0.9]))
        assert math.isnan(stats.welch_p([0.9, 0.9, 0.9], [0.8, 0.85, 0.9]))
        flat = stats.welch([0.95, 0.95, 0.95], [0.85, 0.85, 0.85])
        assert not flat.testable and all(math.isnan(v) for v in (flat.p, *flat.interval(0.95)))
        assert stats.pairwise({"a": [0.9] * 3, "b": [0.9] * 3, "c": [0.7, 0.8, 0.75]}) == {}
    with pytest.raises(ValueError, match="differ"):
        stats.t_interval([0.985, 0.985, 0.985])


@pytest.mark.parametrize("alternative", ["larger", "two-sided"])
@pytest.mark.parametrize(("effect", "n", "alpha"), [(0.5, 10, 0.05), (1.2, 3, 0.001), (0.1, 400, 0.025), (2.0, 2, 0.3)])
def test_t_power_is_statsmodels_power(effect, n, alpha, alternative):
    want = TTestPower().power(effect_size=effect, nobs=n, alpha=alpha, alternative=alternative)
    assert stats.t_power(effect, n, alpha, alternative) == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_t_power_is_a_number_far_in_the_tails_where_statsmodels_gives_nan():
    assert math.isnan(TTestPower().power(effect_size=6, nobs=12, alpha=0.001, alternative="two-sided"))
    assert stats.t_power(6, 12, 0.001, "two-sided") == pytest.approx(1.0)
    assert stats.t_power(6, 6, 3.6e-4, "two-sided") > 0.9  # claim 2's Adam gaps: decided in a round of 6 seeds
    assert stats.t_power(0.01, 3, 1e-6, "larger") < 1e-5


def test_power_and_the_seeds_a_decision_needs_agree_with_statsmodels():
    rng = np.random.default_rng(0)
    a, b = 0.96 + rng.normal(0, 0.004, 5), 0.955 + rng.normal(0, 0.006, 5)
    part = Part("a minus b", AT_LEAST, (tuple(a), tuple(b)), (1, -1))
    e = part.estimate
    assert e.sd == pytest.approx(math.sqrt(np.var(a, ddof=1) + np.var(b, ddof=1)))
    # Non-inferiority at -1 point, one-sided 2.5 % (the 95 % interval's end): statsmodels solves the same power.
    want = TTestPower().solve_power(effect_size=(e.value + 0.01) / e.sd, alpha=0.025, power=0.8, alternative="larger")
    assert decisions.seeds_needed([Open(part, 0.05)], 0.01, 2, 10_000) == math.ceil(want)
    assert (
        decisions.power(part, 0.01, math.ceil(want), 0.05)
        >= 0.8
        > decisions.power(part, 0.01, math.ceil(want) - 1, 0.05)
    )


# --- the claims on whole sweeps ---------------------------------------------------------------------------------


def test_a_sweep_where_every_claim_holds_supports_every_claim():
    found = by_id(sweep())
    assert {i: c.verdict for i, c in found.items()} == {i: "supported" for i in range(1, 7)}
    assert found[1].effect == pytest.approx((0.15 - 0.04) * 100) and found[1].seeds == "6 vs 6"
    assert found[2].line.startswith("supported: supported for 14 of 14 comparisons") and len(found[2].details) == 14
    # 4: bn and torch_bn are equivalent by design: a tie within the margin is an answer, not an open pair.
    assert found[4].line.startswith("supported: ranking bn ≈ torch_bn > in > bin > ln > gn > nn")
    table = present.claims_table(list(found.values()))
    assert list(table.columns) == ["claim", "test", "verdict", "effect [CI]", "seeds", "to decide it"]
    assert table.loc[0, "effect [CI]"].startswith("+11.00 pts [")


def test_claim1_augmentation_found_reversed_negligible_and_open():
    worse = group(AUG_OFF, spread(0.97), train=[0.98] * 3)  # gap 1 point off against 4 on
    on = group(AUG_ON, spread(0.96), train=[1.0] * 3)
    c = by_id(sweep(aug_off=worse, sgd_torch_bn=on))[1]
    assert c.verdict == "contradicted" and "against the claim: the gap is larger with augmentation" in c.line
    # Real but a third of a point: smaller than the margin, no effect worth the name.
    tiny_off = group(AUG_OFF, spread(0.960, 0.0003), train=[1.0] * 3)
    tiny_on = group(AUG_ON, spread(0.963, 0.0003), train=[1.0] * 3)
    c = by_id(sweep(aug_off=tiny_off, sgd_torch_bn=tiny_on))[1]
    assert c.verdict == "contradicted" and c.ci[0] > 0 and "negligible" in c.line and "although it is real" in c.line
    # The gap is smaller with augmentation on, by little and noisily: the estimate leans towards the claim (for a
    # gap, lower is better: it once said "favours augmentation off").
    noisy_off = group(AUG_OFF, [0.90, 0.95, 0.93], train=[0.99, 0.99, 0.99])
    noisy_on = group(AUG_ON, [0.93, 0.91, 0.96], train=[0.99, 0.98, 0.99])
    c = by_id(sweep(aug_off=noisy_off, sgd_torch_bn=noisy_on))[1]
    assert c.effect > 0 and c.verdict == "inconclusive" and c.ci[0] < 0 < c.ci[1]
    assert "the estimate leans towards the claim" in c.line


def _accuracies(groups: list[Group], row: Row) -> list[float]:
    found = next(g for g in groups if g.config == TrainConfig(**row.selector()))
    return [float(v) for v in found.finished[ACCURACY]]


def hsu_p(a, b, margin=0.01) -> float:
    """A part's p-value by hand: the smaller of its found and negligible p-values, each a t test on the
    smallest sample's degrees of freedom (scipy)."""
    a, b = np.asarray(a), np.asarray(b)
    d, se, df = a.mean() - b.mean(), math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)), min(len(a), len(b)) - 1
    found = 2 * sps.t.sf(abs(d) / se, df)
    negligible = max(sps.t.sf((d + margin) / se, df), sps.t.sf((margin - d) / se, df))
    return min(found, negligible)


def test_claim2_shares_alpha_over_all_comparisons_and_one_counter_example_contradicts():
    # gn and nn with Adam: 1.2 points below SGD lr 0.1, noisy: found alone, not at a fourteenth of alpha.
    groups = sweep(
        adam_gn=group(ADAM["gn"], spread(0.848, 0.012, SEEDS)), adam_nn=group(ADAM["nn"], spread(0.828, 0.012, SEEDS))
    )
    c = by_id(groups)[2]
    raw = hsu_p(_accuracies(groups, SGD["gn"]), _accuracies(groups, ADAM["gn"]))
    assert raw < 0.05 < 14 * raw  # significant alone, not after the correction
    line = next(d for d in c.details if "gn, SGD lr 0.1 minus Adam" in d)
    assert line.startswith("inconclusive:") and f"Bonferroni-adjusted p = {min(1, 14 * raw):.3g}" in line
    assert "[99.6429 % CI" in line, "its interval at the level it was tested at, alpha / 14"
    assert c.verdict == "inconclusive" and "supported for 12 of 14 comparisons (2 inconclusive)" in c.line
    # Adam clearly better than SGD lr 0.1 for one norm refutes "for every norm".
    better = group(ADAM["ln"], spread(0.99, 0.001))
    c = by_id(sweep(adam_ln=better))[2]
    assert c.verdict == "contradicted"
    assert "(1 contradicted); against: ln, SGD lr 0.1 minus Adam lr 1e-4 = -11.00" in c.line
    assert c.effect == pytest.approx(-11.0) and c.ci[1] < 0


def test_claim2_lists_comparisons_it_cannot_make_and_does_not_call_a_partial_sweep_supported():
    c = by_id(sweep(slow_nn=None, adam_in=group(ADAM["in"], [0.8])))[2]
    assert c.verdict == "inconclusive" and "supported for 12 of 14 comparisons (2 not tested)" in c.line
    assert any(d.startswith("nn, SGD lr 0.1 vs SGD lr 1e-4: not testable: missing nn-sgd-lr0.0001") for d in c.details)
    assert any("in, SGD lr 0.1 vs Adam lr 1e-4: inconclusive: needs seeds >= 2" in d for d in c.details)


@pytest.mark.parametrize(
    ("bn_mean", "sd", "verdict"),
    [
        (0.9605, 0.001, "supported"),  # half a point inside the margin, tight seeds
        (0.930, 0.001, "contradicted"),  # 3 points apart: the whole interval lies beyond the margin
        (0.960, 0.030, "inconclusive"),  # same mean, noisy seeds: no difference found, yet no equivalence shown
    ],
)
def test_claim3_is_an_equivalence_test(bn_mean, sd, verdict):
    c = by_id(sweep(sgd_bn=group(SGD["bn"], spread(bn_mean, sd))))[3]
    assert c.verdict == verdict, c.line
    if verdict == "inconclusive":
        assert "not evidence of equality" in c.line and c.ci[0] < 0 < c.ci[1]


def test_claim3_margin_changes_the_verdict():
    groups = sweep(sgd_bn=group(SGD["bn"], spread(0.975, 0.001)))  # 1.5 points above torch_bn
    assert by_id(groups)[3].verdict == "contradicted"
    wide = by_id(groups, margin=0.03)[3]
    assert wide.verdict == "supported" and "±3 accuracy points" in wide.test
    with pytest.raises(ValueError, match="margin"):
        check_claims(groups, margin=1.5)
    with pytest.raises(ValueError, match="margin"):
        check_claims(groups, margin=math.nan)


def test_claim4_decides_each_adjacent_pair_as_better_or_tied():
    separated = sweep(sgd_bn=group(SGD["bn"], spread(0.95, 0.001, SEEDS)))  # 1 point under torch_bn, seeds apart
    c = by_id(separated)[4]
    assert c.verdict == "supported" and c.line.startswith("supported: ranking torch_bn > bn > in")
    assert len(c.details) == 6 and all(d.split(": ")[0].endswith("better") for d in c.details)
    # Every norm within a tenth of a point, tight seeds: every pair tied, so there is no order at all.
    flat = sweep(
        **{f"sgd_{n}": group(SGD[n], spread(0.96 + i / 10000, 0.001, SEEDS)) for i, n in enumerate(NORM_NAMES)}
    )
    c = by_id(flat)[4]
    assert c.verdict == "contradicted" and "every adjacent pair is tied: no order" in c.line
    # bin's seeds straddle in's: that pair is open, and so is the ranking.
    mixed = sweep(sgd_bn=group(SGD["bn"], spread(0.95, 0.001, SEEDS)), sgd_bin=group(SGD["bin"], [0.915, 0.935, 0.95]))
    c = by_id(mixed)[4]
    assert c.verdict == "inconclusive" and "bn ? bin ? in" in c.line and "4 of 6 adjacent pairs decided" in c.line


def test_claim4_does_not_order_two_norms_on_three_seeds_that_merely_do_not_overlap():
    """The report once read bin > ln from 3 vs 3 seeds (a bootstrap interval [0.78, 1.00]) where an exact
    permutation test gives p = 0.20: seeds from this repository's own 3-seed study at digits scale."""
    bin_, ln = [258 / 270, 261 / 270, 261 / 270], [257 / 270, 244 / 270, 258 / 270]
    others = {
        n: group(SGD[n], spread(m, 0.001, SEEDS))
        for n, m in zip(("torch_bn", "bn", "in", "gn", "nn"), (0.99, 0.98, 0.9, 0.89, 0.88))
    }
    groups = sweep(
        sgd_bin=group(SGD["bin"], bin_), sgd_ln=group(SGD["ln"], ln), **{f"sgd_{n}": g for n, g in others.items()}
    )
    c = by_id(groups)[4]
    pair = next(d for d in c.details if "bin minus ln" in d)
    assert pair.split(": ")[0].endswith("open") and "ranking torch_bn > bn ? bin ? ln" in c.line, pair


def test_claim5_tests_both_halves_and_the_interaction():
    c = by_id(sweep())[5]
    assert c.verdict == "supported" and c.effect == pytest.approx((0.94 - 0.945) * 100)  # the least certain part
    assert c.line.startswith("supported: bn's batch effect found (-15.00 points); gn's batch effect within ±1")
    assert len(c.details) == 3 and c.details[2].startswith("interaction (bn 8 - 128) - (gn 8 - 128) = -14.50")
    flipped = sweep(
        bn8=group(BATCH[("bn", 8)], spread(0.94)),
        bn128=group(BATCH[("bn", 128)], spread(0.945)),
        gn8=group(BATCH[("gn", 8)], spread(0.80)),
        gn128=group(BATCH[("gn", 128)], spread(0.95)),
    )
    c = by_id(flipped)[5]
    assert c.verdict == "contradicted" and "gn's batch effect beyond ±1" in c.line
    flat = sweep(bn8=group(BATCH[("bn", 8)], [0.90, 0.95, 0.93]), gn8=group(BATCH[("gn", 8)], [0.93, 0.96, 0.94]))
    assert by_id(flat)[5].verdict == "inconclusive"


@pytest.mark.parametrize(
    ("step", "verdict", "said"),
    [
        (spread(0.93), "supported", "not worse"),  # cosine (torch_bn at 96 %) clearly better
        (spread(0.965, 0.001), "supported", "worse but within the margin"),  # half a point worse: at least as good
        (spread(0.99), "contradicted", "worse by more than the margin"),
        (spread(0.955, 0.02), "inconclusive", "reaches both sides of -1 accuracy point"),  # noisy
    ],
)
def test_claim6_is_non_inferiority_at_the_margin(step, verdict, said):
    c = by_id(sweep(step=group(STEP, step)))[6]
    assert c.verdict == verdict and said in c.line, c.line
    assert c.line.startswith(f"{verdict}: test accuracy, cosine minus step = ")


def test_a_claim_on_seeds_without_spread_is_never_decided():
    """Three equal numbers on each side once read "supported, 95 % CI [+10.00, +10.00], p = 0"."""
    off = group(AUG_OFF, [0.85] * 3, train=[1.0] * 3)
    on = group(AUG_ON, [0.96] * 3, train=[1.0] * 3)
    (c,) = [c for c in assess(sweep(aug_off=off, sgd_torch_bn=on), Design()) if c.id == 1]
    assert c.verdict == "inconclusive" and "identical seeds are not certainty" in c.line and math.isnan(c.ci[0])
    assert c.needed.startswith("unknown: seeds that all scored alike")


def test_an_open_claim_says_how_many_seeds_would_decide_it():
    noisy = group(STEP, spread(0.955, 0.02))
    (c,) = [c for c in assess(sweep(step=noisy), Design()) if c.id == 6]
    torch_bn = spread(0.96 - 0.02 * NORM_NAMES.index("torch_bn"), 0.001, SEEDS)
    sd = math.sqrt(np.var(torch_bn, ddof=1) + np.var(noisy.finished[ACCURACY], ddof=1))
    # Non-inferiority is one-sided at half of alpha (the 95 % interval's lower end).
    want = TTestPower().solve_power(effect_size=(0.005 + 0.01) / sd, alpha=0.025, power=0.8, alternative="larger")
    assert c.needed.startswith(f"about {math.ceil(want)} seeds per configuration (80 % power at alpha 0.05")
    assert "estimated from 3 seeds" in c.needed


def test_bad_arguments_are_refused_and_the_method_text_follows_them():
    with pytest.raises(ValueError, match="alpha must lie in"):
        check_claims(sweep(), alpha=0.7)
    assert "±2 accuracy points" in present.method_text(margin=0.02) and "±1 accuracy point;" in present.METHOD_TEXT
    assert "1 - alpha interval lies inside the margin" in present.METHOD_TEXT and "95 % and 90 %" in present.METHOD_TEXT


# --- what the sweep lacks ---------------------------------------------------------------------------------------


def test_a_missing_configuration_is_not_testable_and_named():
    c = by_id(sweep(aug_off=None, step=None))
    assert c[1].verdict == "not testable"
    assert c[1].line == "not testable in this sweep: missing torch_bn-sgd-lr0.1-noaug-bs32 (augmentation off)"
    assert c[6].line == (
        "not testable in this sweep: missing torch_bn-sgd-lr0.1-aug-bs32, scheduler=step (step schedule)"
    )
    assert math.isnan(c[1].effect) and present.claims_table([c[1]]).loc[0, "effect [CI]"] == "–"


def test_too_few_seeds_is_inconclusive_and_names_the_side():
    c = by_id(sweep(step=group(STEP, [0.93])))[6]
    assert c.verdict == "inconclusive"
    assert c.line == "inconclusive: needs seeds >= 2 (step schedule has 1 finished)"
    c = by_id(sweep(sgd_gn=group(SGD["gn"], [0.9])))[4]
    assert c.line.startswith("inconclusive: needs seeds >= 2 (gn SGD lr 0.1 has 1")


def test_a_configuration_with_a_failed_seed_is_tested_on_the_rest_and_says_so():
    c = by_id(sweep(aug_off=group(AUG_OFF, spread(0.85, n=2), train=[1.0, 1.0], failed=1)))[1]
    assert c.verdict == "supported" and c.seeds == f"2 vs {SEEDS}"
    assert "(seeds finished/planned: augmentation off: 2/3; tested on the finished ones)" in c.line


def test_configurations_differing_in_epochs_are_never_pooled():
    short = group(SGD["bn"], spread(0.70), epochs=5)
    groups = sweep() + [short]
    c = by_id(groups)[3]
    assert c.verdict == "not testable"
    assert "2 configurations match bn-sgd-lr0.1-aug-bs32 (epochs=50 / epochs=5)" in c.line
    assert "never pooled" in c.line
    assert by_id(groups)[1].verdict == "supported"  # claims that do not use bn are unaffected

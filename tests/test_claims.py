"""analysis/claims.py on hand-made configurations whose answers are known: each claim can come out
supported, contradicted, inconclusive or not testable; the statistics agree with scipy's own tests
and with hand computations; configurations are never pooled. No MLflow, no process: well under 10 s."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis import claims, evidence, present, stats
from analysis.claims import check_claims
from analysis.evidence import ADAM, AUG_OFF, AUG_ON, BATCH, SGD, SLOW_SGD, STEP
from analysis.groups import Group
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


def sweep(**changed: Group) -> list[Group]:
    """Every configuration of the study preset, 3 seeds each, SGD lr 0.1 clearly best, bn and
    torch_bn equivalent, norms 2 points apart; ``changed`` replaces groups by key (see KEYS)."""
    base: dict[str, Group] = {}
    for i, n in enumerate(NORM_NAMES):
        mean = 0.96 - 0.02 * i if n != "bn" else 0.9605  # bn within a twentieth of a point of torch_bn
        base[f"sgd_{n}"] = group(SGD[n], spread(mean, 0.001))
        base[f"adam_{n}"] = group(ADAM[n], spread(mean - 0.10))
        base[f"slow_{n}"] = group(SLOW_SGD[n], spread(mean - 0.30))
    base["aug_off"] = group(AUG_OFF, spread(0.85), train=[1.0] * 3)
    base["step"] = group(STEP, spread(0.93))
    for (n, b), mean in zip(BATCH, (0.80, 0.95, 0.94, 0.945)):
        base[f"{n}{b}"] = group(BATCH[(n, b)], spread(mean))
    base.update(changed)
    return [g for g in base.values() if g is not None]


def by_id(groups: list[Group], **kwargs) -> dict[int, claims.Claim]:
    return {c.id: c for c in check_claims(groups, **kwargs)}


# --- the statistics against scipy and by hand -------------------------------------------------------------------


def test_welch_difference_and_interval_agree_with_scipy():
    a, b = [0.91, 0.93, 0.92, 0.95], [0.80, 0.86, 0.83]
    d = stats.welch(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert d.value == pytest.approx(np.mean(a) - np.mean(b))
    assert d.p == pytest.approx(ref.pvalue) and d.p == pytest.approx(stats.welch_p(a, b))
    assert d.ci == pytest.approx(tuple(ref.confidence_interval(0.95)))
    assert d.df == pytest.approx(ref.df)


def test_tost_one_sided_p_values_agree_with_scipy_on_shifted_samples():
    a, b, margin = np.array([0.950, 0.955, 0.948, 0.952]), np.array([0.946, 0.951, 0.953]), 0.01
    low, high = stats.tost(a, b, margin)
    # H0 mean(a) - mean(b) <= -margin  <=>  mean(a + margin) <= mean(b): rejected by "greater".
    assert low == pytest.approx(sps.ttest_ind(a + margin, b, equal_var=False, alternative="greater").pvalue)
    assert high == pytest.approx(sps.ttest_ind(a - margin, b, equal_var=False, alternative="less").pvalue)
    assert max(low, high) < 0.05  # a difference of 0.1 point, tight seeds: equivalent within 1 point
    # The same samples with a margin smaller than the difference's uncertainty are not shown equivalent.
    assert max(stats.tost(a, b, 0.001)) > 0.05


def test_probability_of_improvement_is_mann_whitney_u_over_the_pairs_ties_counting_half():
    x, y = [0.90, 0.92, 0.92, 0.95], [0.91, 0.92, 0.80]
    u = sps.mannwhitneyu(x, y, alternative="greater").statistic
    assert stats.probability_of_improvement(x, y) == pytest.approx(u / (len(x) * len(y)))
    # By hand: 0.90 beats 1 of 3; each 0.92 beats 2, ties 1; 0.95 beats 3: (1 + 2.5 + 2.5 + 3) / 12.
    assert stats.probability_of_improvement(x, y) == pytest.approx(9 / 12)
    assert stats.probability_of_improvement(y, x) == pytest.approx(1 - 9 / 12)


def test_the_bootstrap_interval_is_reproducible_and_handles_degenerate_samples():
    x, y = [0.90, 0.93, 0.91, 0.95], [0.91, 0.92, 0.80, 0.89]
    first = stats.improvement_interval(x, y)
    assert first == stats.improvement_interval(x, y)  # fixed seed: the report does not change between builds
    assert first[0] <= stats.probability_of_improvement(x, y) <= first[1] and first[0] < 0.5 < first[1]
    assert stats.improvement_interval([0.9, 0.9], [0.9, 0.9]) == (0.5, 0.5)  # every resample ties
    assert all(math.isnan(v) for v in stats.improvement_interval([0.9], [0.8, 0.7]))  # one seed: no interval


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
    assert est.df == pytest.approx(df) and est.ci == pytest.approx((value - half, value + half))
    assert est.p == pytest.approx(2 * sps.t.sf(abs(value) / se, df))


# --- the claims on whole sweeps ---------------------------------------------------------------------------------


def test_a_sweep_where_every_claim_holds_supports_every_claim():
    found = by_id(sweep())
    assert {i: c.verdict for i, c in found.items()} == {
        1: "supported",
        2: "supported",
        3: "supported",
        4: "inconclusive",
        5: "supported",
        6: "supported",
    }
    # 4: torch_bn and bn are equivalent by design, so the ranking cannot order them; the line names that pair.
    assert "P(torch_bn > bn)" in found[4].line or "P(bn > torch_bn)" in found[4].line
    assert found[1].effect == pytest.approx((0.15 - 0.04) * 100) and found[1].seeds == "3 vs 3"
    assert found[2].line.startswith("supported: supported for 14 of 14 comparisons") and len(found[2].details) == 14
    table = present.claims_table(list(found.values()))
    assert list(table.columns) == ["claim", "test", "verdict", "effect [95 % CI]", "seeds"]
    assert table.loc[0, "effect [95 % CI]"].startswith("+11.00 pts [")


def test_claim1_augmentation_reverse_and_absent_effects():
    worse = group(AUG_OFF, spread(0.97), train=[0.98] * 3)  # gap 1 point off against 4 on
    on = group(AUG_ON, spread(0.96), train=[1.0] * 3)
    assert by_id(sweep(aug_off=worse, sgd_torch_bn=on))[1].verdict == "contradicted"
    noisy_off = group(AUG_OFF, [0.90, 0.95, 0.93], train=[0.99, 0.99, 0.99])
    noisy_on = group(AUG_ON, [0.93, 0.91, 0.96], train=[1.0, 0.98, 0.99])
    c = by_id(sweep(aug_off=noisy_off, sgd_torch_bn=noisy_on))[1]
    assert c.verdict == "inconclusive" and c.ci[0] < 0 < c.ci[1] and "point estimate favours" in c.line


def _accuracies(groups: list[Group], row: Row) -> list[float]:
    found = next(g for g in groups if g.config == TrainConfig(**row.selector()))
    return [float(v) for v in found.finished[ACCURACY]]


def test_claim2_holm_runs_over_all_comparisons_and_one_counter_example_contradicts():
    # gn and nn with Adam: 1.2 points below SGD lr 0.1, noisy: raw p about 0.03 each, which Holm over all
    # 14 comparisons doubles (the two largest of 14 p-values: x2, then x1 kept non-decreasing).
    groups = sweep(adam_gn=group(ADAM["gn"], spread(0.848, 0.004)), adam_nn=group(ADAM["nn"], spread(0.828, 0.004)))
    c = by_id(groups)[2]
    raw = {
        (n, alt): stats.welch_p(_accuracies(groups, SGD[n]), _accuracies(groups, rows[n]))
        for alt, rows in (("Adam lr 1e-4", ADAM), ("SGD lr 1e-4", SLOW_SGD))
        for n in NORM_NAMES
    }
    adjusted = stats.holm(raw)
    gn = ("gn", "Adam lr 1e-4")
    assert raw[gn] < 0.05 <= adjusted[gn]  # significant alone, not after the correction
    line = next(d for d in c.details if d.startswith("gn, SGD lr 0.1 minus Adam"))
    assert f"Holm-adjusted p = {adjusted[gn]:.3g}" in line and line.endswith("inconclusive")
    assert c.verdict == "inconclusive" and "supported for 12 of 14 comparisons (2 inconclusive)" in c.line
    assert c.p == pytest.approx(max(adjusted.values()))
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


def test_claim4_supports_a_ranking_only_when_every_adjacent_pair_is_told_apart():
    separated = sweep(sgd_bn=group(SGD["bn"], spread(0.95, 0.001)))  # 1 point under torch_bn, seeds apart
    c = by_id(separated)[4]
    assert c.verdict == "supported" and c.line.startswith("supported: ranking torch_bn > bn > in")
    assert len(c.details) == 6 and c.unit == claims.PROBABILITY and c.ci[0] > 0.5
    # bin's seeds straddle in's: the ranking is inconclusive and the line names that pair.
    mixed = sweep(sgd_bn=group(SGD["bn"], spread(0.95, 0.001)), sgd_bin=group(SGD["bin"], [0.915, 0.935, 0.95]))
    c = by_id(mixed)[4]
    assert c.verdict == "inconclusive" and ("P(in > bin)" in c.line or "P(bin > in)" in c.line)


def test_claim5_interaction_supported_contradicted_and_simple_effects_reported():
    c = by_id(sweep())[5]
    assert c.verdict == "supported" and c.effect == pytest.approx(((0.80 - 0.95) - (0.94 - 0.945)) * 100)
    assert c.details[0].startswith("bn batch 8 minus 128 = -15.00") and c.details[1].startswith("gn batch 8 minus 128")
    flipped = sweep(
        bn8=group(BATCH[("bn", 8)], spread(0.94)),
        bn128=group(BATCH[("bn", 128)], spread(0.945)),
        gn8=group(BATCH[("gn", 8)], spread(0.80)),
        gn128=group(BATCH[("gn", 128)], spread(0.95)),
    )
    assert by_id(flipped)[5].verdict == "contradicted"
    flat = sweep(bn8=group(BATCH[("bn", 8)], [0.90, 0.95, 0.93]), gn8=group(BATCH[("gn", 8)], [0.93, 0.96, 0.94]))
    c = by_id(flat)[5]
    assert c.verdict == "inconclusive" and c.ci[0] < 0 < c.ci[1]


@pytest.mark.parametrize(
    ("step", "verdict", "said"),
    [
        (spread(0.93), "supported", "+3.00 points"),  # cosine (torch_bn at 96 %) clearly better
        (spread(0.99), "contradicted", "-3.00 points"),
        (spread(0.955, 0.02), "inconclusive", "the point estimate favours cosine schedule"),  # noisy, half a point
    ],
)
def test_claim6_cosine_against_step(step, verdict, said):
    c = by_id(sweep(step=group(STEP, step)))[6]
    assert c.verdict == verdict and said in c.line, c.line
    assert c.line.startswith(f"{verdict}: test accuracy, cosine minus step = ")


def test_bad_arguments_are_refused_and_the_method_text_follows_them():
    with pytest.raises(ValueError, match="alpha must lie in"):
        check_claims(sweep(), alpha=0.7)
    assert "±2 accuracy points" in present.method_text(margin=0.02) and "±1 accuracy point;" in present.METHOD_TEXT
    assert "90 % interval lies inside the margin" in present.METHOD_TEXT


# --- what the sweep lacks ---------------------------------------------------------------------------------------


def test_a_missing_configuration_is_not_testable_and_named():
    c = by_id(sweep(aug_off=None, step=None))
    assert c[1].verdict == "not testable"
    assert c[1].line == "not testable in this sweep: missing torch_bn-sgd-lr0.1-noaug-bs32 (augmentation off)"
    assert c[6].line == (
        "not testable in this sweep: missing torch_bn-sgd-lr0.1-aug-bs32, scheduler=step (step schedule)"
    )
    assert math.isnan(c[1].effect) and present.claims_table([c[1]]).loc[0, "effect [95 % CI]"] == "–"


def test_too_few_seeds_is_inconclusive_and_names_the_side():
    c = by_id(sweep(step=group(STEP, [0.93])))[6]
    assert c.verdict == "inconclusive"
    assert c.line == "inconclusive: needs seeds >= 2 (step schedule has 1 finished)"
    c = by_id(sweep(sgd_gn=group(SGD["gn"], [0.9])))[4]
    assert c.line.startswith("inconclusive: needs seeds >= 2 (gn SGD lr 0.1 has 1")


def test_a_configuration_with_a_failed_seed_is_tested_on_the_rest_and_says_so():
    c = by_id(sweep(aug_off=group(AUG_OFF, spread(0.85, n=2), train=[1.0, 1.0], failed=1)))[1]
    assert c.verdict == "supported" and c.seeds == "2 vs 3"
    assert "(seeds finished/planned: augmentation off: 2/3; tested on the finished ones)" in c.line


def test_configurations_differing_in_epochs_are_never_pooled():
    short = group(SGD["bn"], spread(0.70), epochs=5)
    groups = sweep() + [short]
    c = by_id(groups)[3]
    assert c.verdict == "not testable"
    assert "2 configurations match bn-sgd-lr0.1-aug-bs32 (epochs=50 / epochs=5)" in c.line
    assert "never pooled" in c.line
    assert by_id(groups)[1].verdict == "supported"  # claims that do not use bn are unaffected

"""analysis/ on hand-made run frames: configurations are never pooled, failed and missing seeds
are named, statistics agree with scipy's own results, and the study's tables and figures ask
only for configurations the study preset plans."""

import dataclasses
import math

import pandas as pd
import pytest
from scipy import stats as sps

from analysis import present, stats
from analysis.figures import FIGURES
from analysis.groups import build_groups
from analysis.runs import FINAL_METRICS, without_seed
from analysis.tables import ACCURACY, MAIN_TABLE, TABLES, build_table, ordered, sweep_table
from resnorm import names
from resnorm.config import TrainConfig
from resnorm.sweep import plan

TABLE3 = next(t for t in TABLES if t.id == MAIN_TABLE)


def run(run_id, status="FINISHED", accuracy=0.9, error="", **fields):
    """One child run as analysis.runs.children returns it."""
    cfg = TrainConfig(**fields)
    record = {
        "run_id": run_id,
        "run_name": cfg.run_name(),
        "status": status,
        "start_time": len(run_id),
        "error": error,
        "device": "cpu",
        "speed": "plain",
        "versions": "",
        "splits": "train=1257 val=270 test=270",
        **dataclasses.asdict(cfg),
        "mode": "auto",
        "config": without_seed(cfg),
        names.BEST_EPOCH: 1.0,
    }
    for key in FINAL_METRICS:
        record[key] = accuracy if status == "FINISHED" else math.nan
    return record


def frame(*records):
    return pd.DataFrame.from_records(records)


def test_statistics_agree_with_scipy_on_known_inputs():
    values = [0.90, 0.92, 0.95]
    low, high = stats.t_interval(values)
    half = 4.302652729911275 * pd.Series(values).std(ddof=1) / math.sqrt(3)  # t(0.975, df=2)
    assert (low, high) == pytest.approx((sum(values) / 3 - half, sum(values) / 3 + half))
    assert (low, high) == pytest.approx(sps.t.interval(0.95, 2, loc=sum(values) / 3, scale=sps.sem(values)))
    ci = sps.binomtest(243, 270).proportion_ci(0.95, method="exact")
    assert stats.binomial_interval(0.9, 270) == pytest.approx((ci.low, ci.high))
    a, b = [0.91, 0.93, 0.92], [0.80, 0.86, 0.83, 0.85]
    assert stats.welch_p(a, b) == pytest.approx(sps.ttest_ind(a, b, equal_var=False).pvalue)
    # Holm by hand: sorted 0.005*4, 0.01*3, 0.03*2, then 0.04*1 raised to stay non-decreasing.
    adjusted = stats.holm({"w": 0.01, "x": 0.04, "y": 0.03, "z": 0.005})
    assert adjusted == pytest.approx({"z": 0.02, "w": 0.03, "y": 0.06, "x": 0.06})
    assert stats.holm({"a": 0.6, "b": 0.5}) == {"a": 1.0, "b": 1.0}


def test_letters_share_a_letter_only_within_groups_that_cannot_be_told_apart():
    means = {"A": 0.95, "B": 0.93, "C": 0.90, "D": 0.50}
    adjusted = {
        ("A", "B"): 0.3,
        ("A", "C"): 0.01,
        ("B", "C"): 0.2,
        ("A", "D"): 0.001,
        ("B", "D"): 0.001,
        ("C", "D"): 0.001,
    }
    assert stats.letters(means, adjusted) == {"A": "a", "B": "ab", "C": "b", "D": "c"}


def test_runs_that_differ_only_in_epochs_become_two_rows_never_one():
    runs = frame(
        *(run(f"e5s{s}", accuracy=0.5 + s / 100, norm="bn", epochs=5, seed=s) for s in range(2)),
        *(run(f"e50s{s}", accuracy=0.98 - s / 100, norm="bn", epochs=50, seed=s) for s in range(2)),
    )
    table = build_table(TABLE3, build_groups(runs, [], "auto"), None)
    labels = {r.label: r for r in table.rows}
    assert set(labels) == {"bn (epochs=5)", "bn (epochs=50)"}
    assert labels["bn (epochs=5)"].mean[ACCURACY] == pytest.approx(0.505)
    assert labels["bn (epochs=50)"].mean[ACCURACY] == pytest.approx(0.975)
    assert "epochs" not in table.fixed and table.fixed["image_size"] == 32
    csv = present.tidy(table)
    assert set(csv[csv["row"] == "bn (epochs=5)"]["run_ids"]) == {"e5s0;e5s1"}


def test_a_failed_seed_is_named_and_its_row_is_not_ranked_as_complete():
    planned = plan("custom", "norm=bn,gn,ln", seeds=3)
    runs = frame(
        *(run(f"bn{s}", accuracy=0.90 + s / 100, norm="bn", seed=s) for s in range(3)),
        *(run(f"gn{s}", accuracy=0.70 + s / 100, norm="gn", seed=s) for s in range(3)),
        run("ln0", accuracy=0.95, norm="ln", seed=0),
        run("ln1", status="FAILED", error="loss became nan at epoch 2", norm="ln", seed=1),
        run("ln2x", status="RUNNING", norm="ln", seed=2),
    )
    groups = build_groups(runs, planned, "auto")
    table = sweep_table(groups, None)
    rows = {r.label: r for r in table.rows}
    assert [r.group.seeds_text() for r in table.rows] == ["3/3", "3/3", "1/3"]
    assert not rows["norm=ln"].group.complete
    assert not table.tested and all(r.letters == "" for r in table.rows), "no letters across a whole sweep"
    study = {r.label: r for r in build_table(TABLE3, groups, None).rows}  # the study's Table 3 tests its rows
    assert study["ln"].letters == "" and study["bn"].letters == "a" and study["gn"].letters == "b"
    # The incomplete row is ranked last although its one seed is the best.
    assert [r.label for r in ordered(table)] == ["norm=bn", "norm=gn", "norm=ln"]
    lines = present.unfinished(table)
    assert "norm=ln, seed 1: FAILED (run ln1): loss became nan at epoch 2" in lines
    assert any(line.startswith("norm=ln, seed 2: RUNNING (run ln2x)") for line in lines)
    shown = present.display(table)
    assert shown.loc["norm=ln", "seeds"] == "1/3 †"
    assert shown.loc["norm=bn", "test acc. %, mean ± sd"] == "91.00 ± 1.00"
    low, high = stats.t_interval([0.90, 0.91, 0.92])
    assert shown.loc["norm=bn", "95 % CI"] == f"[{low * 100:.1f}, {high * 100:.1f}]"
    # One seed: the binomial interval of the 270 test images.
    low, high = stats.binomial_interval(0.95, 270)
    assert shown.loc["norm=ln", "95 % CI"] == f"[{low * 100:.1f}, {high * 100:.1f}]"


def test_a_planned_configuration_without_runs_is_missing_and_a_table_row_outside_the_sweep_is_listed():
    planned = plan("custom", "norm=bn,gn", seeds=2)
    runs = frame(run("bn0", norm="bn", seed=0), run("bn1", norm="bn", seed=1))
    groups = build_groups(runs, planned, "auto")
    gn = next(g for g in groups if g.config.norm == "gn")
    assert [(p["seed"], p["status"], p["run_id"]) for p in gn.problems] == [(0, "MISSING", ""), (1, "MISSING", "")]
    table = build_table(TABLE3, groups, None)
    assert [r.label for r in table.rows] == ["bn", "gn"]
    assert "ln (ln-sgd-lr0.1-aug-bs32)" in table.missing
    assert "gn, seed 0: MISSING (no run): no run was started" in present.unfinished(table)


def test_every_table_row_and_figure_series_is_a_configuration_the_study_plans():
    study = {without_seed(c) for c in plan("study")}
    rows = [row for spec in TABLES for row in spec.rows] + [s for spec in FIGURES for s in spec.series]
    assert len(rows) > 40
    for row in rows:
        assert without_seed(TrainConfig(**row.selector())) in study, row
    # Every configuration of the study appears in some table.
    tabled = {without_seed(TrainConfig(**row.selector())) for spec in TABLES for row in spec.rows}
    assert len(tabled) >= 20


def test_latex_escapes_what_latex_would_read_as_markup():
    assert present.latex_escape("torch_bn 98% & ± #1") == r"torch\_bn 98\% \& $\pm$ \#1"


@pytest.mark.slow
def test_the_sweep_is_found_where_it_is_and_re_planned_from_its_params(mlflow_env, monkeypatch):
    from mlflow.tracking import MlflowClient

    from analysis.runs import NoSweep, find_sweep, sweep_plan

    client = MlflowClient()
    other = client.create_experiment("other")

    def sweep(experiment_id, **params):
        run = client.create_run(experiment_id, tags={names.TAG_SWEEP: "true", names.TAG_PRESET: "custom"})
        for k, v in params.items():
            client.log_param(run.info.run_id, k, v)
        client.set_terminated(run.info.run_id)
        return client.get_run(run.info.run_id)

    # As `mlflow run` logs them: empty strings shell-quoted.
    in_default = sweep("0", preset="custom", grid="norm=bn,gn", seeds="2", epochs="1", lr="''", mode="plain")
    later = sweep(other, preset="custom", grid="norm=ln", seeds="1")
    assert find_sweep(client).info.run_id == later.info.run_id  # the latest of any experiment
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "0")  # launched in Default, as `mlflow run` without a name
    assert find_sweep(client).info.run_id == in_default.info.run_id
    assert find_sweep(client, experiment="other").info.run_id == later.info.run_id
    with pytest.raises(NoSweep, match="there is no experiment 'resnorm'"):
        find_sweep(client, experiment="resnorm")
    planned = sweep_plan(client, in_default)
    configs, mode = planned.configs, planned.mode
    assert planned.source == "re-planned from the sweep's params"
    assert mode == "plain" and [(c.norm, c.seed, c.epochs, c.lr) for c in configs] == [
        ("bn", 0, 1, 0.1),
        ("bn", 1, 1, 0.1),
        ("gn", 0, 1, 0.1),
        ("gn", 1, 1, 0.1),
    ]


def test_a_log_axis_labels_few_minor_ticks_and_none_across_a_decade():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from analysis.figures import FewMinorLabels

    def minor_labels(low, high):
        fig = Figure()
        ax = fig.subplots()
        ax.plot(range(10), [low + (high - low) * i / 9 for i in range(10)])
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(FewMinorLabels())
        FigureCanvasAgg(fig).draw()
        bottom, top = ax.get_ylim()
        return [
            t.get_text()
            for t in ax.yaxis.get_ticklabels(minor=True)
            if t.get_text() and bottom <= t.get_position()[1] <= top
        ]

    assert minor_labels(0.62, 0.95) == ["0.7", "0.8", "0.9"]  # plain numbers, not 7 x 10^-1
    assert len(minor_labels(0.3, 2.2)) <= 4  # never all eight of 0.3 ... 2
    assert minor_labels(0.05, 2.3) == []  # the major ticks (0.1, 1) say enough

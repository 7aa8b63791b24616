"""`analyze` in this process on sweeps written straight into a real MLflow store (the runs a sweep
would have logged, without training them): the report holds only itself and all of it, states the
study's claims, reports against the sweep's own plan, and compiles as LaTeX whatever its text holds.
(tests/test_analysis_e2e.py runs the real thing: sweeps, `mlflow run -e analyze`, a subprocess.)"""

import json
import shutil
import subprocess
import time

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from resnorm import names
from resnorm.config import TrainConfig
from resnorm.sweep.planner import child_name, config_label, plan, varying
from tests.conftest import command, run_command

pytestmark = pytest.mark.slow  # every test builds a store and runs analyze (seconds each)

SCORES = [names.final_metric(s, m) for s in ("train", "val", "test") for m in names.SCORES]


def fake_sweep(
    client, configs, accuracy, failed_early=(), preset="custom", grid="", seeds=1, log_plan=True, plan_edit=None
) -> str:
    """A FINISHED sweep of ``configs`` as the runner logs it (params, tags, sweep.json), each child
    with ``accuracy(cfg)`` and short curves; children in ``failed_early`` FAILED before their params,
    as a sweep's children did before it made them with their params. ``plan_edit``: what becomes of
    sweep.json's list of configurations before it is logged. Returns the parent's run id."""
    exp = client.get_experiment_by_name(names.EXPERIMENT)
    exp_id = exp.experiment_id if exp else client.create_experiment(names.EXPERIMENT)
    parent = client.create_run(
        exp_id, run_name=f"sweep-{preset}", tags={names.TAG_SWEEP: "true", names.TAG_PRESET: preset}
    )
    pid = parent.info.run_id
    client.log_batch(
        pid, params=[Param("preset", preset), Param("grid", grid), Param("seeds", str(seeds)), Param("mode", "auto")]
    )
    fields = varying(configs)
    entries = [
        {"name": child_name(c, seeds, fields), "label": config_label(c, fields), "config": c.__dict__} for c in configs
    ]
    if log_plan:
        listed = plan_edit(entries) if plan_edit else entries
        client.log_dict(
            pid, {"preset": preset, "seeds": seeds, "mode": "auto", "configurations": listed}, names.SWEEP_PLAN
        )
    now = int(time.time() * 1000)
    for cfg, entry in zip(configs, entries):
        run = client.create_run(
            exp_id, run_name=entry["name"], tags={MLFLOW_PARENT_RUN_ID: pid, names.TAG_CONFIG: entry["label"]}
        )
        rid = run.info.run_id
        if cfg in failed_early:
            client.set_tag(rid, names.TAG_ERROR, "cannot read image /data/birds/train/owl/17.jpg: truncated")
            client.set_terminated(rid, "FAILED")
            continue
        acc = accuracy(cfg)
        metrics = [Metric(k, acc, now, 0) for k in SCORES] + [Metric(names.BEST_EPOCH, 2.0, now, 0)]
        metrics += [Metric(k, 0.5, now, e) for e in (1, 2) for k in names.EPOCH_METRICS]
        params = [Param(k, v) for k, v in cfg.as_params().items()] + [Param("mode", "auto")]
        client.log_batch(rid, metrics=metrics, params=params)
        client.set_tag(rid, names.TAG_SPLIT_SIZES, "train=1257 val=270 test=270")
        client.set_terminated(rid, "FINISHED")
    client.set_terminated(pid, "FINISHED")
    return pid


def analyze(pid, out, *extra):
    run_command(command("analyze"), ["--sweep-run-id", pid, "--out", str(out), *extra])
    client = MlflowClient()
    (run,) = client.search_runs(
        [client.get_run(pid).info.experiment_id],
        f"tags.`{names.TAG_ANALYSIS_OF}` = '{pid}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return run


def logged_files(client, run_id, path="report") -> set[str]:
    found = set()
    for f in client.list_artifacts(run_id, path):
        found |= logged_files(client, run_id, f.path) if f.is_dir else {f.path}
    return found


def test_analyze_logs_only_the_files_it_wrote(mlflow_env, tmp_path, capsys):
    client = MlflowClient()
    configs = plan("custom", "norm=bn,gn", seeds=2)
    pid = fake_sweep(client, configs, lambda c: 0.9 + c.seed / 100, grid="norm=bn,gn", seeds=2)
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    (out / "my-notes.txt").write_text("not the report")
    (out / "figures" / "figure9.png").write_bytes(b"an earlier sweep's figure")
    run = analyze(pid, out)
    logged = logged_files(client, run.info.run_id)
    assert "report/my-notes.txt" not in logged and "report/figures/figure9.png" not in logged
    assert {"report/report.html", "report/report.md", "report/report.tex", "report/tables/sweep.csv"} <= logged
    assert (out / "my-notes.txt").exists(), "a user's file is left where it was"
    printed = capsys.readouterr().out
    assert "Downloading artifacts" not in printed and "report: " in printed


def test_a_child_that_failed_before_its_params_is_named_with_its_run_and_reason(mlflow_env, tmp_path, capsys):
    client = MlflowClient()
    configs = plan("custom", "norm=bn,gn", seeds=1)
    pid = fake_sweep(client, configs, lambda c: 0.9, failed_early=[configs[1]], grid="norm=bn,gn")
    failed = next(
        r
        for r in client.search_runs([client.get_run(pid).info.experiment_id], f"tags.mlflow.parentRunId = '{pid}'")
        if r.info.status == "FAILED"
    )
    analyze(pid, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"FAILED (run {failed.info.run_id}): cannot read image /data/birds/train/owl/17.jpg" in md
    assert "MISSING (no run)" not in md


def test_headline_keys_are_unique_and_within_mlflows_limit(mlflow_env, tmp_path, capsys):
    client = MlflowClient()
    long = "/data/" + "a-very-long-folder-name/" * 12
    configs = [
        TrainConfig(norm="bn", data=long + "x"),
        TrainConfig(norm="bn", data=long + "y"),
    ]  # one label once cleaned
    pid = fake_sweep(client, configs, lambda c: 0.8 if c.data.endswith("x") else 0.9)
    run = analyze(pid, tmp_path / "out")
    keys = [k for k in run.data.metrics if k.startswith("sweep/") and k.endswith("test_accuracy_mean")]
    assert len(keys) == 2 and all(len(k) <= 250 for k in run.data.metrics), keys
    assert sorted(run.data.metrics[k] for k in keys) == [0.8, 0.9]


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="needs pdflatex (texlive); .ci/run installs it")
def test_the_latex_report_compiles_whatever_its_text_holds(mlflow_env, tmp_path, capsys):
    client = MlflowClient()
    configs = [TrainConfig(norm=n, data="/data/鳥の写真/birds_$5 & 100% {x}") for n in ("bn", "gn")]
    pid = fake_sweep(client, configs, lambda c: 0.9)
    analyze(pid, tmp_path / "out")
    assert "鳥の写真" in (tmp_path / "out" / "report.md").read_text(), "Markdown and HTML keep the text as it is"
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "report.tex"],
        cwd=tmp_path / "out",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Table 2: Table" not in (tmp_path / "out" / "report.tex").read_text()


def test_the_report_states_each_claim_and_the_tables_keep_their_letters_to_the_study(mlflow_env, tmp_path, capsys):
    """Six seeds of every Table 2 and Table 3 norm: bn within 0.1 point of torch_bn (claim 3 is
    supported by the equivalence test, and claim 4 calls them tied), the other claims not testable without
    their configurations."""
    client = MlflowClient()
    configs = plan("custom", "norm=torch_bn,bn,in,bin,ln,gn,nn", seeds=6)  # 3 cannot tie a pair at alpha / 21
    offsets = {"torch_bn": 0.0, "bn": 0.001, "in": -0.05, "bin": -0.01, "ln": -0.1, "gn": -0.2, "nn": -0.3}
    pid = fake_sweep(
        client,
        configs,
        lambda c: 0.9 + offsets[c.norm] + c.seed / 1000,
        grid="norm=torch_bn,bn,in,bin,ln,gn,nn",
        seeds=6,
    )
    run = analyze(pid, tmp_path / "out")
    printed = capsys.readouterr().out
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## The study's claims" in md
    assert "**3. The hand-written bn matches torch.nn.BatchNorm2d (Table 2)**: supported: " in md
    assert "**1. Augmentation reduces overfitting (Table 1)**: not testable in this sweep: missing" in md
    # bn and torch_bn 0.1 point apart: tied within the margin, which answers their place in the ranking.
    assert (
        "**4. The seven norms rank in a clear order (Table 3)**: supported: ranking bn ≈ torch_bn > bin > in > ln > "
        "gn > nn (> better, ≈ tied within ±1 accuracy point); every adjacent pair is decided"
    ) in md
    assert "TOST" in md and "Holm" in md and "margin of ±1 accuracy point" in md
    assert "3. The hand-written bn matches torch.nn.BatchNorm2d (Table 2): supported" in printed
    sweep_csv = (tmp_path / "out" / "tables" / "sweep.csv").read_text()
    table3_csv = (tmp_path / "out" / "tables" / "table3.csv").read_text()
    assert ",a," in table3_csv and ",a," not in sweep_csv  # letters in the study's tables only
    assert run.info.status == "FINISHED"
    # The margin is the analyze parameter's: at 0.05 points, 0.1 point apart is no longer shown equivalent.
    analyze(pid, tmp_path / "narrow", "--margin", "0.05")
    assert (
        "**3. The hand-written bn matches torch.nn.BatchNorm2d (Table 2)**: supported"
        not in (tmp_path / "narrow" / "report.md").read_text()
    )


def test_the_report_follows_the_plan_the_sweep_logged_not_todays_presets(mlflow_env, tmp_path, capsys):
    """A sweep logged its plan: a configuration the preset no longer has (here one the plan names
    by hand) is reported as planned; without the logged plan analyze re-plans and says so."""
    client = MlflowClient()
    configs = [TrainConfig(norm="bn", epochs=7), TrainConfig(norm="gn", epochs=7)]
    pid = fake_sweep(client, configs, lambda c: 0.9, preset="quick")  # the quick preset has 7 norms at 15 epochs
    analyze(pid, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "**plan**: sweep.json" in md and "2 of 2 planned seeds finished" in md
    plan_file = client.download_artifacts(pid, names.SWEEP_PLAN, str(tmp_path))
    assert [c["name"] for c in json.loads(open(plan_file).read())["configurations"]] == [
        "bn-sgd-lr0.1-aug-bs32",
        "gn-sgd-lr0.1-aug-bs32",
    ]
    old = fake_sweep(client, configs, lambda c: 0.9, preset="quick", log_plan=False)
    analyze(old, tmp_path / "old")
    md = (tmp_path / "old" / "report.md").read_text()
    assert "**plan**: re-planned from the sweep's params" in md and "not in the sweep's plan" in md


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        (lambda entries: [], "does not hold together (it plans nothing)"),
        (lambda entries: entries[:2], "leaves out 2 of its runs (e.g. ln-sgd-lr0.1-aug-bs32 seed 0)"),
        (lambda entries: entries + entries, "does not hold together (it lists 4 configuration(s) twice)"),
        (
            lambda entries: [{**entries[0], "config": {**entries[0]["config"], "epochs": 2.5}}, *entries[1:]],
            "does not hold together (a configuration cannot be read: epochs=2.5 is not an int)",
        ),
    ],
    ids=["empty", "a subset", "doubled", "epochs 2.5"],
)
def test_a_plan_that_does_not_hold_together_is_said_on_one_line_and_not_followed(
    edit, said, mlflow_env, tmp_path, capsys
):
    """sweep.json was once trusted blindly: an empty plan gave "4 of 0 planned runs finished", a subset "4 of 2",
    a doubled list "8 of 8" from 4 runs, and non-integer epochs passed. The report now follows the plan the
    sweep's params give, and says why on one warning line."""
    client = MlflowClient()
    configs = plan("custom", "norm=bn,gn,ln,nn", seeds=1)
    pid = fake_sweep(client, configs, lambda c: 0.9, grid="norm=bn,gn,ln,nn", plan_edit=edit)
    analyze(pid, tmp_path / "out")
    captured = capsys.readouterr()
    warnings_ = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings_) == 1 and said in warnings_[0], captured.err
    assert "reported against the plan its params give" in warnings_[0]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "4 of 4 planned seeds finished" in md and said in md
    assert "(4 of 4 planned runs of sweep" in captured.out


def test_a_plan_that_holds_together_is_followed_without_a_word(mlflow_env, tmp_path, capsys):
    client = MlflowClient()
    configs = plan("custom", "norm=bn,gn", seeds=2)
    pid = fake_sweep(client, configs, lambda c: 0.9 + c.seed / 100, grid="norm=bn,gn", seeds=2)
    analyze(pid, tmp_path / "out")
    assert "warning:" not in capsys.readouterr().err
    assert "**plan**: sweep.json\n" in (tmp_path / "out" / "report.md").read_text()

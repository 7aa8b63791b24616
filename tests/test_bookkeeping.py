"""Round 5's fourteen causes (issue 31), each a test that failed before its fix: who may run a sweep's
parent (a lease the store arbitrates), which runs a job may end or take, rounds logged once and whole, a
missing child named, scores checked where they enter the analysis, analyze bounded, a resumed plan
checked, Markdown escaped, the re-run command quoted, duplicates named. In this process where the
process is not the point; real sweeps forked from it where a sweep must be live."""

from __future__ import annotations

import json
import math
import re
import shlex
import time
from dataclasses import replace
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_PROJECT_ENTRY_POINT

from analysis.adaptive import next_round
from resnorm import names
from resnorm.config import Launch
from resnorm.errors import RunBusy
from resnorm.sweep import lease
from resnorm.sweep.child import Child, SweepContext
from resnorm.sweep.planner import plan
from resnorm.sweep.record import earlier_rounds, plan_record, planned_children
from resnorm.sweep.runner import SweepIncomplete, _check_stored
from resnorm.sweep.spec import SweepSpec
from tests.conftest import TINY, one_line
from tests.sweeps import TINY_SWEEP, Case, start_fork_server
from tests.test_report import SCORES, analyze, fake_sweep

pytestmark = pytest.mark.slow  # each builds a store (seconds); the lease and quoting tests are quick


def _experiment(client) -> str:
    exp = client.get_experiment_by_name(names.EXPERIMENT)
    return exp.experiment_id if exp else client.create_experiment(names.EXPERIMENT)


# 1. A sweep's parent is held through the store, wherever the other sweep runs.


def test_a_second_sweep_from_another_home_into_a_live_parent_is_refused(tmp_path):
    """The lock lived under RESNORM_HOME: a sweep from another home (another user, another machine on the team
    server) trained the children again and both ended FINISHED."""
    start_fork_server()
    case = Case.new(tmp_path / "store")
    args = ["--preset", "custom", "--grid", "norm=bn", *TINY_SWEEP[:-4], "--epochs", "40", "--parallel", "1"]
    first = case.start(args)
    try:
        deadline = time.monotonic() + 300
        while not case.parents() or not _children(case):
            assert time.monotonic() < deadline, case.log()[-2000:]
            time.sleep(0.2)
        parent = case.parents()[0].info.run_id
        second = case.sweep(args, parent=parent, home=str(tmp_path / "another-home"))
        assert second == 2, case.log()[-2000:]
        said = f"error: run {parent} is a sweep that another live process (pid {first}) is running"
        assert said in case.log(), case.log()[-2000:]
        assert len(_children(case)) == 1, "the refused sweep started a child"
    finally:
        import os
        import signal

        os.killpg(first, signal.SIGTERM)
        case.wait(first)


def _children(case: Case) -> list:
    client = case.client
    return [
        r
        for e in client.search_experiments()
        for r in client.search_runs([e.experiment_id], "tags.mlflow.parentRunId != ''")
    ]


def test_the_lease_is_the_stores_whoever_holds_it_and_wherever(mlflow_env):
    client = MlflowClient()
    run_id = client.create_run(_experiment(client), tags={names.TAG_SWEEP: "true"}).info.run_id
    held = lease.acquire(client, run_id)
    with pytest.raises(RunBusy, match=r"another live process \(pid \d+\)"):
        lease.acquire(client, run_id)  # this very process holds it: alive
    held.release()
    again = lease.acquire(client, run_id)  # released: free at once, attempt 2
    assert sorted(lease.attempts(client.get_run(run_id).data.params)) == [1, 2]
    again.release()
    # A holder on another machine: alive while its heartbeat is fresh, expired once it is stale.
    elsewhere = lease.Holder("gpu-7", 4242, 1.0, "gpu-7 another-boot pid:[1]")
    client.log_param(run_id, f"{lease.ATTEMPT_PREFIX}3", elsewhere.text())
    client.set_tag(run_id, lease.LEASE_TAG, json.dumps({"attempt": 3, "beat": time.time()}))
    with pytest.raises(RunBusy, match=r"pid 4242 on gpu-7"):
        lease.acquire(client, run_id)
    stale = time.time() - lease.STALE_SECONDS - 1
    client.set_tag(run_id, lease.LEASE_TAG, json.dumps({"attempt": 3, "beat": stale}))
    lease.acquire(client, run_id).release()
    # Claimed a moment ago and not yet beating: held. Two sweeps claiming one attempt: the store keeps the
    # first; the other is refused, naming it.
    client.log_param(run_id, f"{lease.ATTEMPT_PREFIX}5", replace(elsewhere, claimed=time.time()).text())
    with pytest.raises(RunBusy, match="pid 4242 on gpu-7"):
        lease.acquire(client, run_id)
    with pytest.raises(RunBusy, match="pid 4242 on gpu-7"):
        lease.claim(client, run_id, 5, lease.Holder.me())
    assert lease.attempts(client.get_run(run_id).data.params)[5].pid == 4242


# 2-4. A job takes and ends only runs made for it.


def test_analyze_refuses_an_inherited_run_id_and_leaves_that_run_as_it_was(mlflow_env, tmp_path, monkeypatch, capsys):
    """analyze took an inherited MLFLOW_RUN_ID (here the sweep parent's) as its run: it renamed the parent,
    logged the report into it, and turned its FAILED into FINISHED."""
    client = MlflowClient()
    pid = fake_sweep(client, plan("custom", "norm=bn", seeds=1), lambda c: 0.9, grid="norm=bn")
    client.set_terminated(pid, "FAILED")
    before = client.get_run(pid)
    monkeypatch.setenv("MLFLOW_RUN_ID", pid)
    one_line(
        "analyze",
        ["--sweep-run-id", pid, "--out", str(tmp_path / "out")],
        capsys,
        f"MLFLOW_RUN_ID={pid}",
        "not a run made for this analyze",
    )
    after = client.get_run(pid)
    assert (after.info.status, after.info.run_name, after.data.tags) == (
        "FAILED",
        before.info.run_name,
        before.data.tags,
    )
    assert not any(f.path == "report" for f in client.list_artifacts(pid))


def test_a_refused_rerun_leaves_a_finished_sweep_finished(mlflow_env, monkeypatch, capsys):
    """The parent was reopened (RUNNING) before the parameters were checked, so the refusal ended it FAILED."""
    client = MlflowClient()
    pid = fake_sweep(client, plan("custom", "norm=bn", seeds=1), lambda c: 0.9, grid="norm=bn")
    monkeypatch.setenv("MLFLOW_RUN_ID", pid)
    one_line("sweep", ["--preset", "custom", "--grid", "norm=gn", *TINY], capsys, "grid='norm=bn' (now 'norm=gn')")
    after = client.get_run(pid)
    assert after.info.status == "FINISHED" and names.TAG_ERROR not in after.data.tags
    assert not lease.attempts(after.data.params), "a refused sweep claims nothing"


@pytest.mark.parametrize("made", ["a notebook", "another entry point"])
def test_a_refusal_never_ends_a_run_the_job_did_not_make(made, mlflow_env, monkeypatch, capsys):
    """Any refusal ended the run named by MLFLOW_RUN_ID FAILED: a typo on the command line killed a
    notebook's RUNNING run."""
    client = MlflowClient()
    tags = {} if made == "a notebook" else {MLFLOW_PROJECT_ENTRY_POINT: "gradcam"}
    run_id = client.create_run(_experiment(client), tags=tags).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    one_line("train", ["--norm", "batchnorm"], capsys, "'batchnorm' is not one of")
    one_line("sweep", ["--seeds", "2.5"], capsys, "'2.5' is not a whole number")
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and names.TAG_ERROR not in run.data.tags


# 5-7. An adaptive sweep's rounds: logged once and whole; a missing child is named, never a round under way.


def _adaptive_sweep(client, seeds=(1, 2, 3), accuracy=0.9, finished=True) -> tuple[str, list[Child], SweepSpec]:
    """A FINISHED adaptive sweep's round 1 of one configuration (bn, 3 seeds), as the runner logs it."""
    spec = SweepSpec("custom", "norm=bn", None, "local", 1, "", {"seed": "1"}, max_seeds=3)
    children = planned_children(spec, plan("custom", "norm=bn", seeds=3, overrides={"seed": "1"}), 1)
    exp = _experiment(client)
    pid = client.create_run(exp, run_name="sweep-custom", tags={names.TAG_SWEEP: "true"}).info.run_id
    client.log_batch(pid, params=[Param(k, v) for k, v in spec.params(1).items()])
    client.log_dict(pid, plan_record(spec, children, pid, 1), names.SWEEP_PLAN)
    now = int(time.time() * 1000)
    for c in children:
        if c.config.seed not in seeds:
            continue
        rid = client.create_run(exp, run_name=c.name, tags={MLFLOW_PARENT_RUN_ID: pid}).info.run_id
        metrics = [Metric(k, accuracy + c.config.seed / 100, now, 0) for k in SCORES]
        params = [Param(k, v) for k, v in c.config.as_params().items()]
        client.log_batch(rid, metrics=metrics, params=params)
        client.set_terminated(rid, "FINISHED")
    if finished:
        client.set_terminated(pid, "FINISHED")
    return pid, children, spec


def _table(client, pid, k=1) -> dict:
    return json.loads(Path(client.download_artifacts(pid, f"rounds/round-{k:02d}.json")).read_text())


def test_a_round_evaluated_again_is_written_once_and_whole(mlflow_env):
    """log_table appended: a round evaluated again by a re-run had 12, then 18 rows for 6 claims, and a table
    torn by a kill blocked every later resume with a pandas ValueError."""
    client = MlflowClient()
    pid, children, spec = _adaptive_sweep(client)
    next_round(client, pid, children, spec)
    next_round(client, pid, children, spec)  # a re-run reads the round it stopped after again
    assert sorted(row[0] for row in _table(client, pid)["data"]) == [1, 2, 3, 4, 5, 6]
    client.log_text(pid, '{"columns": ["claim", "ver', "rounds/round-01.json")  # torn by a kill
    next_round(client, pid, children, spec)
    assert sorted(row[0] for row in _table(client, pid)["data"]) == [1, 2, 3, 4, 5, 6]
    assert {"path": "rounds/round-01.json", "type": "table"} in json.loads(
        client.get_run(pid).data.tags["mlflow.loggedArtifacts"]
    ), "the MLflow UI shows it as a table"
    for key in (names.CLAIMS_DECIDED, names.CHILDREN_PLANNED):
        assert [m.step for m in client.get_metric_history(pid, key)] == [1], key


def test_a_kill_between_a_rounds_two_metrics_loses_neither(mlflow_env):
    """One guard stood for both: a kill after claims_decided lost children_planned for that round for good."""
    client = MlflowClient()
    pid, children, spec = _adaptive_sweep(client)
    client.log_metric(pid, names.CLAIMS_DECIDED, 0, step=1)  # the first metric went out, then the kill
    next_round(client, pid, children, spec)
    assert [(m.step, m.value) for m in client.get_metric_history(pid, names.CHILDREN_PLANNED)] == [(1, 3.0)]
    assert [m.step for m in client.get_metric_history(pid, names.CLAIMS_DECIDED)] == [1]


def test_a_missing_child_is_named_never_taken_for_a_round_under_way(mlflow_env, tmp_path, capsys):
    """One deleted child made the design see no round at all: a live sweep planned nothing and ended FINISHED
    with 2 of 3, and analyze said "no round has ended yet" for every claim of a FINISHED sweep."""
    client = MlflowClient()
    pid, children, spec = _adaptive_sweep(client, seeds=(1, 2))  # seed 3 finished, then was deleted
    ctx = SweepContext(pid, client.get_run(pid).info.experiment_id, "custom", "")
    with pytest.raises(SweepIncomplete, match=r"1 planned children have no FINISHED run .*bn-sgd-lr0.1-aug-bs32-s3"):
        _check_stored(client, ctx, children)
    analyze(pid, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "adaptive, 1 round looked at" in md and "no round has ended yet" not in md
    assert "seed 3: MISSING (no run)" in md and "2 of 3 planned seeds finished" in md


# 8, 13, 14. Scores are checked where they enter the analysis; a seed finished twice is named.


def test_scores_that_are_not_scores_and_seeds_finished_twice_are_named_never_counted(mlflow_env, tmp_path, capsys):
    """A NaN score read as "every seed scored alike" (or crashed analyze in round()), a tampered 1.5 showed as
    103 %, and a second FINISHED run of a seed silently replaced the first."""
    client = MlflowClient()
    configs = plan("custom", "norm=bn,gn,in", seeds=2)
    scores = {"bn": math.nan, "gn": 1.5, "in": 0.9}
    pid = fake_sweep(client, configs, lambda c: scores[c.norm] if c.seed == 0 else 0.8, grid="norm=bn,gn,in", seeds=2)
    kids = {
        r.info.run_name: r
        for r in client.search_runs([client.get_run(pid).info.experiment_id], f"tags.mlflow.parentRunId = '{pid}'")
    }
    first = kids["in-sgd-lr0.1-aug-bs32-s1"]
    copy = client.create_run(first.info.experiment_id, run_name=first.info.run_name, tags={MLFLOW_PARENT_RUN_ID: pid})
    client.log_batch(
        copy.info.run_id,
        metrics=[Metric(k, 0.5, 0, 0) for k in SCORES],
        params=[Param(k, v) for k, v in first.data.params.items()],
    )
    client.set_terminated(copy.info.run_id, "FINISHED")
    analyze(pid, tmp_path / "out")
    err = capsys.readouterr().err
    nan_run, high_run = kids["bn-sgd-lr0.1-aug-bs32-s0"].info.run_id, kids["gn-sgd-lr0.1-aug-bs32-s0"].info.run_id
    assert f"warning: run {nan_run} (bn-sgd-lr0.1-aug-bs32 seed 0) FINISHED, but its scores cannot be used" in err
    assert "is missing or not a number (nan)" in err
    assert (
        f"warning: run {high_run} (gn-sgd-lr0.1-aug-bs32 seed 0) FINISHED, but" in err and "1.5, outside [0, 1]" in err
    )
    used, left = first.info.run_id, copy.info.run_id
    assert (
        f"in-sgd-lr0.1-aug-bs32 seed 1 has 2 FINISHED runs: run {used} (the first to finish) is used, {left} left out"
        in err
    )
    md = (tmp_path / "out" / "report.md").read_text()
    scores_shown = re.sub(r"[0-9a-f]{32}", "<run id>", md)  # a run id may hold "103" or "150"
    assert "4 of 6 planned seeds finished" in md and "103" not in scores_shown and "150" not in scores_shown
    csv = (tmp_path / "out" / "tables" / "sweep.csv").read_text()
    assert copy.info.run_id not in csv


# 9. analyze's calls are bounded like training's.


def test_analyze_gives_up_in_seconds_when_its_server_dies_after_it_started(
    sqlite_server, tmp_path, monkeypatch, capsys
):
    """analyze retried for minutes, silently, once its tracking server had died after its start-up check."""
    import resnorm.tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_server.url)
    mlflow.set_tracking_uri(sqlite_server.url)
    client = MlflowClient(sqlite_server.url)
    pid = fake_sweep(client, plan("custom", "norm=bn", seeds=1), lambda c: 0.9, grid="norm=bn")
    real = resnorm.tracking.check_tracking_server

    def check_then_die(*args, **kwargs):
        real(*args, **kwargs)
        sqlite_server.kill()  # it answered the check, then went away

    monkeypatch.setattr(resnorm.tracking, "check_tracking_server", check_then_die)
    start = time.monotonic()
    one_line(
        "analyze",
        ["--sweep-run-id", pid, "--out", str(tmp_path / "out")],
        capsys,
        f"tracking URI '{sqlite_server.url}' stopped answering during the analysis",
    )
    assert time.monotonic() - start < 60


# 10-12. A resumed plan is checked as analyze checks it; Markdown is escaped; the re-run command is quoted.


def test_a_rerun_does_not_follow_a_plan_that_does_not_hold_together(mlflow_env, capsys):
    """The resume checked round 1 only: a hand-edited sweep.json listing a seed twice trained it twice."""
    client = MlflowClient()
    pid, children, spec = _adaptive_sweep(client)
    record = plan_record(spec, children, pid, 1)
    extra = dict(record["configurations"][0], round=2)
    record["configurations"] += [extra, extra]  # seed 1 again, twice, in a round 2
    client.log_dict(pid, record, names.SWEEP_PLAN)
    assert earlier_rounds(client, pid, spec, children, 1) == children
    err = capsys.readouterr().err
    assert (
        f"warning: the plan sweep.json of sweep {pid} does not hold together (it lists 2 configuration(s) twice)" in err
    )


def test_labels_paths_and_reasons_are_escaped_in_the_markdown_report(mlflow_env, tmp_path, capsys):
    """report.md and tables/*.md wrote them as they were: a path's | shifted a table row, raw HTML passed."""
    client = MlflowClient()
    configs = plan("custom", "norm=bn,gn;data=/data/a|b <script>x</script>,/data/c", seeds=1)
    pid = fake_sweep(client, configs, lambda c: 0.9, grid="norm=bn,gn;data=/data/a|b <script>x</script>,/data/c")
    analyze(pid, tmp_path / "out")
    for path in [tmp_path / "out" / "report.md", *(tmp_path / "out" / "tables").glob("*.md")]:
        text = path.read_text()
        assert "<script>" not in text, path
        for block in text.split("\n\n"):
            rows = [line for line in block.splitlines() if line.startswith("|")]
            cells = {len(line.replace("\\|", "").split("|")) for line in rows}
            assert len(cells) <= 1, (path, rows)


def test_the_rerun_command_quotes_every_word(monkeypatch):
    """The project path was not quoted: a checkout under a folder with a space split the command."""
    import resnorm.sweep.record

    monkeypatch.setattr(resnorm.sweep.record, "PROJECT_ROOT", Path("/home/me/my projects/resnorm"))
    spec = SweepSpec("custom", "norm=bn,gn", 1, "local", 2, "", {"data": "/data/birds & bees"}, Launch())
    record = plan_record(spec, planned_children(spec, plan("custom", "norm=bn,gn"), 1), "abc123", 2)
    words = shlex.split(record["command"])
    assert words[:3] == ["mlflow", "run", "/home/me/my projects/resnorm"]
    assert "data=/data/birds & bees" in words and words[-2:] == ["--run-id", "abc123"]

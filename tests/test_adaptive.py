"""An adaptive sweep (``seeds=auto``) as a user runs it: rounds of real trainings on a real store, the
rounds on the parent run, a sweep killed mid-round and re-run into its parent, and the report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading

import pytest
from mlflow.tracking import MlflowClient

from resnorm import names
from tests.conftest import PYTHON, ROOT, command, run_command, subprocess_env
from tests.test_recovery import wait_for

SWEEP = [PYTHON, str(ROOT / "entrypoints" / "sweep.py")]
# bn and torch_bn on the synthetic set: seeds 1 to 6 all score 100 % after 6 epochs, which is no spread at
# all, so claim 3 cannot be tested and each round doubles their seeds, up to max_seeds: two rounds, known
# in advance, of real trainings (about 2 s each here).
ARGS = [
    "--preset",
    "custom",
    "--grid",
    "norm=bn,torch_bn",
    "--data",
    "synthetic",
    "--epochs",
    "6",
    "--image-size",
    "8",
    "--n",
    "1",
    "--seed",
    "1",
    "--seeds",
    "auto",
    "--max-seeds",
    "6",
    "--parallel",
    "2",
]


@pytest.mark.slow
def test_an_adaptive_sweep_trains_in_rounds_and_a_rerun_resumes_the_round_it_was_in(mlflow_env, tmp_path, capsys):
    client = MlflowClient()
    env = subprocess_env(mlflow_env)
    sweep = subprocess.Popen(
        SWEEP + ARGS,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    seen, started = [], threading.Event()

    def read() -> None:  # every line as it comes: the workers print their epochs here too
        for line in sweep.stdout:
            seen.append(line)
            if line.startswith("round 2: 6 more children"):
                started.set()

    threading.Thread(target=read, daemon=True).start()
    wait_for(started.is_set, 600, "round 2", sweep)
    (parent,) = [
        r
        for e in client.search_experiments()
        for r in client.search_runs([e.experiment_id], f"tags.`{names.TAG_SWEEP}` = 'true'")
    ]
    os.killpg(sweep.pid, signal.SIGKILL)  # mid-round: its workers stop with it, their children resumable
    sweep.wait()
    assert "round 1: 0 of 6 claims decided" in "".join(seen)
    # At once, as a user would: the killed sweep's workers may still be ending their children, and a child
    # the sweep had made but not yet handed to a worker stays RUNNING with no one to end it (no process can
    # after a SIGKILL). The re-run waits for the first and trains the second anew in its own run.
    rerun = subprocess.run(
        SWEEP + ARGS,
        cwd=tmp_path,
        env={**env, "MLFLOW_RUN_ID": parent.info.run_id},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "(round 2): 12 configurations" in rerun.stdout  # the round it was killed in, not a new one
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED" and parent.data.params["seeds"] == "auto"
    kids = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    trained = sorted((k.data.params["norm"], int(k.data.params["seed"])) for k in kids)
    assert trained == sorted((n, s) for n in ("bn", "torch_bn") for s in range(1, 7)), "each child once"
    assert all(k.info.status == "FINISHED" for k in kids)
    # The rounds, on the parent: the plan with each configuration's round, a table per round, a metric by step.
    listed = json.loads(open(client.download_artifacts(parent.info.run_id, names.SWEEP_PLAN, str(tmp_path))).read())
    assert [(c["config"]["seed"], c["round"]) for c in listed["configurations"] if c["config"]["norm"] == "bn"] == [
        (1, 1),
        (2, 1),
        (3, 1),
        (4, 2),
        (5, 2),
        (6, 2),
    ]
    assert listed["design"] == {"max_seeds": 6, "margin": 1.0, "rounds": 2}
    tables = {f.path for f in client.list_artifacts(parent.info.run_id, "rounds")}
    assert tables == {"rounds/round-01.json", "rounds/round-02.json"}
    table = json.loads(
        open(client.download_artifacts(parent.info.run_id, "rounds/round-01.json", str(tmp_path))).read()
    )
    column = {name: i for i, name in enumerate(table["columns"])}
    (claim3,) = [row for row in table["data"] if row[column["claim"]] == 3]
    assert claim3[column["verdict"]] == "inconclusive"
    assert claim3[column["to decide it"]].startswith("unknown: seeds that all scored alike")
    steps = client.get_metric_history(parent.info.run_id, names.CLAIMS_DECIDED)
    assert sorted(m.step for m in steps) == [1, 2]

    run_command(command("analyze"), ["--sweep-run-id", parent.info.run_id, "--out", str(tmp_path / "report")])
    md = (tmp_path / "report" / "report.md").read_text()
    assert "**design**: adaptive, 2 rounds looked at, up to 6 seeds per configuration" in md
    assert "12 of 12 planned seeds finished" in md
    assert "**3. The hand-written bn matches torch.nn.BatchNorm2d (Table 2)**: inconclusive:" in md

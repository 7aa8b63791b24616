"""A sweep tells the truth under faults (issue 26): every child's status is its own, nothing trains
twice, nothing finished is thrown away. Real sweeps, real signals where the process is the point."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import psutil
import pytest
from mlflow.tracking import MlflowClient

from resnorm import names, snapshots
from resnorm.config import Launch, TrainConfig
from resnorm.sweep.child import Child, SweepContext
from resnorm.sweep.planner import child_names, plan
from resnorm.sweep.pool import Pool
from tests.conftest import PYTHON, ROOT, TINY, command, make_class_tree, run_command, subprocess_env
from tests.test_recovery import logged_epochs, sweep_child_at_epoch, trainer_of, wait_for

SWEEP = [PYTHON, str(ROOT / "entrypoints" / "sweep.py")]
SMALL = ["--image-size", "16", "--n", "1"]  # about a second an epoch here


def children(client, parent_id):
    exp = client.get_run(parent_id).info.experiment_id
    return client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent_id}'", order_by=["attributes.start_time ASC"])


def one_at_a_time(runs) -> bool:
    """No two of ``runs`` trained at once (each started after the one before had ended)."""
    spans = sorted((r.info.start_time, r.info.end_time or 1e18) for r in runs)
    return all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:]))


def sweep_parent(client):
    (parent,) = [
        r
        for e in client.search_experiments()
        for r in client.search_runs([e.experiment_id], f"tags.`{names.TAG_SWEEP}` = 'true'")
    ]
    return parent


def all_children(client):
    """Every sweep child in the store, oldest first."""
    found = [
        r
        for e in client.search_experiments()
        for r in client.search_runs([e.experiment_id], "tags.mlflow.parentRunId != ''")
    ]
    return sorted(found, key=lambda r: r.info.start_time)


def fork_server_of(pid: int) -> psutil.Process:
    """The fork server a sweep process started (multiprocessing's forkserver, a child of the sweep)."""
    (server,) = [p for p in psutil.Process(pid).children() if "forkserver" in " ".join(p.cmdline())]
    return server


def test_children_of_one_sweep_never_share_a_name_whatever_their_values():
    """Two data folders with one base name once gave two children one run name, and the pool's status
    table and analyze's map of names kept one of them."""
    configs = plan("custom", "data=/x/a/imgs,/x/b/imgs,/y/c/other;norm=bn,gn", seeds=2)
    named = child_names(configs, 2)
    assert len(set(named.values())) == len(configs) == 12
    assert named[configs[0]] == "bn-sgd-lr0.1-aug-bs32-a/imgs-s0"
    assert named[configs[-1]] == "gn-sgd-lr0.1-aug-bs32-other-s1"  # a base name of its own stays short
    # Values that print alike (2e-4 and 2.000001e-4 both read "0.0002") are told apart by a digest.
    alike = [TrainConfig(weight_decay=2e-4), TrainConfig(weight_decay=2.000001e-4)]
    tied = child_names(alike, 1)
    assert len(set(tied.values())) == 2 and all("-wd0.0002-c" in n for n in tied.values()), tied


@pytest.mark.slow
def test_a_failed_child_whose_folder_shares_a_base_name_fails_its_sweep_and_is_named(mlflow_env, tmp_path, capsys):
    """The issue's case: ``.../b/imgs`` and ``.../a/imgs`` in one grid, one of them broken. The sweep
    exits 1 with the parent FAILED, and analyze names the failed child by its run and reason."""
    good, bad = tmp_path / "a" / "imgs", tmp_path / "b" / "imgs"
    make_class_tree(good, per_class=10, classes=("cat", "dog"))
    make_class_tree(bad, per_class=10, classes=("cat", "dog"))
    (bad / "cat" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    args = ["--preset", "custom", "--grid", f"data={good},{bad}", "--batch-size", "8", *TINY]
    proc = subprocess.run(
        SWEEP + args, cwd=tmp_path, env=subprocess_env(mlflow_env), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 1 and "1 of 2 children did not finish (torch_bn-sgd-lr0.1-aug-bs8-b/imgs)" in proc.stderr
    client = MlflowClient()
    parent = sweep_parent(client)
    assert parent.info.status == "FAILED"
    kids = {r.info.run_name: r for r in children(client, parent.info.run_id)}
    assert set(kids) == {"torch_bn-sgd-lr0.1-aug-bs8-a/imgs", "torch_bn-sgd-lr0.1-aug-bs8-b/imgs"}
    failed = kids["torch_bn-sgd-lr0.1-aug-bs8-b/imgs"]
    assert failed.info.status == "FAILED" and failed.data.params["data"] == str(bad)  # its params from the start
    run_command(command("analyze"), ["--sweep-run-id", parent.info.run_id, "--out", str(tmp_path / "report")])
    md = (tmp_path / "report" / "report.md").read_text()
    assert f"FAILED (run {failed.info.run_id}): cannot read image {bad / 'cat' / '0.png'}" in md
    assert "MISSING" not in md and "1 of 2 planned seeds finished" in md


@pytest.mark.slow
def test_a_dead_fork_server_and_a_worker_that_leaves_cost_only_that_workers_child(mlflow_env, tmp_path):
    """At --parallel 1: the fork server is killed while the first child trains, then the worker is sent
    SIGTERM during the second. The first child finishes on its worker (a dead server once made every busy
    worker look dead: replaced, its child forgotten, two trainings at once); the second ends KILLED,
    resumable; the worker that left gets no more work (it was once handed the third child while exiting);
    a worker from a new fork server trains the third. The sweep says one child did not finish, no child is
    left RUNNING, no two trained at once, and the second keeps its snapshot for a re-run to resume
    (tests/test_recovery.py re-runs such a sweep)."""
    client = MlflowClient()
    args = ["--preset", "custom", "--grid", "norm=bn,gn,ln", "--epochs", "5", *SMALL, "--parallel", "1"]
    env = subprocess_env(mlflow_env)
    sweep = subprocess.Popen(
        SWEEP + args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    parent = {}

    def at_epoch(i, epoch):
        def check():
            found = all_children(client)
            if len(found) > i and logged_epochs(client, found[i].info.run_id) >= epoch:
                parent["id"] = found[i].data.tags["mlflow.parentRunId"]
                return True
            return False

        return check

    wait_for(at_epoch(0, 1), 300, "the first child's epoch 1", sweep)
    server = fork_server_of(sweep.pid)
    server.kill()  # a child of the sweep: a zombie until the sweep reaps it, which it does not need to
    wait_for(lambda: server.status() == psutil.STATUS_ZOMBIE, 30, "the fork server's death")
    wait_for(at_epoch(1, 1), 300, "the second child's epoch 1", sweep)
    second = children(client, parent["id"])[1]
    worker = trainer_of(second.info.run_id)
    os.kill(worker, signal.SIGTERM)
    out, err = sweep.communicate(timeout=600)
    assert sweep.returncode == 1, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and "Broken pipe" not in err, err[-3000:]
    # The stopped child's own line (as its `train` would print it), then the sweep's.
    assert len(errors) == 2 and errors[0].startswith("error: stopped by SIGTERM; continue it with"), errors
    assert errors[1].startswith("error: 1 of 3 children did not finish (gn-sgd-lr0.1-aug-bs32)"), errors
    kids = children(client, parent["id"])
    assert [(k.data.params["norm"], k.info.status) for k in kids] == [
        ("bn", "FINISHED"),
        ("gn", "KILLED"),
        ("ln", "FINISHED"),
    ]
    assert one_at_a_time(kids), "two children trained at once at --parallel 1"
    assert client.get_run(parent["id"]).info.status == "FAILED"

    killed = kids[1].info.run_id
    assert kids[1].data.tags[names.TAG_ERROR].startswith("stopped by SIGTERM; continue it with")
    assert snapshots.stored(client, killed) or snapshots.path_for(killed).exists(), "a re-run resumes it from here"


@pytest.mark.slow
def test_a_worker_that_does_not_stop_is_killed_and_its_childs_run_ended_with_why(mlflow_env, tmp_path):
    """The sweep is stopped (Ctrl-C) while its worker is held (SIGSTOP): after the grace time the worker
    is killed, and its child's run ends KILLED, saying so (it once stayed RUNNING for good)."""
    client = MlflowClient()
    exp = client.create_experiment("faults")
    parent = client.create_run(exp, tags={names.TAG_SWEEP: "true"}).info.run_id
    ctx = SweepContext(parent, exp, "custom", str(ROOT))
    cfg = TrainConfig(norm="bn", epochs=30, image_size=16, n=1)
    child = Child(cfg, cfg.run_name(), Launch(device="cpu", threads=1), "norm=bn")
    pool = Pool(str(ROOT), 1, stop_seconds=2)
    main = threading.main_thread().ident
    held, done = {}, threading.Event()

    def hold_then_interrupt():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not done.is_set():
            runs = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")
            if runs and logged_epochs(client, runs[0].info.run_id) >= 1:
                held["pid"] = pool.workers[0].proc.pid
                os.kill(held["pid"], signal.SIGSTOP)
                break
            time.sleep(0.2)
        if not done.is_set():  # also when no epoch came: the test fails rather than waits for good
            signal.pthread_kill(main, signal.SIGINT)

    # Ctrl-C raises KeyboardInterrupt here even where the suite was started with SIGINT ignored (a shell's
    # background job inherits that, and the held worker would then keep the pool waiting for ever).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=hold_then_interrupt, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            with pool:
                pool.run(ctx, [child])
    finally:
        done.set()
        signal.signal(signal.SIGINT, previous)
    assert "pid" in held, "the child logged no epoch within 300 s"
    (run,) = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")
    assert run.info.status == "KILLED"
    assert f"its worker (pid {held['pid']}) did not stop within 2 s, so it was killed" in run.data.tags[names.TAG_ERROR]
    assert not psutil.pid_exists(held["pid"]) or psutil.Process(held["pid"]).status() == psutil.STATUS_ZOMBIE


@pytest.mark.slow
def test_a_second_sweep_into_a_running_parent_is_refused_naming_its_holder(mlflow_env, tmp_path):
    """Two sweeps in one live parent trained its children twice, and the report kept one of each pair: the
    parent is held by one sweep at a time, as a training run is. Two processes: that is the point."""
    client = MlflowClient()
    args = ["--preset", "custom", "--grid", "norm=bn", "--epochs", "30", *SMALL, "--parallel", "1"]
    first = subprocess.Popen(
        SWEEP + args,
        cwd=tmp_path,
        env=subprocess_env(mlflow_env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, parent = sweep_child_at_epoch(client, first, 1)
        second = subprocess.run(
            SWEEP + args,
            cwd=tmp_path,
            env={**subprocess_env(mlflow_env), "MLFLOW_RUN_ID": parent},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert second.returncode == 2, second.stderr[-3000:]
        (line,) = [x for x in second.stderr.splitlines() if x.startswith("error:")]
        assert line.startswith(f"error: run {parent} is a sweep that another live process (pid {first.pid}) is running")
        assert "wait for it or stop it" in line and "Traceback" not in second.stderr
        assert len(children(client, parent)) == 1, "the refused sweep started a child"
    finally:
        os.killpg(first.pid, signal.SIGTERM)
        first.wait(120)

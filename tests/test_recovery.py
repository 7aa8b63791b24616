"""Nothing lost: a training process killed with -9 and resumed, a sweep re-run that resumes its
interrupted child, and a tracking server that dies mid-run and comes back. Real processes,
a real store, real signals."""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from resnorm import machine, names, snapshots
from tests.conftest import PYTHON, ROOT, empty_store, subprocess_env

TRAIN = [PYTHON, str(ROOT / "entrypoints" / "train.py")]
SWEEP = [PYTHON, str(ROOT / "entrypoints" / "sweep.py")]
EPOCHS = 8
# Digits at 16 px through a ResNet-8: about a second an epoch here, long enough to kill mid-run.
CONFIG = {"norm": "bn", "epochs": str(EPOCHS), "image_size": "16", "n": "1", "data": "digits", "device": "cpu"}
ARGS = [a for k, v in CONFIG.items() for a in (f"--{k.replace('_', '-')}", v)]
# On the CPU the thread count changes the sums: the reference trains with the threads a sweep gives
# each of its two children at once (its default on the CPU), so a sweep's child can equal it.
THREADS = ["--threads", str(machine.share(2))]
# Wall-clock measurements; everything else must match an uninterrupted run to the last bit.
VARYING = {names.EPOCH_SECONDS, names.IMAGES_PER_SECOND}


def curves(client, run_id):
    """Every per-epoch metric as [(step, value), ...]; a repeated or missing step shows up here."""
    return {
        k: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)]
        for k in names.EPOCH_METRICS
    }


def comparable(client, run_id):
    run = client.get_run(run_id)
    hist = {k: v for k, v in curves(client, run_id).items() if k not in VARYING}
    final = {k: v for k, v in run.data.metrics.items() if k.startswith("best_")}
    return hist, final


def logged_epochs(client, run_id) -> int:
    return len(client.get_metric_history(run_id, names.VAL_LOSS))


def trainer_of(run_id, resnorm_home=None) -> int | None:
    """The live process training ``run_id`` on this machine: the holder of the run's lock, a `train`
    process or a sweep's worker (``resnorm_home``: the RESNORM_HOME it trains under, if not ours)."""
    if resnorm_home is None:
        return snapshots.holder(run_id)
    lock = Path(resnorm_home) / "runs" / run_id / "lock"
    if not lock.exists():
        return None
    pid = int(lock.read_text().split()[-1])
    return pid if Path(f"/proc/{pid}").exists() else None


def wait_for(predicate, timeout, what, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the process ended (rc {proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def sweep_child_at_epoch(client, sweep, epoch: int) -> tuple[str, str]:
    """The (child, parent) run ids of the child a running sweep lists first, once it has logged ``epoch``."""
    found = {}

    def at_epoch():
        everywhere = [e.experiment_id for e in client.search_experiments()]
        for r in client.search_runs(everywhere, "tags.mlflow.parentRunId != ''"):
            found["child"], found["parent"] = r.info.run_id, r.data.tags["mlflow.parentRunId"]
            return logged_epochs(client, r.info.run_id) >= epoch
        return False

    wait_for(at_epoch, 300, f"a child's epoch {epoch}", sweep)
    return found["child"], found["parent"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """What an uninterrupted run of CONFIG logs (``comparable``), trained once for the module in a
    store of its own."""
    folder = tmp_path_factory.mktemp("reference")
    uri = empty_store(folder / "mlflow.db")
    env = {**subprocess_env(uri), "RESNORM_HOME": str(folder / "home")}
    proc = subprocess.run(TRAIN + ARGS + THREADS, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(names.EXPERIMENT).experiment_id])
    return comparable(client, run.info.run_id)


@pytest.mark.slow
def test_a_killed_run_resumes_on_another_machine_into_the_same_run_as_if_never_killed(
    reference, sqlite_server, tmp_path
):
    """kill -9 after epoch 2, its RESNORM_HOME gone with its machine; resumed with an empty one, the
    snapshot comes from the run's artifacts (the server's), and the run ends as an uninterrupted
    one: each epoch once, the same numbers, the same threads, every copy of the snapshot deleted."""
    client = MlflowClient(sqlite_server.url)
    first_home, second_home = tmp_path / "home-a", tmp_path / "home-b"
    env = {**subprocess_env(sqlite_server.url), "RESNORM_HOME": str(first_home)}
    proc, run_id = start_training(client, ARGS + THREADS, tmp_path, env, epoch=2, stdout=subprocess.DEVNULL)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert client.get_run(run_id).info.status == "RUNNING"  # kill -9: nobody closed it
    assert logged_epochs(client, run_id) < EPOCHS, "the run finished before it was killed; the test proved nothing"
    assert snapshots.stored(client, run_id), "every logged epoch is in the stored snapshot"
    shutil.rmtree(first_home)  # the machine is gone

    resumed = subprocess.run(
        TRAIN + ["--resume", run_id],
        cwd=tmp_path,
        env={**env, "RESNORM_HOME": str(second_home)},
        capture_output=True,
        text=True,
        timeout=600,
    )  # no --threads: the run's own
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"run {run_id}" in resumed.stdout
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params[names.PARAM_TORCH_THREADS] == THREADS[1]
    assert len(client.search_runs([run.info.experiment_id])) == 1, "the resume went into the same run"
    for key, points in curves(client, run_id).items():
        assert [s for s, _ in points] == list(range(1, EPOCHS + 1)), key  # each step exactly once
    assert comparable(client, run_id) == reference
    assert not snapshots.stored(client, run_id), "a finished run's stored snapshot is deleted"
    assert not (second_home / "runs" / run_id / snapshots.FILE).exists(), "and its local one"


@pytest.mark.slow
def test_a_rerun_sweep_resumes_its_interrupted_child(reference, mlflow_env, tmp_path):
    client = MlflowClient()
    sweep_args = ["--preset", "custom", "--grid", "seed=0", *ARGS[:-2], "--device", "cpu", "--parallel", "2"]
    env = subprocess_env(mlflow_env)
    sweep = subprocess.Popen(
        SWEEP + sweep_args,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    child, parent = sweep_child_at_epoch(client, sweep, 2)
    # The sweep and its worker at once, as a lost machine would: the worker is held first, so it
    # cannot act on the SIGTERM the kernel sends it when its sweep dies.
    worker = trainer_of(child)
    os.kill(worker, signal.SIGSTOP)
    os.killpg(sweep.pid, signal.SIGKILL)
    os.kill(worker, signal.SIGKILL)
    sweep.wait()
    assert client.get_run(child).info.status == "RUNNING"
    assert logged_epochs(client, child) < EPOCHS

    # Re-run into the same parent, as `mlflow run ... --run-id <parent>` does.
    rerun = subprocess.run(
        SWEEP + sweep_args,
        cwd=tmp_path,
        env={**env, "MLFLOW_RUN_ID": parent},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "1 resumed from a snapshot" in rerun.stdout
    kids = client.search_runs([client.get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert [k.info.run_id for k in kids] == [child], "continued, not started over"
    assert client.get_run(child).info.status == "FINISHED"
    assert comparable(client, child) == reference


@pytest.mark.slow
def test_a_dead_worker_fails_only_its_child_and_a_new_one_trains_the_rest(mlflow_env, tmp_path):
    """A sweep's worker killed mid-child (kill -9, as the OOM killer would): that child is FAILED with
    the reason, a new worker trains the others, the sweep says one child did not finish, and a
    re-run into its parent resumes that child from its snapshot."""
    client = MlflowClient()
    args = [
        "--preset",
        "custom",
        "--grid",
        "norm=bn,gn",
        "--epochs",
        "4",
        "--image-size",
        "16",
        "--n",
        "1",
        "--parallel",
        "1",
    ]
    env = subprocess_env(mlflow_env)
    sweep = subprocess.Popen(
        SWEEP + args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    child, parent = sweep_child_at_epoch(client, sweep, 1)
    worker = trainer_of(child)
    os.kill(worker, signal.SIGKILL)
    out, err = sweep.communicate(timeout=600)
    assert sweep.returncode == 1, err[-3000:]
    assert "Traceback" not in err and err.count("error:") == 1 and "1 of 2 children did not finish" in err, err[-3000:]
    dead = client.get_run(child)
    assert dead.info.status == "FAILED"
    assert dead.data.tags[names.TAG_ERROR].startswith(
        f"its sweep worker (pid {worker}) died while training it (signal SIGKILL)"
    )
    kids = client.search_runs([dead.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(k.info.status for k in kids) == ["FAILED", "FINISHED"]

    rerun = subprocess.run(
        SWEEP + args,
        cwd=tmp_path,
        env={**env, "MLFLOW_RUN_ID": parent},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "1 resumed from a snapshot" in rerun.stdout
    assert client.get_run(child).info.status == "FINISHED"
    for key, points in curves(client, child).items():
        assert [s for s, _ in points] == [1, 2, 3, 4], key  # every epoch once, across both workers


def start_training(client, args, cwd, env, epoch=1, stdout=subprocess.PIPE):
    """Start `train` with ``args``; return the process and its run id once ``epoch`` epochs are in
    ``client``'s store (the store holds no other run of the experiment)."""
    proc = subprocess.Popen(TRAIN + args, cwd=cwd, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True)
    found = []

    def logged():
        exp = client.get_experiment_by_name(names.EXPERIMENT)
        found[:] = [r.info.run_id for r in client.search_runs([exp.experiment_id])] if exp else []
        return bool(found) and logged_epochs(client, found[0]) >= epoch

    wait_for(logged, 300, f"epoch {epoch} in the store", proc)
    (run_id,) = found
    return proc, run_id


def train_past_epoch_1(client, norm, epochs, cwd, env):
    """Start a small training against ``client``'s server; return it and its run id once epoch 1 is there."""
    args = ["--norm", norm, "--epochs", str(epochs), "--image-size", "16", "--n", "1", "--device", "cpu"]
    return start_training(client, args, cwd, env)


@pytest.mark.slow
def test_training_goes_on_through_a_server_outage_and_every_epoch_lands_once(sqlite_server, tmp_path, monkeypatch):
    server = sqlite_server
    monkeypatch.setenv("RESNORM_HOME", str(tmp_path / "resnorm-home"))
    epochs = 12  # enough to outlast the outage: 3 epochs pass while the server is away, then it is held
    client = MlflowClient(server.url)
    proc, run_id = train_past_epoch_1(client, "gn", epochs, tmp_path, subprocess_env(server.url))
    server.kill()
    down = time.monotonic()
    ckpt = snapshots.path_for(run_id)

    def trained_on(n):
        return lambda: ckpt.exists() and len(snapshots.load(ckpt)["history"]) >= n

    # Training does not wait for the server: three more epochs pass while it is away.
    at_kill = len(snapshots.load(ckpt)["history"])
    wait_for(trained_on(at_kill + 3), 120, "three epochs without the server", proc)
    # Hold the trainer (SIGSTOP) while the server restarts, so a fast machine cannot finish all
    # epochs before the server is back: the outage then spans both trained and pending epochs.
    proc.send_signal(signal.SIGSTOP)
    try:
        server.start()
        outage = time.monotonic() - down
        assert len(snapshots.load(ckpt)["history"]) < epochs, "training ended before the server was back"
    finally:
        proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key, points in curves(client, run_id).items():
        assert [s for s, _ in points] == list(range(1, epochs + 1)), key  # every epoch, exactly once
    assert run.data.metrics[names.BEST_EPOCH] >= 1
    assert client.get_registered_model(names.registered_model("gn")).latest_versions
    print(f"outage survived: {outage:.1f}s")


def test_a_run_being_trained_cannot_be_resumed_twice(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNORM_HOME", str(tmp_path))
    held = snapshots.lock("abc")
    with pytest.raises(Exception, match=f"run abc is being trained by another live process \\(pid {os.getpid()}\\)"):
        snapshots.lock("abc")
    held.close()
    snapshots.lock("abc").close()  # free again once its holder lets go (or dies)


@pytest.mark.slow
def test_a_run_whose_server_stays_away_ends_running_and_a_resume_syncs_it(sqlite_server, tmp_path, monkeypatch):
    """The server dies mid-run and is still away when training ends: the process waits
    RESNORM_SYNC_TIMEOUT, stops with one line naming the resume command, leaves the run RUNNING
    with its snapshot; once the server is back that command sends every epoch and logs the model."""
    server = sqlite_server
    monkeypatch.setenv("RESNORM_HOME", str(tmp_path / "resnorm-home"))
    epochs = 5
    env = {**subprocess_env(server.url), "RESNORM_SYNC_TIMEOUT": "3"}
    client = MlflowClient(server.url)
    proc, run_id = train_past_epoch_1(client, "ln", epochs, tmp_path, env)
    server.kill()
    out, err = proc.communicate(timeout=600)

    assert proc.returncode == 1, err[-3000:]
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert lines[-1].startswith("error: tracking server ") and "has not answered for 3s" in lines[-1], lines[-1]
    assert f"python entrypoints/train.py --resume {run_id}" in lines[-1]
    ckpt = snapshots.path_for(run_id)
    assert len(snapshots.load(ckpt)["history"]) == epochs, "every epoch is kept locally"

    server.start()
    assert client.get_run(run_id).info.status == "RUNNING", "not FAILED: nothing went wrong with the run itself"
    assert logged_epochs(client, run_id) < epochs
    assert not client.search_registered_models(f"name = '{names.registered_model('ln')}'")

    synced = subprocess.run(
        TRAIN + ["--resume", run_id], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert synced.returncode == 0, synced.stderr[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key, points in curves(client, run_id).items():
        assert [s for s, _ in points] == list(range(1, epochs + 1)), key  # every epoch, exactly once
    assert run.data.metrics[names.BEST_EPOCH] >= 1
    (version,) = client.search_model_versions(f"name = '{names.registered_model('ln')}'")
    assert version.run_id == run_id
    assert not ckpt.exists(), "a synced run's snapshot is removed"

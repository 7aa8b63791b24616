"""Every way a run ends leaves a true status in MLflow: an error is FAILED with its reason (and the
traceback as an artifact), SIGTERM is KILLED and resumable, a refused resume touches nothing, a
sweep stopped by SIGTERM stops its children. Real processes, a real store, real signals."""

import signal
import subprocess
from pathlib import Path

import click
import mlflow
import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PROJECT_ENTRY_POINT

from resnorm import names, snapshots
from resnorm.cli import run_command
from tests.conftest import PYTHON, ROOT, assert_one_line, subprocess_env
from tests.test_recovery import curves, logged_epochs, start_training, sweep_child_at_epoch, trainer_of, wait_for

TRAIN = [PYTHON, str(ROOT / "entrypoints" / "train.py")]
SWEEP = [PYTHON, str(ROOT / "entrypoints" / "sweep.py")]
EPOCHS = 12
SMALL = ["--epochs", str(EPOCHS), "--image-size", "8", "--n", "1", "--device", "cpu", "--threads", "1"]


def only_run(client):
    (run,) = client.search_runs([client.get_experiment_by_name(names.EXPERIMENT).experiment_id])
    return run


@pytest.mark.slow
def test_an_unexpected_error_is_one_line_and_fails_the_run_with_its_traceback(mlflow_env, monkeypatch, capsys):
    """The boundary: an error no one foresaw (here a RuntimeError) is still one line, and the run that
    `mlflow run` made for the process ends FAILED with the reason and the whole traceback."""
    with mlflow.start_run(tags={MLFLOW_PROJECT_ENTRY_POINT: "broken"}) as run:  # as `mlflow run -e broken` tags it
        pass
    MlflowClient().update_run(run.info.run_id, status="RUNNING")
    monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)

    @click.command()
    def broken():
        raise RuntimeError("the disk said no")

    with pytest.raises(SystemExit) as exit_:
        run_command(broken, [])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: RuntimeError: the disk said no (RESNORM_DEBUG=1 prints the traceback)"
    client = MlflowClient()
    failed = client.get_run(run.info.run_id)
    assert failed.info.status == "FAILED" and failed.data.tags[names.TAG_ERROR].startswith("RuntimeError: the disk")
    text = open(client.download_artifacts(run.info.run_id, names.TRACEBACK_ARTIFACT)).read()
    assert text.startswith("Traceback") and 'raise RuntimeError("the disk said no")' in text

    monkeypatch.setenv("RESNORM_DEBUG", "1")
    MlflowClient().update_run(run.info.run_id, status="RUNNING")
    with pytest.raises(SystemExit):
        run_command(broken, [])
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith("error: RuntimeError")


@pytest.mark.slow
def test_a_run_that_cannot_take_its_lock_is_failed_with_the_reason(mlflow_env, tmp_path):
    (tmp_path / "a-file").write_text("")
    env = {**subprocess_env(mlflow_env), "RESNORM_HOME": str(tmp_path / "a-file" / "home")}  # cannot be a folder
    proc = subprocess.run(TRAIN + SMALL, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert_one_line(proc, "cannot write the run's snapshot folder", "a-file/home/runs/", "RESNORM_HOME")
    run = only_run(MlflowClient())
    assert run.info.status == "FAILED", "the lock is taken inside the run's failure handling, not before"
    assert run.data.tags[names.TAG_ERROR].startswith("cannot write the run's snapshot folder")


@pytest.mark.slow
def test_sigterm_kills_a_run_resumably_a_refused_resume_touches_nothing_and_the_resume_clears_the_error(
    mlflow_env, tmp_path
):
    client = MlflowClient()
    env = subprocess_env(mlflow_env)
    proc, run_id = start_training(client, SMALL, tmp_path, env)
    proc.send_signal(signal.SIGSTOP)  # hold it mid-run: alive, holding its lock
    try:
        # What a re-run sweep does: the same run id in MLFLOW_RUN_ID and --resume.
        refused = subprocess.run(
            TRAIN + ["--resume", run_id],
            cwd=tmp_path,
            env={**env, "MLFLOW_RUN_ID": run_id},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert_one_line(refused, f"run {run_id} is being trained by another live process (pid {proc.pid})")
        live = client.get_run(run_id)
        assert live.info.status == "RUNNING" and names.TAG_ERROR not in live.data.tags, "the refusal touched the run"
        proc.send_signal(signal.SIGTERM)  # what Slurm, systemd and Kubernetes send
    finally:
        proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130
    assert "Traceback" not in err and [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: stopped by SIGTERM; continue it with `python entrypoints/train.py --resume {run_id}`"
    ]
    killed = client.get_run(run_id)
    assert killed.info.status == "KILLED" and killed.data.tags[names.TAG_ERROR].startswith("stopped by SIGTERM")
    assert snapshots.path_for(run_id).exists() and logged_epochs(client, run_id) < EPOCHS

    resumed = subprocess.run(
        TRAIN + ["--resume", run_id], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    done = client.get_run(run_id)
    assert done.info.status == "FINISHED" and names.TAG_ERROR not in done.data.tags, "the old reason is cleared"
    for key, points in curves(client, run_id).items():
        assert [s for s, _ in points] == list(range(1, EPOCHS + 1)), key


@pytest.mark.slow
def test_sigterm_to_a_sweep_stops_its_children_and_a_rerun_resumes_them(mlflow_env, tmp_path):
    client = MlflowClient()
    env = subprocess_env(mlflow_env)
    args = ["--preset", "custom", "--grid", "seed=0", *SMALL[:-2]]  # a sweep sets its children's threads itself
    sweep = subprocess.Popen(
        SWEEP + args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    child, parent = sweep_child_at_epoch(client, sweep, 1)
    trainer = trainer_of(child)  # the sweep's worker that trains it
    assert trainer
    sweep.send_signal(signal.SIGTERM)  # to the sweep's own process only, as Kubernetes does
    out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 130, err[-3000:]
    # The child's own line (its stderr is the sweep's), then the sweep's.
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(errors) == 2, err[-3000:]
    assert errors[0].startswith("error: stopped by SIGTERM; continue it with")
    assert errors[1] == (
        f"error: stopped by SIGTERM; its running children were stopped; re-run into this parent "
        f"(mlflow run ... --run-id {parent}) to resume them"
    )
    assert trainer_of(child) is None and not Path(f"/proc/{trainer}").exists(), "the worker outlives its sweep"
    assert client.get_run(parent).info.status == "KILLED"
    assert client.get_run(child).info.status == "KILLED" and snapshots.path_for(child).exists()

    rerun = subprocess.run(
        SWEEP + args, cwd=tmp_path, env={**env, "MLFLOW_RUN_ID": parent}, capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "1 resumed from a snapshot" in rerun.stdout
    kids = client.search_runs([client.get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert [k.info.run_id for k in kids] == [child] and kids[0].info.status == "FINISHED"
    assert client.get_run(parent).info.status == "FINISHED"


@pytest.mark.slow
def test_a_sweep_killed_outright_leaves_no_worker_training_on(mlflow_env, tmp_path):
    """kill -9 to the sweep's own process, which then cannot stop its workers: the worker training
    its child (forked by the sweep's fork server, so not the sweep's child) notices all the same,
    ends the child KILLED and resumable, and exits; no orphan trains on holding the run's lock."""
    client = MlflowClient()
    args = ["--preset", "custom", "--grid", "seed=0", *SMALL[:-2]]
    sweep = subprocess.Popen(
        SWEEP + args,
        cwd=tmp_path,
        env=subprocess_env(mlflow_env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    child, _ = sweep_child_at_epoch(client, sweep, 1)
    trainer = trainer_of(child)
    assert trainer and trainer != sweep.pid
    sweep.kill()
    sweep.wait()
    wait_for(lambda: not Path(f"/proc/{trainer}").exists(), 60, "the orphaned worker's end")
    run = client.get_run(child)
    assert run.info.status == "KILLED" and run.data.tags[names.TAG_ERROR].startswith("stopped by SIGTERM")
    assert snapshots.path_for(child).exists() and logged_epochs(client, child) < EPOCHS
    errors = [line for line in sweep.stderr.read().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: stopped by SIGTERM; continue it with"), errors


def test_a_second_sigterm_does_not_cut_short_the_first_ones_ending():
    """CI once saw a run stopped by SIGTERM end FINISHED: a second SIGTERM came while the first
    one's handler was ending the run KILLED, cut it short, and MLflow's exit handler then ended the
    still-open run FINISHED. A stop under way now lets its ending finish."""
    import os
    import time

    from resnorm.cli import guard

    ended = []

    def job():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # the first SIGTERM interrupts this
        except KeyboardInterrupt:
            os.kill(os.getpid(), signal.SIGTERM)  # a second one while the run is being ended
            time.sleep(0.2)
            ended.append("KILLED")
            raise

    assert guard(job) == 130 and ended == ["KILLED"]


@pytest.mark.slow
def test_a_run_left_open_by_a_cut_short_ending_is_not_left_for_mlflow_to_finish(mlflow_env):
    """Whatever cut a job's own ending short, the run it left open ends KILLED (FAILED for an
    error), not FINISHED by MLflow's exit handler or left active for a worker's next child."""
    from resnorm.cli import guard

    def job(error):
        mlflow.start_run()
        raise error

    assert guard(lambda: job(KeyboardInterrupt())) == 130
    assert guard(lambda: job(RuntimeError("boom"))) == 1
    assert mlflow.active_run() is None
    runs = MlflowClient().search_runs(["0"], order_by=["attributes.start_time ASC"])
    assert [r.info.status for r in runs] == ["KILLED", "FAILED"]

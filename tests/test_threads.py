"""A training's CPU threads: from the CPUs it was given, and logged (shared by a sweep's children:
tests/test_sweep_cli.py's quick sweep); and the two benchmarks of this area run end to end."""

import json
import os
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from resnorm import machine, names
from resnorm.config import Launch
from resnorm.errors import ConfigError
from tests.conftest import PYTHON, ROOT, TINY, subprocess_env


def test_threads_follow_what_was_asked_or_the_cpus_this_process_may_use():
    assert Launch(threads=1).torch_threads() == 1
    assert Launch(threads=0).torch_threads() == len(os.sched_getaffinity(0))
    with pytest.raises(ConfigError, match="threads must be at least 0, got -1"):
        Launch(threads=-1)
    assert [machine.share(p, cpus=8) for p in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]


@pytest.mark.slow
def test_a_run_by_hand_takes_its_affinity(mlflow_env, tmp_path):
    """A run started by hand on one CPU (as taskset or a container would give it): threads 0 means 1.
    (A sweep's children sharing the cores: tests/test_sweep_cli.py, the quick sweep.)"""
    one_cpu = subprocess.run(
        [PYTHON, str(ROOT / "entrypoints" / "train.py"), *TINY, "--device", "cpu", "--norm", "gn"],
        cwd=tmp_path,
        env=subprocess_env(mlflow_env),
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}),
    )
    assert one_cpu.returncode == 0, one_cpu.stderr[-3000:]
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name(names.EXPERIMENT).experiment_id])
    assert (run.data.params[names.PARAM_THREADS], run.data.params[names.PARAM_TORCH_THREADS]) == ("0", "1")


@pytest.mark.slow
def test_the_contention_benchmark_times_an_epoch_alone_and_beside_a_busy_process(tmp_path):
    out = subprocess.run(
        [PYTHON, str(ROOT / "benchmarks" / "contention.py"), "--threads", "1", "--image-size", "8", "--n", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (row,) = json.loads(out.stdout.strip().splitlines()[-1])["rows"]
    assert row["threads"] == 1 and row["wait"] == "passive"
    assert row["alone_s"] > 0 and row["beside_s"] > 0
    assert "threads 1 (passive wait): alone" in out.stdout


@pytest.mark.slow
def test_the_upload_benchmark_stores_a_real_snapshot_on_a_server(tmp_path):
    out = subprocess.run(
        [PYTHON, str(ROOT / "benchmarks" / "snapshot_upload.py"), "--uploads", "2", "--n", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ResNet-8, 25 classes: snapshot ") and "over 2" in out.stdout, out.stdout

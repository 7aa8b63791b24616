"""The `train` entry point as a user meets it: `mlflow run` and the script, as subprocesses."""

import subprocess

import mlflow
import mlflow.pytorch
import pytest
import torch
from mlflow.tracking import MlflowClient

from resnorm import names
from resnorm.data import load_data
from resnorm.norms import NORM_NAMES
from tests.conftest import PYTHON, ROOT, assert_one_line, subprocess_env

TRAIN = [PYTHON, str(ROOT / "entrypoints" / "train.py")]


def run(args, uri, cwd, timeout=600):
    return subprocess.run(args, cwd=cwd, env=subprocess_env(uri), capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("norm", NORM_NAMES)
def test_mlflow_run_trains_every_norm_into_a_complete_run(norm, mlflow_env, tmp_path):
    # Small images and the shallowest ResNet (6n+2 = 8): every norm's whole path, in seconds.
    cmd = ["mlflow", "run", str(ROOT), "-e", "train", "-P", f"norm={norm}", "-P", "epochs=2", "-P", "image_size=8",
           "-P", "n=1", "--env-manager", "local", "--experiment-name", names.EXPERIMENT]
    proc = run(cmd, mlflow_env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient()
    exp = client.get_experiment_by_name(names.EXPERIMENT)
    (r,) = client.search_runs([exp.experiment_id])
    assert r.info.status == "FINISHED"
    assert r.info.run_name == f"{norm}-sgd-lr0.1-aug-bs32"
    assert r.data.params["norm"] == norm and r.data.params["depth"] == "8" and r.data.params["num_classes"] == "10"
    assert r.data.tags["mlflow.project.entryPoint"] == "train"
    for key in names.EPOCH_METRICS:
        assert [m.step for m in client.get_metric_history(r.info.run_id, key)] == [1, 2], key
    assert r.data.metrics[names.BEST_EPOCH] in (1, 2)
    # The registered champion, loaded here, scores the digits test split as the run logged.
    model = mlflow.pytorch.load_model(f"models:/{names.registered_model(norm)}@{names.CHAMPION}")
    test = load_data("digits", 8).test
    with torch.no_grad():
        accuracy = (model(test.images.float() / 255).argmax(1) == test.labels).float().mean().item()
    assert accuracy == pytest.approx(r.data.metrics[names.final_metric("test", "accuracy")])


# Bad options and bad data: tests/test_bad_input.py catalogues them.


@pytest.mark.slow
def test_a_diverging_run_is_failed_with_the_reason(mlflow_env, tmp_path):
    proc = run(TRAIN + ["--norm", "nn", "--lr", "1e10", "--epochs", "2", "--image-size", "8"], mlflow_env, tmp_path)
    line = assert_one_line(proc, "the training loss became", "epoch 1", "lower the learning rate")
    client = MlflowClient()
    (r,) = client.search_runs([client.get_experiment_by_name(names.EXPERIMENT).experiment_id])
    assert r.info.status == "FAILED"
    assert "error: " + r.data.tags[names.TAG_ERROR] == line
    assert not client.search_registered_models()


@pytest.mark.slow
def test_mlflow_run_with_a_bad_value_leaves_a_failed_run_that_says_why(mlflow_env, tmp_path):
    cmd = ["mlflow", "run", str(ROOT), "-e", "train", "-P", "data=/no/such/folder", "--env-manager", "local"]
    proc = run(cmd, mlflow_env, tmp_path)
    assert proc.returncode != 0
    assert "error: data '/no/such/folder' is not a folder" in proc.stderr
    (r,) = MlflowClient().search_runs(["0"])
    assert r.info.status == "FAILED"
    assert r.data.tags[names.TAG_ERROR].startswith("data '/no/such/folder' is not a folder")


@pytest.mark.slow
def test_help_lists_every_option_with_its_default(tmp_path):
    proc = subprocess.run(TRAIN + ["--help"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0
    for option in ("--norm", "--lr", "--weight-decay", "--batch-size", "--augment", "--data", "--device"):
        assert option in proc.stdout
    assert proc.stdout.count("[default:") >= 15

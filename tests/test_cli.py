"""The `train` entry point as a user meets it: every norm through the command in this process (the
function its script's main() runs), and `mlflow run . -e train` once as a real process (the
MLproject's contract: the run it makes is the run that trains)."""

import subprocess

import mlflow.pytorch
import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from resnorm import names
from resnorm.data import load_data
from resnorm.norms import NORM_NAMES
from tests.conftest import PYTHON, ROOT, command, mlflow_run_args, one_line, run_command, subprocess_env

SMALL = ["--epochs", "2", "--image-size", "8", "--n", "1"]  # the shallowest ResNet (6n+2 = 8) on 8 px digits


def only_run(client):
    (r,) = client.search_runs([client.get_experiment_by_name(names.EXPERIMENT).experiment_id])
    return r


def check_complete_run(client, r, norm):
    """A finished training run: its name, params, tags, every epoch once, figures, weights, and the
    registered champion, which scores the digits test split as the run logged."""
    assert r.info.status == "FINISHED"
    assert r.info.run_name == f"{norm}-sgd-lr0.1-aug-bs32"
    assert r.data.params["norm"] == norm and r.data.params["depth"] == "8" and r.data.params["num_classes"] == "10"
    for key in names.EPOCH_METRICS:
        assert [m.step for m in client.get_metric_history(r.info.run_id, key)] == [1, 2], key
    assert r.data.metrics[names.BEST_EPOCH] in (1, 2)
    logged = {f.path for f in client.list_artifacts(r.info.run_id)}
    assert {
        "curves.png",
        "confusion_matrix_test.png",
        "classification_report_test.json",
        "classes.json",
        "weights",
    } <= logged, logged
    assert len(client.get_run(r.info.run_id).outputs.model_outputs) == 1  # the model, an MLflow 3 LoggedModel
    model = mlflow.pytorch.load_model(f"models:/{names.registered_model(norm)}@{names.CHAMPION}")
    test = load_data("digits", 8).test
    with torch.no_grad():
        accuracy = (model(test.images.float() / 255).argmax(1) == test.labels).float().mean().item()
    assert accuracy == pytest.approx(r.data.metrics[names.final_metric("test", "accuracy")])


@pytest.mark.slow
@pytest.mark.parametrize("norm", NORM_NAMES)
def test_train_makes_every_norm_a_complete_run(norm, mlflow_env, capsys):
    run_command(command("train"), ["--norm", norm, *SMALL])
    client = MlflowClient()
    r = only_run(client)
    check_complete_run(client, r, norm)
    assert f"run {r.info.run_id} ({norm}-sgd-lr0.1-aug-bs32): best epoch" in capsys.readouterr().out
    assert client.get_experiment(r.info.experiment_id).tags[names.TAG_EXPERIMENT_KIND] == names.MODEL_TRAINING


@pytest.mark.slow
def test_mlflow_run_trains_into_the_run_it_made(mlflow_env, tmp_path):
    cmd = mlflow_run_args("train", norm="gn", epochs=2, image_size=8, n=1)
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=subprocess_env(mlflow_env), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient()
    r = only_run(client)
    assert r.data.tags["mlflow.project.entryPoint"] == "train"
    check_complete_run(client, r, "gn")


# Bad options and bad data: tests/test_bad_input.py catalogues them.


@pytest.mark.slow
def test_a_diverging_run_is_failed_with_the_reason(mlflow_env, capsys):
    line = one_line(
        "train",
        ["--norm", "nn", "--lr", "1e10", *SMALL],
        capsys,
        "the training loss became",
        "epoch 1",
        "lower the learning rate",
    )
    client = MlflowClient()
    r = only_run(client)
    assert r.info.status == "FAILED"
    assert "error: " + r.data.tags[names.TAG_ERROR] == line
    assert not client.search_registered_models()


@pytest.mark.slow
def test_a_bad_value_fails_the_run_mlflow_run_made_and_says_why(mlflow_env, monkeypatch, capsys):
    """`mlflow run` makes the run (tagged with its entry point) and hands its id to the script in
    MLFLOW_RUN_ID; a value the script refuses ends that run FAILED with the reason."""
    client = MlflowClient()
    made = client.create_run("0", tags={"mlflow.project.entryPoint": "train"}).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", made)
    one_line("train", ["--data", "/no/such/folder"], capsys, "data '/no/such/folder' is not a folder")
    r = client.get_run(made)
    assert r.info.status == "FAILED"
    assert r.data.tags[names.TAG_ERROR].startswith("data '/no/such/folder' is not a folder")


def test_help_lists_every_option_with_its_default():
    result = CliRunner().invoke(command("train"), ["--help"])
    assert result.exit_code == 0
    for option in ("--norm", "--lr", "--weight-decay", "--batch-size", "--augment", "--data", "--device"):
        assert option in result.output
    assert result.output.count("[default:") >= 15


@pytest.mark.slow
def test_a_training_run_records_the_machines_cost_beside_its_accuracy(mlflow_env, monkeypatch, capsys):
    """MLflow's system metrics on every training run (sampled fast here, so a short run has them)."""
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    run_command(command("train"), ["--norm", "bn", "--epochs", "3", "--image-size", "16", "--n", "1"])
    r = only_run(MlflowClient())
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(r.data.metrics)


# Printing is not the work (issue 26): `train ... | head -1`, or a terminal that goes away, once
# ended a run that had trained every epoch FAILED "[Errno 32] Broken pipe", exit 1, nothing said.


@pytest.mark.slow
def test_a_closed_stdout_does_not_fail_the_training(mlflow_env, tmp_path):
    """As `python entrypoints/train.py ... | head -1`: the reader takes the first line and goes; the
    epoch lines and the summary after it have nowhere to go, and the run finishes all the same."""
    proc = subprocess.Popen(
        [PYTHON, str(ROOT / "entrypoints" / "train.py"), "--norm", "nn", *SMALL],
        cwd=tmp_path,
        env=subprocess_env(mlflow_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().startswith("epoch 1/2")
    proc.stdout.close()  # the epoch 2 line is printed after this
    err = proc.stderr.read()
    assert proc.wait(timeout=600) == 0, err[-3000:]
    assert "error:" not in err and "Traceback" not in err, err[-3000:]
    client = MlflowClient()
    r = only_run(client)
    assert r.info.status == "FINISHED" and names.TAG_ERROR not in r.data.tags
    version = client.get_model_version_by_alias(names.registered_model("nn"), names.CHAMPION)
    assert version.run_id == r.info.run_id


def test_output_is_best_effort_once_its_reader_is_gone():
    """The mechanism, on a real pipe: writes after the reader closed its end neither raise nor reach
    the pipe (its descriptor now points at os.devnull), and the stream still says what it is."""
    import io
    import os

    from resnorm.cli import best_effort

    read, write = os.pipe()
    os.close(read)
    stream = best_effort(io.TextIOWrapper(io.FileIO(write, "w"), encoding="utf-8", line_buffering=True))
    assert best_effort(stream) is stream  # once is enough
    print("a line no one reads", file=stream, flush=True)
    stream.write("and another\n")
    stream.flush()
    assert os.path.samestat(os.fstat(stream.fileno()), os.stat(os.devnull))
    assert stream.encoding == "utf-8" and not stream.isatty()

"""Tracking against a real MLflow SQLite store and model registry in a temp folder."""

import json

import mlflow
import mlflow.cli
import mlflow.pytorch
import pytest
import torch
from click.testing import CliRunner
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from resnorm import names, registry
from resnorm.config import Launch, TrainConfig
from resnorm.data import synthetic
from resnorm.engine import train
from resnorm.errors import TrainingDiverged
from resnorm.registry import promote_if_better
from resnorm.trainrun import training_run
from resnorm.weights import load_trained
from tests.conftest import TINY, command, one_line, run_command

CPU = torch.device("cpu")


def tracked_run(cfg: TrainConfig, data):
    with training_run(cfg, data, Launch(device="cpu"), CPU) as run:
        result = train(cfg, data, CPU, on_epoch=run, progress=False)
        version = run.log_result(cfg, data, result)
    return run.run_id, result, version


@pytest.mark.slow
def test_a_run_records_everything_the_design_names(mlflow_env):
    data = synthetic(16, per_class=30, num_classes=4)
    cfg = TrainConfig(norm="gn", groups=4, data="synthetic", image_size=16, epochs=3, batch_size=16, n=1)
    run_id, result, version = tracked_run(cfg, data)
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "gn-sgd-lr0.1-aug-bs16"
    assert client.get_experiment(run.info.experiment_id).name == names.EXPERIMENT
    assert run.data.params == {
        "norm": "gn",
        "optimizer": "sgd",
        "lr": "0.1",
        "weight_decay": "0.0001",
        "momentum": "0.9",
        "scheduler": "cosine",
        "epochs": "3",
        "batch_size": "16",
        "augment": "true",
        "n": "1",
        "depth": "8",
        "num_classes": "4",
        "image_size": "16",
        "groups": "4",
        "seed": "0",
        "data": "synthetic",
        "device": "cpu",
        "mode": "auto",
        "threads": "0",
        "torch_threads": str(torch.get_num_threads()),
    }
    assert run.data.tags[names.TAG_DEVICE] == "cpu"
    assert run.data.tags[names.TAG_SPEED] == "plain (float32, NCHW, eager)"  # auto on the CPU
    # Every per-epoch curve has each epoch exactly once, with the engine's values.
    for key in names.EPOCH_METRICS:
        points = client.get_metric_history(run_id, key)
        assert [p.step for p in points] == [1, 2, 3], key
        assert [p.value for p in points] == pytest.approx([getattr(s, key) for s in result.history]), key
    final = result.final_metrics()
    assert {k: run.data.metrics[k] for k in final} == pytest.approx(final)
    assert run.data.metrics[names.BEST_EPOCH] == result.best_epoch
    # The datasets, one per split, with their MLflow contexts.
    inputs = {i.dataset.name: {t.key: t.value for t in i.tags} for i in run.inputs.dataset_inputs}
    assert inputs == {
        "synthetic-train": {"mlflow.data.context": "training"},
        "synthetic-val": {"mlflow.data.context": "validation"},
        "synthetic-test": {"mlflow.data.context": "test"},
    }
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"curves.png", "confusion_matrix_test.png", "classification_report_test.json", "classes.json"} <= artifacts
    local = client.download_artifacts(run_id, "classification_report_test.json")
    report = json.load(open(local))
    assert set(data.classes) <= set(report) and report["accuracy"] == pytest.approx(final["best_test_accuracy"])
    with open(client.download_artifacts(run_id, "curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    # The registered version is this run's model; it loads without pickled code and predicts
    # exactly as the trained model does.
    mv = client.get_model_version(names.registered_model("gn"), str(version))
    assert mv.run_id == run_id
    assert int(client.get_model_version_by_alias("resnorm-gn", names.CHAMPION).version) == version
    loaded = mlflow.pytorch.load_model("models:/resnorm-gn@champion")
    x = data.test.images.float() / 255
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.model(x))
    signature = mlflow.models.get_model_info("models:/resnorm-gn@champion").signature
    assert tuple(signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 3, 16, 16)


def _version_with(client: MlflowClient, name: str, val_accuracy: float) -> int:
    with mlflow.start_run() as run:
        mlflow.log_metric(names.final_metric("val", "accuracy"), val_accuracy)
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id).version
    client.set_model_version_tag(
        name, version, names.final_metric("val", "accuracy"), str(val_accuracy)
    )  # as training does
    return int(version)


@pytest.mark.slow
def test_champion_moves_only_to_a_better_version(mlflow_env):
    client, name = MlflowClient(), "resnorm-test"
    champion = lambda: int(client.get_model_version_by_alias(name, names.CHAMPION).version)  # noqa: E731
    v1 = _version_with(client, name, 0.80)
    assert promote_if_better(client, name, v1, 0.80) and champion() == v1
    v2 = _version_with(client, name, 0.70)
    assert not promote_if_better(client, name, v2, 0.70) and champion() == v1
    v3 = _version_with(client, name, 0.90)
    assert promote_if_better(client, name, v3, 0.90) and champion() == v3
    v4 = _version_with(client, name, 0.90)
    assert not promote_if_better(client, name, v4, 0.90) and champion() == v3  # a tie keeps it


@pytest.mark.slow
def test_a_run_that_fails_is_marked_failed_with_the_reason(mlflow_env):
    data = synthetic(16, per_class=10, num_classes=2)
    cfg = TrainConfig(norm="nn", lr=1e10, data="synthetic", image_size=16, epochs=2, batch_size=8, n=1)
    with pytest.raises(TrainingDiverged):
        tracked_run(cfg, data)
    run = MlflowClient().search_runs([mlflow.get_experiment_by_name(names.EXPERIMENT).experiment_id])[0]
    assert run.info.status == "FAILED"
    assert run.data.tags[names.TAG_ERROR].startswith("the training loss became")
    assert not MlflowClient().search_registered_models()  # nothing half-written in the registry


@pytest.mark.slow
def test_two_runs_promoting_at_once_leave_the_better_champion(mlflow_env):
    """Both runs read "no champion" before either moves it; the worse one moves it last."""
    client, name = MlflowClient(), "resnorm-race"
    better, worse = _version_with(client, name, 0.90), _version_with(client, name, 0.80)
    assert promote_if_better(client, name, better, 0.90)
    client.delete_registered_model_alias(name, names.CHAMPION)  # the worse run's stale read: no champion yet
    assert not promote_if_better(client, name, worse, 0.80)
    assert int(client.get_model_version_by_alias(name, names.CHAMPION).version) == better


@pytest.mark.slow
def test_eight_runs_promoting_a_model_without_a_champion_at_once_all_succeed(mlflow_env):
    """Eight runs of one norm finish together (a sweep's seeds) and all find no champion: each
    inserts the alias, SQLite's unique key refuses all but the first (CI met this in a 2-seed sweep),
    and every one still ends with the alias on the best version."""
    import threading

    client = MlflowClient()
    for round_ in range(5):
        name = f"resnorm-together-{round_}"
        accuracies = [0.5 + 0.05 * i for i in range(8)]
        versions = [_version_with(client, name, a) for a in accuracies]
        start, errors = threading.Barrier(len(versions)), []

        def promote(version, accuracy, name=name, start=start, errors=errors):
            mover = MlflowClient()
            start.wait()
            try:
                promote_if_better(mover, name, version, accuracy)
            except Exception as e:  # noqa: BLE001 - collected and shown by the assert below
                errors.append(repr(e)[:300])

        threads = [threading.Thread(target=promote, args=va) for va in zip(versions, accuracies)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert int(client.get_model_version_by_alias(name, names.CHAMPION).version) == versions[-1]


# A champion whose run is gone (issue 26): `mlflow gc` of the champion's run once broke its norm for
# good, every later run training all its epochs and then failing to read the old champion's run.


def train_nn(*extra: str) -> None:
    """One tiny real training of ``nn`` through the train entry point, in this process."""
    run_command(command("train"), ["--norm", "nn", *TINY, *extra])


@pytest.mark.slow
@pytest.mark.parametrize("gone", ["deleted", "garbage-collected"])
def test_a_champion_whose_run_is_gone_is_no_champion(gone, mlflow_env, capsys):
    client, name, key = MlflowClient(), names.registered_model("nn"), names.final_metric("val", "accuracy")
    train_nn()
    old = client.get_model_version_by_alias(name, names.CHAMPION)
    client.log_metric(old.run_id, key, 1.0)  # a champion no later run can beat...
    client.set_model_version_tag(name, old.version, key, "1.0")
    client.delete_run(old.run_id)  # ...whose run is then deleted, and perhaps collected for good
    if gone == "garbage-collected":
        collected = CliRunner().invoke(mlflow.cli.gc, ["--backend-store-uri", mlflow_env, "--run-ids", old.run_id])
        assert collected.exit_code == 0, collected.output
    capsys.readouterr()

    # GradCAM of the champion says which version and run are gone, and what makes a new champion.
    line = one_line("gradcam", ["--models", f"models:/{name}@champion"], capsys, f"version {old.version}", old.run_id)
    assert "python entrypoints/train.py --norm nn" in line and "becomes the champion" in line, line

    train_nn()  # ends without an error (SystemExit) and takes the alias
    err = capsys.readouterr().err
    new = client.get_model_version_by_alias(name, names.CHAMPION)
    assert int(new.version) == int(old.version) + 1 and client.get_run(new.run_id).info.status == "FINISHED"
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, err
    for fragment in (f"version {old.version}", old.run_id, f"version {new.version} is the champion now"):
        assert fragment in warnings[0], warnings[0]
    assert load_trained(f"models:/{name}@champion").run_id == new.run_id  # what training again promised


@pytest.mark.slow
def test_a_run_that_fails_after_registering_its_model_keeps_no_version(mlflow_env, monkeypatch, capsys):
    """The store fails right after the run moved the alias to its new version: the run ends FAILED
    without that version, and the alias is back on the best version left."""
    client, name = MlflowClient(), names.registered_model("nn")
    champion = _version_with(client, name, 0.0)  # any trained run beats it
    assert promote_if_better(client, name, champion, 0.0)
    real, calls = registry.best_version, []

    def fails_once(*args):
        calls.append(args)
        if len(calls) == 1:
            raise MlflowException("the store went away")
        return real(*args)

    monkeypatch.setattr(registry, "best_version", fails_once)
    with pytest.raises(SystemExit) as exit_:
        train_nn()
    assert exit_.value.code == 1
    experiment = client.get_experiment_by_name(names.EXPERIMENT).experiment_id
    (run,) = client.search_runs([experiment])
    assert run.info.status == "FAILED" and "the store went away" in run.data.tags[names.TAG_ERROR]
    assert [int(v.version) for v in client.search_model_versions(f"name = '{name}'")] == [champion]
    assert int(client.get_model_version_by_alias(name, names.CHAMPION).version) == champion

"""The catalogue's second half: data, runs and reports must be what they say, never silently other.

Classes, each with its cases below (the first half, tests/test_bad_input.py, holds what must be
refused in one line):

1. images are decoded as a viewer shows them, or named: EXIF orientation, every mode Pillow opens
   (float, 16-bit, CMYK, palette, bilevel), every format (GIF's first frame), files that are not
   images named on one warning line, hidden folders not classes, class names as text in figures;
2. the decoded cache and a resume never train on other data than the run's: links in the cache
   key, a damaged cache decoded again, a read-only cache folder, a resume that finds other data,
   a resume's threads, one damaged copy of a snapshot;
3. a run is what it says: an inherited MLFLOW_RUN_ID that is not this command's run, a sweep
   re-run with other training parameters, SIGTERM to `mlflow run`, SIGTERM while the model is
   logged, sweep children under relative paths;
4. a report holds only itself, and all of it: only the files analyze wrote, a child that failed
   before its params, headline keys unique and within MLflow's limit, LaTeX with any Unicode.

Real image files, a real MLflow store, real signals; in this process where the process is not the
point (the entry points through ``run_command``, as their scripts' ``main()`` runs them).
"""

import json
import os
import signal
import subprocess
import time

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from resnorm import engine, folders, images, names, serving, snapshots
from resnorm.cli import run_command
from resnorm.data import load_data
from resnorm.errors import Interrupted
from resnorm.home import decoded_dir
from resnorm.machine import available_cpus
from tests.conftest import (
    PYTHON,
    ROOT,
    TINY,
    command,
    make_class_tree,
    mlflow_run_args,
    nothing_left_behind,
    one_line,
    subprocess_env,
    write_image,
)


def two_classes(root, per_class=8, seed=0):
    return make_class_tree(root, per_class=per_class, classes=("cat", "dog"), seed=seed)


def pixels_of(data, path_index: int = 0):
    """Every decoded image of the bundle, in one tensor (train, val, test)."""
    return torch.cat([data.split(s).images for s in ("train", "val", "test")])


def drop_models(store):
    client = MlflowClient(store)
    for m in client.search_registered_models():  # a case that trains registers on purpose
        client.delete_registered_model(m.name)


# 1. Images are decoded as a viewer shows them, or named.


def halves(width=20, height=12) -> np.ndarray:
    """Red on the left, blue on the right: which way an image is turned shows in its pixels."""
    a = np.zeros((height, width, 3), np.uint8)
    a[:, : width // 2] = (255, 0, 0)
    a[:, width // 2 :] = (0, 0, 255)
    return a


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_exif_orientation_is_applied(tmp_path, fmt):
    upright = Image.fromarray(halves())
    sideways = upright.transpose(Image.Transpose.ROTATE_90)  # as a phone stores a photo taken turned
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: turn 90 degrees clockwise to view
    sideways.save(tmp_path / f"photo.{fmt}", exif=exif, quality=100)
    upright.save(tmp_path / f"upright.{fmt}", quality=100)
    seen = images.decode_image(tmp_path / f"photo.{fmt}", 8)
    assert torch.allclose(seen.float(), images.decode_image(tmp_path / f"upright.{fmt}", 8).float(), atol=3)
    assert seen[0, :, 0].float().mean() > 200 and seen[2, :, -1].float().mean() > 200  # red left, blue right


def test_float_images_are_read_in_the_unit_range_not_as_black(tmp_path):
    for c, level in (("dark", 0.2), ("light", 0.8)):
        for i in range(8):
            (tmp_path / "f" / c).mkdir(parents=True, exist_ok=True)
            value = np.full((12, 12), level, np.float32) + np.float32(i) / 1000
            Image.fromarray(value, "F").save(tmp_path / "f" / c / f"{i}.tif")
    assert Image.open(tmp_path / "f" / "dark" / "0.tif").mode == "F"
    data = load_data(str(tmp_path / "f"), 8)
    means = {
        data.classes[k]: pixels_of(data)[torch.cat([data.split(s).labels for s in ("train", "val", "test")]) == k]
        .float()
        .mean()
        .item()
        for k in range(2)
    }
    assert abs(means["dark"] - 0.2 * 255) < 3 and abs(means["light"] - 0.8 * 255) < 3, means


def test_a_float_image_outside_what_float_images_hold_is_named(store, tmp_path, capsys):
    root = two_classes(tmp_path / "d")
    Image.fromarray(np.full((12, 12), 1000.0, np.float32), "F").save(root / "cat" / "hot.tif")
    one_line(
        "train",
        ["--data", str(root), *TINY],
        capsys,
        f"cannot read image {root / 'cat' / 'hot.tif'}",
        "values from 1000 to 1000",
        "[0, 1]",
    )
    nothing_left_behind(store)


def test_every_mode_and_format_pillow_opens_is_read_as_it_looks(tmp_path):
    """CMYK, palette, bilevel, grayscale with alpha and the first frame of an animated GIF: a red
    image is red whatever way it is stored."""
    root = tmp_path / "modes"
    red, blue = (230, 20, 20), (20, 20, 230)
    for c, colour in (("red", red), ("blue", blue)):
        for i, (mode, ext) in enumerate(
            [("CMYK", "jpg"), ("P", "png"), ("RGB", "bmp"), ("RGB", "webp"), ("RGBA", "tif"), ("RGB", "ppm")] * 2
        ):
            write_image(root / c / f"{i}.{ext}", colour, mode=mode, seed=i)
        frames = [Image.new("RGB", (16, 12), colour), Image.new("RGB", (16, 12), (0, 255, 0))]
        for i in range(4):
            frames[0].save(root / c / f"anim{i}.gif", save_all=True, append_images=frames[1:])
    data = load_data(str(root), 8)
    assert sum(len(data.split(s)) for s in ("train", "val", "test")) == 2 * 16, "the GIFs are read too"
    labels = torch.cat([data.split(s).labels for s in ("train", "val", "test")])
    images = pixels_of(data).float()
    for k, name in enumerate(data.classes):
        mean = images[labels == k].mean(dim=(0, 2, 3))
        colour = red if name == "red" else blue
        assert torch.allclose(mean, torch.tensor(colour, dtype=torch.float), atol=25), (name, mean)


def test_files_that_are_not_images_are_named_on_one_warning_line(tmp_path, capsys):
    root = two_classes(tmp_path / "d")
    (root / "cat" / "notes.txt").write_text("field notes")
    (root / "dog" / "labels.csv").write_text("a,b")
    data = load_data(str(root), 8)
    assert sum(len(data.split(s)) for s in ("train", "val", "test")) == 16
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "2 file(s) left out, not images Pillow opens" in warnings[0], warnings
    assert "cat/notes.txt" in warnings[0] and "dog/labels.csv" in warnings[0]


def test_hidden_folders_and_files_are_not_classes_or_images(tmp_path, capsys):
    root = two_classes(tmp_path / "d")
    write_image(root / ".Trash-1000" / "old.png", (0, 0, 0))  # a desktop's trash: not a class
    write_image(root / ".ipynb_checkpoints" / "x.png", (0, 0, 0))
    write_image(root / "cat" / ".ipynb_checkpoints" / "x.png", (0, 0, 0))  # nor images of a class
    write_image(root / "cat" / "._0.png", (0, 0, 0))  # macOS's resource fork beside a copied file
    data = load_data(str(root), 8)
    assert data.classes == ("cat", "dog")
    assert sum(len(data.split(s)) for s in ("train", "val", "test")) == 16
    assert "warning:" not in capsys.readouterr().err


@pytest.mark.slow
def test_class_names_are_text_in_every_figure(store, tmp_path, capsys):
    """Matplotlib reads $...$ as math: a class folder named with dollar signs must still draw."""
    root = make_class_tree(tmp_path / "prices", per_class=8, classes=("cat", "dog"))
    os.rename(root / "cat", root / "cost_$5_to_$10")
    os.rename(root / "dog", root / "cost_$10_and_up")
    run_command(command("train"), ["--data", str(root), *TINY, "--batch-size", "8"])
    client = MlflowClient(store)
    (run,) = client.search_runs(
        [client.get_experiment_by_name(names.EXPERIMENT).experiment_id], filter_string=f"params.data = '{root}'"
    )
    assert run.info.status == "FINISHED"
    logged = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"curves.png", "confusion_matrix_test.png"} <= logged
    classes = json.loads(open(client.download_artifacts(run.info.run_id, "classes.json", str(tmp_path))).read())
    assert classes["classes"] == ["cost_$10_and_up", "cost_$5_to_$10"]
    drop_models(store)


# 2. The decoded cache and a resume never train on other data than the run's.


def test_files_behind_a_linked_class_folder_are_in_the_cache_key(tmp_path):
    elsewhere = two_classes(tmp_path / "elsewhere")
    root = tmp_path / "d"
    two_classes(root, seed=5)
    os.rename(root / "cat", tmp_path / "moved-cat")
    os.symlink(elsewhere / "cat", root / "cat")  # the class folder is a link
    first = load_data(str(root), 8)
    write_image(elsewhere / "cat" / "0.png", (0, 0, 0), seed=99)  # a file behind the link changes
    again = load_data(str(root), 8)
    assert not torch.equal(pixels_of(first), pixels_of(again)), "the old decoded pixels were trained on"
    assert len(list(decoded_dir().glob("d-8px-*.pt"))) == 2


def test_a_cache_file_whose_content_changed_is_decoded_again(tmp_path):
    root = two_classes(tmp_path / "d")
    first = load_data(str(root), 8)
    (cached,) = decoded_dir().glob("d-8px-*.pt")
    state = torch.load(cached, weights_only=True)
    state["train"]["images"][0] = 255 - state["train"]["images"][0]  # same size, other pixels
    torch.save(state, cached)
    again = load_data(str(root), 8)
    assert torch.equal(pixels_of(first), pixels_of(again))
    assert torch.equal(torch.load(cached, weights_only=True)["train"]["images"], first.train.images)  # rewritten


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder no one can write, root included (a read-only tmpfs), holding an empty ``decoded/``
    (as a container's read-only cache mount does)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here (needs root): {done.stderr.strip()}")
    (mount / "decoded").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=True)


@pytest.mark.parametrize("cache", ["decoded", "decoded/not-yet"])
def test_a_read_only_cache_folder_costs_a_decode_not_the_run(cache, tmp_path, read_only_folder, monkeypatch, capsys):
    """The cache folder is there but read-only (every write and every cleanup fails with EROFS), or
    not there and cannot be made."""
    root = two_classes(tmp_path / "d")
    monkeypatch.setattr(folders.home, "decoded_dir", lambda: read_only_folder / cache)
    data = load_data(str(root), 8)
    assert sum(len(data.split(s)) for s in ("train", "val", "test")) == 16
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "could not keep the decoded images" in warnings[0], warnings
    assert "the next run decodes them again" in warnings[0] and "Read-only file system" in warnings[0]


def interrupted_run(args, monkeypatch, capsys, after: int = 1) -> str:
    """A real training of ``args``, in this process, stopped (as SIGTERM stops it) after ``after``
    epochs: its run is KILLED and resumable. Returns its run id."""
    real = engine.run_epoch

    def stop(t, epoch, progress=False):
        if epoch > after:
            raise Interrupted("stopped by SIGTERM")
        return real(t, epoch, progress)

    with monkeypatch.context() as m:
        m.setattr(engine, "run_epoch", stop)
        with pytest.raises(SystemExit) as exit_:
            run_command(command("train"), args)
    assert exit_.value.code == 130, capsys.readouterr().err
    capsys.readouterr()
    client = MlflowClient()
    (run,) = client.search_runs(
        [client.get_experiment_by_name(names.EXPERIMENT).experiment_id],
        filter_string="attributes.status = 'KILLED'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return run.info.run_id


def test_a_resume_refuses_a_folder_that_changed_naming_what_changed(store, tmp_path, monkeypatch, capsys):
    root = two_classes(tmp_path / "d")
    run_id = interrupted_run(
        ["--data", str(root), "--epochs", "3", "--image-size", "8", "--n", "1", "--batch-size", "8"],
        monkeypatch,
        capsys,
    )
    write_image(root / "dog" / "new.png", (1, 2, 3))  # one more image: other splits
    line = one_line(
        "train",
        ["--resume", run_id],
        capsys,
        f"resume '{run_id}': {root} is not the data the run trained on",
        "split sizes train=10 val=3 test=3 (now train=11 val=3 test=3)",
        "train digest",
    )
    assert "resume it with that data" in line
    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == "KILLED" and names.TAG_ERROR in run.data.tags, "the refused resume touched the run"
    assert run.data.tags[names.TAG_ERROR].startswith("stopped by SIGTERM")
    nothing_left_behind(store)


@pytest.mark.slow
@pytest.mark.skipif(available_cpus() < 2, reason="one CPU: every thread count is 1")
def test_a_resume_trains_with_the_threads_the_run_trained_with(store, monkeypatch, capsys):
    run_id = interrupted_run(["--epochs", "2", "--image-size", "8", "--n", "1", "--threads", "1"], monkeypatch, capsys)
    torch.set_num_threads(available_cpus())
    run_command(command("train"), ["--resume", run_id])  # no --threads: the run's own
    assert torch.get_num_threads() == 1
    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params[names.PARAM_TORCH_THREADS] == "1"
    drop_models(store)


@pytest.mark.slow
@pytest.mark.parametrize("damaged", ["local", "stored"])
def test_one_damaged_copy_of_a_snapshot_does_not_block_a_resume(damaged, store, tmp_path, monkeypatch, capsys):
    run_id = interrupted_run(["--epochs", "2", "--image-size", "8", "--n", "1"], monkeypatch, capsys)
    client = MlflowClient(store)
    local = snapshots.path_for(run_id)
    bad = tmp_path / "bad" / snapshots.FILE
    bad.parent.mkdir()
    bad.write_bytes(b"PK\x03\x04 cut off mid-upload")
    good = tmp_path / "good" / snapshots.FILE
    good.parent.mkdir()
    good.write_bytes(local.read_bytes())
    client.log_artifact(run_id, str(bad if damaged == "stored" else good), names.SNAPSHOT_ARTIFACT_DIR)
    if damaged == "local":
        local.write_bytes(bad.read_bytes())
    run_command(command("train"), ["--resume", run_id])
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "is damaged; resuming from" in warnings[0], warnings
    assert client.get_run(run_id).info.status == "FINISHED"
    drop_models(store)


# 3. A run is what it says.


def a_finished_run(store) -> str:
    run_command(command("train"), ["--norm", "bn", *TINY])
    client = MlflowClient(store)
    (run,) = client.search_runs(
        [client.get_experiment_by_name(names.EXPERIMENT).experiment_id],
        filter_string="attributes.status = 'FINISHED'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return run.info.run_id


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["train", "sweep"])
def test_an_inherited_run_id_of_a_finished_run_is_refused(entry, store, monkeypatch, capsys):
    finished = a_finished_run(store)
    client = MlflowClient(store)
    before = client.get_run(finished)
    monkeypatch.setenv("MLFLOW_RUN_ID", finished)
    args = ["--norm", "gn", *TINY] if entry == "train" else ["--preset", "custom", "--grid", "norm=gn", *TINY]
    one_line(entry, args, capsys, f"MLFLOW_RUN_ID={finished} names run 'bn-sgd-lr0.1-aug-bs32'", "unset MLFLOW_RUN_ID")
    after = client.get_run(finished)
    assert (after.info.status, after.info.run_name, after.data.params, after.data.tags.get(names.TAG_SWEEP)) == (
        before.info.status,
        before.info.run_name,
        before.data.params,
        before.data.tags.get(names.TAG_SWEEP),
    )
    assert len(client.get_metric_history(finished, names.VAL_LOSS)) == 1, "no epoch was logged into it again"
    drop_models(store)


def test_an_inherited_run_id_of_a_run_made_by_hand_is_refused(store, monkeypatch, capsys):
    """MLflow issue 15713: a run started in a notebook or a parent script leaks MLFLOW_RUN_ID into
    every process started from there."""
    with mlflow.start_run(experiment_id="0") as run:
        pass
    MlflowClient(store).update_run(run.info.run_id, status="RUNNING")
    monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)
    one_line(
        "train",
        TINY,
        capsys,
        f"MLFLOW_RUN_ID={run.info.run_id}",
        "made outside `mlflow run` and sweeps",
        "not for a training",
    )
    assert not MlflowClient(store).get_run(run.info.run_id).data.params


def test_a_malformed_run_id_or_sync_timeout_is_one_line(store, monkeypatch, capsys):
    one_line("train", ["--resume", "../../etc/passwd"], capsys, "resume '../../etc/passwd' is not a run id")
    monkeypatch.setenv("RESNORM_SYNC_TIMEOUT", "five minutes")
    one_line("train", TINY, capsys, "RESNORM_SYNC_TIMEOUT='five minutes' is not a number of seconds")
    nothing_left_behind(store)


def test_a_sweep_rerun_with_other_training_parameters_is_refused(store, capsys):
    client = MlflowClient(store)
    run = client.create_run("0", tags={names.TAG_SWEEP: "true"}, run_name="sweep-custom")
    for key, value in {
        "preset": "custom",
        "grid": "norm=bn",
        "seeds": "1",
        "epochs": "1",
        "image_size": "8",
        "n": "1",
        "device": "auto",
        "mode": "auto",
        "lr": "0.10",
    }.items():
        client.log_param(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id, "KILLED")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("MLFLOW_RUN_ID", run.info.run_id)
        one_line(
            "sweep",
            [
                "--preset",
                "custom",
                "--grid",
                "norm=bn",
                "--epochs",
                "3",
                "--image-size",
                "8",
                "--n",
                "1",
                "--lr",
                "0.1",
            ],
            capsys,
            f"run {run.info.run_id} is a sweep with epochs='1' (now '3')",
        )
    assert "lr" not in capsys.readouterr().err, "0.10 and 0.1 are the same lr"
    assert client.get_run(run.info.run_id).data.params["epochs"] == "1"


@pytest.mark.slow
def test_sigterm_while_the_model_is_logged_finishes_the_run_with_its_model_first(store, monkeypatch, capsys):
    real = serving.log_model

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal, in the middle of logging the model
        time.sleep(0.1)
        return real(*args, **kwargs)

    monkeypatch.setattr(serving, "log_model", signalled)
    line = one_line("train", TINY, capsys, "stopped by SIGTERM, which came while the run was logging its model")
    assert "the run finished first" in line
    client = MlflowClient(store)
    (run,) = client.search_runs(
        [client.get_experiment_by_name(names.EXPERIMENT).experiment_id],
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    assert run.info.status == "FINISHED"
    (version,) = client.search_model_versions(f"name = '{names.registered_model('torch_bn')}'")
    assert version.run_id == run.info.run_id
    drop_models(store)


@pytest.mark.slow
def test_sigterm_to_mlflow_run_reaches_the_training(mlflow_env, tmp_path):
    """`docker stop` and Kubernetes signal the container's first process, here `mlflow run` itself."""
    client = MlflowClient()
    cmd = mlflow_run_args("train", epochs=30, image_size=16, n=1)
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=subprocess_env(mlflow_env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    run = None
    while time.monotonic() < deadline and proc.poll() is None:
        exp = client.get_experiment_by_name(names.EXPERIMENT)
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs and client.get_metric_history(runs[0].info.run_id, names.VAL_LOSS):
            run = runs[0]
            break
        time.sleep(0.3)
    assert run is not None, proc.communicate()[1][-3000:]
    trainer = snapshots.holder(run.info.run_id)
    proc.send_signal(signal.SIGTERM)  # to `mlflow run` only
    proc.wait(timeout=60)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and os.path.exists(f"/proc/{trainer}"):
        time.sleep(0.2)
    assert not os.path.exists(f"/proc/{trainer}"), "the training goes on without its `mlflow run`"
    ended = client.get_run(run.info.run_id)
    assert ended.info.status == "KILLED" and ended.data.tags[names.TAG_ERROR].startswith("stopped by SIGTERM")


@pytest.mark.slow
def test_sweep_children_resolve_relative_paths_where_the_sweep_started(tmp_path):
    """A relative MLFLOW_TRACKING_URI and RESNORM_HOME mean the folder the sweep runs in, for its
    children too (not the project folder)."""
    work = tmp_path / "work"
    work.mkdir()
    env = {**subprocess_env("sqlite:///m.db"), "RESNORM_HOME": "home"}
    proc = subprocess.run(
        [PYTHON, str(ROOT / "entrypoints" / "sweep.py"), "--preset", "custom", "--grid", "norm=bn", *TINY],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{work / 'm.db'}")
    kids = client.search_runs(
        [client.get_experiment_by_name(names.EXPERIMENT).experiment_id], "tags.mlflow.parentRunId != ''"
    )
    assert [k.info.status for k in kids] == ["FINISHED"]
    assert not (ROOT / "m.db").exists() and not (ROOT / "home").exists()
    assert (work / "home").is_dir()

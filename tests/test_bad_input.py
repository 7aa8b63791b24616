"""Bad input, catalogued: the contract of what a user sees when something is wrong.

Classes of failure, each with its instances below:

1. a parameter of any entry point of the wrong type or out of range (click's checks);
2. a value click accepts that would fail deep inside torch or MLflow (seed, lr, sizes, depth);
3. data that cannot be used: missing, corrupt, classes that differ, an empty class, a dangling
   link, a name that is not UTF-8, a decompression bomb, more than memory holds (every source);
4. data that must be what it says: 16-bit images scaled, each file once whatever links,
   byte-identical images across splits warned about (one line) and tagged;
5. the tracking store: a URI that does not answer, an unknown scheme, MLflow 3's refused file
   store, a server that does not know the user (401) - all before any work, on every entry point;
6. resuming: no snapshot, a damaged one, a run deleted or in another store;
7. resources: the disk fills while the snapshot is written.

Each ends in one line ``error: ...`` that names the value and what is allowed, a non-zero exit,
no traceback, no run left RUNNING and nothing in the registry (a run that had started is FAILED
with the reason in ``resnorm.error``).

The cases go through ``resnorm.cli.run_command`` in this process, the very function each
script's ``main()`` calls, against one MLflow store per module (building a store costs seconds;
a case costs a fraction of one): after every case nothing may be RUNNING and the registry must be
empty. What needs a process of its own (a dead server, a hang to rule out) runs as one.
"""

import os
import struct
import subprocess
import zlib

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from resnorm import names, snapshots
from resnorm.cli import run_command
from resnorm.config import TrainConfig
from resnorm.data import load_data
from resnorm.engine import train as fit
from tests.conftest import (
    PYTHON,
    ROOT,
    MlflowServer,
    assert_one_line,
    command,
    empty_store,
    free_port,
    make_class_tree,
    nothing_left_behind,
    one_line,
    subprocess_env,
    write_image,
)

NOT_IN_RANGE = "is not in the range"
MARGIN_ALLOWED = "a finite number from 0.01 to 50 (accuracy points)"
ONE = ["--preset", "custom", "--grid", "seed=0"]  # a one-point sweep: under a preset, its grid would decide

# (entry point, arguments, fragments of the one error line: the value and what is allowed)
CASES = [
    # train: every option
    ("train", ["--norm", "batchnorm"], ["'batchnorm' is not one of", "'torch_bn'", "'nn'"]),
    ("train", ["--optimizer", "rmsprop"], ["'rmsprop' is not one of", "'sgd'", "'adam'"]),
    ("train", ["--lr", "-0.1"], ["lr must be a finite number >= 0, got -0.1"]),
    ("train", ["--lr", "0"], ["lr must be greater than 0, got 0"]),
    ("train", ["--lr", "fast"], ["--lr", "'fast' is not a valid float"]),
    ("train", ["--weight-decay", "-1"], ["weight_decay must be a finite number >= 0, got -1"]),
    ("train", ["--momentum", "1.5"], ["momentum must be at most 1, got 1.5"]),
    ("train", ["--scheduler", "linear"], ["'linear' is not one of", "'cosine'", "'step'", "'none'"]),
    ("train", ["--epochs", "0"], ["epochs must be at least 1, got 0"]),
    ("train", ["--epochs", "two"], ["--epochs", "'two' is not a valid integer"]),
    ("train", ["--batch-size", "0"], ["batch_size must be at least 1, got 0"]),
    ("train", ["--augment", "maybe"], ["--augment", "'maybe' is not a valid boolean"]),
    ("train", ["--n", "0"], ["n must be at least 1, got 0"]),
    ("train", ["--image-size", "4"], ["image_size must be at least 8, got 4"]),
    ("train", ["--groups", "0"], ["groups must be at least 1, got 0"]),
    ("train", ["--threads", "-1"], ["threads must be at least 0, got -1"]),
    ("train", ["--threads", "two"], ["--threads", "'two' is not a valid integer"]),
    ("train", ["--norm", "gn", "--groups", "3"], ["groups=3 must divide", "allowed: 1, 2, 4, 8, 16"]),
    ("train", ["--seed", "1.5"], ["--seed", "'1.5' is not a valid integer"]),
    ("train", ["--data", "no-such-folder"], ["data '{tmp}/no-such-folder' is not a folder", "'digits', 'synthetic'"]),
    ("train", ["--device", "tpu"], ["'tpu' is not one of", "'auto'", "'cpu'", "'cuda'"]),
    ("train", ["--mode", "turbo"], ["'turbo' is not one of", "'auto'", "'plain'", "'fast'"]),
    ("train", ["--resume", "0123456789abcdef"], ["resume '0123456789abcdef': the tracking store", "has no such run"]),
    ("train", ["--colour", "red"], ["No such option '--colour'"]),
    # train: values click takes that would fail inside torch or MLflow
    (
        "train",
        ["--seed", "18446744073709551616"],
        ["seed 18446744073709551616 is out of range", "from -9223372036854775808 to 18446744073709551615"],
    ),
    ("train", ["--seed", "-9223372036854775809"], ["seed -9223372036854775809 is out of range"]),
    ("train", ["--lr", "1e39"], ["lr 1e+39 does not fit in float32", "at most 3.402823e+38"]),
    ("train", ["--weight-decay", "1e39"], ["weight_decay 1e+39 does not fit in float32"]),
    ("train", ["--epochs", "2147483648"], ["epochs 2147483648 is too large; at most 2147483647"]),
    ("train", ["--batch-size", "99999999999"], ["batch_size 99999999999 is too large; at most 2147483647"]),
    ("train", ["--image-size", "2147483648"], ["image_size 2147483648 is too large"]),
    ("train", ["--groups", "4294967296"], ["groups 4294967296 is too large"]),
    ("train", ["--n", "100000000"], ["n=100000000 makes a ResNet-600000002", "GiB of memory is available; lower n"]),
    ("train", ["--image-size", "4096"], ["digits: 1797 images at image_size 4096 need", "lower --image-size"]),
    ("train", ["--data", "synthetic", "--image-size", "100000"], ["synthetic: 160 images at image_size 100000 need"]),
    ("train", ["--batch-size", "5000", "--image-size", "8"], ["batch_size 5000 exceeds the 1257 training images"]),
    # sweep: its own options, then each training option as text
    ("sweep", ["--preset", "everything"], ["'everything' is not one of", "'quick'", "'study'", "'custom'"]),
    ("sweep", ["--preset", "custom", "--grid", "colour=red"], ["unknown parameter 'colour'", "valid: norm, optimizer"]),
    ("sweep", ["--preset", "custom", "--grid", "norm=bn,batchnorm"], ["unknown norm 'batchnorm'", "valid: torch_bn"]),
    ("sweep", ["--seeds", "0"], ["--seeds", "'0' is not a whole number of at least 1 or 'auto'"]),
    ("sweep", ["--seeds", "2.5"], ["--seeds", "'2.5' is not a whole number of at least 1 or 'auto'"]),
    ("sweep", ["--seeds", "many"], ["--seeds", "'many' is not a whole number of at least 1 or 'auto'"]),
    ("sweep", ["--seeds", "auto", "--max-seeds", "2"], ["--max-seeds", "2 is not in the range 3<=x<=1000"]),
    ("sweep", ["--seeds", "auto", "--margin", "nan"], ["--margin", "'nan' is not", MARGIN_ALLOWED]),
    ("sweep", ["--executor", "slurm"], ["'slurm' is not one of", "'local'", "'ray'"]),
    ("sweep", ["--parallel", "-1"], ["parallel must be at least 0, got -1"]),
    ("sweep", ["--executor", "ray", "--ray-address", "nohost"], ["ray address 'nohost' is not host:port"]),
    ("sweep", ["--device", "tpu"], ["'tpu' is not one of", "'auto'"]),
    ("sweep", ["--mode", "turbo"], ["'turbo' is not one of", "'plain'", "'fast'"]),
    ("sweep", [*ONE, "--norm", "batchnorm"], ["unknown norm 'batchnorm'", "valid: torch_bn"]),
    ("sweep", [*ONE, "--optimizer", "rmsprop"], ["unknown optimizer 'rmsprop'", "valid: sgd, adam"]),
    ("sweep", [*ONE, "--lr", "fast"], ["lr='fast' is not a valid float"]),
    ("sweep", [*ONE, "--weight-decay", "-1"], ["weight_decay must be a finite number >= 0, got -1"]),
    ("sweep", [*ONE, "--momentum", "x"], ["momentum='x' is not a valid float"]),
    ("sweep", [*ONE, "--scheduler", "linear"], ["unknown scheduler 'linear'", "valid: cosine, step, none"]),
    ("sweep", [*ONE, "--epochs", "many"], ["epochs='many' is not a valid int"]),
    ("sweep", [*ONE, "--batch-size", "0"], ["batch_size must be at least 1, got 0"]),
    ("sweep", [*ONE, "--augment", "maybe"], ["augment='maybe'"]),
    ("sweep", [*ONE, "--n", "0"], ["n must be at least 1, got 0"]),
    ("sweep", [*ONE, "--image-size", "4"], ["image_size must be at least 8, got 4"]),
    ("sweep", [*ONE, "--norm", "gn", "--groups", "3"], ["groups=3 must divide", "allowed: 1, 2, 4, 8, 16"]),
    ("sweep", [*ONE, "--seed", "one"], ["seed='one' is not a valid int"]),
    (
        "sweep",
        ["--preset", "custom", "--grid", "norm=bn", "--seed", "18446744073709551616"],
        ["seed 18446744073709551616 is out of range"],
    ),
    ("sweep", [*ONE, "--lr", "1e39"], ["lr 1e+39 does not fit in float32"]),
    ("sweep", [*ONE, "--epochs", "2147483648"], ["epochs 2147483648 is too large"]),
    # bench
    ("bench", ["--norms", "bn,batchnorm"], ["'bn,batchnorm'", "comma-separated list of torch_bn, bn"]),
    ("bench", ["--norms", ""], ["''", "comma-separated list of torch_bn"]),
    ("bench", ["--batch-sizes", "32,big"], ["'32,big'", "comma-separated list of integers"]),
    ("bench", ["--batch-sizes", "1"], ["'1'", "batch sizes of at least 2"]),
    ("bench", ["--modes", "plain,turbo"], ["'plain,turbo'", "comma-separated list of plain, fast"]),
    ("bench", ["--image-size", "4"], ["image_size must be at least 8, got 4"]),
    ("bench", ["--steps", "0"], ["steps must be at least 1, got 0"]),
    ("bench", ["--warmup", "0"], ["warmup must be at least 1, got 0"]),
    ("bench", ["--classes", "1"], ["classes must be at least 2, got 1"]),
    ("bench", ["--n", "0"], ["n must be at least 1, got 0"]),
    ("bench", ["--compile-mode", "fastest"], ["'fastest' is not one of", "'reduce-overhead'", "'none'"]),
    ("bench", ["--feed-files", "-1"], ["feed_files must be at least 0, got -1"]),
    ("bench", ["--steps", "1000000"], ["batch size 8 x 1000010 steps is too many images", "at most 1,000,000"]),
    ("bench", ["--share", "1,0"], ["'1,0'", "process counts from 1 to 16"]),
    ("bench", ["--share", "two"], ["'two'", "comma-separated list of integers"]),
    ("bench", ["--device", "tpu"], ["'tpu' is not one of", "'auto'"]),
    # analyze
    ("analyze", ["--experiment", "nope"], ["there is no experiment 'nope'", "run a sweep first"]),
    ("analyze", ["--sweep-run-id", "0123456789abcdef"], ["run '0123456789abcdef' does not exist"]),
    ("analyze", ["--out", "{tmp}/a-file"], ["is a file"]),
    # analyze: margins that pass a float check and make no sense (issue 26)
    ("analyze", ["--margin", "nan"], ["--margin", "'nan' is not", MARGIN_ALLOWED]),
    ("analyze", ["--margin", "inf"], ["--margin", "'inf' is not", MARGIN_ALLOWED]),
    ("analyze", ["--margin", "1e-12"], ["--margin", "'1e-12' is not", MARGIN_ALLOWED]),
    ("analyze", ["--margin", "51"], ["--margin", "'51' is not", MARGIN_ALLOWED]),
    ("analyze", ["--margin", "wide"], ["--margin", "'wide' is not", MARGIN_ALLOWED]),
    # gradcam
    ("gradcam", ["--samples", "0"], ["--samples", f"0 {NOT_IN_RANGE} x>=1"]),
    ("gradcam", [], ["no registered resnorm-{norm} model has a 'champion' alias"]),
    ("gradcam", ["--models", "models:/resnorm-bn@champion"], ["no registered model named 'resnorm-bn'"]),
    ("gradcam", ["--models", "0123456789abcdef"], ["0123456789abcdef"]),
]


@pytest.mark.parametrize("entry, args, fragments", CASES, ids=[f"{e} {' '.join(a)}" for e, a, _ in CASES])
def test_a_bad_parameter_ends_in_one_line(entry, args, fragments, store, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    one_line(entry, args, capsys, *[f.replace("{tmp}", str(tmp_path)) for f in fragments])
    nothing_left_behind(store)


def test_the_margins_limits_are_in_help_and_every_margin_within_them_is_taken():
    from click.testing import CliRunner

    from resnorm.options import MARGIN_POINTS

    result = CliRunner().invoke(command("analyze"), ["--help"])
    assert result.exit_code == 0 and "from 0.01 to 50" in " ".join(result.output.split()), result.output
    for value in ("0.01", "0.5", "1", "50"):
        assert MARGIN_POINTS.convert(value, None, None) == float(value)


def png_header(path, width: int, height: int) -> None:
    """A valid PNG that says it is ``width`` x ``height`` without holding the pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def bad_data(tmp_path, case: str):
    """(data folder, fragments of its one error line) for each class of unusable data."""
    tree = make_class_tree(tmp_path / case, per_class=8, classes=("cat", "dog"))
    if case == "missing folder":
        return str(tmp_path / "missing"), [f"data '{tmp_path / 'missing'}' is not a folder", "'digits', 'synthetic'"]
    if case == "corrupt file":
        (tree / "cat" / "7.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        return str(tree), [f"cannot read image {tree / 'cat' / '7.png'}"]
    if case == "classes differ":
        for s in ("train", "val", "test"):
            make_class_tree(tree / s, per_class=4, classes=("cat", "dog"))
        write_image(tree / "test" / "owl" / "0.png", (0, 0, 200))
        return str(tree), ["class folders differ between splits"]
    if case == "empty class":
        (tree / "owl").mkdir()
        return str(tree), ["owl"]
    if case == "dangling link":
        os.symlink(tmp_path / "gone.png", tree / "cat" / "gone.png")
        return str(tree), [f"{tree / 'cat' / 'gone.png'} is a link to {tmp_path / 'gone.png'}, which does not exist"]
    if case == "name not UTF-8":
        write_image(tree / "cat" / "x.png", (200, 0, 0))
        os.rename(tree / "cat" / "x.png", os.fsencode(tree / "cat") + b"/caf\xe9.png")  # Latin-1, not UTF-8
        return str(tree), ["caf\\xe9.png is not valid UTF-8", "rename it"]
    if case == "decompression bomb":
        png_header(tree / "dog" / "huge.png", 30000, 30000)
        return str(tree), [f"cannot read image {tree / 'dog' / 'huge.png'}", "decompression bomb"]
    raise AssertionError(case)


DATA_CASES = [
    "missing folder",
    "corrupt file",
    "classes differ",
    "empty class",
    "dangling link",
    "name not UTF-8",
    "decompression bomb",
]


@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_data_ends_in_one_line(case, store, tmp_path, capsys):
    data, fragments = bad_data(tmp_path, case)
    one_line("train", ["--data", data, "--epochs", "1", "--image-size", "8", "--n", "1"], capsys, *fragments)
    nothing_left_behind(store)


def test_16_bit_images_are_scaled_not_saturated(tmp_path):
    ramp = np.linspace(0, 65535, 20 * 14).reshape(14, 20)
    for c in ("cat", "dog"):
        for i in range(8):
            (tmp_path / "deep" / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(ramp.astype(np.uint16)).save(tmp_path / "deep" / c / f"{i}.png")  # mode I;16
            Image.fromarray(ramp.astype(np.int32)).save(tmp_path / "deep" / c / f"{i}.tif")  # mode I
    assert Image.open(tmp_path / "deep" / "cat" / "0.png").mode == "I;16"
    assert Image.open(tmp_path / "deep" / "cat" / "0.tif").mode == "I"
    data = load_data(str(tmp_path / "deep"), 8)
    for split in ("train", "val", "test"):
        x = data.split(split).images.float()
        # the ramp spans black to white: a mean near the middle, not the 255 of clipped values
        assert 110 < x.mean() < 145 and x.min() < 30 and x.max() > 225, (split, x.mean(), x.min(), x.max())


@pytest.mark.slow
def test_each_file_counts_once_and_copies_across_splits_are_reported(store, tmp_path, capsys):
    root = tmp_path / "linked"
    for s, k in (("train", 8), ("val", 3), ("test", 3)):
        make_class_tree(root / s, per_class=k, classes=("cat", "dog"), seed=len(s))
    os.symlink(root / "train" / "cat" / "0.png", root / "test" / "dog" / "cat-in-disguise.png")  # other split and class
    os.symlink(root / "train" / "cat" / "1.jpg", root / "train" / "dog" / "1.jpg.link.jpg")  # other class
    os.symlink(root / "val" / "dog", root / "train" / "dog" / "val-dogs")  # a linked folder
    (root / "test" / "cat" / "copy.png").write_bytes((root / "train" / "cat" / "2.png").read_bytes())
    data = load_data(str(root), 8)
    assert [len(data.split(s)) for s in ("train", "val", "test")] == [16, 6, 7]
    assert data.duplicates == ("train/cat/2.png = test/cat/copy.png",)
    capsys.readouterr()
    run_command(
        command("train"), ["--data", str(root), "--epochs", "1", "--image-size", "8", "--n", "1", "--batch-size", "8"]
    )
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "1 image(s) are byte-identical across train/val/test" in warnings[0], warnings
    client = MlflowClient(store)
    (run,) = client.search_runs(
        [client.get_experiment_by_name(names.EXPERIMENT).experiment_id], filter_string=f"params.data = '{root}'"
    )
    assert run.data.tags[names.TAG_DUPLICATES] == "1: train/cat/2.png = test/cat/copy.png"
    assert run.data.params["data"] == str(root)
    for m in client.search_registered_models():  # this case trains and registers on purpose
        client.delete_registered_model(m.name)


def test_mixed_grayscale_rgba_palette_images_train(tmp_path):
    root = tmp_path / "mixed"
    for c, colour in (("cat", (220, 40, 40)), ("dog", (40, 200, 60))):
        for i, mode in enumerate(["L", "RGBA", "P", "RGB", "LA", "1"] * 4):
            write_image(root / c / f"{i}.png", colour, mode=mode, seed=i)
    data = load_data(str(root), 8)
    assert data.channels == 3 and data.train.images.shape[1:] == (3, 8, 8)
    cfg = TrainConfig(epochs=1, image_size=8, n=1, batch_size=8, data=str(root))
    result = fit(cfg, data, torch.device("cpu"), progress=False)
    assert len(result.history) == 1


def test_a_relative_data_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert TrainConfig(data="birds").data == str(tmp_path / "birds")
    assert TrainConfig(data="birds").as_params()["data"] == str(tmp_path / "birds")


# The tracking store, checked before any work: train is given data that does not exist, so an
# error about the store proves the store was looked at first.
ENTRY_ARGS = {
    "train": ["--data", "/no/such/data"],
    "sweep": [*ONE, "--data", "/no/such/data"],
    "analyze": [],
    "gradcam": [],
    "bench": ["--feed-files", "0"],
}
STORES = {
    "postgres://": ("postgres://mlflow@127.0.0.1:5432/mlflow", ["scheme 'postgres'", "postgresql://, not postgres://"]),
    "foo://": ("foo://somewhere", ["MLflow has no store for the scheme 'foo'", "sqlite:///"]),
    "file:": ("file://{tmp}/mlruns", ["is a file store, which MLflow 3 refuses", "sqlite:///mlflow.db"]),
}


@pytest.mark.parametrize("entry", list(ENTRY_ARGS))
@pytest.mark.parametrize("kind", list(STORES))
def test_a_store_that_cannot_be_used_is_one_line_before_any_work(kind, entry, store, tmp_path, monkeypatch, capsys):
    uri, fragments = STORES[kind]
    uri = uri.replace("{tmp}", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    one_line(entry, ENTRY_ARGS[entry], capsys, f"tracking URI {uri!r}", *fragments)
    nothing_left_behind(store)


# MLflow's system metrics sampling interval: "abc" and "0" record nothing, "-1" samples 80 times a
# second (issue 26). Refused before any work, in train and sweep: the data given does not exist, so
# an error about the interval proves it was looked at first, and no run is made.
SAMPLING = "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"


@pytest.mark.parametrize("entry", ["train", "sweep"])
@pytest.mark.parametrize("value", ["abc", "0", "-1", "0.1", "nan", "inf", ""])
def test_a_system_metrics_interval_that_samples_nothing_or_too_often_is_one_line(
    entry, value, store, monkeypatch, capsys
):
    client = MlflowClient(store)
    before = [r.info.run_id for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    monkeypatch.setenv(SAMPLING, value)
    with pytest.raises(SystemExit) as exit_:
        run_command(command(entry), ENTRY_ARGS[entry])
    assert exit_.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    assert f"{SAMPLING}={value!r}" in lines[0] and "a number of seconds >= 0.5" in lines[0], lines[0]
    after = [r.info.run_id for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert after == before, "a refused command made a run"
    nothing_left_behind(store)


@pytest.mark.slow
def test_a_tracking_uri_that_does_not_answer_fails_fast_naming_it(tmp_path):
    """Every entry point as its own process (a hang is what this rules out: gradcam once hung in
    MLflow's retries), all at once: each is mostly imports."""
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = {
        entry: subprocess.Popen(
            [PYTHON, str(ROOT / "entrypoints" / f"{entry}.py"), *args],
            cwd=tmp_path,
            env=subprocess_env(uri),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for entry, args in ENTRY_ARGS.items()
    }
    for proc in started.values():
        out, err = proc.communicate(timeout=120)
        assert_one_line(
            subprocess.CompletedProcess(proc.args, proc.returncode, out, err),
            f"tracking URI '{uri}' does not answer",
            "MLFLOW_TRACKING_URI",
        )


@pytest.mark.slow
def test_a_server_that_refuses_the_user_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    """The README's team server (MLflow's basic-auth app with deploy/basic_auth.ini): a client
    without credentials or with wrong ones is refused in one line, before any work; the admin is
    served."""
    pytest.importorskip("flask_wtf", reason="pip install 'mlflow[auth]' (the test extra)")
    password = "s3cret-for-this-test"
    env = {
        **subprocess_env("unused"),
        "MLFLOW_AUTH_CONFIG_PATH": str(ROOT / "deploy" / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-key",
    }
    server = MlflowServer(empty_store(tmp_path / "server.db"), tmp_path, "--app-name", "basic-auth", env=env).start()
    try:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        mlflow.set_tracking_uri(server.url)
        for user, secret, fragments in (
            (None, None, ["refuses a client without credentials (HTTP 401)"]),
            ("admin", "wrong", ["refuses the credentials of user 'admin' (HTTP 401)"]),
        ):
            for var, value in (("MLFLOW_TRACKING_USERNAME", user), ("MLFLOW_TRACKING_PASSWORD", secret)):
                if value is None:
                    monkeypatch.delenv(var, raising=False)
                else:
                    monkeypatch.setenv(var, value)
            for entry in ("train", "gradcam"):
                one_line(entry, ENTRY_ARGS[entry], capsys, f"tracking server '{server.url}'", *fragments)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        assert not MlflowClient(server.url).search_runs(["0"]), "a refused command made a run"
    finally:
        mlflow.set_tracking_uri(None)
        server.kill()


# Resuming.
RUN_ID = "0123456789abcdef0123456789abcdef"


def test_a_damaged_snapshot_is_named_with_what_to_do(store, capsys):
    client = MlflowClient()
    run_id = client.create_run(client.get_experiment_by_name("Default").experiment_id).info.run_id
    client.set_terminated(run_id, "KILLED")  # an interrupted run, whose snapshot was cut off mid-write
    path = snapshots.path_for(run_id)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 cut off mid-write")
    one_line("train", ["--resume", run_id], capsys, f"the snapshot {path} is damaged", "without --resume")
    nothing_left_behind(store)


def a_resumable_snapshot(run_id: str) -> None:
    snapshots.save({"config": TrainConfig(epochs=2, image_size=8, n=1).as_params()}, snapshots.path_for(run_id))


def test_resuming_a_run_of_another_store_is_one_line(store, capsys):
    a_resumable_snapshot(RUN_ID)
    one_line(
        "train",
        ["--resume", RUN_ID],
        capsys,
        f"resume '{RUN_ID}': the tracking store '{store}' has no such run",
        "MLFLOW_TRACKING_URI",
    )
    nothing_left_behind(store)


def test_resuming_a_deleted_run_is_one_line(store, capsys):
    client = MlflowClient(store)
    run = client.create_run("0")
    client.set_terminated(run.info.run_id, "KILLED")
    client.delete_run(run.info.run_id)
    a_resumable_snapshot(run.info.run_id)
    one_line("train", ["--resume", run.info.run_id], capsys, "the run is deleted", "mlflow runs restore")
    nothing_left_behind(store)
    assert client.get_run(run.info.run_id).info.lifecycle_stage == "deleted"


# Resources.
@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs: room for a run's lock, not for its snapshot."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(
        ["umount", "--lazy", str(mount)], check=True
    )  # this process may still hold the run's lock file there


def test_a_full_disk_while_snapshotting_is_one_line_and_leaves_no_partial_file(store, tiny_disk, monkeypatch, capsys):
    monkeypatch.setenv("RESNORM_HOME", str(tiny_disk))
    line = one_line(
        "train",
        ["--epochs", "2", "--image-size", "8", "--n", "1"],
        capsys,
        f"cannot write the snapshot to {tiny_disk / 'runs'}/",
        "MiB but only",
        "RESNORM_HOME",
    )
    assert not list(tiny_disk.rglob("*.tmp")), "a partial snapshot was left behind"
    client = MlflowClient(store)
    (run,) = client.search_runs(
        [client.get_experiment_by_name(names.EXPERIMENT).experiment_id],
        filter_string="attributes.status = 'FAILED'",
        max_results=1,
    )
    assert "error: " + run.data.tags[names.TAG_ERROR] == line
    nothing_left_behind(store)

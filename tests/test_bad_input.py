"""Bad input, catalogued: every parameter of every entry point given a wrong type or an
out-of-range value, the data problems, and a tracking URI that does not answer.

Each must end in one line ``error: ...`` that names the value and what is allowed, a non-zero
exit, no traceback, no run left RUNNING and nothing in the registry.

The parameter table goes through ``resnorm.cli.run_command`` in this process, the very function
each script's ``main()`` calls: sixty subprocesses would spend minutes importing torch to test
the same code. What needs a process of its own (data on disk, a dead server, ``mlflow run``)
runs as one.
"""

import subprocess

import pytest
import torch
from mlflow.tracking import MlflowClient

from resnorm import names
from resnorm.cli import run_command
from resnorm.config import TrainConfig
from resnorm.data import load_data
from resnorm.engine import train as fit
from tests.conftest import PYTHON, ROOT, free_port, make_class_tree, subprocess_env, write_image

NOT_IN_RANGE = "is not in the range"
ONE = ["--preset", "custom", "--grid", "seed=0"]  # a one-point sweep: under a preset, its grid would decide

# (entry point, arguments, fragments of the one error line: the value and what is allowed)
CASES = [
    # train: every option
    ("train", ["--norm", "batchnorm"], ["'batchnorm' is not one of", "'torch_bn'", "'nn'"]),
    ("train", ["--optimizer", "rmsprop"], ["'rmsprop' is not one of", "'sgd'", "'adam'"]),
    ("train", ["--lr", "-0.1"], ["--lr", "-0.1", f"{NOT_IN_RANGE} x>0"]),
    ("train", ["--lr", "fast"], ["--lr", "'fast' is not a valid float"]),
    ("train", ["--weight-decay", "-1"], ["--weight-decay", "-1", f"{NOT_IN_RANGE} x>=0"]),
    ("train", ["--momentum", "1.5"], ["--momentum", "1.5", f"{NOT_IN_RANGE} 0<=x<=1"]),
    ("train", ["--scheduler", "linear"], ["'linear' is not one of", "'cosine'", "'step'", "'none'"]),
    ("train", ["--epochs", "0"], ["--epochs", f"0 {NOT_IN_RANGE} x>=1"]),
    ("train", ["--epochs", "two"], ["--epochs", "'two' is not a valid integer"]),
    ("train", ["--batch-size", "0"], ["--batch-size", f"0 {NOT_IN_RANGE} x>=1"]),
    ("train", ["--augment", "maybe"], ["--augment", "'maybe' is not a valid boolean"]),
    ("train", ["--n", "0"], ["--n", f"0 {NOT_IN_RANGE} x>=1"]),
    ("train", ["--image-size", "4"], ["--image-size", f"4 {NOT_IN_RANGE} x>=8"]),
    ("train", ["--groups", "0"], ["--groups", f"0 {NOT_IN_RANGE} x>=1"]),
    ("train", ["--norm", "gn", "--groups", "3"], ["groups=3 must divide", "allowed: 1, 2, 4, 8, 16"]),
    ("train", ["--seed", "1.5"], ["--seed", "'1.5' is not a valid integer"]),
    ("train", ["--data", "no-such-folder"], ["data 'no-such-folder' is not a folder", "'digits', 'synthetic'"]),
    ("train", ["--device", "tpu"], ["'tpu' is not one of", "'auto'", "'cpu'", "'cuda'"]),
    ("train", ["--mode", "turbo"], ["'turbo' is not one of", "'auto'", "'plain'", "'fast'"]),
    ("train", ["--resume", "0123456789abcdef"], ["resume '0123456789abcdef': no such run at"]),
    ("train", ["--threads", "-1"], ["--threads", f"-1 {NOT_IN_RANGE} x>=0"]),
    ("train", ["--colour", "red"], ["No such option '--colour'"]),
    # sweep: its own options, then each training option as text
    ("sweep", ["--preset", "everything"], ["'everything' is not one of", "'quick'", "'study'", "'custom'"]),
    ("sweep", ["--preset", "custom", "--grid", "colour=red"], ["unknown parameter 'colour'", "valid: norm, optimizer"]),
    ("sweep", ["--preset", "custom", "--grid", "norm=bn,batchnorm"], ["unknown norm 'batchnorm'", "valid: torch_bn"]),
    ("sweep", ["--seeds", "0"], ["--seeds", f"0 {NOT_IN_RANGE} x>=1"]),
    ("sweep", ["--executor", "slurm"], ["'slurm' is not one of", "'local'", "'ray'"]),
    ("sweep", ["--parallel", "-1"], ["--parallel", f"-1 {NOT_IN_RANGE} x>=0"]),
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
    # bench
    ("bench", ["--norms", "bn,batchnorm"], ["'bn,batchnorm'", "comma-separated list of torch_bn, bn"]),
    ("bench", ["--norms", ""], ["''", "comma-separated list of torch_bn"]),
    ("bench", ["--batch-sizes", "32,big"], ["'32,big'", "batch sizes of at least 2"]),
    ("bench", ["--batch-sizes", "1"], ["'1'", "batch sizes of at least 2"]),
    ("bench", ["--modes", "plain,turbo"], ["'plain,turbo'", "comma-separated list of plain, fast"]),
    ("bench", ["--image-size", "4"], ["--image-size", f"4 {NOT_IN_RANGE} x>=8"]),
    ("bench", ["--steps", "0"], ["--steps", f"0 {NOT_IN_RANGE} x>=1"]),
    ("bench", ["--warmup", "0"], ["--warmup", f"0 {NOT_IN_RANGE} x>=1"]),
    ("bench", ["--classes", "1"], ["--classes", f"1 {NOT_IN_RANGE} x>=2"]),
    ("bench", ["--n", "0"], ["--n", f"0 {NOT_IN_RANGE} x>=1"]),
    ("bench", ["--compile-mode", "fastest"], ["'fastest' is not one of", "'reduce-overhead'", "'none'"]),
    ("bench", ["--feed-files", "-1"], ["--feed-files", f"-1 {NOT_IN_RANGE} x>=0"]),
    ("bench", ["--share", "1,0"], ["'1,0'", "process counts from 1 to 16"]),
    ("bench", ["--share", "two"], ["'two'", "process counts from 1 to 16"]),
    ("bench", ["--device", "tpu"], ["'tpu' is not one of", "'auto'"]),
    # analyze
    ("analyze", ["--experiment", "nope"], ["there is no experiment 'nope'", "run a sweep first"]),
    ("analyze", ["--sweep-run-id", "0123456789abcdef"], ["run '0123456789abcdef' does not exist"]),
    ("analyze", ["--out", "{file}"], ["is a file"]),
]


def command(entry: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"entry_{entry}", ROOT / "entrypoints" / f"{entry}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, entry)


def nothing_left_behind() -> None:
    client = MlflowClient()
    running = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
               if r.info.status == "RUNNING"]
    assert not running, "a rejected command left a run RUNNING"
    assert not client.search_registered_models(), "a rejected command wrote to the registry"


@pytest.mark.parametrize("entry, args, fragments", CASES, ids=[f"{e} {' '.join(a)}" for e, a, _ in CASES])
def test_a_bad_parameter_ends_in_one_line(entry, args, fragments, mlflow_env, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    args = [a.replace("{file}", str(tmp_path / "a-file")) for a in args]
    with pytest.raises(SystemExit) as exit_:
        run_command(command(entry), args)
    assert exit_.value.code not in (0, None)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    nothing_left_behind()


def bad_data(tmp_path):
    corrupt = make_class_tree(tmp_path / "corrupt", per_class=10, classes=("cat", "dog"))
    (corrupt / "cat" / "7.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    split = tmp_path / "split"
    for s in ("train", "val", "test"):
        make_class_tree(split / s, per_class=4, classes=("cat", "dog"))
    write_image(split / "test" / "owl" / "0.png", (0, 0, 200))
    empty = tmp_path / "empty"
    make_class_tree(empty, per_class=6, classes=("cat", "dog"))
    (empty / "owl").mkdir()
    return [
        (str(tmp_path / "missing"), [f"data '{tmp_path / 'missing'}' is not a folder", "'digits', 'synthetic'"]),
        (str(corrupt), [f"cannot read image {corrupt / 'cat' / '7.png'}"]),
        (str(split), ["class folders differ between splits"]),
        (str(empty), ["owl"]),
    ]


def assert_one_line(proc, fragments):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("case", range(4), ids=["missing folder", "corrupt file", "classes differ", "empty class"])
def test_bad_data_ends_in_one_line(case, mlflow_env, tmp_path):
    data, fragments = bad_data(tmp_path)[case]
    proc = subprocess.run([PYTHON, str(ROOT / "entrypoints" / "train.py"), "--data", data, "--epochs", "1"],
                          cwd=tmp_path, env=subprocess_env(mlflow_env), capture_output=True, text=True, timeout=300)
    assert_one_line(proc, fragments)
    nothing_left_behind()


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


@pytest.mark.parametrize("entry", ["train", "sweep", "analyze"])
def test_a_tracking_uri_that_does_not_answer_fails_fast_naming_it(entry, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc = subprocess.run([PYTHON, str(ROOT / "entrypoints" / f"{entry}.py")], cwd=tmp_path,
                          env=subprocess_env(uri), capture_output=True, text=True, timeout=120)
    assert_one_line(proc, [f"tracking URI '{uri}' does not answer", "MLFLOW_TRACKING_URI"])

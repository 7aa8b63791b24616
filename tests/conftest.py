import contextlib
import functools
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from resnorm import names
from resnorm.cli import run_command
from resnorm.machine import prefer_passive_wait, share

ROOT = Path(__file__).resolve().parents[1]


def _load_torch_with_sleeping_threads() -> None:
    """Tests train in this process too: its idle OpenMP threads sleep rather than spin, as every
    resnorm entry point's do (``resnorm.machine`` says why). OpenMP reads the policy once, when torch
    loads; the environment is left as it was, so the processes tests start see the user's. Two
    pytest-xdist workers training in-process at once (bn, 15 epochs at 16 px) took 258 s each with
    spinning threads, 29 s with sleeping ones, 18 s with one thread each (22 s alone)."""
    before = os.environ.get("OMP_WAIT_POLICY")
    prefer_passive_wait()
    import torch  # noqa: F401 - loads OpenMP now

    if before is None:
        del os.environ["OMP_WAIT_POLICY"]


_load_torch_with_sleeping_threads()


def pytest_configure(config):
    """Under pytest-xdist, each worker's own training threads get their share of the cores; the
    controller hands out test files in the order ``pytest_collection_modifyitems`` gives them."""
    # pytest-xdist 3.7 and later reorder loadfile's files by their number of tests unless told not
    # to: the two-test README file then started last, and one worker ran alone for four minutes.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(share(workers))


# Distinct colours per class, so a test can tell from the pixels which class an image was.
COLOURS = {"cat": (220, 40, 40), "dog": (40, 200, 60), "owl": (50, 60, 230)}


def write_image(path: Path, colour, size=(20, 14), mode="RGB", fmt=None, seed=0) -> None:
    """A real image file: a flat colour with a little noise, saved in ``mode``."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour)[None, None, :] + rng.integers(-10, 10, (size[1], size[0], 3)), 0, 255)
    img = Image.fromarray(pixels.astype(np.uint8), "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)


def make_class_tree(root: Path, per_class: int, classes=tuple(COLOURS), seed: int = 0) -> Path:
    """``root/<class>/<i>.png|jpg`` with a mix of RGB, grayscale-free RGBA and palette files."""
    for c in classes:
        for i in range(per_class):
            ext, mode = [("png", "RGB"), ("jpg", "RGB"), ("png", "RGBA"), ("png", "P")][i % 4]
            write_image(root / c / f"{i}.{ext}", COLOURS[c], mode=mode, seed=seed + i)
    return root


# The longest test files first, longest first (seconds in a suite run on 2 cores, 2026-11-30; the files of
# issues 25 and 26 measured 2026-12-06):
# `pytest -n 2 --dist loadfile` hands files to whichever worker is free in this order, and a long
# file handed out last would finish alone. Re-rank when the `--durations` figures change.
FIRST = (
    "test_readme.py",  # 359 (226 alone: its commands run one after another)
    "test_crashes.py",  # 2026-12-07: about 250 (38 SIGKILL and 12 SIGTERM cases)
    "test_crashes_rounds.py",  # about 110
    "test_hostile_store.py",  # about 80
    "test_recovery.py",  # 184
    "test_sweep_cli.py",  # 156
    "test_faults.py",  # 140
    "test_distributed.py",  # 88
    "test_fast.py",  # 86
    "test_run_status.py",  # 67
    "test_adaptive.py",  # 66
    "test_writers.py",  # 126 before its writers were one sweep's workers; 56 alone since
    "test_analysis_e2e.py",  # 49
    "test_cli.py",  # 47
    "test_sequential.py",  # 45
    "test_truthful.py",  # 43
    "test_threads.py",  # 43
    "test_bad_input.py",  # 30
    "test_engine.py",  # 28
)


def pytest_collection_modifyitems(items):
    """Compiling on the CPU takes tens of seconds: a `compile` test is a `slow` one too."""
    for item in items:
        if item.get_closest_marker("compile"):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable: the rest keep their order


@pytest.fixture(autouse=True)
def _own_torch_threads():
    """A training job run in this process sets torch's thread count for itself: put back the worker's own
    afterwards, so that what a test computes does not depend on which tests ran before it (a run's last
    digits of accuracy move with the thread count)."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _own_resnorm_home(tmp_path, monkeypatch):
    """Checkpoints and decoded-image caches of this test only, never the user's ~/.resnorm."""
    monkeypatch.setenv("RESNORM_HOME", str(tmp_path / "resnorm-home"))


@pytest.fixture
def image_tree(tmp_path):
    return make_class_tree(tmp_path / "tree", per_class=20)


@pytest.fixture
def split_folder(tmp_path):
    root = tmp_path / "splits"
    for split, k in (("train", 8), ("val", 3), ("test", 4)):
        make_class_tree(root / split, per_class=k, seed=hash(split) % 100)
    return root


@functools.cache
def _migrated_store() -> tempfile.TemporaryDirectory:
    """This process's empty store (``mlflow.db`` in the folder), its tables made once by MLflow;
    the folder is removed when the process ends."""
    folder = tempfile.TemporaryDirectory(prefix="resnorm-empty-store-")
    MlflowClient(f"sqlite:///{folder.name}/mlflow.db").search_experiments()
    return folder


def empty_store(path: Path) -> str:
    """The URI of a real, empty MLflow SQLite store at ``path``: a copy of the one MLflow created
    for this process, since creating the tables takes 1.5-5 s per store on 2 cores and copying the
    file 0.06 s. The README's commands start from no store at all."""
    shutil.copyfile(Path(_migrated_store().name) / "mlflow.db", path)
    return f"sqlite:///{path}"


@contextlib.contextmanager
def tracking_store(folder: Path) -> Iterator[str]:
    """The MLflow SQLite store ``folder/mlflow.db`` (a new, empty one unless it is there already),
    with ``folder`` the working directory (and holding RESNORM_HOME) while it is active. The
    ``mlflow_env`` fixture for one test; module-scoped fixtures use it directly to train once for
    many tests, or to work in this process on a store a process made."""
    path = folder / "mlflow.db"
    uri = f"sqlite:///{path}" if path.exists() else empty_store(path)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("RESNORM_HOME", str(folder / "resnorm-home"))  # snapshots and caches of this store only
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            mp.delenv(var, raising=False)
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(experiment_id="0")  # forget an experiment cached from another store
        mp.delenv("MLFLOW_EXPERIMENT_ID")  # ...which set_experiment also exports
        try:
            yield uri
        finally:
            while mlflow.active_run():
                mlflow.end_run()
            mlflow.set_tracking_uri(None)


@pytest.fixture
def mlflow_env(tmp_path):
    """A real, empty MLflow SQLite store in the test's folder; the test runs from that folder."""
    with tracking_store(tmp_path) as uri:
        yield uri


# MLflow 3's server also starts a job runner (a process pool for its GenAI jobs) that the project
# never uses: 7 of its 17 seconds to start on 2 cores, and CPU after. Every server a test starts
# goes without it (README, "Tracking server").
NO_SERVER_JOBS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def subprocess_env(tracking_uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(NO_SERVER_JOBS)
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


PYTHON = sys.executable

# One epoch at the digits' own 8 px with a ResNet-8: seconds, for tests about anything but learning.
TINY = ["--epochs", "1", "--image-size", "8", "--n", "1"]


def mlflow_run_args(entry: str, **params) -> list[str]:
    """``mlflow run`` of this project's ``entry``, one ``-P key=value`` per param, as the README runs it."""
    p_args = [arg for key, value in params.items() for arg in ("-P", f"{key}={value}")]
    return [
        "mlflow",
        "run",
        str(ROOT),
        "-e",
        entry,
        *p_args,
        "--env-manager",
        "local",
        "--experiment-name",
        names.EXPERIMENT,
    ]


def assert_one_line(proc, *fragments: str) -> str:
    """A finished process failed with exactly one ``error:`` line holding every fragment, and no
    traceback; returns that line."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real ``mlflow server`` on loopback in its own process group, which a test may kill
    (every worker with it, as a crash would) and start again on the same port and store."""

    def __init__(
        self, backend_uri: str, folder: Path, *extra: str, env: dict[str, str] | None = None, workers: int = 1
    ) -> None:
        """One uvicorn worker unless asked (a second one costs 3.5 s and a process to start on 2 cores)."""
        self.backend_uri, self.folder, self.extra, self.workers = backend_uri, folder, extra, workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env or subprocess_env(self.url)
        self.proc = None

    def start(self, timeout: float = 180) -> "MlflowServer":
        import subprocess
        import time
        import urllib.request

        cmd = [
            "mlflow",
            "server",
            "--backend-store-uri",
            self.backend_uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--artifacts-destination",
            str(self.folder / "artifacts"),
            *self.extra,
        ]
        self.log = open(self.folder / f"server-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            cmd, cwd=self.folder, env=self.env, stdout=self.log, stderr=self.log, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited: {(self.folder / f'server-{self.port}.log').read_text()[-2000:]}"
                )
            try:
                urllib.request.urlopen(self.url + "/health", timeout=1).close()
                return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("mlflow server did not start")

    def kill(self) -> None:
        import signal

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None
        self.log.close()


@pytest.fixture
def sqlite_server(tmp_path):
    """An ``mlflow server`` over a fresh SQLite store in the test's folder."""
    server = MlflowServer(empty_store(tmp_path / "server.db"), tmp_path).start()
    yield server
    server.kill()


def stop_group(proc) -> None:
    """SIGTERM a process started with start_new_session, and its whole group; SIGKILL after 30 s."""
    import signal
    import subprocess

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# The catalogue's helpers: an entry point run in this process, as its script's main() runs it, on
# one store per test module.
def command(entry: str):
    """The click command of ``entrypoints/{entry}.py`` (the scripts are run by path, not imported as a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"entry_{entry}", ROOT / "entrypoints" / f"{entry}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, entry)


def nothing_left_behind(uri: str) -> None:
    client = MlflowClient(uri)
    running = [
        r
        for e in client.search_experiments()
        for r in client.search_runs([e.experiment_id])
        if r.info.status == "RUNNING"
    ]
    assert not running, "a rejected command left a run RUNNING"
    assert not client.search_registered_models(), "a rejected command wrote to the registry"


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    """One real SQLite store for the module's cases; creating its tables is the slow part."""
    return empty_store(tmp_path_factory.mktemp("store") / "mlflow.db")


@pytest.fixture
def store(shared_store, tmp_path, monkeypatch):
    """``mlflow_env`` on the module's store; afterwards whatever a failed case left is cleared, so
    that the next case is judged on its own."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_store)
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    mlflow.set_tracking_uri(shared_store)
    mlflow.set_experiment(experiment_id="0")  # forget an experiment cached by the previous case
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    yield shared_store
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    client = MlflowClient(shared_store)
    for e in client.search_experiments():
        for r in client.search_runs([e.experiment_id]):
            if r.info.status == "RUNNING":
                client.set_terminated(r.info.run_id, "KILLED")
    for m in client.search_registered_models():
        client.delete_registered_model(m.name)


def one_line(entry: str, args: list[str], capsys, *fragments: str) -> str:
    """Run an entry point in this process; it must exit non-zero with one error line holding the fragments."""
    with pytest.raises(SystemExit) as exit_:
        run_command(command(entry), args)
    assert exit_.value.code not in (0, None)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]

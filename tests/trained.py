"""Helpers for tests that need trained, registered models: a real MLflow store that lives for a
whole test module (training once per module keeps these tests quick), and an environment in
which `resnorm` cannot be imported, as on a machine that only has the registered model."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import torch

from resnorm.config import Launch, TrainConfig
from resnorm.data import DataBundle
from resnorm.engine import TrainResult, train
from resnorm.runlog import training_run

CPU = torch.device("cpu")


@contextlib.contextmanager
def tracking_store(folder: Path) -> Iterator[str]:
    """What the `mlflow_env` fixture does, for a module-scoped fixture: an empty SQLite store in
    ``folder``, which is also the working directory while it is active."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
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


def train_and_register(cfg: TrainConfig, data: DataBundle) -> tuple[str, TrainResult, int]:
    """Train ``cfg`` through the real tracking code: (run id, result, registered version)."""
    with training_run(cfg, data, Launch(device="cpu"), CPU) as run:
        result = train(cfg, data, CPU, on_epoch=run, progress=False)
        version = run.log_result(cfg, data, result)
    return run.run_id, result, version


# Installed as sitecustomize.py, it runs first in every Python process of that environment,
# server workers included. Clearing PYTHONPATH alone is not enough: `pip install -e .` makes
# resnorm importable from any directory.
_HIDE_RESNORM = '''\
import sys


class _HideResnorm:
    """Behave as if resnorm were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "resnorm" or name.startswith("resnorm."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by resnorm's tests)", name=name)
        return None


sys.meta_path.insert(0, _HideResnorm())
'''


def env_without_resnorm(folder: Path, tracking_uri: str) -> dict[str, str]:
    """Environment variables for a subprocess that cannot import resnorm; run it with cwd outside
    the repository."""
    hide = folder / "hide_resnorm"
    hide.mkdir(exist_ok=True)
    (hide / "sitecustomize.py").write_text(_HIDE_RESNORM)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(hide)  # nothing but the hiding hook
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env["PYTHONUNBUFFERED"] = "1"
    return env

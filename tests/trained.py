"""Helpers for tests that need trained, registered models (trained once per module, in a store
from ``tests.conftest.tracking_store``, keeps these tests quick), and an environment in which
`resnorm` cannot be imported, as on a machine that only has the registered model."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from resnorm.bundle import DataBundle
from resnorm.config import Launch, TrainConfig
from resnorm.engine import TrainResult, train
from resnorm.trainrun import training_run

CPU = torch.device("cpu")


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

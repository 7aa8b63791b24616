"""Where a run's checkpoint lives on this machine, and how it is written and read.

A checkpoint is written after every epoch so that a run killed at any moment (``kill -9``, a
lost node, a tracking server that went away) costs at most one epoch: ``train --resume RUN_ID``
continues it into the same MLflow run. It lives in a local folder keyed by the run id,
``$RESNORM_HOME/runs/<run_id>/checkpoint.pt`` (``RESNORM_HOME`` defaults to ``~/.resnorm``), and
is removed once the run has FINISHED with its model logged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

FILE = "checkpoint.pt"


def home() -> Path:
    return Path(os.environ.get("RESNORM_HOME") or Path.home() / ".resnorm")


def path_for(run_id: str) -> Path:
    """The checkpoint file of ``run_id`` on this machine (it may not exist)."""
    return home() / "runs" / run_id / FILE


def save(state: dict[str, Any], path: Path) -> None:
    """Write atomically: a temporary file renamed over the old one, so a kill mid-write leaves
    the previous epoch's checkpoint intact rather than a truncated file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint without running pickled code (tensors, numbers, strings, lists, dicts)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    try:
        path.parent.rmdir()
    except OSError:  # something else lives there; leave the folder
        pass

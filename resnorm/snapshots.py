"""Where a run's per-epoch training checkpoint (snapshot) lives on this machine, and how it is written and read.

A checkpoint is written after every epoch so that a run killed at any moment (``kill -9``, a
lost node, a tracking server that went away) costs at most one epoch: ``train --resume RUN_ID``
continues it into the same MLflow run. It lives in a local folder keyed by the run id,
``$RESNORM_HOME/runs/<run_id>/checkpoint.pt`` (``RESNORM_HOME`` defaults to ``~/.resnorm``), and
is removed once the run has FINISHED with its model logged.
"""

from __future__ import annotations

import fcntl
import io
import os
import pickle
import shutil
from pathlib import Path
from typing import IO, Any

import torch

from resnorm.errors import ConfigError, ResnormError

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
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch reports a full disk as a RuntimeError of its zip writer
        tmp.unlink(missing_ok=True)
        raise ResnormError(_save_failed(state, path.parent, e)) from None


def _save_failed(state: dict[str, Any], folder: Path, error: BaseException) -> str:
    """Why a checkpoint could not be written: the folder, the space it needs and the space there is."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    need = buffer.getbuffer().nbytes
    free = shutil.disk_usage(folder).free
    if free < need:
        return (f"cannot write the checkpoint to {folder}: it needs {need / 2**20:.1f} MiB but only {free / 2**20:.1f} "
                f"MiB are free there; free some space or point RESNORM_HOME at a disk with room")
    return f"cannot write the checkpoint to {folder} ({need / 2**20:.1f} MiB): {' '.join(str(error).split())[:300]}"


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint without running pickled code (tensors, numbers, strings, lists, dicts)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
        why = " ".join(str(e).split())[:200] or type(e).__name__
        raise ConfigError(
            f"the checkpoint {path} is damaged and cannot be resumed ({why}); start the run anew without --resume, "
            f"and delete {path.parent} once you no longer want it"
        ) from None


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_name("lock").unlink(missing_ok=True)
    try:
        path.parent.rmdir()
    except OSError:  # something else lives there; leave the folder
        pass


def lock(run_id: str) -> IO:
    """Hold the run's lock for the life of this process; refuse if another live process holds it.

    Two processes training one run would interleave their epochs. The kernel drops the lock
    when its process dies, even by ``kill -9``, so an interrupted run is free to resume.
    """
    path = path_for(run_id).with_name("lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        raise ConfigError(f"run {run_id} is being trained by another live process ({handle.read().strip()}); "
                          "wait for it or stop it before resuming") from None
    handle.truncate(0)
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle

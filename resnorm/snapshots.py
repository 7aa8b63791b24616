"""A run's per-epoch snapshot: where it lives on this machine, how it is written and read, and
the lock that keeps one process per run.

A snapshot (model, optimiser, schedule, random states, the history and the best epoch so far) is
written after every epoch so that a run killed at any moment (``kill -9``, a lost node, a tracking
server that went away) costs at most one epoch: ``train --resume RUN_ID`` continues it into the same
MLflow run. It lives in a local folder keyed by the run id, ``$RESNORM_HOME/runs/<run_id>/snapshot.pt``
(``RESNORM_HOME`` defaults to ``~/.resnorm``), and is removed once the run has FINISHED with its
model logged.
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

from resnorm import home
from resnorm.errors import ConfigError, ResnormError, RunBusy

FILE = "snapshot.pt"


def path_for(run_id: str) -> Path:
    """The snapshot file of ``run_id`` on this machine (it may not exist)."""
    return home.run_dir(run_id) / FILE


def save(state: dict[str, Any], path: Path) -> None:
    """Write atomically: a temporary file renamed over the old one, so a kill mid-write leaves
    the previous epoch's snapshot intact rather than a truncated file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch reports a full disk as a RuntimeError of its zip writer
        tmp.unlink(missing_ok=True)
        raise ResnormError(_save_failed(state, path.parent, e)) from None


def _save_failed(state: dict[str, Any], folder: Path, error: BaseException) -> str:
    """Why a snapshot could not be written: the folder, the space it needs and the space there is."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    need = buffer.getbuffer().nbytes
    free = shutil.disk_usage(folder).free
    if free < need:
        return (f"cannot write the snapshot to {folder}: it needs {need / 2**20:.1f} MiB but only {free / 2**20:.1f} "
                f"MiB are free there; free some space or point RESNORM_HOME at a disk with room")
    return f"cannot write the snapshot to {folder} ({need / 2**20:.1f} MiB): {' '.join(str(error).split())[:300]}"


def load(path: Path) -> dict[str, Any]:
    """Read a snapshot without running pickled code (tensors, numbers, strings, lists, dicts)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
        why = " ".join(str(e).split())[:200] or type(e).__name__
        raise ConfigError(
            f"the snapshot {path} is damaged and cannot be resumed ({why}); start the run anew without --resume, "
            f"and delete {path.parent} once you no longer want it"
        ) from None


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_name("lock").unlink(missing_ok=True)
    try:
        path.parent.rmdir()
    except OSError:  # something else lives there; leave the folder
        pass


def is_locked(run_id: str) -> bool:
    """Whether a live process on this machine holds the run's lock (is training it)."""
    path = path_for(run_id).with_name("lock")
    if not path.exists():
        return False
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def lock(run_id: str) -> IO:
    """Hold the run's lock for the life of this process; refuse if another live process holds it.

    Two processes training one run would interleave their epochs. The kernel drops the lock
    when its process dies, even by ``kill -9``, so an interrupted run is free to resume.
    """
    path = path_for(run_id).with_name("lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")
    except OSError as e:
        raise ResnormError(f"cannot write the run's snapshot folder {path.parent} ({e.strerror or e}); "
                           "set RESNORM_HOME to a writable folder") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        raise RunBusy(f"run {run_id} is being trained by another live process ({holder}); "
                      "wait for it or stop it before resuming", run_id) from None
    handle.truncate(0)
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle

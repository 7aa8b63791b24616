"""A run's per-epoch snapshot: where it lives on this machine, how it is written and read, and
the lock that keeps one process per run.

A snapshot (model, optimiser, schedule, random states, the history and the best epoch so far) is
written after every epoch so that a run killed at any moment (``kill -9``, a lost node, a tracking
server that went away) costs at most one epoch: ``train --resume RUN_ID`` continues it into the same
MLflow run. It lives in a local folder keyed by the run id, ``$RESNORM_HOME/runs/<run_id>/snapshot.pt``
(``RESNORM_HOME`` defaults to ``~/.resnorm``), and is removed once the run has FINISHED with its
model logged. A background thread (``Uploader``) copies it to the run's artifact store as
``snapshot/snapshot.pt`` after every epoch, where every machine that reaches the tracking server
finds it: a resume on another machine, with an empty ``RESNORM_HOME``, downloads it (``fetch``);
the local file is then a cache. Both are removed once the run has FINISHED.
"""

from __future__ import annotations

import fcntl
import io
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient

from resnorm import home, names
from resnorm.errors import ConfigError, ResnormError, RunBusy, warn
from resnorm.outbox import RetryingSender

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
        return (
            f"cannot write the snapshot to {folder}: it needs {need / 2**20:.1f} MiB but only {free / 2**20:.1f} "
            f"MiB are free there; free some space or point RESNORM_HOME at a disk with room"
        )
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
        (path.parent / "upload").rmdir()
    except OSError:
        pass
    try:
        path.parent.rmdir()
    except OSError:  # something else lives there; leave the folder
        pass


def is_locked(run_id: str) -> bool:
    """Whether a live process on this machine holds the run's lock (is training it)."""
    return holder(run_id) is not None


def holder(run_id: str) -> int | None:
    """The pid of the live process on this machine that holds the run's lock, or None."""
    path = path_for(run_id).with_name("lock")
    if not path.exists():
        return None
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            words = handle.read().split()
            return int(words[-1]) if words and words[-1].isdigit() else 0
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None


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
        raise ResnormError(
            f"cannot write the run's snapshot folder {path.parent} ({e.strerror or e}); "
            "set RESNORM_HOME to a writable folder"
        ) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        raise RunBusy(
            f"run {run_id} is being trained by another live process ({holder}); wait for it or stop it before resuming",
            run_id,
        ) from None
    handle.truncate(0)
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


def artifact_path() -> str:
    """The snapshot's path among the run's artifacts."""
    return f"{names.SNAPSHOT_ARTIFACT_DIR}/{FILE}"


def stored(client: MlflowClient, run_id: str) -> bool:
    """Whether the run's artifact store holds a snapshot."""
    return any(f.path == artifact_path() for f in client.list_artifacts(run_id, names.SNAPSHOT_ARTIFACT_DIR))


def epochs_in(path: Path) -> int:
    return len(load(path)["history"])


def fetch(client: MlflowClient, run_id: str) -> Path | None:
    """The run's snapshot on this machine, brought from its artifact store when the local copy is
    missing, damaged or holds fewer epochs (a cache left by an earlier attempt); a damaged copy on
    either side is passed over, with a warning, when the other is good (a ``kill -9`` during an
    upload can leave one). None when neither exists."""
    local = path_for(run_id)
    if stored(client, run_id):
        local.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=local.parent) as tmp:
            got = Path(client.download_artifacts(run_id, artifact_path(), tmp))
            mine = _epochs_or_none(local) if local.exists() else None
            theirs = _epochs_or_none(got)
            if theirs is None and mine is not None:
                warn(f"the stored snapshot of run {run_id} is damaged; resuming from {local} ({mine} epochs)")
            if theirs is not None and (mine is None or theirs > mine):
                if local.exists() and mine is None:
                    warn(f"the snapshot {local} is damaged; resuming from the run's stored one ({theirs} epochs)")
                os.replace(got, local)
    return local if local.exists() else None


def _epochs_or_none(path: Path) -> int | None:
    try:
        return epochs_in(path)
    except ConfigError:
        return None


def forget(client: MlflowClient, run_id: str) -> None:
    """Delete the stored snapshot of a FINISHED run (a store that refuses deletes keeps it: a
    FINISHED run is never resumed, so it is only wasted space)."""
    try:
        repo = get_artifact_repository(client.get_run(run_id).info.artifact_uri)
        repo.delete_artifacts(names.SNAPSHOT_ARTIFACT_DIR)
    except Exception as e:  # noqa: BLE001 - the run is complete; a leftover file harms nothing
        warn(f"could not delete the snapshot of finished run {run_id} from its artifact store: {e}")


class Uploader(RetryingSender):
    """Copies a run's snapshot to its artifact store in the background, latest first.

    ``offer(epoch)`` says the local file now holds ``epoch``; the sender takes a hard link of the
    file (a later epoch's atomic replace leaves the link intact), uploads it and calls
    ``on_stored(epoch)``. Epochs offered during an upload are folded into the next one, so a slow
    store gets every K-th epoch rather than a queue, and training never waits. While the tracking
    server does not answer, it retries every few seconds.
    """

    def __init__(
        self, run_id: str, client: MlflowClient, path: Path, on_stored: Callable[[int], None], tracking_uri: str = ""
    ) -> None:
        self.run_id, self.client, self.path, self.on_stored = run_id, client, path, on_stored
        self.wanted = self.stored = 0  # epochs: offered, and held by the store
        self.uploads: list[tuple[float, int]] = []  # (seconds, bytes) of each upload
        super().__init__(f"snapshot-{run_id}", tracking_uri)

    def offer(self, epoch: int) -> None:
        with self.cond:
            self.wanted = max(self.wanted, epoch)
            self.cond.notify_all()

    def pending_work(self) -> bool:
        return self.stored < self.wanted

    def send_once(self) -> str | None:
        """Upload the file as it is now."""
        with self.cond:
            epoch = self.wanted
        why = self._upload()
        if why is None:
            self.on_stored(epoch)  # first: once drain() sees the epoch stored, its metrics are on their way
            with self.cond:
                self.stored = max(self.stored, epoch)
        return why

    def _upload(self) -> str | None:
        if not self.path.exists():  # a training run without snapshots (the library's default): nothing to keep
            return None
        why = self.probe()
        if why is not None:
            return why
        staging = self.path.parent / "upload"
        staging.mkdir(parents=True, exist_ok=True)
        link = staging / FILE
        try:
            link.unlink(missing_ok=True)
            os.link(self.path, link)
            start = time.perf_counter()
            self.client.log_artifact(self.run_id, str(link), names.SNAPSHOT_ARTIFACT_DIR)
            self.uploads.append((time.perf_counter() - start, link.stat().st_size))
        except Exception as e:  # noqa: BLE001 - any failure: keep the epoch, retry later
            return f"{type(e).__name__}: {e}"
        finally:
            link.unlink(missing_ok=True)
        return None

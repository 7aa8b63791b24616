"""Continuing an interrupted run: what it trained (its configuration, from its snapshot), the
threads it trained with, and the data it trained on, which a resume must find again."""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from resnorm import names, snapshots
from resnorm.bundle import SPLITS, DataBundle
from resnorm.config import TrainConfig
from resnorm.errors import ConfigError
from resnorm.jobruns import check_resumable_run
from resnorm.tracking import FINISHED

DATASET_CONTEXTS = {"train": "training", "val": "validation", "test": "test"}  # a run's dataset inputs, per split


@dataclass(frozen=True)
class Resumed:
    """What continuing an interrupted run takes from it: its configuration (from its snapshot), the
    threads it trained with (on the CPU the thread count changes the sums) and the data it trained on."""

    run_id: str
    config: TrainConfig
    threads: int | None  # the run's torch_threads; None for a run that did not log it
    digests: dict[str, str]  # split -> the digest of the dataset input the run logged
    split_sizes: str  # the run's resnorm.split_sizes tag ("" when absent)

    def check_data(self, data: DataBundle) -> None:
        """Refuse, naming what changed, data other than the run's: its epochs so far trained on that data."""
        changed = [
            f"{s} digest {self.digests[s]} (now {data.digest(s)})"
            for s in SPLITS
            if s in self.digests and self.digests[s] != data.digest(s)
        ]
        sizes = split_sizes(data)
        if self.split_sizes and self.split_sizes != sizes:
            changed.append(f"split sizes {self.split_sizes} (now {sizes})")
        if changed:
            raise ConfigError(
                f"resume {self.run_id!r}: {self.config.data} is not the data the run trained on: "
                f"{'; '.join(changed)}; resume it with that data, or start a new run"
            )


def split_sizes(data: DataBundle) -> str:
    """Images per split, as the run's ``resnorm.split_sizes`` tag holds them: ``train=1257 val=270 test=270``."""
    return " ".join(f"{s}={len(data.split(s))}" for s in SPLITS)


def resumable(run_id: str) -> Resumed:
    """The interrupted run ``run_id``: its configuration, read from its snapshot (the one in the
    run's artifact store, or this machine's copy when that holds more epochs), its threads and its
    data. The run must exist in this store, not deleted, not FINISHED."""
    client = MlflowClient()
    run = check_resumable_run(run_id)
    if run.info.status == FINISHED:
        raise ConfigError(f"resume {run_id!r}: the run has FINISHED; there is nothing to resume")
    path = snapshots.fetch(client, run_id)
    if path is None:
        raise ConfigError(
            f"resume {run_id!r}: no snapshot, neither in the run's artifacts nor at {snapshots.path_for(run_id)}; "
            "the run ended before its first epoch did, so start it again"
        )
    config = TrainConfig.from_params(snapshots.load(path)["config"])
    threads = run.data.params.get(names.PARAM_TORCH_THREADS)
    contexts = {context: split for split, context in DATASET_CONTEXTS.items()}
    digests = {}
    for d in run.inputs.dataset_inputs if run.inputs else ():
        context = next((t.value for t in d.tags if t.key == MLFLOW_DATASET_CONTEXT), None)
        if context in contexts:
            digests[contexts[context]] = d.dataset.digest
    return Resumed(
        run_id,
        config,
        int(threads) if threads and threads.isdigit() else None,
        digests,
        run.data.tags.get(names.TAG_SPLIT_SIZES, ""),
    )

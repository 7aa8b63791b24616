"""The MLflow names that join training, sweeps and analysis. Import these; never retype them.

Deviation from DESIGN.md, on purpose: the kept (best-validation) model's final scores carry a
``best_`` prefix (``best_val_accuracy``, ``best_test_macro_f1``, ...). Without it they would
share the keys ``train_accuracy`` and ``val_accuracy`` with the per-epoch curves: MLflow would
append them to those curves, and ``search_runs`` (which returns the last value of a key) could
not tell a curve's last epoch from the kept model.
"""

from __future__ import annotations

EXPERIMENT = "resnorm"

# Per-epoch metrics, step = epoch (1-based).
TRAIN_LOSS = "train_loss"
TRAIN_ACCURACY = "train_accuracy"
VAL_LOSS = "val_loss"
VAL_ACCURACY = "val_accuracy"
VAL_MACRO_F1 = "val_macro_f1"
LR = "lr"
EPOCH_SECONDS = "epoch_seconds"
IMAGES_PER_SECOND = "images_per_second"
EPOCH_METRICS = (TRAIN_LOSS, TRAIN_ACCURACY, VAL_LOSS, VAL_ACCURACY, VAL_MACRO_F1, LR, EPOCH_SECONDS, IMAGES_PER_SECOND)

# Final metrics of the kept model, measured in eval mode without augmentation.
BEST_EPOCH = "best_epoch"
COMPILE_SECONDS = "compile_seconds"  # fast path: time the first compiled calls took
OVERHEAD_SECONDS = "overhead_seconds"  # time the epoch loop spent on checkpoints and handing epochs to MLflow
SCORES = ("accuracy", "micro_f1", "macro_f1")


def final_metric(split: str, score: str) -> str:
    """Key of a final score of the kept model, e.g. ``best_test_accuracy``."""
    return f"best_{split}_{score}"


# Tags.
TAG_ERROR = "resnorm.error"  # why a FAILED run failed
TAG_DEVICE = "resnorm.device"  # cpu, cuda:0, ...
TAG_SPEED = "resnorm.speed"  # the training path that ran: plain, or fast with its settings
TAG_COMPILE_FALLBACK = "resnorm.compile_fallback"  # why torch.compile failed (training went on eagerly)
TAG_PRESET = "resnorm.preset"  # the sweep preset a run belongs to (parent and children)
TAG_SWEEP = "resnorm.sweep"  # "true" on a sweep's parent run

# Artifacts and the registry.
MODEL_ARTIFACT = "model"
CHAMPION = "champion"


def registered_model(norm: str) -> str:
    return f"resnorm-{norm}"

# The kept model's weights and what rebuilds its ResNet (GradCAM needs the nn.Module, which the
# registered pt2 program is not): run artifacts next to the model.
CHECKPOINT_WEIGHTS = "checkpoint/weights.pt"  # the state dict, for torch.load(weights_only=True)
CHECKPOINT_CONFIG = "checkpoint/model.json"  # n, num_classes, norm, in_channels, groups, classes, ...

# Launch settings logged as params (not part of TrainConfig: they do not change what is trained,
# but on the CPU the thread count changes the floating-point sums, so runs compare only with equals).
PARAM_THREADS = "threads"  # as asked: 0 = every CPU the process may use
PARAM_TORCH_THREADS = "torch_threads"  # what torch.set_num_threads was given

# The per-epoch resume snapshot, kept in the run's artifact store while the run is unfinished, so
# that any machine reaching the tracking server can resume it (resnorm.snapshots).
SNAPSHOT_ARTIFACT_DIR = "snapshot"
TAG_TRIAL = "resnorm.trial"  # on a Ray sweep's child: the Tune trial that trains it (a retried trial finds its run)

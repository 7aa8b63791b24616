"""The MLflow names that join training, sweeps and analysis. Import these; never retype them.

Deviation from DESIGN.md, on purpose: the kept (best-validation) model's final scores carry a
``best_`` prefix (``best_val_accuracy``, ``best_test_macro_f1``, ...). Without it they would
share the keys ``train_accuracy`` and ``val_accuracy`` with the per-epoch curves: MLflow would
append them to those curves, and ``search_runs`` (which returns the last value of a key) could
not tell a curve's last epoch from the kept model.
"""

from __future__ import annotations

EXPERIMENT = "resnorm"
BENCH_EXPERIMENT = "resnorm-bench"  # where `bench` logs, unless told otherwise

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
OVERHEAD_SECONDS = "overhead_seconds"  # time the epoch loop spent on snapshots and handing epochs to MLflow
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
TAG_DUPLICATES = "resnorm.duplicates"  # images byte-identical across train/val/test: "n: a = b; ..."
TAG_RESUMED = "resnorm.resumed_run"  # on the run `mlflow run -P resume=...` made: the run it continued

# On the experiments resnorm logs to: MLflow 3's UI then opens them on their training runs, not on
# its GenAI pages (the value is one of the UI's experiment kinds).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"

# Params beside the training configuration's own fields (TrainConfig.as_params).
PARAM_NUM_CLASSES = "num_classes"
PARAM_THREADS = "threads"  # as asked: 0 = every CPU the process may use (a launch setting, see config.Launch)
PARAM_TORCH_THREADS = "torch_threads"  # intra-op threads the run trained with (the `threads` param resolved)

# A failed run's full traceback (its one-line reason is the resnorm.error tag).
TRACEBACK_ARTIFACT = "error/traceback.txt"

# Artifacts and the registry.
MODEL_ARTIFACT = "model"
CHAMPION = "champion"
REGISTERED_MODEL_PREFIX = "resnorm-"


def registered_model(norm: str) -> str:
    """The registered model of a norm's runs, e.g. ``resnorm-bn``."""
    return f"{REGISTERED_MODEL_PREFIX}{norm}"


# The kept model's weights and what rebuilds its ResNet (GradCAM needs the nn.Module, which the
# registered pt2 program is not): run artifacts next to the model (see resnorm.weights).
WEIGHTS_STATE = "weights/state_dict.pt"  # the state dict, for torch.load(weights_only=True)
WEIGHTS_CONFIG = "weights/model.json"  # n, num_classes, norm, in_channels, groups, classes, ...

# Provenance a training run records for the report (tags).
TAG_VERSIONS = "resnorm.versions"  # "torch 2.x, mlflow 3.x" of the process that trained
TAG_SPLIT_SIZES = "resnorm.split_sizes"  # "train=1257 val=270 test=270": images per split

# Analysis runs: linked both ways with the sweep they analyse.
TAG_ANALYSIS_OF = "resnorm.analysis_of"  # on an analysis run: the sweep's parent run id
TAG_ANALYSIS = "resnorm.analysis"  # on a sweep's parent: its latest analysis run id


MAX_KEY_LENGTH = 250  # MLflow's limit on a metric key


def analysis_metric(table: str, index: int, row: str, stat: str) -> str:
    """Key of a headline figure of an analysis run, e.g. ``table3/02 bn/test_accuracy_mean``: the
    row's position makes it unique (two labels may clean to one); the label is cut to fit MLflow's
    250 characters. Characters MLflow does not allow in a key (anything but letters, digits,
    ``_-. /``) become ``_``."""
    clean = "".join(c if c.isalnum() or c in "_-. " else "_" for c in row)
    room = MAX_KEY_LENGTH - len(f"{table}/{index:02d} /{stat}")
    return f"{table}/{index:02d} {clean[: max(0, room)]}/{stat}"


# The per-epoch resume snapshot, kept in the run's artifact store while the run is unfinished, so
# that any machine reaching the tracking server can resume it (resnorm.snapshots).
SNAPSHOT_ARTIFACT_DIR = "snapshot"
SWEEP_PLAN = "sweep.json"  # a sweep parent's artifact: every planned configuration and seed, and its re-run command
# An adaptive sweep's parent, step = round: claims decided after the round, children planned up to it.
CLAIMS_DECIDED = "claims_decided"
CHILDREN_PLANNED = "children_planned"
TAG_CONFIG = "resnorm.config"  # on a sweep's child: its configuration by the settings that vary ("norm=bn")
TAG_TRIAL = "resnorm.trial"  # on a Ray sweep's child: the Tune trial that trains it (a retried trial finds its run)

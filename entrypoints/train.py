"""Train one ResNet with one normalisation and track it in MLflow (the `train` entry point).

mlflow run . -e train -P norm=ln --env-manager local
python entrypoints/train.py --norm ln --epochs 2
"""

from __future__ import annotations

import os
import sys

import click

# MLproject runs this file by path; make the repository's `resnorm` importable without an install.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnorm.machine import prefer_passive_wait  # noqa: E402

prefer_passive_wait()  # before torch loads OpenMP: idle threads sleep, so a busy neighbour costs little

from resnorm import cli  # noqa: E402
from resnorm.config import DEVICES, MODES, OPTIMIZERS, SCHEDULERS, Launch, TrainConfig  # noqa: E402
from resnorm.norms import NORM_NAMES  # noqa: E402

D, L = TrainConfig(), Launch()  # the defaults, stated once; TrainConfig and Launch check the ranges


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--norm", type=click.Choice(NORM_NAMES), default=D.norm, help="Normalisation layer.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=D.optimizer, help="sgd (with momentum) or adam.")
@click.option("--lr", type=float, default=D.lr, help="Peak learning rate (> 0).")
@click.option(
    "--weight-decay",
    type=float,
    default=D.weight_decay,
    help="L2 penalty (>= 0) on conv and linear weights (not on biases, norm affines or BIN gates).",
)
@click.option("--momentum", type=float, default=D.momentum, help="SGD momentum, 0 to 1.")
@click.option(
    "--scheduler",
    type=click.Choice(SCHEDULERS),
    default=D.scheduler,
    help="Per-epoch schedule: cosine to 0, step (x0.1 every epochs//3), none.",
)
@click.option("--epochs", type=int, default=D.epochs, help="Epochs to train (>= 1).")
@click.option("--batch-size", type=int, default=D.batch_size, help="Training batch size (>= 1).")
@click.option(
    "--augment",
    type=click.BOOL,
    default=D.augment,
    help="Random crop (padding image_size/8) + horizontal flip on training images: true or false.",
)
@click.option("--n", type=int, default=D.n, help="Blocks per stage (>= 1); depth is 6n+2.")
@click.option(
    "--image-size", type=int, default=D.image_size, help="Images are resized to this many pixels square (>= 8)."
)
@click.option("--groups", type=int, default=D.groups, help="Channel groups of gn; must divide 16, 32 and 64.")
@click.option("--seed", type=int, default=D.seed, help="Seed of initialisation, shuffling and augmentation.")
@click.option(
    "--data",
    type=str,
    default=D.data,
    help="'digits' (embedded), 'synthetic', or an image folder (train/ val/ test/, or one class tree).",
)
@click.option("--device", type=click.Choice(DEVICES), default=L.device, help="auto: CUDA when present, else CPU.")
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default=L.mode,
    help="plain: float32, eager; fast: bf16 autocast, channels_last, torch.compile, images kept on the "
    "GPU; auto: fast on CUDA, plain on the CPU.",
)
@click.option(
    "--resume",
    type=str,
    default=L.resume,
    help="Run id of an interrupted run to continue from its last completed epoch, into the same run "
    "(its configuration comes from its snapshot, in the run's artifacts or on this machine; the "
    "training options above are then ignored).",
)
@click.option(
    "--threads",
    type=int,
    default=L.threads,
    help="torch's intra-op threads (>= 0); 0: every core this process may use. On the CPU results depend on it.",
)
def train(device: str, mode: str, resume: str, threads: int, **options) -> None:
    """Train one configuration; log params, curves, artifacts and the kept model to MLflow."""
    launch = Launch(device=device, mode=mode, resume=resume, threads=threads)
    cfg = None if resume else TrainConfig(**options)
    # Imported here, not above: MLflow, scikit-learn and matplotlib take seconds to load, and
    # --help or a bad option needs none of them.
    from resnorm.job import train_job

    click.echo(train_job(cfg, launch, os.environ.get("MLFLOW_RUN_ID")).summary())


def main() -> None:
    cli.main(train)


if __name__ == "__main__":
    main()

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

from resnorm.threads import prefer_passive_wait  # noqa: E402

prefer_passive_wait()  # before torch loads OpenMP: idle threads sleep, so a busy neighbour costs little

from resnorm.config import DEVICES, OPTIMIZERS, SCHEDULERS, TrainConfig  # noqa: E402
from resnorm.fast import MODES  # noqa: E402
from resnorm.norms import NORM_NAMES  # noqa: E402

D = TrainConfig()  # the defaults, stated once


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--norm", type=click.Choice(NORM_NAMES), default=D.norm, help="Normalisation layer.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=D.optimizer, help="sgd (with momentum) or adam.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=D.lr, help="Peak learning rate.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=D.weight_decay,
              help="L2 penalty on conv and linear weights (not on biases, norm affines or BIN gates).")
@click.option("--momentum", type=click.FloatRange(min=0, max=1), default=D.momentum, help="SGD momentum.")
@click.option("--scheduler", type=click.Choice(SCHEDULERS), default=D.scheduler,
              help="Per-epoch schedule: cosine to 0, step (x0.1 every epochs//3), none.")
@click.option("--epochs", type=click.IntRange(min=1), default=D.epochs, help="Epochs to train.")
@click.option("--batch-size", type=click.IntRange(min=1), default=D.batch_size, help="Training batch size.")
@click.option("--augment", type=click.BOOL, default=D.augment,
              help="Random crop (padding image_size/8) + horizontal flip on training images: true or false.")
@click.option("--n", type=click.IntRange(min=1), default=D.n, help="Blocks per stage; depth is 6n+2.")
@click.option("--image-size", type=click.IntRange(min=8), default=D.image_size,
              help="Images are resized to this many pixels square.")
@click.option("--groups", type=click.IntRange(min=1), default=D.groups,
              help="Channel groups of gn; must divide 16, 32 and 64.")
@click.option("--seed", type=int, default=D.seed, help="Seed of initialisation, shuffling and augmentation.")
@click.option("--data", type=str, default=D.data,
              help="'digits' (embedded), 'synthetic', or an image folder (train/ val/ test/, or one class tree).")
@click.option("--device", type=click.Choice(DEVICES), default="auto", help="auto: CUDA when present, else CPU.")
@click.option("--mode", type=click.Choice(MODES), default="auto",
              help="plain: float32, eager; fast: bf16 autocast, channels_last, torch.compile, images kept on the "
              "GPU; auto: fast on CUDA, plain on the CPU.")
@click.option("--resume", type=str, default="",
              help="Run id of an interrupted run to continue from its last completed epoch, into the same run "
              "(its configuration comes from its checkpoint; the training options above are then ignored).")
@click.option("--threads", type=click.IntRange(min=0), default=0,
              help="Intra-op CPU threads (0: every CPU this process may use). On the CPU results depend on it.")
def train(device: str, mode: str, resume: str, threads: int, **options) -> None:
    """Train one configuration; log params, curves, artifacts and the kept model to MLflow."""
    from resnorm import names
    from resnorm.data import load_data
    from resnorm.engine import resolve_device, train as fit
    from resnorm.threads import use_threads
    from resnorm.tracking import check_tracking_server, log_new_params, resumable_config, training_run

    torch_threads = use_threads(threads)
    cfg = resumable_config(resume) if resume else TrainConfig(**options)
    dev = resolve_device(device)
    check_tracking_server()  # before loading data: a wrong URI should cost seconds, not a data load
    data = load_data(cfg.data, cfg.image_size)
    with training_run(cfg, data, device, dev, resume, mode) as run:
        log_new_params(run.client, run.run_id,
                       {names.PARAM_THREADS: str(threads), names.PARAM_TORCH_THREADS: str(torch_threads)})
        result = fit(cfg, data, dev, on_epoch=run, checkpoint_path=run.checkpoint, mode=mode)
        version = run.log_result(cfg, data, result)
    final = result.final_metrics()
    click.echo(
        f"run {run.run_id} ({cfg.run_name()}): best epoch {result.best_epoch}, "
        f"test accuracy {final['best_test_accuracy']:.4f}, registered resnorm-{cfg.norm} version {version}"
    )


def main() -> None:
    from resnorm.cli import run_command

    run_command(train)


if __name__ == "__main__":
    main()

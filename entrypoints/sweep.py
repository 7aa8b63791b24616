"""Run a grid of training configurations as nested MLflow runs (the `sweep` entry point).

    mlflow run . -e sweep -P preset=quick --env-manager local --experiment-name resnorm
    mlflow run . -e sweep -P preset=study -P data=/data/birds -P image_size=256 ...
    mlflow run . -e sweep -P preset=custom -P grid="norm=bn,gn;batch_size=8,128" -P seeds=3 ...
    mlflow run . -e sweep -P preset=study -P seeds=auto -P max_seeds=40 ...   # rounds, until the claims are decided

Re-running into the same parent (`mlflow run ... --run-id <parent>`) skips children that finished.
"""

from __future__ import annotations

import os
import sys

import click

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnorm.machine import prefer_passive_wait  # noqa: E402

prefer_passive_wait()  # before torch loads OpenMP; the children inherit it with the environment

if __name__ == "__main__":  # not when a forked worker re-reads this file as multiprocessing's __mp_main__
    from resnorm.sweep import forkserver

    if forkserver.needed(sys.argv[1:]):
        forkserver.start()  # the workers' imports, from now on, beside this process's own

from resnorm import cli  # noqa: E402
from resnorm.config import DEVICES, FIELD_TYPES, MODES, Launch, TrainConfig  # noqa: E402
from resnorm.errors import ConfigError  # noqa: E402
from resnorm.options import MARGIN_POINTS  # noqa: E402
from resnorm.sweep import PRESETS  # noqa: E402
from resnorm.sweep.planner import MARGIN, MAX_SEEDS, parse_seeds  # noqa: E402
from resnorm.sweep.runner import EXECUTORS, run_sweep  # noqa: E402
from resnorm.sweep.spec import SweepSpec  # noqa: E402


def training_options(command):
    """One text option per training parameter; empty means the preset's (or train's) default."""
    defaults = TrainConfig()
    for field in reversed(list(FIELD_TYPES)):
        default = getattr(defaults, field)
        shown = str(default).lower() if isinstance(default, bool) else default
        command = click.option(
            f"--{field.replace('_', '-')}",
            field,
            type=str,
            default="",
            help=f"Training {field} for every child (empty: the preset's value, else {shown}).",
        )(command)
    return command


def _seeds(ctx: click.Context, param: click.Parameter, value: str) -> int | None:
    """``--seeds``: a whole number of at least 1 (as given), or auto (None)."""
    try:
        return parse_seeds(value)
    except ConfigError:
        raise click.BadParameter(f"{value!r} is not a whole number of at least 1 or 'auto'", ctx, param) from None


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option(
    "--preset",
    type=click.Choice(PRESETS),
    default="quick",
    help="quick: every norm, SGD 0.1, 15 epochs on the digits at 8x8 px, ResNet-8; study: the study's 27 "
    "configurations; custom: the grid.",
)
@click.option(
    "--grid", type=str, default="", help="For preset custom: 'name=v1,v2;name=v1,...' over training parameters."
)
@click.option(
    "--seeds",
    type=str,
    default="1",
    callback=_seeds,
    help="Repeat every configuration with this many seeds; auto: in rounds, adding seeds only where one of the "
    "study's claims is still open, up to --max-seeds (the claims decided valid under that optional stopping).",
)
@click.option(
    "--max-seeds",
    type=click.IntRange(3, 1000),
    default=MAX_SEEDS,
    help="seeds=auto: the most seeds a configuration gets (the first round trains 3 of every configuration).",
)
@click.option(
    "--margin",
    type=MARGIN_POINTS,
    default=MARGIN,
    help=f"seeds=auto: the claims' smallest effect of interest, {MARGIN_POINTS.allowed}.",
)
@click.option(
    "--executor",
    type=click.Choice(EXECUTORS),
    default="local",
    help="local: subprocesses on this machine; ray: Ray Tune trials.",
)
@click.option(
    "--parallel",
    type=int,
    default=0,
    help="Children at once (0: one per GPU, or 2 without GPUs, each with half the cores); more than the GPUs share "
    "them, parallel / GPUs trainings on each (local and ray).",
)
@click.option(
    "--ray-address", type=str, default="", help="ray: the cluster's address (empty: start Ray on this machine)."
)
@click.option(
    "--storage-path",
    type=str,
    default="",
    help="ray: where Tune keeps its state; on several machines a folder every node reaches (shared "
    "file system) or a URI such as s3://bucket/path (empty: a temporary folder here).",
)
@click.option("--device", type=click.Choice(DEVICES), default="auto", help="Device of every child.")
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default="auto",
    help="Training path of every child: plain, fast, or auto (fast on CUDA).",
)
@training_options
def sweep(
    preset, grid, seeds, max_seeds, margin, executor, parallel, ray_address, storage_path, device, mode, **training
) -> None:
    """Train every configuration of a preset or grid as a nested child of one parent run."""
    launch = Launch(device=device, mode=mode)
    spec = SweepSpec(
        preset, grid, seeds, executor, parallel, ray_address, training, launch, storage_path, max_seeds, margin
    )
    if spec.adaptive:
        from analysis.adaptive import next_round  # the claims decide the rounds

        run_sweep(spec, next_round)
    else:
        run_sweep(spec)


def main() -> None:
    cli.main(sweep)


if __name__ == "__main__":
    main()

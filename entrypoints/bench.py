"""Training throughput of the plain and the fast path, per norm and batch size, and the data
pipeline's rate, on whatever device is here (the `bench` entry point).

    mlflow run . -e bench --env-manager local                       # on a GPU: the study's 256 px
    python entrypoints/bench.py --image-size 32 --norms torch_bn,bn --batch-sizes 32 --steps 10
"""

from __future__ import annotations

import os
import sys

import click

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from benchmarks import benchrun  # noqa: E402
from benchmarks.benchrun import Report, as_dicts, metrics, report  # noqa: E402
from benchmarks.throughput import BENCH_MODES, BenchSpec  # noqa: E402
from resnorm import cli, names  # noqa: E402
from resnorm.config import COMPILE_MODES, DEVICES, resolve_device  # noqa: E402
from resnorm.jobruns import check_own_job_run  # noqa: E402
from resnorm.model import depth  # noqa: E402
from resnorm.norms import NORM_NAMES  # noqa: E402
from resnorm.tracking import check_tracking_server, log_new_params, use_default_experiment  # noqa: E402

D = BenchSpec()  # the defaults, stated once; BenchSpec checks every value and range


def _list(kind=str):
    """A click callback: a comma-separated list, each item of ``kind`` (its values are BenchSpec's to check)."""

    def parse(ctx, param, value: str) -> tuple:
        try:
            return tuple(kind(v.strip()) for v in value.split(",") if v.strip())
        except ValueError:
            raise click.BadParameter(f"{value!r}: give a comma-separated list of integers") from None

    return parse


def _text(items) -> str:
    return ",".join(map(str, items))


# The whole-number options, each BenchSpec's field of that name (BenchSpec checks the ranges).
NUMBERS = {
    "image_size": "Images are this many pixels square (>= 8).",
    "steps": "Timed training steps per configuration (>= 1).",
    "warmup": "Untimed steps first (compiling, autotuning), reported apart (>= 1).",
    "classes": "Classes of the model's output (>= 2).",
    "n": "Blocks per stage; depth 6n+2 (>= 1).",
    "feed_files": "JPEG files for the data-pipeline rates (0: skip them).",
}


def numbers(command):
    for field, text in reversed(NUMBERS.items()):
        option = click.option(f"--{field.replace('_', '-')}", field, type=int, default=getattr(D, field), help=text)
        command = option(command)
    return command


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option(
    "--norms", default=_text(D.norms), callback=_list(), help=f"Comma-separated norms of {', '.join(NORM_NAMES)}."
)
@click.option(
    "--batch-sizes",
    default=_text(D.batch_sizes),
    callback=_list(int),
    help="Comma-separated batch sizes (each at least 2).",
)
@click.option(
    "--modes",
    default=_text(D.modes),
    callback=_list(),
    help=f"Comma-separated modes of {', '.join(BENCH_MODES)}: plain: float32, NCHW, eager (what the study "
    "ran); fast: the fast path.",
)
@numbers
@click.option(
    "--compile-mode",
    type=click.Choice(COMPILE_MODES),
    default=D.compile_mode,
    help="torch.compile mode of the fast path; auto: reduce-overhead (CUDA graphs) for batches up to 64 "
    "on CUDA, else default; none: eager.",
)
@click.option(
    "--share",
    default="",
    callback=_list(int),
    help="Comma-separated numbers of trainings at once on the device, each its own process, e.g. 1,2,3 "
    "(fast torch_bn at batch 32 where measured): does sharing one GPU raise the total rate? Empty: skip.",
)
@click.option("--device", type=click.Choice(DEVICES), default=D.device, help="auto: CUDA when present, else CPU.")
def bench(**options) -> None:
    """Measure img/s and ms/step of plain and fast training side by side; log the table to MLflow."""
    spec = BenchSpec(**options)
    dev = resolve_device(spec.device)
    check_tracking_server()
    if os.environ.get("MLFLOW_RUN_ID"):  # the run `mlflow run -e bench` made, not one inherited
        check_own_job_run(os.environ["MLFLOW_RUN_ID"], "bench")
    use_default_experiment(names.BENCH_EXPERIMENT)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    title = (
        f"bench: {gpu}, torch {torch.__version__}, ResNet-{depth(spec.n)} at {spec.image_size} px, "
        f"{spec.classes} classes ({spec.steps} timed steps after {spec.warmup})"
    )
    with mlflow.start_run(run_name=f"bench-{dev.type}-{spec.image_size}px") as run:
        # `mlflow run` has logged its -P values already, in its own spelling: add only the others.
        log_new_params(mlflow.tracking.MlflowClient(), run.info.run_id, spec.as_params())
        mlflow.set_tags(
            {names.TAG_DEVICE: gpu, names.TAG_VERSIONS: f"torch {torch.__version__}, mlflow {mlflow.__version__}"}
        )
        click.echo(title)
        rates, feeds, shares = benchrun.run(spec, dev, progress=click.echo)
        result = report(rates, feeds, shares, title)
        _log(result, rates, feeds, shares)
    click.echo("\n" + result.train.to_string())
    if feeds:
        click.echo("\n" + result.feed.round(1).to_string(index=False))
    if shares:
        click.echo("\n" + result.share.round(2).to_string(index=False))
    click.echo(
        f"\nlogged to run {run.info.run_id} (experiment {names.BENCH_EXPERIMENT} unless -e/--experiment-name "
        "said otherwise)"
    )


def _log(result: Report, rates, feeds, shares) -> None:
    mlflow.log_metrics(metrics(rates, feeds, shares))
    mlflow.log_table(pd.DataFrame(as_dicts(rates)), "bench/train.json")
    mlflow.log_text(result.train.reset_index().to_csv(index=False), "bench/train.csv")
    if feeds:
        mlflow.log_text(result.feed.to_csv(index=False), "bench/feed.csv")
    if shares:
        mlflow.log_text(result.share.to_csv(index=False), "bench/share.csv")
    mlflow.log_text(result.markdown, "bench/bench.md")


def main() -> None:
    cli.main(bench)


if __name__ == "__main__":
    main()

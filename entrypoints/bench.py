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

from resnorm import bench as b  # noqa: E402
from resnorm import names  # noqa: E402
from resnorm import cli  # noqa: E402
from resnorm.config import COMPILE_MODES, DEVICES, resolve_device  # noqa: E402
from resnorm.errors import ConfigError  # noqa: E402
from resnorm.model import depth  # noqa: E402
from resnorm.norms import NORM_NAMES  # noqa: E402
from resnorm.tracking import check_tracking_server, log_new_params, use_default_experiment  # noqa: E402

BENCH_MODES = ("plain", "fast")
MAX_IMAGES = 1_000_000  # images one measurement generates (batch size x steps)


def _names(allowed):
    def parse(ctx, param, value: str) -> list[str]:
        items = [v.strip() for v in value.split(",") if v.strip()]
        bad = [v for v in items if v not in allowed]
        if bad or not items:
            raise click.BadParameter(f"{value!r}: give a comma-separated list of {', '.join(allowed)}")
        return items
    return parse


def _ints(what: str, low: int, high: int | None = None, empty_ok: bool = False):
    """A click callback parsing a comma-separated list of integers in [low, high]."""
    allowed = f"{low} to {high}" if high else f"at least {low}"

    def parse(ctx, param, value: str) -> list[int]:
        try:
            items = [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            items = None
        if items is None or (not items and not empty_ok) or any(i < low or (high and i > high) for i in items):
            extra = ", or nothing" if empty_ok else ""
            raise click.BadParameter(f"{value!r}: give a comma-separated list of {what} {allowed}{extra}")
        return items
    return parse


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--norms", default=",".join(NORM_NAMES), callback=_names(NORM_NAMES), help="Comma-separated norms.")
@click.option("--batch-sizes", default="8,32,128", callback=_ints("batch sizes of", 2),
              help="Comma-separated batch sizes.")
@click.option("--modes", default="plain,fast", callback=_names(BENCH_MODES),
              help="plain: float32, NCHW, eager (what the study ran); fast: the fast path.")
@click.option("--image-size", type=click.IntRange(min=8), default=256, help="Images are this many pixels square.")
@click.option("--steps", type=click.IntRange(min=1), default=50, help="Timed training steps per configuration.")
@click.option("--warmup", type=click.IntRange(min=1), default=10,
              help="Untimed steps first (compiling, autotuning); reported apart.")
@click.option("--classes", type=click.IntRange(min=2), default=25, help="Classes of the model's output.")
@click.option("--n", type=click.IntRange(min=1), default=2, help="Blocks per stage; depth 6n+2.")
@click.option("--compile-mode", type=click.Choice(COMPILE_MODES), default="auto",
              help="torch.compile mode of the fast path; auto: reduce-overhead (CUDA graphs) for batches up to 64 "
              "on CUDA, else default; none: eager.")
@click.option("--feed-files", type=click.IntRange(min=0), default=512,
              help="JPEG files for the data-pipeline rates (0: skip them).")
@click.option("--share", default="", callback=_ints("process counts from", 1, 16, empty_ok=True),
              help="Comma-separated numbers of trainings at once on the device, each its own process, e.g. 1,2,3 "
              "(fast torch_bn at batch 32 where measured): does sharing one GPU raise the total rate? Empty: skip.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", help="auto: CUDA when present, else CPU.")
def bench(norms, batch_sizes, modes, image_size, steps, warmup, classes, n, compile_mode, feed_files, share,
          device) -> None:
    """Measure img/s and ms/step of plain and fast training side by side; log the table to MLflow."""
    dev = resolve_device(device)
    for bs in batch_sizes:
        if bs * (warmup + steps) > MAX_IMAGES:
            raise ConfigError(f"batch size {bs} x {warmup + steps} steps is too many images for one measurement "
                              f"(at most {MAX_IMAGES:,})")
    check_tracking_server()
    use_default_experiment(b.EXPERIMENT)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    params = {"norms": ",".join(norms), "batch_sizes": ",".join(map(str, batch_sizes)), "modes": ",".join(modes),
              "image_size": image_size, "steps": steps, "warmup": warmup, "classes": classes, "n": n,
              "compile_mode": compile_mode, "feed_files": feed_files, "share": ",".join(map(str, share)), "device": device}
    title = (f"bench: {gpu}, torch {torch.__version__}, ResNet-{depth(n)} at {image_size} px, {classes} classes "
             f"({steps} timed steps after {warmup})")
    with mlflow.start_run(run_name=f"bench-{dev.type}-{image_size}px") as run:
        # `mlflow run` has logged its -P values already, in its own spelling: add only the others.
        log_new_params(mlflow.tracking.MlflowClient(), run.info.run_id, {k: str(v) for k, v in params.items()})
        mlflow.set_tags({names.TAG_DEVICE: gpu, names.TAG_VERSIONS: f"torch {torch.__version__}, mlflow {mlflow.__version__}"})
        click.echo(title)
        rates, feeds, shares = b.run(norms, batch_sizes, modes, image_size, dev, steps, warmup, classes, n,
                                     compile_mode, feed_files, share, progress=click.echo)
        report = b.report(rates, feeds, shares, title)
        _log(report, rates, feeds, shares)
    click.echo("\n" + report.train.to_string())
    if feeds:
        click.echo("\n" + report.feed.round(1).to_string(index=False))
    if shares:
        click.echo("\n" + report.share.round(2).to_string(index=False))
    click.echo(f"\nlogged to run {run.info.run_id} (experiment {b.EXPERIMENT} unless -e/--experiment-name said otherwise)")


def _log(report: b.Report, rates, feeds, shares) -> None:
    mlflow.log_metrics(b.metrics(rates, feeds, shares))
    mlflow.log_table(pd.DataFrame(b.as_dicts(rates)), "bench/train.json")
    mlflow.log_text(report.train.reset_index().to_csv(index=False), "bench/train.csv")
    if feeds:
        mlflow.log_text(report.feed.to_csv(index=False), "bench/feed.csv")
    if shares:
        mlflow.log_text(report.share.to_csv(index=False), "bench/share.csv")
    mlflow.log_text(report.markdown, "bench/bench.md")


def main() -> None:
    cli.main(bench)


if __name__ == "__main__":
    main()

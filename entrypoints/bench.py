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

from resnorm.config import DEVICES  # noqa: E402
from resnorm.norms import NORM_NAMES  # noqa: E402

BENCH_MODES = ("plain", "fast")
COMPILE_MODES = ("auto", "default", "reduce-overhead", "max-autotune", "none")


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
    import mlflow
    import pandas as pd
    import torch

    from analysis.tables import to_markdown
    from resnorm import bench as b
    from resnorm.engine import resolve_device
    from mlflow.tracking import MlflowClient

    from resnorm.tracking import check_tracking_server, log_new_params, use_default_experiment

    dev = resolve_device(device)
    for bs in batch_sizes:
        if bs * (warmup + steps) > 1_000_000:
            raise click.BadParameter(f"batch size {bs} x {warmup + steps} steps is too many images for one measurement")
    check_tracking_server()
    use_default_experiment(b.EXPERIMENT)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    params = {"norms": ",".join(norms), "batch_sizes": ",".join(map(str, batch_sizes)), "modes": ",".join(modes),
              "image_size": image_size, "steps": steps, "warmup": warmup, "classes": classes, "n": n,
              "compile_mode": compile_mode, "feed_files": feed_files, "share": ",".join(map(str, share)), "device": device}
    with mlflow.start_run(run_name=f"bench-{dev.type}-{image_size}px") as run:
        log_new_params(MlflowClient(), run.info.run_id, params)  # `mlflow run` logged its -P values already
        mlflow.set_tags({"resnorm.device": gpu, "torch": torch.__version__})
        click.echo(f"bench on {gpu}, torch {torch.__version__}: ResNet-{6 * n + 2}, {image_size} px, {classes} classes")
        rates, feeds, shares = b.run(norms, batch_sizes, modes, image_size, dev, steps, warmup, classes, n,
                                     compile_mode, feed_files, share, progress=click.echo)
        frame = pd.DataFrame(b.table(rates)).set_index(["norm", "batch_size"])
        feed = pd.DataFrame(b.as_dicts(feeds), columns=["pipeline", "images_per_second", "detail"])
        metrics = {}
        for r in rates:
            key = f"{r.mode}_{r.norm}_bs{r.batch_size}"
            metrics[f"{key}_img_per_s"] = r.images_per_second
            metrics[f"{key}_ms_per_step"] = r.ms_per_step
            if r.mode == "fast":
                metrics[f"{key}_compile_s"] = r.compile_seconds
        for r in rates:
            plain = metrics.get(f"plain_{r.norm}_bs{r.batch_size}_img_per_s")
            if r.mode == "fast" and plain:
                metrics[f"fast_over_plain_{r.norm}_bs{r.batch_size}"] = r.images_per_second / plain
        for f in feeds:
            metrics[f"feed_{f.key}_img_per_s"] = f.images_per_second
        shared = pd.DataFrame(b.as_dicts(shares))
        for sh in shares:
            metrics[f"share{sh.processes}_img_per_s"] = sh.images_per_second
        if shares and shares[0].processes == 1:
            shared["over_one"] = shared["images_per_second"] / shares[0].images_per_second
        mlflow.log_metrics(metrics)
        mlflow.log_table(pd.DataFrame(b.as_dicts(rates)), "bench/train.json")
        mlflow.log_text(frame.reset_index().to_csv(index=False), "bench/train.csv")
        text = [f"# bench: {gpu}, torch {torch.__version__}, ResNet-{6 * n + 2} at {image_size} px, "
                f"{classes} classes ({steps} timed steps after {warmup})", "",
                to_markdown(frame.set_axis([f"{norm} bs{bs}" for norm, bs in frame.index]))]
        if feeds:
            mlflow.log_text(feed.to_csv(index=False), "bench/feed.csv")
            text += ["", "## feeding the model (img/s)", "", to_markdown(feed.set_index("pipeline").round(1))]
        if shares:
            mlflow.log_text(shared.to_csv(index=False), "bench/share.csv")
            text += ["", "## trainings at once on one device (img/s together)", "",
                     to_markdown(shared.set_index("processes").round(2))]
        fallbacks = sorted({r.fallback for r in rates if r.fallback})
        if fallbacks:
            text += ["", "torch.compile failed, measured eagerly: " + "; ".join(fallbacks)]
        mlflow.log_text("\n".join(text) + "\n", "bench/bench.md")
    click.echo("\n" + frame.to_string())
    if feeds:
        click.echo("\n" + feed.round(1).to_string(index=False))
    if shares:
        click.echo("\n" + shared.round(2).to_string(index=False))
    click.echo(f"\nlogged to run {run.info.run_id} (experiment {b.EXPERIMENT} unless -e/--experiment-name said otherwise)")


def main() -> None:
    from resnorm.cli import run_command

    run_command(bench)


if __name__ == "__main__":
    main()

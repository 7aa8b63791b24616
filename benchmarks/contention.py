"""One training epoch alone and beside one busy competing process, side by side in one run.

    python benchmarks/contention.py                        # digits at 32 px, ResNet-14: threads 0 (every core) and 1
    python benchmarks/contention.py --threads 0 --wait passive,active --image-size 16 --n 1

For each (threads, OpenMP wait policy) a fresh process trains one digits epoch (the engine's own
``train_one_epoch`` and validation, after a short warm-up) with nothing else running, then a
second fresh process does the same while a competitor (``while True: pass``, one core's worth)
runs. ``threads`` is resolved by ``resnorm.config.Launch`` as ``train --threads`` is;
``passive`` is what ``train`` sets, ``active`` is OpenMP's default (spinning waits). Prints one
line per setting and the whole table as JSON on the last line. Quiet machine wanted: see ``uptime``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

import click

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BUSY = "while True: pass"


def _worker(job: dict) -> None:
    """Time one epoch in this process (its OMP_WAIT_POLICY came with its environment)."""
    import torch

    from resnorm.bundle import Split
    from resnorm.config import Launch, TrainConfig
    from resnorm.data import load_data
    from resnorm.engine import evaluate, prepare, train_one_epoch

    threads = Launch(threads=job["threads"]).torch_threads()  # as `train --threads` resolves it
    torch.set_num_threads(threads)
    cfg = TrainConfig(norm=job["norm"], image_size=job["image_size"], n=job["n"], batch_size=job["batch_size"])
    t = prepare(cfg, load_data("digits", cfg.image_size), torch.device("cpu"))
    full = t.data
    t.data = dataclasses.replace(
        full, train=Split(full.train.images[: cfg.batch_size * 5], full.train.labels[: cfg.batch_size * 5])
    )
    train_one_epoch(t)  # warm-up: allocator, kernels
    t.data = full
    start = time.perf_counter()
    train_one_epoch(t)
    evaluate(t.runner, t.data.val, cfg.batch_size)
    print(json.dumps({"seconds": time.perf_counter() - start, "threads": threads}), flush=True)


def epoch_seconds(job: dict, wait: str, competitor: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_WAIT_POLICY": wait.upper()}
    busy = subprocess.Popen([sys.executable, "-c", BUSY]) if competitor else None
    try:
        out = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(job)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    if out.returncode != 0:
        raise click.ClickException(f"the timed training failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _numbers(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of integers") from None


@click.command(context_settings={"show_default": True})
@click.option("--threads", default="0,1", help="Comma-separated thread counts (0: every available core).")
@click.option("--wait", default="passive", help="Comma-separated OpenMP wait policies: passive, active.")
@click.option("--image-size", type=click.IntRange(min=8), default=32)
@click.option("--n", type=click.IntRange(min=1), default=2, help="Blocks per stage (ResNet-(6n+2)).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32)
@click.option("--norm", default="torch_bn")
@click.option("--worker", default="", hidden=True)
def main(threads, wait, image_size, n, batch_size, norm, worker) -> None:
    if worker:
        _worker(json.loads(worker))
        return
    policies = [w.strip() for w in wait.split(",") if w.strip()]
    if not policies or any(w not in ("passive", "active") for w in policies):
        raise click.BadParameter(f"{wait!r}: use passive, active or both", param_hint="--wait")
    load = os.getloadavg()[0]
    rows = []
    for asked in _numbers(threads):
        for policy in policies:
            job = {"threads": asked, "image_size": image_size, "n": n, "batch_size": batch_size, "norm": norm}
            alone = epoch_seconds(job, policy, competitor=False)
            beside = epoch_seconds(job, policy, competitor=True)
            row = {
                "threads": alone["threads"],
                "wait": policy,
                "alone_s": round(alone["seconds"], 2),
                "beside_s": round(beside["seconds"], 2),
                "ratio": round(beside["seconds"] / alone["seconds"], 2),
            }
            rows.append(row)
            click.echo(
                f"threads {row['threads']} ({policy} wait): alone {row['alone_s']} s, beside a busy process "
                f"{row['beside_s']} s ({row['ratio']}x)"
            )
    click.echo(json.dumps({"cpus": len(os.sched_getaffinity(0)), "load_before": round(load, 2), "rows": rows}))


if __name__ == "__main__":
    main()

"""How long `analyze` takes over a large sweep: a store of N study runs with S-step histories.

    python benchmarks/analyze_store.py --runs 200 --steps 50

Builds the store in a temporary folder (SQLite, as MLflow's default), with one sweep parent and
N children cycling through the study's 27 configurations with new seeds, each with the params
`train` logs, S epochs of every per-epoch metric and the final metrics; then times one
`analyze` end to end (queries, tables, figures, files, the analysis run) and prints it.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@click.command(context_settings={"show_default": True})
@click.option("--runs", type=click.IntRange(min=1), default=200, help="Children in the sweep.")
@click.option("--steps", type=click.IntRange(min=1), default=50, help="Epochs in every metric history.")
def main(runs: int, steps: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
        import mlflow
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        from analysis.gradcam import gradcam_of_champions
        from analysis.publish import log
        from analysis.report import build
        from analysis.runs import find_sweep
        from analysis.write import write
        from resnorm import names
        from resnorm.sweep import plan

        client = MlflowClient()
        exp = client.create_experiment(names.EXPERIMENT)
        parent = client.create_run(
            exp, run_name="sweep-study", tags={names.TAG_SWEEP: "true", names.TAG_PRESET: "study"}
        )
        seeds = -(-runs // 27)
        configs = plan("study", seeds=seeds)[:runs]
        # What the sweep logs: analyze re-plans from it (seeds beyond N show as missing).
        client.log_batch(parent.info.run_id, params=[Param("preset", "study"), Param("seeds", str(seeds))])
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        for cfg in configs:
            run = client.create_run(exp, run_name=cfg.run_name(), tags={MLFLOW_PARENT_RUN_ID: parent.info.run_id})
            now = int(time.time() * 1000)
            curve = [Metric(k, float(rng.random()), now, e) for e in range(1, steps + 1) for k in names.EPOCH_METRICS]
            final = [
                Metric(k, float(rng.random()), now, 0)
                for k in [
                    names.BEST_EPOCH,
                    *(names.final_metric(s, m) for s in ("train", "val", "test") for m in names.SCORES),
                ]
            ]
            params = [Param(k, v) for k, v in cfg.as_params().items()]
            metrics = curve + final
            for i in range(0, len(metrics), 1000):
                client.log_batch(run.info.run_id, metrics=metrics[i : i + 1000], params=params if i == 0 else [])
            client.set_terminated(run.info.run_id)
        client.set_terminated(parent.info.run_id)
        built = time.perf_counter() - start

        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        start = time.perf_counter()
        out = Path(folder) / "report"  # the entry point's pipeline, step by step
        report = build(client, find_sweep(client, names.EXPERIMENT))
        files = write(report, gradcam_of_champions(report), out)
        log(client, report, files, out)
        seconds = time.perf_counter() - start
        print(f"store: {runs} runs x {steps} steps x {len(names.EPOCH_METRICS)} metrics, built in {built:.1f} s")
        print(f"analyze: {seconds:.2f} s for {report.finished} runs ({len(files)} files written)")


if __name__ == "__main__":
    main()

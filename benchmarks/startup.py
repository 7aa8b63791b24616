"""Where a training process's fixed cost goes: each phase of one tiny training, measured in one run.

    python benchmarks/startup.py                 # phases, train --help, a whole train, the quick sweep
    python benchmarks/startup.py --no-sweep      # without the quick sweep (about a minute less)
    python benchmarks/startup.py --study         # also the study preset at digits scale, 3 seeds (81 children)

The phases come from one fresh process that trains one digits epoch (``--epochs 1 --n 1
--image-size 8``) through ``resnorm.job.train_job``, the function the ``train`` entry point and a
sweep's workers call: the interpreter's start, the imports (split by package, in the order a
training loads them: each line is what that import added), then the job's own steps, each timed by
wrapping the real function (nothing else is changed), and the process's exit as an entry point's.
Beside them, in the same run: ``python -c "import torch"`` (the floor every training pays, its
interpreter's teardown included), ``train --help``, a whole ``train`` process, and a quick sweep's
wall time against its epochs' (the sum of every child's ``epoch_seconds`` divided by ``parallel``:
the time a sweep with no fixed cost would take) and each child's fixed cost (its run's wall time
minus its epochs). Everything runs in a temporary folder with its own SQLite store.
Ratios are the numbers to compare across machines; take them on a quiet machine (see ``uptime``).
Prints a Markdown table; ``--json FILE`` also writes the raw figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "1", "--n", "1", "--image-size", "8"]
IMPORTS = [  # (label, modules), in the order a training process loads them
    ("import torch", ["torch"]),
    ("import mlflow", ["mlflow", "mlflow.tracking", "mlflow.pytorch"]),
    ("import scikit-learn", ["sklearn.datasets", "sklearn.metrics", "sklearn.model_selection"]),
    ("import PIL", ["PIL.Image", "PIL.ImageOps"]),
    ("import matplotlib", ["matplotlib.figure"]),
    ("import resnorm (and the rest)", ["resnorm.job"]),
]


# --- the child: one process, one tiny training, every phase timed ---------------------------------


class Phases:
    """Seconds per phase, summed over calls."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, label: str, seconds: float) -> None:
        self.seconds[label] = self.seconds.get(label, 0.0) + seconds

    @contextlib.contextmanager
    def wrapping(self, owner, name: str, label: str):
        """Time every call of ``owner.name`` (a module's function or a class's method) as ``label``."""
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.add(label, time.perf_counter() - start)

        setattr(owner, name, timed)
        try:
            yield
        finally:
            setattr(owner, name, original)


def child(spawned: float) -> None:
    phases = Phases()
    phases.add("interpreter start", time.time() - spawned)
    import importlib

    for label, modules in IMPORTS:
        start = time.perf_counter()
        for m in modules:
            importlib.import_module(m)
        phases.add(label, time.perf_counter() - start)

    import torch

    from resnorm import engine, job, runlog, serving, snapshots, trainrun, weights
    from resnorm.config import Launch, TrainConfig

    wraps = [
        (job, "check_tracking_server", "tracking check"),
        (trainrun, "check_tracking_server", "tracking check"),
        (job, "load_data", "data"),
        (trainrun, "_open", "run start (create or open)"),
        (runlog.RunLogger, "log_config", "run start (params, tags)"),
        (runlog.RunLogger, "log_dataset", "run start (dataset inputs)"),
        (engine, "prepare", "model build"),
        (engine, "run_epoch", "the epoch (train + validation)"),
        (snapshots, "save", "epoch bookkeeping (snapshot, metrics queued)"),
        (runlog.RunLogger, "__call__", "epoch bookkeeping (snapshot, metrics queued)"),
        (engine, "finish", "final evaluation (every split)"),
        (runlog.RunLogger, "sync", "wait for metrics and snapshot upload"),
        (runlog.RunLogger, "log_figures", "figures and per-class report"),
        (weights, "log_weights", "weights (state dict)"),
        (torch.export, "export", "pt2 export (torch.export)"),
        (serving, "log_model", "model logging (incl. pt2 export)"),
        (runlog.RunLogger, "register", "registration and alias"),
        (runlog.RunLogger, "log_result", "after training (all of the above from sync on)"),
    ]
    cfg = TrainConfig(epochs=1, n=1, image_size=8)
    with contextlib.ExitStack() as stack:
        for owner, name, label in wraps:
            stack.enter_context(phases.wrapping(owner, name, label))
        start = time.perf_counter()
        result = job.train_job(cfg, Launch(threads=1))
        total = time.perf_counter() - start
    seconds = phases.seconds
    seconds["model logging (incl. pt2 export)"] -= seconds.get("pt2 export (torch.export)", 0.0)
    seconds["model logging (MLflow save and upload)"] = seconds.pop("model logging (incl. pt2 export)")
    inside = ("tracking check", "data", "after training (all of the above from sync on)")
    training_run = total - sum(seconds[k] for k in inside)
    seconds["run close and the rest"] = training_run - sum(
        v
        for k, v in seconds.items()
        if k.startswith(("run start", "model build", "the epoch", "epoch bookkeeping", "final evaluation"))
    )
    seconds["the whole job"] = total
    print("PHASES " + json.dumps({"seconds": seconds, "run_id": result.run_id, "ended": time.time()}), flush=True)
    from resnorm.cli import leave

    leave(0)  # as an entry point ends; the parent times it as "process exit"


# --- the parent: everything side by side in one run -------------------------------------------------


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise click.ClickException(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
    return seconds, proc


def median_of(runs: int, cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    return statistics.median(timed(cmd, cwd, env)[0] for _ in range(runs))


def sweep_figures(args: list[str], cwd: Path, env: dict[str, str]) -> dict:
    """Wall time of a sweep (``entrypoints/sweep.py`` ``args``), its epochs' and its children's fixed cost."""
    from mlflow.tracking import MlflowClient

    from resnorm import names

    wall, proc = timed([sys.executable, str(ROOT / "entrypoints" / "sweep.py"), *args], cwd, env)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    parent = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        f"tags.`{names.TAG_SWEEP}` = 'true'",
        order_by=["attributes.start_time DESC"],
    )[0]
    kids = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=1000
    )
    parallel = int(parent.data.params["parallel"])
    epochs, fixed = 0.0, []
    for kid in kids:
        own = sum(m.value for m in client.get_metric_history(kid.info.run_id, names.EPOCH_SECONDS))
        epochs += own
        fixed.append((kid.info.end_time - kid.info.start_time) / 1000 - own)
    return {
        "wall": wall,
        "children": len(kids),
        "parallel": parallel,
        "epochs": epochs,
        "ideal": epochs / parallel,
        "fixed_median": statistics.median(fixed),
        "fixed_max": max(fixed),
    }


def row(label: str, seconds: float, note: str = "") -> str:
    return f"| {label} | {seconds:.2f} | {note} |"


@click.command()
@click.option(
    "--phases/--no-phases",
    default=True,
    help="The phases of one training (needs resnorm.job: a tree from before it can be measured without).",
)
@click.option("--sweep/--no-sweep", default=True, help="Also run the quick preset (7 children, 15 epochs).")
@click.option("--study", is_flag=True, help="Also run the study preset at digits scale with 3 seeds (81 children).")
@click.option("--repeats", default=3, help="Runs of `import torch` and `train --help` (the median is shown).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Also write the figures here.")
@click.option("--child", "spawned", type=float, default=None, hidden=True)
def main(phases: bool, sweep: bool, study: bool, repeats: int, json_path: str | None, spawned: float | None) -> None:
    if spawned is not None:
        return child(spawned)
    with tempfile.TemporaryDirectory(prefix="startup-") as tmp:
        folder = Path(tmp)
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
            "PYTHONPATH": str(ROOT),
            "RESNORM_HOME": str(folder / "home"),
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            env.pop(var, None)
        train = [sys.executable, str(ROOT / "entrypoints" / "train.py")]
        # Create the store's tables first, so no measured process pays for that.
        timed(
            [
                sys.executable,
                "-c",
                "import os; from mlflow.tracking import MlflowClient; "
                "MlflowClient(os.environ['MLFLOW_TRACKING_URI']).search_experiments()",
            ],
            folder,
            env,
        )
        figures: dict = {
            "floor": median_of(repeats, [sys.executable, "-c", "import torch"], folder, env),
            "help": median_of(repeats, train + ["--help"], folder, env),
        }
        if phases:
            _, proc = timed([sys.executable, __file__, "--child", repr(time.time())], folder, env)
            exited = time.time()
            measured = json.loads(proc.stdout.split("PHASES ", 1)[1].splitlines()[0])
            figures["phases"] = {**measured["seconds"], "process exit (after the job)": exited - measured["ended"]}
        wall, proc = timed(train + TINY + ["--threads", "1"], folder, env)
        figures["train"] = {"wall": wall}
        if sweep:
            figures["quick"] = sweep_figures([], folder, env)
        if study:
            figures["study"] = sweep_figures(
                ["--preset", "study", "--seeds", "3", "--image-size", "8", "--n", "1", "--epochs", "15"], folder, env
            )
    print_table(figures)
    if json_path:
        Path(json_path).write_text(json.dumps(figures, indent=2))


def print_table(f: dict) -> None:
    floor = f["floor"]
    lines = []
    if "phases" in f:
        lines += ["| phase of one tiny training (one process) | seconds | |", "|---|---|---|"]
        lines += [row(label, seconds) for label, seconds in f["phases"].items()] + [""]
    lines += [
        "| measured side by side | seconds | ratio |",
        "|---|---|---|",
        row('python -c "import torch" (the floor)', floor, "1.00x"),
        row("train --help", f["help"], f"{f['help'] / floor:.2f}x the floor"),
        row(
            "a whole `train` process (1 epoch, 8 px, ResNet-8)",
            f["train"]["wall"],
            f"{f['train']['wall'] / floor:.2f}x the floor",
        ),
    ]
    for name in ("quick", "study"):
        if name in f:
            s = f[name]
            lines += [
                row(
                    f"{name} sweep, wall ({s['children']} children, parallel {s['parallel']})",
                    s["wall"],
                    f"{s['wall'] / s['ideal']:.2f}x its epochs' time",
                ),
                row(f"{name} sweep, its epochs / parallel (no fixed cost)", s["ideal"], ""),
                row(
                    f"{name} sweep, a child's fixed cost (median; max {s['fixed_max']:.1f})",
                    s["fixed_median"],
                    "child run's wall time minus its epochs",
                ),
            ]
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()

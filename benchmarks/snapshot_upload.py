"""What the per-epoch resume snapshot costs to store: bytes and seconds per upload of the study's
model (ResNet-14, 25 classes) to a real `mlflow server --artifacts-destination` on loopback.

    python benchmarks/snapshot_upload.py --uploads 10

Trains one short epoch with the engine (so the snapshot is the real one: weights, optimiser state,
the best epoch's weights, RNG states, history), starts a server over a SQLite store in a temporary
folder, and uploads the snapshot ``--uploads`` times through ``resnorm.snapshots.Uploader`` (the
background thread ``train`` uses), each time waiting for it. Prints bytes and seconds per upload.
The snapshot does not depend on the image size (the network ends in a global pool).
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import click

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    cmd = [
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{folder / 'server.db'}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--artifacts-destination",
        str(folder / "artifacts"),
        "--workers",
        "1",  # one client uploads; MLflow's default of 4 workers only costs start-up here
    ]
    # Nor MLflow 3's job runner (its GenAI jobs): seconds of start-up and CPU beside the uploads.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        cmd, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=1).close()
            return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise click.ClickException("mlflow server did not start")


@click.command(context_settings={"show_default": True})
@click.option("--uploads", type=click.IntRange(min=1), default=10, help="Uploads to time.")
@click.option("--n", type=click.IntRange(min=1), default=2, help="Blocks per stage (2: ResNet-14).")
@click.option("--classes", type=click.IntRange(min=2), default=25)
@click.option("--norm", default="bn")
def main(uploads: int, n: int, classes: int, norm: str) -> None:
    import torch
    from mlflow.tracking import MlflowClient

    from benchmarks.throughput import random_bundle
    from resnorm import snapshots
    from resnorm.config import TrainConfig
    from resnorm.engine import train

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = folder / "runs" / "x" / snapshots.FILE
        cfg = TrainConfig(norm=norm, n=n, epochs=1, image_size=32, batch_size=32)
        train(cfg, random_bundle(64, 32, classes), torch.device("cpu"), progress=False, snapshot_path=path)
        proc, url = _start_server(folder)
        try:
            client = MlflowClient(url)
            run_id = client.create_run(client.create_experiment("snapshot-upload")).info.run_id
            uploader = snapshots.Uploader(run_id, client, path, lambda epoch: None, url)
            for epoch in range(1, uploads + 1):
                uploader.offer(epoch)
                if not uploader.drain(120):
                    raise click.ClickException(f"upload {epoch} did not finish: {uploader.last_error}")
            uploader.close()
        finally:
            os.killpg(proc.pid, 9)
            proc.wait()
    seconds = [s for s, _ in uploader.uploads]
    size = uploader.uploads[-1][1]
    click.echo(
        f"ResNet-{6 * n + 2}, {classes} classes: snapshot {size} bytes ({size / 2**20:.2f} MiB); "
        f"upload median {statistics.median(seconds):.3f} s, max {max(seconds):.3f} s over {len(seconds)} "
        f"(load {os.getloadavg()[0]:.2f})"
    )


if __name__ == "__main__":
    main()

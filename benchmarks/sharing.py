"""Trainings at once on one device, for ``bench --share``: each its own process (as a sweep's children
are), all timed over the same stretch. ``python -m benchmarks.sharing JOB`` is one of those processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.throughput import BenchSpec, train_rate
from resnorm import PROJECT_ROOT
from resnorm.errors import ResnormError


@dataclass(frozen=True)
class ShareRate:
    processes: int  # trainings at once on one device
    images_per_second: float  # all of them together, over the wall time their timed stretches span
    per_process: float  # the mean of their own rates


def shared_rate(spec: BenchSpec, processes: int, device: torch.device, timeout: float = 900) -> ShareRate:
    """Total training rate of ``processes`` trainings of ``spec.shared()`` at once on one device, each
    its own process (as a sweep's children are): they warm up, wait for each other, and the total is
    their images over the wall time from the first timed step to the last."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as rendezvous:
        job = json.dumps(
            {"spec": asdict(spec), "device": str(device), "rendezvous": rendezvous, "processes": processes}
        )
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "benchmarks.sharing", job],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for _ in range(processes)
        ]
        results = []
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            if p.returncode != 0:
                raise ResnormError(
                    f"a bench worker failed: {err.strip().splitlines()[-1] if err.strip() else p.returncode}"
                )
            results.append(json.loads(out.strip().splitlines()[-1]))
    images = sum(r["images_per_second"] * (r["timed_to"] - r["timed_from"]) for r in results)
    span = max(r["timed_to"] for r in results) - min(r["timed_from"] for r in results)
    return ShareRate(processes, images / span, sum(r["images_per_second"] for r in results) / processes)


def _worker(job: dict) -> None:
    """One of ``shared_rate``'s processes: prints its TrainRate as JSON."""
    rendezvous, processes = Path(job["rendezvous"]), job["processes"]

    def barrier() -> None:
        (rendezvous / str(os.getpid())).touch()
        deadline = time.monotonic() + 600
        while len(list(rendezvous.iterdir())) < processes:
            if time.monotonic() > deadline:
                raise ResnormError("the other bench workers did not get through their warm-up")
            time.sleep(0.01)

    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in job["spec"].items()}
    spec = BenchSpec(**fields)
    print(
        json.dumps(asdict(train_rate(spec, device=torch.device(job["device"]), barrier=barrier, **spec.shared()))),
        flush=True,
    )


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]))

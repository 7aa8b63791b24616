"""What this machine gives a training: the CPUs it may use, the memory available, and how its idle
threads wait. Nothing here imports torch (or anything heavy): the config and the entry points ask
these questions before a model exists.

Torch's CPU kernels split work over OpenMP threads and every parallel region ends at a barrier.
With as many threads as cores and one other busy process on the machine, one thread shares its
core: the others reach the barrier first and, by OpenMP's default, *spin* there, so to the
kernel they are as busy as the competitor and the sharing thread gets its slice only every few
milliseconds. On small images (thousands of tiny regions per epoch) that made an epoch 30x slower.
Waiting threads that sleep (``OMP_WAIT_POLICY=PASSIVE``) give their core back, and a woken thread
preempts a CPU hog at once, so a training beside a competitor keeps most of its speed.

OpenMP reads its wait policy once, when the library loads, so ``prefer_passive_wait`` must run
before ``import torch``. ``config.Launch`` resolves the thread count.
"""

from __future__ import annotations

import os


def prefer_passive_wait() -> None:
    """Idle OpenMP threads sleep instead of spinning (unless the environment says otherwise).
    Call before torch is imported."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: a container's or taskset's cores)."""
    return len(os.sched_getaffinity(0))


def share(parallel: int, cpus: int | None = None) -> int:
    """Threads for each of ``parallel`` trainings at once on ``cpus`` CPUs (at least one)."""
    return max(1, (cpus or available_cpus()) // max(1, parallel))


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux's MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None

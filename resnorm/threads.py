"""How many intra-op threads a training runs with, and how its idle threads wait.

Torch's CPU kernels split work over OpenMP threads and every parallel region ends at a barrier.
With as many threads as cores and one other busy process on the machine, one thread shares its
core: the others reach the barrier first and, by OpenMP's default, *spin* there, so to the
kernel they are as busy as the competitor and the sharing thread gets its slice only every few
milliseconds. On small images (thousands of tiny regions per epoch) that made an epoch 30x slower.
Waiting threads that sleep (``OMP_WAIT_POLICY=PASSIVE``) give their core back, and a woken thread
preempts a CPU hog at once, so a training beside a competitor keeps most of its speed.

OpenMP reads its wait policy once, when the library loads, so ``prefer_passive_wait`` must run
before ``import torch``; this module does not import torch. ``config.Launch`` resolves the count.
"""

from __future__ import annotations

import os



def prefer_passive_wait() -> None:
    """Idle OpenMP threads sleep instead of spinning (unless the environment says otherwise).
    Call before torch is imported."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def available() -> int:
    """The CPUs this process may run on (its affinity mask: a container's or taskset's cores)."""
    return len(os.sched_getaffinity(0))


def share(parallel: int, cpus: int | None = None) -> int:
    """Threads for each of ``parallel`` trainings at once on ``cpus`` CPUs (at least one)."""
    return max(1, (cpus or available()) // max(1, parallel))

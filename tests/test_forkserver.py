"""The sweep's fork server ends with the process that started it, at once (issue 26): it used to
tear down the torch, MLflow and the rest it had imported, a core busy for 2 s (4 to 6 s beside a busy
process) after the sweep had ended. Real processes, since how they end is the point."""

import subprocess
import time

import pytest

from tests.conftest import PYTHON, ROOT

# A sweep's process in miniature: it starts the fork server, has it fork one worker (which waits
# for the server's imports) that leaves as a sweep's worker does, exit handlers run, with exit code 3,
# and exits, printing the server's pid and the worker's exit code.
SWEEP = """
from multiprocessing import forkserver as served

from resnorm.cli import leave
from resnorm.sweep import forkserver

forkserver.start()
worker = forkserver.context().Process(target=leave, args=(3,))
worker.start()
worker.join()
print(served._forkserver._forkserver_pid, worker.exitcode, flush=True)
"""


def running(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie has ended: its parent, now init, reaps it when it will)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_the_fork_server_ends_at_once_with_the_process_that_started_it():
    proc = subprocess.run([PYTHON, "-c", SWEEP], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ended = time.monotonic()
    server, worker_code = map(int, proc.stdout.split())
    while running(server) and time.monotonic() - ended < 30:
        time.sleep(0.01)
    lived = time.monotonic() - ended
    assert lived < 1, f"the fork server ran on for {lived:.1f} s after the process that started it had exited"
    # A forked worker inherits the server's exit handler, which leaves it alone: its exit code is its own.
    assert worker_code == 3

"""Nothing lost across machines: a Ray trial on a lost node is retried on another node into the same
run, resumed from the snapshot in the run's artifact store. Real processes: an `mlflow server` with
--artifacts-destination on loopback, a Ray cluster of `ray start` nodes (each its own RESNORM_HOME,
as separate machines would have), and SIGKILL by PID."""

import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
from mlflow.tracking import MlflowClient

from resnorm import names, snapshots
from tests.conftest import free_port, mlflow_run_args, subprocess_env
from tests.test_recovery import TRAIN, comparable, curves, logged_epochs, trainer_of, wait_for

pytestmark = pytest.mark.slow

EPOCHS = 5
# Digits at 8 px through a ResNet-8 on one thread: a fraction of a second an epoch.
SMALL = {"norm": "bn", "epochs": str(EPOCHS), "image_size": "8", "n": "1", "data": "digits", "device": "cpu"}
TRAIN_ARGS = [a for k, v in SMALL.items() for a in (f"--{k.replace('_', '-')}", v)] + ["--threads", "1"]


# A killed run resumed on another machine (an empty RESNORM_HOME, the snapshot from the server):
# tests/test_recovery.py.


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (children of children, whatever their session)."""
    parents = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [pid], [pid]
    while frontier:
        frontier = [p for p, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def kill_tree(pid: int) -> None:
    for p in descendants(pid):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


# Each `ray start` of the README's recipe, on one machine: loopback, ports of its own, in the
# foreground (--block) so that the node is one process tree a test can kill.
NODE_FLAGS = [
    "--node-ip-address",
    "127.0.0.1",
    "--disable-usage-stats",
    "--min-worker-port",
    "0",
    "--max-worker-port",
    "0",
    "--dashboard-agent-listen-port",
    "0",
    "--metrics-export-port",
    "0",
    "--block",
]


class RayNode:
    def __init__(self, args, env, log):
        self.log = log
        self.proc = subprocess.Popen(
            ["ray", "start", *args, *NODE_FLAGS],
            env=env,
            stdout=open(log, "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_started(self, timeout=300):
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in open(self.log).read():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"ray start {'ended' if self.proc.poll() is not None else 'timed out'}: "
                    f"{open(self.log).read()[-3000:]}"
                )
            time.sleep(0.3)

    def kill(self):
        kill_tree(self.proc.pid)
        self.proc.wait(timeout=30)


@pytest.fixture
def ray_cluster(sqlite_server):
    """A head (no CPUs for trials: it runs the sweep's driver) and two 1-CPU workers, each node with
    its own RESNORM_HOME. Node death is noticed within seconds (health checks every second)."""
    folder = tempfile.mkdtemp(prefix="rn", dir="/tmp")  # short: Ray's socket paths live under it
    port = free_port()
    # HOME of its own: Ray keeps a cluster token in ~/.ray, and one left there by an earlier local
    # ray.init() makes these nodes refuse each other.
    # A node registers with the head within RAY_raylet_start_wait_time_s (30 s by default): once, on
    # a fresh 2-core CI machine (cold caches, two nodes starting at once), a worker took longer.
    env = {
        **subprocess_env(sqlite_server.url),
        "HOME": folder,
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_failure_threshold": "10",
        "RAY_health_check_timeout_ms": "2000",
        "RAY_raylet_start_wait_time_s": "180",
    }
    head = RayNode(
        ["--head", "--port", str(port), "--num-cpus", "0", "--include-dashboard", "false", "--temp-dir", folder],
        {**env, "RESNORM_HOME": f"{folder}/home-head"},
        f"{folder}/head.log",
    )
    nodes = [head]
    try:
        head.wait_started()
        for i in (1, 2):  # one after the other: two raylets starting at once on 2 cores are slow to register
            nodes.append(
                RayNode(
                    ["--address", f"127.0.0.1:{port}", "--num-cpus", "1"],
                    {**env, "RESNORM_HOME": f"{folder}/home-{i}"},
                    f"{folder}/worker{i}.log",
                )
            )
            nodes[-1].wait_started()
        yield f"127.0.0.1:{port}", nodes, folder
    finally:
        for node in reversed(nodes):
            node.kill()
        shutil.rmtree(folder, ignore_errors=True)


def readme_sweep(address, folder):
    """The README's "On several machines" command, with this cluster's address, a Tune folder and
    three small children (seeds 0, 1, 2)."""
    return mlflow_run_args(
        "sweep",
        preset="custom",
        grid="norm=bn",
        seeds=3,
        epochs=EPOCHS,
        image_size=8,
        n=1,
        device="cpu",
        executor="ray",
        ray_address=address,
        storage_path=f"{folder}/tune",
    )


def test_a_lost_ray_node_costs_nothing(sqlite_server, ray_cluster, tmp_path):
    """Three children on a head and two workers; the worker training one of them is killed after
    that child's epoch 2. Tune retries the trial on the other worker, which resumes the same run
    from the stored snapshot: every child FINISHED once, each epoch once, and the interrupted
    child's numbers equal an uninterrupted run of its seed."""
    address, nodes, folder = ray_cluster
    client = MlflowClient(sqlite_server.url)
    started = time.monotonic()
    timeline = []
    sweep = subprocess.Popen(
        readme_sweep(address, folder),
        cwd=tmp_path,
        env={**subprocess_env(sqlite_server.url), "HOME": folder, "RESNORM_HOME": f"{folder}/home-driver"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    victim = {}

    def a_child_at_epoch_2():
        exp = client.get_experiment_by_name(names.EXPERIMENT)
        for r in client.search_runs([exp.experiment_id], "tags.mlflow.parentRunId != ''") if exp else []:
            if logged_epochs(client, r.info.run_id) >= 2:
                victim["run"], victim["name"] = r.info.run_id, r.info.run_name
                return True
        return False

    try:
        wait_for(a_child_at_epoch_2, 600, "a child's epoch 2", sweep)
        run_id = victim["run"]
        homes = [f"{folder}/home-{i}" for i in (1, 2)]
        (trainer,) = [pid for pid in (trainer_of(run_id, home) for home in homes) if pid]  # the trial's worker
        (node,) = [n for n in nodes[1:] if trainer in descendants(n.proc.pid)]
        at_kill = logged_epochs(client, run_id)
        node.kill()  # its raylet, its workers and the training they started
        timeline.append(
            f"{time.monotonic() - started:.0f}s: killed the node training {victim['name']} at epoch {at_kill}"
        )
        out, err = sweep.communicate(timeout=900)
    finally:
        if sweep.poll() is None:
            kill_tree(sweep.pid)
    timeline.append(f"{time.monotonic() - started:.0f}s: sweep ended (rc {sweep.returncode})")
    assert sweep.returncode == 0, (out[-2000:], err[-3000:])
    assert at_kill < EPOCHS, "the child finished before its node was killed; the test proved nothing"

    exp = client.get_experiment_by_name(names.EXPERIMENT).experiment_id
    kids = client.search_runs([exp], "tags.mlflow.parentRunId != ''")
    assert sorted(k.info.run_name for k in kids) == sorted(f"bn-sgd-lr0.1-aug-bs32-s{s}" for s in range(3))
    assert all(k.info.status == "FINISHED" for k in kids), [(k.info.run_name, k.info.status) for k in kids]
    assert run_id in {k.info.run_id for k in kids}, "the interrupted child finished in its original run"
    for kid in kids:
        for key, points in curves(client, kid.info.run_id).items():
            assert [s for s, _ in points] == list(range(1, EPOCHS + 1)), (kid.info.run_name, key)
        assert kid.data.params[names.PARAM_TORCH_THREADS] == "1"
        assert not snapshots.stored(client, kid.info.run_id)

    seed = client.get_run(run_id).data.params["seed"]
    ref = subprocess.run(
        TRAIN + TRAIN_ARGS + ["--seed", seed],
        cwd=tmp_path,
        env=subprocess_env(sqlite_server.url),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    refs = [
        r
        for r in client.search_runs([exp])
        if "mlflow.parentRunId" not in r.data.tags and not r.data.tags.get(names.TAG_SWEEP)
    ]
    assert len(refs) == 1
    assert comparable(client, run_id) == comparable(client, refs[0].info.run_id)
    print("; ".join(timeline))

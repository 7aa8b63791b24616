"""A stop (SIGTERM, Ctrl-C) that lands inside a tracking call on the SQLite store leaves the database
writable: the job stops as that call returns, never between a transaction's first write and its commit,
where the process kept SQLite's write lock and every writer, its own ending of the run first, failed
"database is locked" after 20 s. Real signals to this process, through the ``guard`` every entry point
runs in, at random moments of every kind of call a sweep makes on the store."""

import itertools
import os
import random
import signal
import sqlite3
import sys
import threading
import time

import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from resnorm.cli import guard
from resnorm.signals import HeldSignals

TRIALS = 48
WINDOW_SECONDS = 0.04  # a stop lands at a random moment in the first 40 ms of a loop of calls
LOOP_SECONDS = 20.0


def store_calls(client: MlflowClient, experiment_id: str):
    """Each kind of write and read a sweep makes on its store, as a function of a counter."""
    run_id = client.create_run(experiment_id).info.run_id
    client.create_registered_model("m")
    return {
        "metrics": lambda i: client.log_batch(run_id, metrics=[Metric("loss", 1.0 / (i + 1), i, i)]),
        "params": lambda i: client.log_batch(run_id, params=[Param(f"p{i}", str(i))]),
        "tags": lambda i: client.log_batch(run_id, tags=[RunTag("t", str(i))]),
        "runs": lambda i: client.set_terminated(client.create_run(experiment_id).info.run_id, "KILLED"),
        "search": lambda i: client.search_runs([experiment_id], "attributes.status = 'KILLED'", max_results=5),
        "registry": lambda i: client.set_registered_model_tag("m", "t", str(i)),
    }


def writable(path: str) -> bool:
    """Whether another connection can take the database's write lock at once."""
    db = sqlite3.connect(path, timeout=0.5, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        db.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_stop_inside_any_tracking_call_leaves_the_store_writable(mlflow_env, signum, capsys):
    # Ctrl-C is answered even where the suite was started with SIGINT ignored (a shell's background job).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        stop_inside_every_call(mlflow_env, signum, capsys)
    finally:
        signal.signal(signal.SIGINT, previous)


def stop_inside_every_call(mlflow_env, signum, capsys) -> None:
    client = MlflowClient()
    calls = store_calls(client, client.create_experiment("interrupts"))
    path = mlflow_env.removeprefix("sqlite:///")
    rng = random.Random(signum)
    tracer = sys.gettrace()
    locked = []
    for trial, (kind, call) in zip(range(TRIALS), itertools.cycle(calls.items())):
        delay = rng.random() * WINDOW_SECONDS

        def loop(call=call, delay=delay) -> None:
            # Started here, inside guard: a signal before guard took SIGTERM would end this process.
            threading.Timer(delay, os.kill, (os.getpid(), signum)).start()
            deadline = time.monotonic() + LOOP_SECONDS
            for i in itertools.count():
                assert time.monotonic() < deadline, "the stop never came"
                call(i)

        assert guard(loop) == 130
        assert sys.gettrace() is tracer, "a stop left a trace function behind"
        if not writable(path):
            locked.append(f"{kind} (trial {trial})")
    assert not locked, f"the store stayed locked after a stop inside: {', '.join(locked)}"
    assert capsys.readouterr().err.count("error: ") == TRIALS  # each stop said so, on one line


def test_a_ctrl_c_the_process_was_started_ignoring_stays_ignored(mlflow_env):
    """A job started as a shell's background job inherits SIGINT ignored: guard must not take it up, nor
    hold it while a model is logged."""

    def job() -> None:
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # a signal taken up would be raised here
        with HeldSignals() as held:  # as while a model is logged
            held.start()
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
        assert not held.caught

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert guard(job) == 0
    finally:
        signal.signal(signal.SIGINT, previous)

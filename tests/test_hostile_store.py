"""A finished sweep whose store was tampered with, one mutation at a time (issue 31): a child deleted, a
score NaN, missing or out of range, a seed finished twice, a param changed, a foreign run moved in, a torn
plan, a tampered lease. For each, ``analyze`` and a re-run of the sweep must name the problem on one line
or handle it, never crash and never count what is not there. The sweep is real (trained once, in a fork
of this process); each mutation works on a copy of its store."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from analysis.report import build
from resnorm import names
from resnorm.sweep.lease import LEASE_TAG
from tests.conftest import command, run_command
from tests.sweeps import TINY_SWEEP, Case, _store, start_fork_server

pytestmark = pytest.mark.slow

ARGS = ["--preset", "custom", "--grid", "norm=bn,gn", *TINY_SWEEP, "--seeds", "2", "--parallel", "1"]
SCORE = names.final_metric("test", "accuracy")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Case:
    start_fork_server()
    case = Case.new(tmp_path_factory.mktemp("hostile") / "template")
    assert case.sweep(ARGS) == 0, case.log()[-3000:]
    return case


def copy_store(case: Case, folder: Path) -> Case:
    """The store of ``case`` in ``folder``: the database, its artifacts and home, every path in the database
    pointing at the copy."""
    shutil.copytree(case.folder, folder)
    old, new = str(case.folder), str(folder)
    with sqlite3.connect(folder / "mlflow.db") as db:
        for table, column in (
            ("runs", "artifact_uri"),
            ("experiments", "artifact_location"),
            ("model_versions", "source"),
            ("model_versions", "storage_location"),
            ("logged_models", "artifact_location"),
        ):
            db.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)", (old, new))
    return Case(folder)


def _kids(client: MlflowClient, pid: str) -> list:
    exp = client.get_run(pid).info.experiment_id
    runs = client.search_runs([exp], f"tags.mlflow.parentRunId = '{pid}'", order_by=["attributes.start_time ASC"])
    return sorted(runs, key=lambda r: r.info.run_name)


def delete_child(client, pid, kids, db):
    client.delete_run(kids[0].info.run_id)
    return 3, "MISSING"


def nan_score(client, pid, kids, db):
    client.log_metric(kids[0].info.run_id, SCORE, float("nan"))
    return 3, "is missing or not a number (nan)"


def missing_score(client, pid, kids, db):
    for table in ("metrics", "latest_metrics"):
        db.execute(f"DELETE FROM {table} WHERE run_uuid = ? AND key = ?", (kids[0].info.run_id, SCORE))
    return 3, "is missing or not a number (nan)"


def score_out_of_range(client, pid, kids, db):
    client.log_metric(kids[0].info.run_id, SCORE, 1.5)
    return 3, "1.5, outside [0, 1]"


def seed_finished_twice(client, pid, kids, db):
    first = kids[0]
    copy = client.create_run(first.info.experiment_id, run_name=first.info.run_name, tags={MLFLOW_PARENT_RUN_ID: pid})
    metrics = [Metric(k, v, 0, 0) for k, v in first.data.metrics.items()]
    client.log_batch(copy.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in first.data.params.items()])
    client.set_terminated(copy.info.run_id, "FINISHED")
    return 4, "has 2 FINISHED runs"


def param_changed(client, pid, kids, db):
    db.execute("UPDATE params SET value = '3' WHERE run_uuid = ? AND key = 'epochs'", (kids[0].info.run_id,))
    return 3, "leaves out 1 of its runs"


def foreign_run_moved_in(client, pid, kids, db):
    alien = client.create_run(kids[0].info.experiment_id, run_name="somebody-else", tags={MLFLOW_PARENT_RUN_ID: pid})
    params = {**kids[0].data.params, "norm": "ln"}
    client.log_batch(alien.info.run_id, params=[Param(k, v) for k, v in params.items()])
    client.log_batch(alien.info.run_id, metrics=[Metric(k, v, 0, 0) for k, v in kids[0].data.metrics.items()])
    client.set_terminated(alien.info.run_id, "FINISHED")
    return 4, "leaves out 1 of its runs"


def torn_plan(client, pid, kids, db):
    path = Path(client.get_run(pid).info.artifact_uri.removeprefix("file://")) / names.SWEEP_PLAN
    path.write_text(path.read_text()[: len(path.read_text()) // 2])
    return 4, "does not hold together (it cannot be read"


def tampered_lease(client, pid, kids, db):
    client.set_tag(pid, LEASE_TAG, "{not json")
    db.execute("UPDATE params SET value = 'garbage' WHERE run_uuid = ? AND key LIKE 'resnorm.attempt.%'", (pid,))
    return 4, ""


MUTATIONS: dict[str, Callable] = {
    f.__name__: f
    for f in (
        delete_child,
        nan_score,
        missing_score,
        score_out_of_range,
        seed_finished_twice,
        param_changed,
        foreign_run_moved_in,
        torn_plan,
        tampered_lease,
    )
}


def _analyze(case: Case, pid: str, out: Path, capsys) -> tuple[int, int, str]:
    """``analyze`` on the store, as a user runs it (it must not fail), and the report's counts; also what it
    warned and wrote."""
    with _store(case):
        run_command(command("analyze"), ["--sweep-run-id", pid, "--out", str(out)])
        report = build(MlflowClient(), MlflowClient().get_run(pid))
    said = capsys.readouterr().err + (out / "report.md").read_text()
    return report.finished, report.planned, said


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_a_tampered_store_is_named_or_handled_never_miscounted(mutation, finished, tmp_path, capsys):
    case = copy_store(finished, tmp_path / "store")
    client = case.client
    (parent,) = case.parents()
    pid = parent.info.run_id
    with sqlite3.connect(case.folder / "mlflow.db") as db:
        usable, named = MUTATIONS[mutation](client, pid, _kids(client, pid), db)
    done, planned, said = _analyze(case, pid, tmp_path / "before", capsys)
    assert (done, planned) == (usable, 4), said[-3000:]
    assert named in said, said[-3000:]
    code = case.sweep(ARGS, parent=pid)
    log = case.log()
    assert "Traceback" not in log, log[-3000:]
    assert code == 0 or (code in (1, 2) and log.count("error:") == 1), log[-3000:]
    with _store(case):  # and the store can still be read
        build(MlflowClient(), MlflowClient().get_run(pid))

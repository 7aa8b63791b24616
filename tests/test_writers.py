"""Many writers: eight training processes logging at once to one `mlflow server`, over SQLite
(the embedded default) and over PostgreSQL (what the README's team setup uses). The eight are the
workers of one sweep with ``--parallel 8``: each is its own process with its own MLflow client, as
eight `train` processes would be, but forked from the sweep's fork server rather than each importing
torch and MLflow for itself (16 x 4.5 s of imports on two cores)."""

import subprocess
import threading
import uuid
import warnings

import pytest
from mlflow.tracking import MlflowClient

from resnorm import names
from resnorm.data import synthetic
from resnorm.runlog import RunLogger
from tests.conftest import PYTHON, ROOT, MlflowServer, empty_store, subprocess_env

pytestmark = pytest.mark.slow

WRITERS = 8
NORMS = ("bn", "in", "ln", "gn")  # each with seeds 0 and 1: two versions of each model registered at once
EPOCHS = 2
POSTGRES = "postgresql://postgres@127.0.0.1:5432"  # for psycopg2.connect
STORE = "postgresql+psycopg2://postgres@127.0.0.1:5432"  # SQLAlchemy 2.1 picks psycopg 3 for postgresql://


@pytest.fixture
def postgres_store():
    """A uniquely named PostgreSQL database for this test, dropped afterwards; None (with a warning)
    where there is no PostgreSQL server (CI's machine has one)."""
    try:
        import psycopg2

        admin = psycopg2.connect(f"{POSTGRES}/test", connect_timeout=5)
    except Exception as e:  # noqa: BLE001 - no driver or no server: the SQLite half still runs
        warnings.warn(f"no PostgreSQL at {POSTGRES} ({e}): its eight writers are not tested", stacklevel=1)
        yield None
        return
    admin.autocommit = True
    db = f"resnorm_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {db}")
    try:
        yield f"{STORE}/{db}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        admin.close()


def start_writers(server: MlflowServer, folder) -> subprocess.Popen:
    """A sweep of eight children, all at once, against ``server``."""
    grid = f"norm={','.join(NORMS)}"
    args = [PYTHON, str(ROOT / "entrypoints" / "sweep.py"), "--preset", "custom", "--grid", grid, "--seeds", "2"]
    args += ["--parallel", str(WRITERS), "--epochs", str(EPOCHS), "--image-size", "8", "--n", "1"]
    args += ["--data", "synthetic", "--batch-size", "16", "--device", "cpu"]
    env = {**subprocess_env(server.url), "RESNORM_HOME": str(folder / "home")}
    return subprocess.Popen(args, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def check_writers(server: MlflowServer, sweep: subprocess.Popen) -> None:
    """Every writer finished, nothing was locked, every epoch landed once, every model registered."""
    out, err = sweep.communicate(timeout=900)
    assert sweep.returncode == 0 and "database is locked" not in out + err, (out[-2000:], err[-3000:])
    server_log = (server.folder / f"server-{server.port}.log").read_text(errors="replace")
    assert "database is locked" not in server_log
    client = MlflowClient(server.url)
    experiment_id = client.get_experiment_by_name(names.EXPERIMENT).experiment_id
    (parent,) = client.search_runs([experiment_id], f"tags.`{names.TAG_SWEEP}` = 'true'")
    assert parent.data.params["parallel"] == str(WRITERS)
    runs = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(runs) == WRITERS
    first_epochs = []
    for r in runs:
        assert r.info.status == "FINISHED", r.info.run_name
        for key in names.EPOCH_METRICS:
            assert [m.step for m in client.get_metric_history(r.info.run_id, key)] == list(range(1, EPOCHS + 1))
        # An epoch's points carry the time it ended.
        first_epochs.append(min(m.timestamp for m in client.get_metric_history(r.info.run_id, names.EPOCH_SECONDS)))
        assert names.final_metric("test", "accuracy") in r.data.metrics
    # At once: every writer had trained an epoch before any of them ended its run.
    assert max(first_epochs) < min(r.info.end_time for r in runs)
    versions = [v for n in NORMS for v in client.search_model_versions(f"name = '{names.registered_model(n)}'")]
    registered = sorted(v.run_id for v in versions)
    assert registered == sorted(r.info.run_id for r in runs), "every writer registered its model"


def test_runs_that_log_one_new_dataset_at_once_all_record_it(tmp_path):
    """The server adds an unseen dataset with check-then-insert; runs that race on it must still
    all record their inputs (without the retry, three runs of this test out of three failed)."""
    server = MlflowServer(empty_store(tmp_path / "server.db"), tmp_path, workers=2).start()
    try:
        client = MlflowClient(server.url)
        experiment = client.create_experiment("race")
        for round_ in range(4):
            data = synthetic(image_size=8, per_class=20, seed=round_)  # a dataset the server has not seen
            loggers = [RunLogger(client.create_run(experiment).info.run_id, client) for _ in range(16)]
            start, errors = threading.Barrier(len(loggers)), []

            def log(logger, start=start, data=data, errors=errors):
                start.wait()
                try:
                    logger.log_dataset(data)
                except Exception as e:  # noqa: BLE001 - collected and asserted below
                    errors.append(e)

            threads = [threading.Thread(target=log, args=(lg,)) for lg in loggers]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for lg in loggers:
                lg.outbox.close()
            assert not errors, errors
            for lg in loggers:
                inputs = client.get_run(lg.run_id).inputs.dataset_inputs
                assert sorted(i.dataset.digest for i in inputs) == sorted(
                    data.digest(s) for s in ("train", "val", "test")
                )
    finally:
        server.kill()


def test_eight_writers_on_sqlite_and_eight_on_postgresql(postgres_store, tmp_path):
    """Both servers at once, each with its eight writers: the two stores are independent."""
    folders = {kind: tmp_path / kind for kind in ("sqlite", "postgresql")}
    for folder in folders.values():
        folder.mkdir()
    servers = {
        # Two uvicorn workers each: writers also race across the server's processes.
        "sqlite": MlflowServer(empty_store(folders["sqlite"] / "server.db"), folders["sqlite"], workers=2),
        "postgresql": MlflowServer(postgres_store, folders["postgresql"], workers=2),
    }
    try:
        for server in servers.values():
            server.start()
        writers = {kind: start_writers(server, folders[kind]) for kind, server in servers.items()}
        for kind, server in servers.items():
            check_writers(server, writers[kind])
    finally:
        for server in servers.values():
            if server.proc is not None:
                server.kill()


def tag_at_once(clients: list[MlflowClient], experiment_id: str) -> list[str]:
    """Every client calls ``mark_model_training`` at the same moment; the errors they met."""
    from resnorm.tracking import mark_model_training

    start = threading.Barrier(len(clients))
    errors = []

    def tag(client):
        start.wait()
        try:
            mark_model_training(client, experiment_id)
        except Exception as e:  # noqa: BLE001 - collected and shown by the caller's assert
            errors.append(repr(e)[:300])

    threads = [threading.Thread(target=tag, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_writers_that_tag_one_experiment_at_once_all_succeed(postgres_store):
    """Eight clients see the experiment untagged and tag it together: PostgreSQL refuses all but
    the first insert (a unique key), and each of the others finds the tag set and goes on."""
    if postgres_store is None:
        pytest.skip("no PostgreSQL server")
    clients = [MlflowClient(tracking_uri=postgres_store) for _ in range(WRITERS)]
    for round_ in range(4):
        experiment_id = clients[0].create_experiment(f"tagged-at-once-{round_}")
        assert not tag_at_once(clients, experiment_id)
        assert clients[0].get_experiment(experiment_id).tags[names.TAG_EXPERIMENT_KIND] == names.MODEL_TRAINING

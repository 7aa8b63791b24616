"""Many writers: eight training processes logging at once to one `mlflow server`, over SQLite
(the embedded default) and over PostgreSQL (what the README's team setup uses)."""

import subprocess
import threading
import uuid

import pytest
from mlflow.tracking import MlflowClient

from resnorm import names
from resnorm.data import synthetic
from resnorm.norms import NORM_NAMES
from resnorm.runlog import RunLogger
from tests.conftest import PYTHON, ROOT, MlflowServer, subprocess_env

pytestmark = pytest.mark.slow

WRITERS = 8
EPOCHS = 2
POSTGRES = "postgresql://postgres@127.0.0.1:5432"  # for psycopg2.connect
STORE = "postgresql+psycopg2://postgres@127.0.0.1:5432"  # SQLAlchemy 2.1 picks psycopg 3 for postgresql://


@pytest.fixture
def postgres_store():
    """A uniquely named PostgreSQL database for this test, dropped afterwards."""
    psycopg2 = pytest.importorskip("psycopg2", reason="pip install psycopg2-binary (the test extra)")
    try:
        admin = psycopg2.connect(f"{POSTGRES}/test", connect_timeout=5)
    except psycopg2.OperationalError as e:
        pytest.skip(f"no PostgreSQL at {POSTGRES}: {e}")
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


def eight_writers(server: MlflowServer, tmp_path):
    norms = [NORM_NAMES[i % len(NORM_NAMES)] for i in range(WRITERS)]
    procs = []
    for i, norm in enumerate(norms):
        args = [
            PYTHON,
            str(ROOT / "entrypoints" / "train.py"),
            "--norm",
            norm,
            "--epochs",
            str(EPOCHS),
            "--image-size",
            "8",
            "--n",
            "1",
            "--data",
            "synthetic",
            "--batch-size",
            "16",
            "--seed",
            str(i),
            "--device",
            "cpu",
        ]
        env = {
            **subprocess_env(server.url),
            "RESNORM_HOME": str(tmp_path / "home"),
            "OMP_NUM_THREADS": "1",
        }  # eight processes on a few cores: no thread oversubscription
        procs.append(
            subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    errors = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        if p.returncode != 0 or "database is locked" in err:
            errors.append(err[-1500:])
    assert not errors, errors
    server_log = (server.folder / f"server-{server.port}.log").read_text(errors="replace")
    assert "database is locked" not in server_log
    client = MlflowClient(server.url)
    runs = client.search_runs([client.get_experiment_by_name(names.EXPERIMENT).experiment_id])
    assert len(runs) == WRITERS
    for r in runs:
        assert r.info.status == "FINISHED", r.info.run_name
        for key in names.EPOCH_METRICS:
            assert [m.step for m in client.get_metric_history(r.info.run_id, key)] == list(range(1, EPOCHS + 1))
        assert names.final_metric("test", "accuracy") in r.data.metrics
    versions = sum(len(client.search_model_versions(f"name = '{names.registered_model(n)}'")) for n in set(norms))
    assert versions == WRITERS, "every writer registered its model"


def test_runs_that_log_one_new_dataset_at_once_all_record_it(tmp_path):
    """The server adds an unseen dataset with check-then-insert; runs that race on it must still
    all record their inputs (without the retry, three runs of this test out of three failed)."""
    server = MlflowServer(f"sqlite:///{tmp_path / 'server.db'}", tmp_path).start()
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


def test_eight_writers_on_sqlite(tmp_path):
    server = MlflowServer(f"sqlite:///{tmp_path / 'server.db'}", tmp_path).start()
    try:
        eight_writers(server, tmp_path)
    finally:
        server.kill()


def test_eight_writers_on_postgresql(postgres_store, tmp_path):
    server = MlflowServer(postgres_store, tmp_path).start()
    try:
        eight_writers(server, tmp_path)
    finally:
        server.kill()

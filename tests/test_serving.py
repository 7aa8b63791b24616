"""The registered model outside the training process: downloaded, loaded where resnorm cannot be
imported, and served by `mlflow models serve` on loopback."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import requests
import torch

from resnorm import names
from resnorm.config import TrainConfig
from resnorm.data import load_data
from tests.conftest import free_port, stop_group, tracking_store
from tests.trained import env_without_resnorm, train_and_register

NORM = "bn"
MODEL_URI = f"models:/{names.registered_model(NORM)}@{names.CHAMPION}"

pytestmark = pytest.mark.slow  # trains and serves through real processes


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """One digits model (8 px), trained and registered in a store of its own; and the test images."""
    folder = tmp_path_factory.mktemp("serving")
    with tracking_store(folder) as uri:
        cfg = TrainConfig(norm=NORM, epochs=2, image_size=8, n=1, batch_size=32)
        data = load_data(cfg.data, cfg.image_size)
        _, result, _ = train_and_register(cfg, data)
        images = data.test.images[:24].float() / 255  # (24, 1, 8, 8) in [0, 1]
        with torch.no_grad():
            probabilities = torch.softmax(result.model(images).double(), dim=1)
        yield {"uri": uri, "folder": folder, "classes": data.classes, "images": images, "probabilities": probabilities}


def expected_labels(registered) -> list[str]:
    return [registered["classes"][k] for k in registered["probabilities"].argmax(1).tolist()]


LOAD_ELSEWHERE = """
import json, sys
import numpy as np
try:
    import resnorm
    sys.exit("resnorm is importable here: " + resnorm.__file__)
except ModuleNotFoundError:
    pass
import mlflow.pyfunc, mlflow.pytorch, torch

uri, images_path = sys.argv[1], sys.argv[2]
x = np.load(images_path)
module = mlflow.pytorch.load_model(uri)
with torch.no_grad():
    logits = module(torch.from_numpy(x))
table = mlflow.pyfunc.load_model(uri).predict(x)
print(json.dumps({
    "module": type(module).__name__,
    "logits": logits.tolist(),
    "labels": table["label"].tolist(),
    "probability": table["probability"].tolist(),
    "probabilities": table["probabilities"].tolist(),
    "resnorm_loaded": any(m == "resnorm" or m.startswith("resnorm.") for m in sys.modules),
}))
"""


def test_the_registered_model_loads_and_predicts_where_resnorm_cannot_be_imported(registered, tmp_path):
    x = registered["images"].numpy()
    np.save(tmp_path / "images.npy", x)
    env = env_without_resnorm(tmp_path, registered["uri"])
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_ELSEWHERE, MODEL_URI, str(tmp_path / "images.npy")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not out["resnorm_loaded"]
    # mlflow.pytorch: the exported program, logits as the training process computes them.
    assert out["module"].startswith("GraphModule")
    expected = registered["probabilities"]
    torch.testing.assert_close(torch.softmax(torch.tensor(out["logits"], dtype=torch.float64), 1), expected)
    # mlflow.pyfunc: class names and probabilities.
    assert out["labels"] == expected_labels(registered)
    assert out["probability"] == pytest.approx(expected.max(1).values.tolist(), abs=1e-6)
    for row, probs in zip(out["probabilities"], expected.tolist()):
        assert list(row) == list(registered["classes"])
        assert list(row.values()) == pytest.approx(probs, abs=1e-6)


def test_mlflow_artifacts_download_gives_a_self_contained_model_folder(registered, tmp_path):
    env = env_without_resnorm(tmp_path, registered["uri"])
    proc = subprocess.run(
        [sys.executable, "-m", "mlflow", "artifacts", "download", "-u", MODEL_URI, "-d", str(tmp_path / "model")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = tmp_path / "model"
    assert (model / "data" / "model.pt2").is_file()
    assert (model / "code" / "resnorm_serving.py").is_file()
    mlmodel = (model / "MLmodel").read_text()
    assert "loader_module: resnorm_serving" in mlmodel and "pytorch:" in mlmodel
    # The shipped loader is source, and stands alone: it imports nothing from resnorm.
    source = (model / "code" / "resnorm_serving.py").read_text()
    assert "from resnorm" not in source and "import resnorm" not in source


@pytest.fixture
def server(registered, tmp_path):
    """`mlflow models serve` of the champion on a free loopback port, without resnorm importable."""
    port = free_port()
    env = env_without_resnorm(tmp_path, registered["uri"])
    log = open(tmp_path / "serve.log", "w")
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        MODEL_URI,
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    # A session of its own, so the server and its uvicorn worker stop together.
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited ({proc.returncode}): {(tmp_path / 'serve.log').read_text()[-3000:]}")
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer /ping: {(tmp_path / 'serve.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        stop_group(proc)
        log.close()


def test_mlflow_models_serve_answers_with_class_names_and_probabilities(registered, server):
    x = registered["images"]
    answer = requests.post(f"{server}/invocations", json={"inputs": x.tolist()}, timeout=60)
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert len(predictions) == len(x)
    classes = list(registered["classes"])
    expected = registered["probabilities"]
    assert [p["label"] for p in predictions] == expected_labels(registered)
    for p, probs in zip(predictions, expected.tolist()):
        assert list(p["probabilities"]) == classes
        assert sum(p["probabilities"].values()) == pytest.approx(1, abs=1e-6)
        assert list(p["probabilities"].values()) == pytest.approx(probs, abs=1e-6)
        assert p["probability"] == p["probabilities"][p["label"]] == max(p["probabilities"].values())

    # The signature is enforced: an image of the wrong size is refused, with the shape it expects.
    wrong = requests.post(f"{server}/invocations", json={"inputs": torch.zeros(1, 1, 16, 16).tolist()}, timeout=60)
    assert wrong.status_code == 400
    assert "(-1, 1, 8, 8)" in wrong.json()["message"]

    # Pixels the model cannot mean anything by are refused (HTTP 400) with the problem named, not
    # answered with NaN probabilities: NaN, infinities and values outside [0, 1].
    for value, fragment in (
        (float("nan"), "NaN or infinite"),
        (float("inf"), "NaN or infinite"),
        (-0.5, "outside [0, 1]"),
        (2.0, "outside [0, 1]"),
    ):
        bad = x[:2].clone()
        bad[1, 0, 3, 4] = value
        body = json.dumps({"inputs": bad.tolist()})  # bare NaN / Infinity, as a careless client sends them
        answer = requests.post(
            f"{server}/invocations", data=body, headers={"Content-Type": "application/json"}, timeout=60
        )
        assert answer.status_code == 400, (value, answer.text)
        message = answer.json()["message"]
        assert fragment in message and "1 pixel value(s)" in message and "image 1" in message, message

"""The team server's basic auth (README): a client without credentials is refused, one with
MLFLOW_TRACKING_USERNAME/PASSWORD is served."""

import subprocess

import pytest

from tests.conftest import PYTHON, ROOT, MlflowServer, subprocess_env

pytestmark = pytest.mark.slow

PROBE = """
from mlflow.tracking import MlflowClient
print(MlflowClient().search_experiments()[0].name)
"""


def test_basic_auth_refuses_strangers_and_serves_the_admin(tmp_path):
    pytest.importorskip("flask_wtf", reason="pip install 'mlflow[auth]' (the test extra)")
    env = {**subprocess_env("unused"), "MLFLOW_AUTH_CONFIG_PATH": str(ROOT / "deploy" / "basic_auth.ini"),
           "MLFLOW_AUTH_ADMIN_PASSWORD": "s3cret-for-this-test", "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-key"}
    server = MlflowServer(f"sqlite:///{tmp_path / 'server.db'}", tmp_path, "--app-name", "basic-auth", env=env).start()
    try:
        client_env = {**subprocess_env(server.url), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
        stranger = subprocess.run([PYTHON, "-c", PROBE], env=client_env, capture_output=True, text=True, timeout=120)
        assert stranger.returncode != 0 and "401" in stranger.stderr, stranger.stderr[-1500:]
        admin_env = {**client_env, "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "s3cret-for-this-test"}
        admin = subprocess.run([PYTHON, "-c", PROBE], env=admin_env, capture_output=True, text=True, timeout=120)
        assert admin.returncode == 0, admin.stderr[-1500:]
        assert admin.stdout.strip() == "Default"
    finally:
        server.kill()

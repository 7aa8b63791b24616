"""``$RESNORM_HOME`` (default ``~/.resnorm``): what resnorm keeps on this machine between runs.

``runs/<run_id>/`` holds a run's per-epoch snapshot and its lock (``resnorm.snapshots``),
``decoded/`` the decoded images of image folders (``resnorm.data``), ``torchinductor/`` the fast
path's compiled graphs (``resnorm.fast``).
"""

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("RESNORM_HOME") or Path.home() / ".resnorm")


def run_dir(run_id: str) -> Path:
    return home() / "runs" / run_id


def decoded_dir() -> Path:
    return home() / "decoded"


def compile_cache_dir() -> Path:
    return home() / "torchinductor"

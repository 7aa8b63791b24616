"""For the crash harness's Ray case (tests/test_crashes.py): a Ray trial trains its child in a process of
its own (``python -m resnorm.sweep.worker``), which nothing forks from the test; with this folder on its
PYTHONPATH, that process installs the crash hook (``tests.crashpoints``) as it starts. Other processes,
Ray's own included, are left alone."""

import os
import sys

if os.environ.get("RESNORM_CRASH") and "resnorm.sweep.worker" in getattr(sys, "orig_argv", []):
    sys.path.insert(0, os.environ["RESNORM_CRASH_ROOT"])
    from tests import crashpoints

    crashpoints.install()

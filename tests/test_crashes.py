"""Crash anywhere, lie never (issue 31): a sweep stopped just before each call it makes to the tracking
store, in turn, and re-run into its parent, must leave what DESIGN.md says holds after any crash
(``tests.sweeps.check``). The calls are not listed here: a first sweep records them (``tests.crashpoints``),
so a call added to the code is crashed at without anyone remembering it.

Each case is a real sweep - the entry point, its worker forked by the fork server, real trainings on a
real SQLite store - run in a fork of this process, so that a case costs its trainings, not an interpreter.
SIGKILL stops every process of the sweep at once (a lost machine, the OOM killer); SIGTERM reaches every
process of it (a supervisor's stop). CI crashes every site with SIGKILL, and with SIGTERM every site of the
sweep's own process and the first site of each job of a worker (where its handling of SIGTERM differs:
before its run, training, logging the model while signals wait, after); ``RESNORM_CRASH_ALL=1`` crashes
every site with SIGTERM too (the longer run)."""

from __future__ import annotations

import pytest

from tests.sweeps import TINY_SWEEP, record, run_cases, sigterm_sites, writes

pytestmark = pytest.mark.slow

FIXED = ["--preset", "custom", "--grid", "norm=bn", *TINY_SWEEP, "--parallel", "1"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> list[tuple[str, bool]]:
    """Every site a fixed-seed sweep reaches (one child: the sweep's calls and a training's)."""
    return record(tmp_path_factory.mktemp("recorded"), FIXED)


def test_the_recording_finds_every_kind_of_call_a_sweep_makes(recorded):
    """The recording is the list of crash points: it must reach the sweep's parent, its lease, its children's
    runs, their epochs, models and registry."""
    for where in (
        "resnorm/sweep/runner.py",
        "resnorm/sweep/lease.py",
        "resnorm/sweep/child.py",
        "resnorm/sweep/pool.py",
        "resnorm/runlog.py",
        "resnorm/outbox.py",
        "resnorm/snapshots.py",
        "resnorm/registry.py",
        "resnorm/weights.py",
    ):
        assert any(f"{where}:" in s for s, _ in recorded), where
    assert len(recorded) == len({s for s, _ in recorded})
    print(f"\ncrash points of a fixed-seed sweep: {len(recorded)} sites, {len(writes(recorded))} of them writes")


@pytest.mark.parametrize("signal", ["KILL", "TERM"])
def test_a_sweep_stopped_before_any_tracking_call_resumes_truthfully(recorded, tmp_path, signal):
    sites = writes(recorded) if signal == "KILL" else sigterm_sites(recorded)
    run_cases(tmp_path, "fixed-seed sweep", FIXED, signal, sites)

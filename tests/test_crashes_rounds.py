"""Crash anywhere, lie never, for what a fixed-seed sweep does not do (issue 31; tests/test_crashes.py has
the rest): an adaptive sweep's rounds - the plan read back, the claims read and logged after a round -
stopped before each of their calls to the tracking store and re-run; and a Ray sweep killed mid-training,
its local cluster with it, re-run on a fresh one."""

from __future__ import annotations

import pytest

from tests.sweeps import TINY_SWEEP, crash_and_rerun, record, run_cases, sigterm_sites, writes

pytestmark = pytest.mark.slow

# One configuration, its claims all untestable: round 1 (3 seeds) is looked at, logged, and no round 2 is
# asked for, so every call of an adaptive sweep's rounds is made once, at the cost of three trainings.
ADAPTIVE = ["--preset", "custom", "--grid", "norm=bn", *TINY_SWEEP, "--seeds", "auto", "--max-seeds", "3"]
ADAPTIVE += ["--parallel", "1"]
ROUNDS = ("analysis/", "resnorm/sweep/record.py")  # what makes a site the rounds' own


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> list[tuple[str, bool]]:
    """Every site an adaptive sweep reaches; the rounds' own: those made from the claims (analysis/) or the
    plan read back (resnorm/sweep/record.py). The rest are a fixed-seed sweep's, crashed at there."""
    sites = record(tmp_path_factory.mktemp("recorded"), ADAPTIVE, rounds=1)
    return [(site, own) for site, own in sites if any(f" < {w}" in site or f"@ {w}" in site for w in ROUNDS)]


def test_the_recording_finds_the_calls_of_a_round(recorded):
    made = " ".join(site for site, _ in recorded)
    for where in ("analysis/adaptive.py", "resnorm/sweep/record.py"):
        assert where in made, where
    print(f"\ncrash points of an adaptive sweep's rounds: {len(recorded)} sites, {len(writes(recorded))} writes")


@pytest.mark.parametrize("signal", ["KILL", "TERM"])
def test_an_adaptive_sweep_stopped_before_any_call_of_its_rounds_resumes_truthfully(recorded, tmp_path, signal):
    sites = writes(recorded) if signal == "KILL" else sigterm_sites(recorded)
    run_cases(tmp_path, "adaptive sweep", ADAPTIVE, signal, sites, rounds=1)


def test_a_ray_sweep_killed_mid_training_resumes_truthfully(tmp_path):
    """Ray: the whole sweep - its driver, its local Ray cluster, the trial's worker - killed as the first
    epoch's metrics go out (the background sender's call, the same in a forked or a Ray worker), then run
    again, on a fresh cluster, into its parent."""
    args = ["--preset", "custom", "--grid", "norm=bn", *TINY_SWEEP, "--executor", "ray"]
    sender = "MlflowClient.log_batch @ resnorm/outbox.py:*"  # any line of it
    broken = crash_and_rerun(tmp_path / "ray", args, "KILL", sender, None)
    assert not broken, broken

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

import os
import time
from pathlib import Path

import pytest

from tests.sweeps import TINY_SWEEP, Case, check, start_fork_server

pytestmark = pytest.mark.slow

FIXED = ["--preset", "custom", "--grid", "norm=bn", *TINY_SWEEP, "--parallel", "1"]
# One configuration, its claims all untestable: round 1 (3 seeds) is looked at, logged, and no round 2 is
# asked for, so every call of an adaptive sweep's rounds is made once, at the cost of three trainings.
ADAPTIVE = ["--preset", "custom", "--grid", "norm=bn", *TINY_SWEEP, "--seeds", "auto", "--max-seeds", "3"]
ADAPTIVE += ["--parallel", "1"]
ALL = os.environ.get("RESNORM_CRASH_ALL") == "1"


def _sites(case: Case) -> list[tuple[int, str]]:
    """(pid, site) in the order the sweep first reached them."""
    lines = (case.folder / "sites").read_text().splitlines()
    return [(int(pid), site) for pid, site, _ in (line.split("\t") for line in lines)]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Every site a fixed-seed and an adaptive sweep reach, recorded from one uncrashed sweep of each:
    {kind: [(site, made by the sweep's own process)]}, the adaptive sweep's only where the fixed one has
    no such site."""
    start_fork_server()
    root = tmp_path_factory.mktemp("recorded")
    found = {}
    for kind, args in (("fixed", FIXED), ("adaptive", ADAPTIVE)):
        case = Case.new(root / kind)
        code = case.sweep(args, crash=f"record:{case.folder}")
        assert code == 0 and check(case, rounds=1 if kind == "adaptive" else None) == [], case.log()[-3000:]
        sweep_pid = int((case.folder / "pids").read_text().split()[0])
        found[kind] = [(site, pid == sweep_pid) for pid, site in _sites(case)]
    known = {site for site, _ in found["fixed"]}
    found["adaptive"] = [(site, own) for site, own in found["adaptive"] if site not in known]
    return found


READS = ("get_", "search_", "list_", "download_")


def writes(sites: list[tuple[str, bool]]) -> list[str]:
    """The sites that change the store. SIGKILL before a read leaves the store, the local snapshot folder
    and every process as SIGKILL before the write that came before it does (a killed process keeps nothing),
    so in CI SIGKILL is crashed at every write; ``RESNORM_CRASH_ALL=1`` at reads too."""
    if ALL:
        return [site for site, _ in sites]
    return [site for site, _ in sites if not site.split(" @ ")[0].split(".")[-1].startswith(READS)]


def _job(site: str) -> str:
    """A worker site's job: the project function that makes the call (its innermost project frame)."""
    where = site.split(" @ ")[1].split(" < ")[0]
    return where.rsplit(":", 1)[0]


def _sigterm_sites(sites: list[tuple[str, bool]]) -> list[str]:
    """Where SIGTERM is crashed at in CI: every site of the sweep's own process, and the first site of each
    module a worker calls from (its handling differs by phase, not by the call)."""
    if ALL:
        return [site for site, _ in sites]
    chosen, modules = [], set()
    for site, own in sites:
        if own or _job(site) not in modules:
            chosen.append(site)
            modules.add(_job(site))
    return chosen


def crash_and_rerun(folder: Path, args: list[str], signal: str, site: str, rounds: int | None) -> list[str]:
    """One case: the sweep stopped just before ``site``, then re-run (into its parent when it made one) until
    it ends; what is broken afterwards, or []."""
    case = Case.new(folder)
    start = time.monotonic()
    code = case.sweep(args, crash=f"{signal}:{site}:{case.folder}")
    if not (case.folder / "crashed").exists():
        return [f"the sweep never reached the site (exit {code})"]
    parents = case.parents()
    rerun = case.sweep(args, parent=parents[0].info.run_id if parents else "")
    if rerun != 0:
        return [f"the re-run exited {rerun}: {case.log()[-1500:]}"]
    broken = check(case, rounds)
    folder.joinpath("took").write_text(f"{time.monotonic() - start:.1f}")
    return broken


def _run_cases(tmp_path, kind, args, signal, sites, rounds=None) -> None:
    failures = []
    for i, site in enumerate(sites):
        broken = crash_and_rerun(tmp_path / f"{signal}-{i:03d}", args, signal, site, rounds)
        if broken:
            failures.append(f"{signal} before {site}:\n    " + "\n    ".join(broken))
    assert not failures, f"{len(failures)} of {len(sites)} {kind} crash points broke:\n" + "\n".join(failures)


def test_the_recording_finds_every_kind_of_call_a_sweep_makes(recorded):
    """The recording is the list of crash points: it must reach the sweep's parent, its rounds, its children's
    runs, their epochs, models and registry, and its lease."""
    sites = [s for kind in recorded for s, _ in recorded[kind]]
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
        "analysis/adaptive.py",
    ):
        assert any(f"{where}:" in s for s in sites), where
    assert len(sites) == len(set(sites))
    fixed, adaptive = recorded["fixed"], recorded["adaptive"]
    print(f"\ncrash points: {len(fixed)} in a fixed-seed sweep ({len(writes(fixed))} writes), {len(adaptive)} more in")
    print(f"an adaptive one ({len(writes(adaptive))} writes)")


@pytest.mark.parametrize("signal", ["KILL", "TERM"])
def test_a_fixed_sweep_stopped_before_any_tracking_call_resumes_truthfully(recorded, tmp_path, signal):
    sites = writes(recorded["fixed"]) if signal == "KILL" else _sigterm_sites(recorded["fixed"])
    _run_cases(tmp_path, "fixed-seed sweep", FIXED, signal, sites)


@pytest.mark.parametrize("signal", ["KILL", "TERM"])
def test_an_adaptive_sweep_stopped_before_any_call_of_its_rounds_resumes_truthfully(recorded, tmp_path, signal):
    sites = writes(recorded["adaptive"]) if signal == "KILL" else _sigterm_sites(recorded["adaptive"])
    _run_cases(tmp_path, "adaptive sweep", ADAPTIVE, signal, sites, rounds=1)

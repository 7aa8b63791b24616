"""Real sweeps, cheaply, for the tests that crash them or tamper with their store: the ``sweep`` entry point
run in a fork of this warm process (the interpreter and its imports are paid once, not per sweep), its
workers forked by the fork server this process started, as a sweep's are; and ``check``, what must hold of
a sweep's store after any crash and re-run (DESIGN.md, "What must hold after any crash")."""

from __future__ import annotations

import json
import multiprocessing.forkserver
import os
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from resnorm import names
from resnorm.config import TrainConfig
from resnorm.sweep import forkserver
from resnorm.sweep.child import config_of
from resnorm.sweep.lease import live_holder
from tests import crashpoints
from tests.conftest import command, empty_store

TINY_SWEEP = ["--data", "synthetic", "--epochs", "2", "--image-size", "8", "--n", "1", "--seed", "1"]


def start_fork_server() -> None:
    """The fork server every forked sweep's workers come from (started here, once per process)."""
    forkserver.context()
    multiprocessing.forkserver.ensure_running()  # wait for it: the sweeps forked from here share it


@dataclass
class Case:
    """One sweep's store and home: ``folder/mlflow.db``, its artifacts under ``folder/mlruns``, its
    ``RESNORM_HOME``, the log of every sweep run in it, and the crash hook's files."""

    folder: Path

    @classmethod
    def new(cls, folder: Path) -> Case:
        folder.mkdir(parents=True, exist_ok=True)
        empty_store(folder / "mlflow.db")
        return cls(folder)

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.folder / 'mlflow.db'}"

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)

    def log(self) -> str:
        path = self.folder / "sweep.log"
        return path.read_text() if path.exists() else ""

    def sweep(self, args: list[str], crash: str = "", parent: str = "", home: str = "") -> int:
        """Run the sweep entry point with ``args`` in a fork of this process (into ``parent`` when given,
        as `mlflow run --run-id` does), with ``RESNORM_CRASH=crash`` when given; returns its exit code
        once it and every worker it registered have ended."""
        return self.wait(self.start(args, crash, parent, home))

    def start(self, args: list[str], crash: str = "", parent: str = "", home: str = "") -> int:
        """``sweep`` without waiting: the sweep's pid (a child of this process, in a session of its own)."""
        (self.folder / "pids").unlink(missing_ok=True)
        pid = os.fork()
        if pid == 0:  # the sweep: never returns
            _sweep_here(self, args, crash, parent, home or str(self.folder / "resnorm-home"))
        return pid

    def wait(self, pid: int, timeout: float = 600.0) -> int:
        """The exit code of the sweep ``pid``, once it and every worker it registered have ended."""
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.killpg(pid, 9)
                os.waitpid(pid, 0)
                raise AssertionError(f"the sweep (pid {pid}) did not end within {timeout:g} s: {self.log()[-2000:]}")
            time.sleep(0.05)
        pids = self.folder / "pids"
        _wait_gone([int(p) for p in pids.read_text().split()] if pids.exists() else [])
        return os.waitstatus_to_exitcode(status)

    def parents(self) -> list:
        client = self.client
        return [
            r
            for e in client.search_experiments()
            for r in client.search_runs([e.experiment_id], f"tags.`{names.TAG_SWEEP}` = 'true'")
        ]


def _wait_gone(pids: list[int], timeout: float = 300.0) -> None:
    """Until none of ``pids`` lives (a worker told to stop ends its child first)."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"process {pid} of the sweep did not end within {timeout:g} s")


def _sweep_here(case: Case, args: list[str], crash: str, parent: str, home: str) -> None:
    code = 99
    try:
        os.setsid()
        os.chdir(case.folder)
        log = os.open(case.folder / "sweep.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        # pytest's capture replaced sys.stdout and sys.stderr with streams of its own: write to the log instead
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - for the life of this process
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", crashpoints.ENV):
            os.environ.pop(var, None)
        os.environ.update({"MLFLOW_TRACKING_URI": case.uri, "RESNORM_HOME": home})
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        if parent:
            os.environ["MLFLOW_RUN_ID"] = parent
        if crash:
            os.environ[crashpoints.ENV] = crash
            # A Ray trial's worker is a new process: the hook reaches it through sitecustomize (tests/crashsite).
            os.environ["RESNORM_CRASH_ROOT"] = str(crashpoints.ROOT)
            site = str(crashpoints.ROOT / "tests" / "crashsite")
            os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [site, os.environ.get("PYTHONPATH")]))
        mlflow.set_tracking_uri(case.uri)
        # The fork server this process inherits is the test process's: use it as it is.
        multiprocessing.forkserver._forkserver.ensure_running = lambda: None
        forkserver.start = lambda: None
        forkserver.work = crashpoints.work  # the workers install the hook, then work
        crashpoints.install()
        print(f"+ sweep {' '.join(args)}" + (f" (into {parent})" if parent else ""), flush=True)
        from resnorm import cli

        code = cli._run(command("sweep"), args)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - leaving regardless
                pass
        os._exit(code)


# --- crash cases: a site recorded, the sweep stopped there, re-run, checked ----------------------------------------

ALL = os.environ.get("RESNORM_CRASH_ALL") == "1"


def _sites(case: Case) -> list[tuple[int, str]]:
    """(pid, site) in the order the sweep first reached them."""
    lines = (case.folder / "sites").read_text().splitlines()
    return [(int(pid), site) for pid, site, _ in (line.split("\t") for line in lines)]


def record(folder: Path, args: list[str], rounds: int | None = None) -> list[tuple[str, bool]]:
    """Every site an uncrashed sweep of ``args`` reaches, in order: (site, made by the sweep's own process)."""
    start_fork_server()
    case = Case.new(folder)
    code = case.sweep(args, crash=f"record:{case.folder}")
    assert code == 0 and check(case, rounds) == [], case.log()[-3000:]
    sweep_pid = int((case.folder / "pids").read_text().split()[0])
    return [(site, pid == sweep_pid) for pid, site in _sites(case)]


READS = ("get_", "search_", "list_", "download_")


def writes(sites: list[tuple[str, bool]]) -> list[str]:
    """The sites that change the store. SIGKILL before a read leaves the store, the local snapshot folder
    and every process as SIGKILL before the write that came before it does (a killed process keeps nothing),
    so in CI SIGKILL is crashed at every write; ``RESNORM_CRASH_ALL=1`` at reads too."""
    if ALL:
        return [site for site, _ in sites]
    return [site for site, _ in sites if not site.split(" @ ")[0].split(".")[-1].startswith(READS)]


def _module(site: str) -> str:
    """The module a site's call is made from (its innermost project frame)."""
    return site.split(" @ ")[1].split(" < ")[0].rsplit(":", 1)[0]


def sigterm_sites(sites: list[tuple[str, bool]]) -> list[str]:
    """Where SIGTERM is crashed at in CI: the first site of each module, in the sweep's own process and in a
    worker. How a process handles SIGTERM depends on where it is (which run it has open, whether a model is
    being logged while signals wait), and that changes from module to module, not from call to call;
    ``RESNORM_CRASH_ALL=1`` crashes at every site."""
    if ALL:
        return [site for site, _ in sites]
    chosen, seen = [], set()
    for site, own in sites:
        if (own, _module(site)) not in seen:
            seen.add((own, _module(site)))
            chosen.append(site)
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


def run_cases(tmp_path, kind, args, signal, sites, rounds=None) -> None:
    failures = []
    for i, site in enumerate(sites):
        broken = crash_and_rerun(tmp_path / f"{signal}-{i:03d}", args, signal, site, rounds)
        if broken:
            failures.append(f"{signal} before {site}:\n    " + "\n    ".join(broken))
    assert not failures, f"{len(failures)} of {len(sites)} {kind} crash points broke:\n" + "\n".join(failures)


# --- what must hold of a sweep's store after any crash and a re-run --------------------------------------------


def _plan(client: MlflowClient, parent_id: str) -> dict:
    path = client.download_artifacts(parent_id, names.SWEEP_PLAN)
    return json.loads(Path(path).read_text())


def check(case: Case, rounds: int | None = None) -> list[str]:
    """Every way the store of ``case`` breaks what must hold after a crash and a re-run; [] when it holds."""
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # downloads here are for reading
    client, broken = case.client, []
    parents = case.parents()
    if len(parents) != 1:
        return [f"{len(parents)} sweep parents in the store"]
    parent = client.get_run(parents[0].info.run_id)
    pid, exp = parent.info.run_id, parent.info.experiment_id
    if parent.info.status != "FINISHED" or names.TAG_ERROR in parent.data.tags:
        broken.append(f"the parent is {parent.info.status} ({parent.data.tags.get(names.TAG_ERROR, '')})")
    if live_holder(client, pid) is not None:
        broken.append("the parent's lease is still held")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    broken += [f"run {r.info.run_id} ({r.info.run_name}) is left RUNNING" for r in runs if r.info.status == "RUNNING"]
    plan = _plan(client, pid)
    planned = Counter(TrainConfig.from_record(c["config"]) for c in plan["configurations"])
    kids = client.search_runs([exp], f"tags.mlflow.parentRunId = '{pid}'", max_results=1000)
    by_config = Counter(config_of(k) for k in kids)
    finished = Counter(config_of(k) for k in kids if k.info.status == "FINISHED")
    for cfg in planned:
        if finished[cfg] != 1 or by_config[cfg] != 1:
            broken.append(f"{cfg.run_name()} seed {cfg.seed}: {finished[cfg]} FINISHED of {by_config[cfg]} runs")
    broken += [f"a child outside the plan: {c}" for c in by_config if c not in planned]
    for k in kids:
        if "epochs" not in k.data.params:
            broken.append(f"child {k.info.run_id} ({k.info.run_name}, {k.info.status}) has no params")
            continue
        for key in (names.VAL_LOSS, names.TRAIN_LOSS):
            steps = [m.step for m in client.get_metric_history(k.info.run_id, key)]
            if sorted(steps) != list(range(1, int(k.data.params["epochs"]) + 1)):
                broken.append(f"{k.info.run_name}: {key} at steps {sorted(steps)}")
    broken += _registry(client, {k.info.run_id: k for k in kids})
    if rounds is not None:
        broken += _rounds(client, pid, rounds)
    broken += _analysis(case, pid, len(planned), sum(finished.values()))
    return broken


def _registry(client: MlflowClient, kids: dict) -> list[str]:
    broken = []
    per_run = Counter()
    for model in client.search_registered_models():
        for v in client.search_model_versions(f"name = '{model.name}'"):
            run = kids.get(v.run_id)
            per_run[v.run_id] += 1
            if run is None or run.info.status != "FINISHED":
                broken.append(f"{model.name} version {v.version} belongs to a run that is not a FINISHED child")
        try:
            champion = client.get_model_version_by_alias(model.name, names.CHAMPION)
        except mlflow.exceptions.MlflowException:
            broken.append(f"{model.name} has no champion")
            continue
        if champion.run_id not in kids or kids[champion.run_id].info.status != "FINISHED":
            broken.append(f"{model.name}'s champion is version {champion.version}, of no FINISHED child")
    broken += [f"run {r} has {n} registered versions" for r, n in per_run.items() if n != 1]
    broken += [f"FINISHED child {r} has no registered version" for r, k in kids.items() if not per_run[r]]
    return broken


def _rounds(client: MlflowClient, pid: str, rounds: int) -> list[str]:
    broken = []
    tables = sorted(f.path for f in client.list_artifacts(pid, "rounds"))
    if tables != [f"rounds/round-{k:02d}.json" for k in range(1, rounds + 1)]:
        broken.append(f"round tables {tables}")
    for path in tables:
        table = json.loads(Path(client.download_artifacts(pid, path)).read_text())
        if sorted(row[0] for row in table["data"]) != [1, 2, 3, 4, 5, 6]:
            broken.append(f"{path} has rows for claims {[row[0] for row in table['data']]}")
    for key in (names.CLAIMS_DECIDED, names.CHILDREN_PLANNED):
        steps = sorted(m.step for m in client.get_metric_history(pid, key))
        if steps != list(range(1, rounds + 1)):
            broken.append(f"{key} at steps {steps}")
    return broken


def _analysis(case: Case, pid: str, planned: int, finished: int) -> list[str]:
    """``analyze`` on the sweep, in this process: it must succeed and count what the store holds."""
    from analysis.report import build

    with _store(case):
        try:
            report = build(MlflowClient(), MlflowClient().get_run(pid))
        except Exception as e:  # noqa: BLE001 - any failure is what this reports
            return [f"analyze failed: {type(e).__name__}: {e}"]
    if (report.planned, report.finished) != (planned, finished):
        return [f"analyze counts {report.finished} of {report.planned}, the store {finished} of {planned}"]
    return [f"analyze warns: {w}" for w in report.warnings]


class _store:
    """The tracking URI of ``case`` for this process, for the block."""

    def __init__(self, case: Case) -> None:
        self.case = case

    def __enter__(self) -> None:
        self.before = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(self.case.uri)

    def __exit__(self, *exc) -> None:
        mlflow.set_tracking_uri(self.before)

"""`sweep` and `analyze` as a user runs them: `mlflow run` subprocesses on a real store, Ray on
this machine, and the MLflow UI in headless Chromium."""

import csv
import os
import re
import shutil
import subprocess
import time

import pytest
from mlflow.tracking import MlflowClient

from resnorm import names
from resnorm.norms import NORM_NAMES
from resnorm.sweep import forkserver
from resnorm.sweep.child import sweep_children
from tests.conftest import (
    PYTHON,
    ROOT,
    TINY,
    MlflowServer,
    command,
    empty_store,
    mlflow_run_args,
    one_line,
    run_command,
    subprocess_env,
    tracking_store,
)

QUICK = ["-P", "epochs=1", "-P", "image_size=8"]  # the demo, shrunk to seconds per child


def mlflow_run(entry, params, uri, cwd, *extra, timeout=900):
    cmd = [*mlflow_run_args(entry), *params, *extra]
    return subprocess.run(cmd, cwd=cwd, env=subprocess_env(uri), capture_output=True, text=True, timeout=timeout)


def script(name, args, uri, cwd, timeout=900):
    cmd = [PYTHON, str(ROOT / "entrypoints" / f"{name}.py"), *args]
    return subprocess.run(cmd, cwd=cwd, env=subprocess_env(uri), capture_output=True, text=True, timeout=timeout)


def children_of(client, parent_id, status=None):
    exp = client.get_experiment_by_name(names.EXPERIMENT)
    return sweep_children(client, exp.experiment_id, parent_id, f"attributes.status = '{status}'" if status else "")


@pytest.fixture(scope="module")
def quick_sweep(tmp_path_factory):
    """A finished quick sweep (every norm, 1 epoch, 8 px) in its own SQLite store."""
    folder = tmp_path_factory.mktemp("quick")
    uri = empty_store(folder / "mlflow.db")
    proc = mlflow_run("sweep", ["-P", "preset=quick", *QUICK], uri, folder)
    assert proc.returncode == 0, proc.stderr[-4000:]
    client = MlflowClient(uri)
    (parent,) = client.search_runs(
        [client.get_experiment_by_name(names.EXPERIMENT).experiment_id], f"tags.`{names.TAG_SWEEP}` = 'true'"
    )
    return folder, uri, client, parent


@pytest.mark.slow
def test_quick_sweep_nests_one_ordinary_training_run_per_norm(quick_sweep):
    _, _, client, parent = quick_sweep
    assert parent.info.status == "FINISHED" and parent.info.run_name == "sweep-quick"
    assert parent.data.tags[names.TAG_PRESET] == "quick"
    kids = children_of(client, parent.info.run_id)
    assert sorted(r.data.params["norm"] for r in kids) == sorted(NORM_NAMES)
    for r in kids:
        norm = r.data.params["norm"]
        assert r.info.status == "FINISHED"
        assert r.info.run_name == f"{norm}-sgd-lr0.1-aug-bs32"
        assert r.data.tags[names.TAG_PRESET] == "quick"
        assert r.data.tags["mlflow.project.entryPoint"] == "train"
        assert (r.data.params["epochs"], r.data.params["image_size"], r.data.params["data"]) == ("1", "8", "digits")
        assert [m.step for m in client.get_metric_history(r.info.run_id, names.VAL_LOSS)] == [1]
        assert names.final_metric("test", "macro_f1") in r.data.metrics
        # Two children at once (no GPU: parallel 2) share the cores: each trains on its half.
        per_child = str(max(1, len(os.sched_getaffinity(0)) // 2))
        assert (r.data.params[names.PARAM_THREADS], r.data.params[names.PARAM_TORCH_THREADS]) == (per_child, per_child)


@pytest.mark.slow
def test_a_forked_worker_trains_under_the_sweeps_environment_and_writes_to_its_streams(tmp_path, capfd):
    """The fork server serves every sweep of its process and keeps the environment and the output
    it started with; each worker must take the sweep's own: its store, its RESNORM_HOME, its stdout."""
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    with tracking_store(decoy):
        forkserver.start()  # no-op when an earlier test of this process started it (with yet another store)
    real = tmp_path / "real"
    real.mkdir()
    with tracking_store(real) as uri:
        run_command(command("sweep"), ["--preset", "custom", "--grid", "norm=bn", *TINY, "--parallel", "1"])
        client = MlflowClient(uri)
        everywhere = [e.experiment_id for e in client.search_experiments()]
        (child,) = client.search_runs(everywhere, "tags.mlflow.parentRunId != ''")
    assert child.info.status == "FINISHED"
    assert (real / "resnorm-home" / "runs").is_dir()  # where its snapshots were (a finished run's are gone)
    untouched = MlflowClient(f"sqlite:///{decoy / 'mlflow.db'}")
    assert [e.name for e in untouched.search_experiments()] == ["Default"] and untouched.search_runs(["0"]) == []
    assert not (decoy / "resnorm-home").exists()
    assert f"run {child.info.run_id} (bn-sgd-lr0.1-aug-bs32): best epoch 1" in capfd.readouterr().out


@pytest.mark.slow
def test_the_fork_server_asks_cuda_nothing_so_each_worker_picks_its_gpu_after_the_fork():
    """What the server imports must not initialise CUDA (CUDA does not survive a fork) nor count the
    devices through it: each worker sets CUDA_VISIBLE_DEVICES after the fork. A fresh interpreter,
    since what is checked is what importing does."""
    code = (
        "import torch\n"
        "asked = []\n"
        "count = torch._C._cuda_getDeviceCount\n"
        "torch._C._cuda_getDeviceCount = lambda: asked.append(1) or count()\n"
        "from resnorm.sweep import forkserver\n"
        "for name in forkserver.PRELOAD: __import__(name)\n"
        "assert not asked and not torch.cuda.is_initialized(), asked\n"
    )
    proc = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_entry_point_starts_the_fork_server_only_for_local_workers():
    assert forkserver.needed([]) and forkserver.needed(["--preset", "quick", "--executor", "local"])
    assert forkserver.needed(["--executor=local", "--grid", "norm=bn"])
    assert not forkserver.needed(["--executor", "ray"]) and not forkserver.needed(["--executor=ray"])
    assert not forkserver.needed(["--help"]) and not forkserver.needed(["--preset", "study", "-h"])


@pytest.mark.slow
def test_analyze_rebuilds_table_3_from_the_recorded_metrics(quick_sweep):
    folder, uri, client, parent = quick_sweep
    proc = mlflow_run("analyze", ["-P", f"out={folder / 'report'}"], uri, folder)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # The main table is printed, one row per norm, each 1 of 1 planned seeds.
    assert "Table 3: every norm at the study's default optimiser (SGD lr 0.1, augmentation on)" in proc.stdout
    for norm in NORM_NAMES:
        assert f"\n| {norm} | 1/1 |" in proc.stdout
    # Every cell of Table 3 equals the child's logged metric, and names the run behind it.
    kids = {r.data.params["norm"]: r for r in children_of(client, parent.info.run_id)}
    with open(folder / "report" / "tables" / "table3.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7 * 9
    for row in rows:
        logged = kids[row["row"]].data.metrics[names.final_metric(row["split"], row["score"])]
        assert float(row["mean"]) == pytest.approx(logged) and row["runs"] == "1"
        assert row["run_ids"] == kids[row["row"]].info.run_id
    shown = (folder / "report" / "tables" / "table3.md").read_text()
    bn_test = kids["bn"].data.metrics[names.final_metric("test", "accuracy")]
    assert f"{bn_test * 100:.2f}" in shown.split("| bn |")[1].splitlines()[0]
    # One seed: no significance test, and the report says so.
    report_md = (folder / "report" / "report.md").read_text()
    table3 = report_md.split("## Table 3")[1].split("\n## ")[0]
    assert "No significance test" in table3 and "Fixed in every row:" in table3 and "epochs=1" in table3
    # Tables whose runs a quick sweep does not have say which are missing.
    table4 = report_md.split("## Table 4")[1].split("\n## ")[0]
    assert "Not in this sweep (no run): torch_bn (torch_bn-adam-lr0.0001-aug-bs32)" in table4
    # Figure 4 is drawn and embedded in the page; the report is logged to an analysis run.
    with open(folder / "report" / "figures" / "figure4.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert '<img src="data:image/png;base64,' in (folder / "report" / "report.html").read_text()
    # The GradCAM grid of each norm's champion of this sweep (its Table 3 run).
    with open(folder / "report" / "figures" / "gradcam.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    gradcam_note = report_md.split("## GradCAM of the champions")[1].split("\n## ")[0]
    for norm in NORM_NAMES:
        assert f"{norm} ({kids[norm].info.run_id[:8]})" in gradcam_note
    exp = client.get_experiment_by_name(names.EXPERIMENT)
    (analysis,) = client.search_runs([exp.experiment_id], f"tags.`{names.TAG_ANALYSIS_OF}` = '{parent.info.run_id}'")
    logged = {a.path for a in client.list_artifacts(analysis.info.run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/tables", "report/figures"} <= logged


@pytest.mark.slow
def test_rerunning_into_the_parent_runs_only_what_did_not_finish(quick_sweep):
    folder, uri, client, parent = quick_sweep
    kids = children_of(client, parent.info.run_id, "FINISHED")
    crashed = next(r for r in kids if r.data.params["norm"] == "ln")
    client.set_terminated(crashed.info.run_id, "FAILED")  # as if its process had died
    proc = mlflow_run("sweep", ["-P", "preset=quick", *QUICK], uri, folder, "--run-id", parent.info.run_id)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "7 configurations, 6 already finished, 1 to run" in proc.stdout
    finished = children_of(client, parent.info.run_id, "FINISHED")
    assert sorted(r.data.params["norm"] for r in finished) == sorted(NORM_NAMES)
    assert len(children_of(client, parent.info.run_id)) == 8  # the failed one stays, as history
    # Resuming with other parameters is refused.
    proc = mlflow_run(
        "sweep", ["-P", "preset=custom", "-P", "grid=norm=bn"], uri, folder, "--run-id", parent.info.run_id
    )
    assert proc.returncode != 0
    assert "is a sweep with preset='quick' (now 'custom')" in proc.stderr
    assert client.get_run(parent.info.run_id).info.run_name == "sweep-quick"  # not renamed by the refusal


def comparable(client, run):
    """What must not depend on the executor: names, params, tag keys, metric keys, artifacts."""
    tags = {
        k: v
        for k, v in run.data.tags.items()
        if k.startswith(("resnorm.", "mlflow.project.entry", "mlflow.source.type"))
    }
    tags.pop(names.TAG_PRESET)
    tags.pop(names.TAG_TRIAL, None)  # which Tune trial trained it: only a Ray child has one
    return {
        "name": run.info.run_name,
        "status": run.info.status,
        "params": {k: v for k, v in run.data.params.items()},
        "tags": tags,
        # MLflow's system metrics come with a run that outlasts their sampling interval (2 s here), as a
        # tiny child trained by a warm worker may not: its duration decides, not its executor.
        "metrics": sorted(k for k in run.data.metrics if not k.startswith("system/")),
        "steps": [m.step for m in client.get_metric_history(run.info.run_id, names.TRAIN_LOSS)],
        "artifacts": sorted(a.path for a in client.list_artifacts(run.info.run_id)),
        "nested": "mlflow.parentRunId" in run.data.tags,
    }


@pytest.mark.slow
def test_ray_children_look_exactly_like_local_ones(quick_sweep, tmp_path):
    _, uri, client, parent = quick_sweep
    proc = script(
        "sweep",
        [
            "--preset",
            "custom",
            "--grid",
            "norm=bn,gn",
            *TINY,
            "--executor",
            "ray",
        ],
        uri,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    exp = client.get_experiment_by_name(names.EXPERIMENT)
    (ray_parent,) = client.search_runs(
        [exp.experiment_id], "tags.`resnorm.preset` = 'custom' and tags.`resnorm.sweep` = 'true'"
    )
    ray_kids = {r.data.params["norm"]: r for r in children_of(client, ray_parent.info.run_id)}
    local_kids = {r.data.params["norm"]: r for r in children_of(client, parent.info.run_id, "FINISHED")}
    assert set(ray_kids) == {"bn", "gn"}
    for norm, run in ray_kids.items():
        assert run.data.tags[names.TAG_PRESET] == "custom"
        assert comparable(client, run) == comparable(client, local_kids[norm])


# Bad sweep parameters: tests/test_bad_input.py catalogues them.


@pytest.mark.slow
@pytest.mark.usefixtures("mlflow_env")
def test_analyze_without_a_sweep_says_so(capsys):
    one_line("analyze", [], capsys, "no experiment has a sweep; run one first (mlflow run . -e sweep)")
    one_line("analyze", ["--experiment", "resnorm"], capsys, "there is no experiment 'resnorm'; run a sweep first")


@pytest.fixture(scope="module")
def seeded_sweep(tmp_path_factory):
    """Two configurations x two seeds (1 epoch, 8 px) and its report, in a store of their own."""
    folder = tmp_path_factory.mktemp("seeded")
    uri = empty_store(folder / "mlflow.db")
    proc = script(
        "sweep",
        [
            "--preset",
            "custom",
            "--grid",
            "norm=bn,gn",
            "--seeds",
            "2",
            *TINY,
        ],
        uri,
        folder,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    client = MlflowClient(uri)
    (parent,) = client.search_runs(
        [client.get_experiment_by_name(names.EXPERIMENT).experiment_id], f"tags.`{names.TAG_SWEEP}` = 'true'"
    )
    with tracking_store(folder):
        run_command(command("analyze"), ["--sweep-run-id", parent.info.run_id, "--out", str(folder / "report")])
    (analysis,) = client.search_runs(
        [parent.info.experiment_id], f"tags.`{names.TAG_ANALYSIS_OF}` = '{parent.info.run_id}'"
    )
    return uri, client, parent, analysis.info.run_id


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The runs table is an AG Grid that renders every row twice (pinned name column, scrolled columns):
# read the pinned half only.
ROWS = '.ag-pinned-left-cols-container [role="row"][row-id]'
# In visual order: a group's header row has a "Pin group" toggle, its title in a span's title
# attribute and its run count in a status badge; a run row holds a link to the run.
READ_ROWS = """(sel) => [...document.querySelectorAll(sel)]
  .sort((a, b) => +a.getAttribute('aria-rowindex') - +b.getAttribute('aria-rowindex'))
  .map(r => {
    const name = r.querySelector('[role="gridcell"][col-id="attributes.`Run Name`"]');
    const pin = r.querySelector('label.is-pin-toggle');
    const titled = name && name.querySelector('span[title]');
    const link = name && name.querySelector('a[href*="/runs/"]');
    return {group: pin && /Pin group/.test(pin.textContent) ? (titled ? titled.getAttribute('title') : 'other') : null,
            run: link ? link.innerText.trim() : null};
  })"""


def groups_shown(page) -> dict[str, list[str]]:
    groups, current = {}, None
    for row in page.evaluate(READ_ROWS, ROWS):
        if row["group"] is not None:
            current = groups.setdefault(row["group"], [])
        elif row["run"] and current is not None:
            current.append(row["run"])
    return groups


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and os.environ.get("CI") != "true",
    reason="needs Debian's chromium (apt-get install chromium); .ci/run installs it",
)
def test_the_mlflow_ui_nests_children_groups_seeds_by_configuration_and_previews_the_report(seeded_sweep, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    uri, client, parent, analysis_id = seeded_sweep
    exp = parent.info.experiment_id
    server = MlflowServer(uri, tmp_path).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            try:
                # The README's link to the training runs (MLflow 3 otherwise opens on its GenAI pages).
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                page.set_default_timeout(60_000)
                page.goto(f"{server.url}/#/experiments/{exp}?workflowType=machine_learning", wait_until="load")
                page.wait_for_url(re.compile(r"/experiments/\d+/runs"))
                # The children fold under their sweep.
                page.get_by_text("sweep-custom", exact=True).wait_for()
                child = page.get_by_text("bn-sgd-lr0.1-aug-bs32-s0", exact=True)
                assert child.count() == 0
                row = page.locator("[role=row]", has_text="sweep-custom").last
                row.locator("button[data-component-id*='runnamecellrenderer']").click()  # expand
                child.wait_for(timeout=30_000)
                # Group by the configuration tag: one group per configuration, its seeds inside.
                page.get_by_role("button", name=re.compile(r"^Group by")).click()
                menu = page.get_by_role("menu")
                menu.get_by_placeholder("Search").fill(names.TAG_CONFIG)
                menu.get_by_role("menuitemcheckbox", name=names.TAG_CONFIG, exact=True).click()
                expect(page.get_by_role("button", name=re.compile(r"^Group by"))).to_have_text(
                    f"Group by: {names.TAG_CONFIG}"
                )
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    groups = groups_shown(page)
                    if all(len(groups.get(g, [])) == 2 for g in ("norm=bn", "norm=gn")):
                        break
                    page.wait_for_timeout(500)
                assert sorted(groups.get("norm=bn", [])) == ["bn-sgd-lr0.1-aug-bs32-s0", "bn-sgd-lr0.1-aug-bs32-s1"]
                assert sorted(groups.get("norm=gn", [])) == ["gn-sgd-lr0.1-aug-bs32-s0", "gn-sgd-lr0.1-aug-bs32-s1"]
                assert set(groups) <= {"norm=bn", "norm=gn", "other"}, groups  # the sweep and its analysis: ungrouped
                # The report in the artifact preview (a sandboxed iframe on a blob: URL): every figure loads.
                page.goto(
                    f"{server.url}/#/experiments/{exp}/runs/{analysis_id}/artifacts/report/report.html",
                    wait_until="load",
                )
                frame = None
                for _ in range(120):
                    frame = next((f for f in page.frames if f.url.startswith("blob:")), None)
                    if frame is not None and frame.evaluate("document.images.length") > 0:
                        break
                    page.wait_for_timeout(500)
                assert frame is not None, "the report was not previewed"
                frame.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=30_000)
                sizes = frame.evaluate("Array.from(document.images).map(i => i.naturalWidth)")
                assert len(sizes) >= 4 and all(w > 0 for w in sizes), sizes  # GradCAM, Figures 3-4, 5 or 6
                assert frame.get_by_text("Provenance", exact=True).count() == 1
                assert frame.get_by_text("The study's claims", exact=True).count() == 1
            finally:
                browser.close()
    finally:
        server.kill()

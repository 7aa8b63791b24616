"""A small multi-seed sweep through `analyze`, as a user runs them: `mlflow run` without
--experiment-name (the sweep lands in Default and analyze must find it there), one seed FAILED
with its reason, the report's provenance, CIs, CSV run ids, embedded figures and a LaTeX
document that a real pdflatex compiles."""

import csv
import os
import re
import shutil
import statistics
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from resnorm import names
from tests.conftest import PYTHON, ROOT, empty_store, subprocess_env

pytestmark = pytest.mark.slow

SMALL = [
    "-P",
    "preset=custom",
    "-P",
    "grid=norm=bn,gn",
    "-P",
    "seeds=2",
    "-P",
    "epochs=1",
    "-P",
    "image_size=8",
    "-P",
    "n=1",
]
FAILURE = "loss became nan at epoch 1 (set by the test)"
PDFLATEX = shutil.which("pdflatex")


def mlflow_project(entry, params, uri, cwd):
    """`mlflow run . -e <entry> --env-manager local` from the project folder, no experiment named."""
    cmd = ["mlflow", "run", ".", "-e", entry, *params, "--env-manager", "local"]
    env = subprocess_env(uri)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """A custom sweep (bn, gn x 2 seeds, 1 epoch at 8 px, ResNet-8) in Default, one gn seed
    marked FAILED afterwards, then `mlflow run . -e analyze` on it."""
    folder = tmp_path_factory.mktemp("analysis")
    uri = empty_store(folder / "mlflow.db")
    proc = mlflow_project("sweep", SMALL, uri, folder)
    assert proc.returncode == 0, proc.stderr[-4000:]
    client = MlflowClient(uri)
    (parent,) = client.search_runs(["0"], f"tags.`{names.TAG_SWEEP}` = 'true'")
    kids = client.search_runs(["0"], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    failed = next(r for r in kids if (r.data.params["norm"], r.data.params["seed"]) == ("gn", "1"))
    client.set_terminated(failed.info.run_id, "FAILED")
    client.set_tag(failed.info.run_id, names.TAG_ERROR, FAILURE)
    proc = mlflow_project("analyze", ["-P", f"out={folder / 'report'}"], uri, folder)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return folder, uri, client, client.get_run(parent.info.run_id), kids, failed, proc.stdout


def test_analyze_under_mlflow_run_finds_the_sweep_in_default_and_links_its_run_both_ways(analysed):
    folder, _, client, parent, kids, failed, stdout = analysed
    (analysis,) = client.search_runs(["0"], f"tags.`{names.TAG_ANALYSIS_OF}` = '{parent.info.run_id}'")
    assert analysis.info.run_name == f"analysis-sweep-custom-{parent.info.run_id[:8]}"
    assert parent.data.tags[names.TAG_ANALYSIS] == analysis.info.run_id
    # Headline metrics: each row's mean test accuracy over its finished seeds.
    accuracy = names.final_metric("test", "accuracy")
    bn = [r.data.metrics[accuracy] for r in kids if r.data.params["norm"] == "bn"]
    gn = [
        r.data.metrics[accuracy] for r in kids if r.data.params["norm"] == "gn" and r.info.run_id != failed.info.run_id
    ]
    metrics = analysis.data.metrics
    assert metrics[names.analysis_metric("sweep", 1, "norm=bn", "test_accuracy_mean")] == pytest.approx(
        statistics.mean(bn)
    )
    assert metrics[names.analysis_metric("sweep", 2, "norm=gn", "test_accuracy_mean")] == pytest.approx(gn[0])
    assert metrics[names.analysis_metric("sweep", 2, "norm=gn", "seeds_finished")] == 1
    assert (metrics["seeds_finished"], metrics["seeds_planned"]) == (3, 4)
    logged = {a.path for a in client.list_artifacts(analysis.info.run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/report.tex", "report/tables"} <= logged
    assert f"gn, seed 1: FAILED (run {failed.info.run_id}): {FAILURE}" in stdout  # under Table 3


def test_the_report_states_its_provenance_and_names_the_failed_seed(analysed):
    folder, _, client, parent, kids, failed, _ = analysed
    md = (folder / "report" / "report.md").read_text()
    assert f"sweep-custom (run {parent.info.run_id}, preset custom), status FINISHED" in md
    for line in (
        "**epochs**: 1",
        "**image size**: 8",
        "**depth**: 8 (n=1)",
        "**seeds**: 0, 1",
        "**device**: cpu",
        "**batch size**: 32",
        "**runs**: 3 of 4 planned seeds finished, over 2 configurations",
    ):
        assert line in md, line
    digest = client.get_run(kids[0].info.run_id).inputs.dataset_inputs[0].dataset.digest
    assert digest in md and re.search(r"\*\*split sizes\*\*: train=\d+ val=\d+ test=\d+", md)
    assert re.search(r"\*\*versions\*\*: torch [\d.]+.*, mlflow [\d.]+", md)
    sweep_table = md.split("## Every configuration of this sweep")[1].split("\n## ")[0]
    assert "| norm=bn | 2/2 |" in sweep_table and "| norm=gn | 1/2 † |" in sweep_table
    assert f"Did not finish: norm=gn, seed 1: FAILED (run {failed.info.run_id}): {FAILURE}." in sweep_table
    assert "Fixed in every row: optimizer=sgd, lr=0.1" in sweep_table
    assert "Welch" in md and "Holm" in md


def test_every_csv_cell_carries_the_runs_behind_it(analysed):
    folder, _, _, _, kids, failed, _ = analysed
    with open(folder / "report" / "tables" / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 9
    for row in rows:
        norm = row["row"].removeprefix("norm=")
        behind = [r for r in kids if r.data.params["norm"] == norm and r.info.run_id != failed.info.run_id]
        assert set(row["run_ids"].split(";")) == {r.info.run_id for r in behind}
        key = names.final_metric(row["split"], row["score"])
        assert float(row["mean"]) == pytest.approx(statistics.mean(r.data.metrics[key] for r in behind))
        assert (row["runs"], row["planned"]) == (str(len(behind)), "2")
        if len(behind) > 1 or (row["split"], row["score"]) == ("test", "accuracy"):  # t, or binomial with one seed
            assert float(row["ci_low"]) <= float(row["mean"]) <= float(row["ci_high"])


def test_the_html_is_one_file_with_its_figures_embedded(analysed):
    folder = analysed[0]
    page = (folder / "report" / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) >= 2  # Figure 3 and Figure 4 (bn and gn) at least
    assert all(s.startswith("data:image/png;base64,") for s in sources)


@pytest.mark.skipif(
    not PDFLATEX and os.environ.get("CI") != "true",
    reason="needs pdflatex (apt-get install texlive-latex-base texlive-latex-recommended); .ci/run installs it",
)
def test_the_latex_report_compiles_with_pdflatex(analysed, tmp_path):
    folder = analysed[0]
    shutil.copy(folder / "report" / "report.tex", tmp_path / "report.tex")
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "report.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "report.pdf").read_bytes()[:5] == b"%PDF-"
    assert "batch\\_size=32" in (folder / "report" / "report.tex").read_text()  # escaped, as LaTeX needs


def test_the_readme_script_form_analyses_a_given_sweep(analysed, tmp_path):
    _, uri, client, parent, _, _, _ = analysed
    # As README shows it: python entrypoints/analyze.py --sweep-run-id <parent run id> --out report
    cmd = [PYTHON, str(ROOT / "entrypoints" / "analyze.py"), "--sweep-run-id", parent.info.run_id, "--out", "report"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(uri), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "report" / "report.html").exists()
    assert f"3 of 4 planned runs of sweep {parent.info.run_id} finished" in proc.stdout

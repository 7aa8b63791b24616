"""Rebuild the study's tables, figures and claims from a sweep's runs (the `analyze` entry point).

    mlflow run . -e analyze --env-manager local      # the latest sweep, where it is
    python entrypoints/analyze.py --sweep-run-id <parent run id> --out report

The analysis is a pipeline: find the sweep, build its report, explain its champions with GradCAM,
write the report's files, log them to an analysis run.
"""

from __future__ import annotations

import os
import sys

import click

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnorm import cli  # noqa: E402
from resnorm.options import MARGIN_POINTS  # noqa: E402


def _margin(ctx: click.Context, param: click.Parameter, value: str) -> float | None:
    """``--margin``: empty (the sweep's, or one point), or a number of points MARGIN_POINTS allows."""
    return MARGIN_POINTS.convert(value, param, ctx) if value.strip() else None


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option(
    "--experiment",
    type=str,
    default="",
    help="Experiment whose latest sweep is analysed (empty: the latest sweep of the experiment this "
    "runs in under `mlflow run`, else of any experiment).",
)
@click.option("--sweep-run-id", type=str, default="", help="A sweep's parent run id (empty: the latest sweep).")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="report",
    help="Folder for report.md, report.html, report.tex, tables/ and figures/ (only the files written "
    "there are logged).",
)
@click.option(
    "--margin",
    type=str,
    default="",
    callback=_margin,
    help="Every claim's smallest effect of interest, in accuracy points: "
    f"{MARGIN_POINTS.allowed}; empty: the one an adaptive sweep decided its rounds with, else 1.",
)
def analyze(experiment: str, sweep_run_id: str, out: str, margin: float | None) -> None:
    """Tables 1-6, Figures 1-6 and the study's claims of a sweep, as Markdown, CSV, LaTeX and HTML, logged to MLflow."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a report prints its table, not bars
    # Imported here: MLflow and the analysis take seconds to load, and --help needs none of it.
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    from analysis.gradcam import gradcam_of_champions
    from analysis.publish import log
    from analysis.report import build
    from analysis.runs import find_sweep
    from analysis.write import summary, write
    from resnorm.jobruns import check_own_job_run
    from resnorm.tracking import check_tracking_server
    from resnorm.waiting import bounded_requests

    check_tracking_server()
    if os.environ.get("MLFLOW_RUN_ID"):  # the run `mlflow run -e analyze` made, not one inherited
        check_own_job_run(os.environ["MLFLOW_RUN_ID"], "analyze")
    client = MlflowClient()
    with bounded_requests("the analysis"):
        parent = find_sweep(client, experiment, sweep_run_id)
        report = build(client, parent, margin=None if margin is None else margin / 100)
        for warning in report.warnings:
            click.echo(f"warning: {warning}", err=True)
        gradcam = gradcam_of_champions(report)
        files = write(report, gradcam, Path(out))
        run_id = log(client, report, files, Path(out))
    click.echo(summary(report))
    click.echo(
        f"\nreport: {os.path.abspath(out)}/report.html ({report.finished} of {report.planned} planned runs of "
        f"sweep {report.sweep_run_id} finished); logged to run {run_id} under report/"
    )


def main() -> None:
    cli.main(analyze)


if __name__ == "__main__":
    main()

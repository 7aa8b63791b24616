"""Rebuild the study's tables and figures from a sweep's runs (the `analyze` entry point).

    mlflow run . -e analyze --env-manager local      # the latest sweep, where it is
    python entrypoints/analyze.py --sweep-run-id <parent run id> --out report
"""

from __future__ import annotations

import os
import sys

import click

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--experiment", type=str, default="",
              help="Experiment whose latest sweep is analysed (empty: the latest sweep of the experiment this "
              "runs in under `mlflow run`, else of any experiment).")
@click.option("--sweep-run-id", type=str, default="", help="A sweep's parent run id (empty: the latest sweep).")
@click.option("--out", type=click.Path(file_okay=False), default="report",
              help="Folder for report.md, report.html, tables/ and figures/.")
def analyze(experiment: str, sweep_run_id: str, out: str) -> None:
    """Tables 1-6 and Figures 1-6 of a sweep, as Markdown, CSV, LaTeX and HTML, logged to MLflow."""
    from analysis.report import analyze as run_analysis
    from analysis.write import summary
    from resnorm.tracking import check_tracking_server

    check_tracking_server()
    report = run_analysis(experiment, sweep_run_id, out)
    click.echo(summary(report))
    click.echo(f"\nreport: {os.path.abspath(out)}/report.html ({report.finished} of {report.planned} planned runs of "
               f"sweep {report.sweep_run_id} finished); logged to run {report.run_id} under report/")


def main() -> None:
    from resnorm.cli import run_command

    run_command(analyze)


if __name__ == "__main__":
    main()

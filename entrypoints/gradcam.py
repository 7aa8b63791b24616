"""Explain models with GradCAM: one grid of heat maps, logged to MLflow (the `gradcam` entry point).

mlflow run . -e gradcam --env-manager local --experiment-name resnorm
python entrypoints/gradcam.py --models models:/resnorm-bn@champion,models:/resnorm-gn@champion --output grid.png
"""

from __future__ import annotations

import os
import sys

import click

# MLproject runs this file by path; make the repository's `resnorm` importable without an install.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnorm import cli  # noqa: E402
from resnorm.errors import ResnormError  # noqa: E402
from resnorm.explain import DEFAULT_SAMPLES, GRID_ARTIFACT, explain, log_gradcam  # noqa: E402
from resnorm.jobruns import check_own_job_run  # noqa: E402
from resnorm.tracking import check_tracking_server  # noqa: E402


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option(
    "--models",
    type=str,
    default="",
    help="Comma-separated model URIs (models:/name@alias, models:/name/version, runs:/id) or run ids; "
    "empty: the champion of every resnorm-{norm} that has one.",
)
@click.option(
    "--images",
    type=str,
    default="",
    help="Comma-separated image files or folders (resized to the models' input; a folder named after a "
    "class gives the true label); empty: a fixed sample of the models' test images.",
)
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=DEFAULT_SAMPLES,
    help="Test images in the default sample: one per class in turn.",
)
@click.option(
    "--output", type=str, default="", help="Also write the grid to this PNG file; empty: only log it to MLflow."
)
def gradcam(models: str, images: str, samples: int, output: str) -> None:
    """GradCAM of each model's prediction at its last residual stage: rows are images, columns are
    models. The grid is logged as gradcam.png (with gradcam.json) to a run named 'gradcam'."""
    check_tracking_server()  # a dead or refusing store: one line now, not a hang in MLflow's retries
    if os.environ.get("MLFLOW_RUN_ID"):  # the run `mlflow run -e gradcam` made, not one inherited
        check_own_job_run(os.environ["MLFLOW_RUN_ID"], "gradcam")
    result = explain(_split(models), _split(images), samples)
    if output:  # before the run is logged: a path that cannot be written leaves no run behind
        try:
            result.figure.savefig(output, dpi=120)
        except OSError as e:
            raise ResnormError(f"cannot write the grid to {output!r}: {e.strerror or e}") from None
    run_id = log_gradcam(result)
    click.echo(
        f"run {run_id}: {GRID_ARTIFACT} explains {len(result.labels)} images by "
        f"{', '.join(c.label for c in result.models)}" + (f"; also written to {output}" if output else "")
    )


def main() -> None:
    cli.main(gradcam)


if __name__ == "__main__":
    main()

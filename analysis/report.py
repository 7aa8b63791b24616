"""Write the analysis as Markdown, CSV, LaTeX and an HTML page with figures; log it to MLflow."""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from analysis.figures import FIGURES, build_figure
from analysis.runs import Histories, children, find_sweep, select
from analysis.tables import MAIN_TABLE, STUDY, TABLES, Table, build_table, to_markdown
from resnorm import names
from resnorm.errors import ResnormError
from resnorm.norms import NORM_NAMES

TAG_ANALYSIS_OF = "resnorm.analysis_of"  # on an analysis run: the sweep's parent run id


@dataclass
class Report:
    sweep_run_id: str
    runs: int  # finished children analysed
    tables: dict[str, Table]
    figures: dict[str, Figure | None]
    figure_missing: dict[str, list[str]]
    out_dir: Path
    gradcam: Figure | None = None
    gradcam_note: str = ""  # which runs the grid explains, or why there is none
    files: list[Path] = field(default_factory=list)
    run_id: str | None = None  # the analysis run


def build(client: MlflowClient, experiment: str, sweep_run_id: str = "") -> tuple[str, object, dict, dict, dict]:
    parent = find_sweep(client, experiment, sweep_run_id)
    runs = children(parent)
    tables = {spec.id: build_table(spec, runs) for spec in TABLES}
    histories = Histories(client)
    figures, missing = {}, {}
    for spec in FIGURES:
        figures[spec.id], missing[spec.id] = build_figure(spec, runs, histories)
    return parent, runs, tables, figures, missing


def gradcam_of_champions(runs) -> tuple[Figure | None, str]:
    """GradCAM of each norm's champion in this sweep: its Table 3 run (SGD 0.1, augmentation)
    with the best validation accuracy, on the same test images."""
    from resnorm.explain import explain

    chosen = select(runs, **STUDY)
    best = chosen.loc[chosen.groupby("norm")[names.final_metric("val", "accuracy")].idxmax()] if len(chosen) else chosen
    by_norm = dict(zip(best["norm"], best["run_id"]))
    uris = [f"runs:/{by_norm[n]}" for n in NORM_NAMES if n in by_norm]
    if not uris:
        return None, "No GradCAM grid: the sweep has no Table 3 run (SGD lr 0.1 with augmentation)."
    try:
        result = explain(uris)
    except ResnormError as e:
        return None, f"No GradCAM grid: {e}"
    runs_text = ", ".join(f"{n} ({by_norm[n][:8]})" for n in NORM_NAMES if n in by_norm)
    return result.figure, f"Each norm's best Table 3 run of this sweep: {runs_text}."


def _missing_md(missing: list[str]) -> str:
    return "" if not missing else "\n\nMissing (no finished run): " + "; ".join(missing) + "."


def write(report: Report, parent_name: str) -> None:
    out = report.out_dir
    (out / "tables").mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    md = [f"# resnorm study: sweep `{parent_name}` ({report.sweep_run_id})", "",
          f"{report.runs} finished training runs. Scores are percentages of the kept (best-validation) model, "
          "measured in eval mode; with several seeds, mean ± std.", ""]
    page = [f"<h1>resnorm study: sweep {html.escape(parent_name)} ({report.sweep_run_id})</h1>",
            f"<p>{report.runs} finished training runs. Scores are percentages of the kept (best-validation) "
            "model, in eval mode; with several seeds, mean ± std.</p>"]
    for table_id, table in report.tables.items():
        shown = table.display()
        table.tidy().to_csv(out / "tables" / f"{table_id}.csv", index=False)
        (out / "tables" / f"{table_id}.md").write_text(to_markdown(shown) + "\n")
        (out / "tables" / f"{table_id}.tex").write_text(shown.to_latex(caption=table.spec.title, label=f"tab:{table_id}"))
        md += [f"## {table.spec.title}", "", to_markdown(shown) + _missing_md(table.missing), ""]
        page += [f"<h2>{html.escape(table.spec.title)}</h2>", shown.to_html(border=0)]
        if table.missing:
            page.append(f"<p><em>Missing (no finished run): {html.escape('; '.join(table.missing))}.</em></p>")
    md += ["## GradCAM of the champions", "", report.gradcam_note]
    page += ["<h2>GradCAM of the champions</h2>", f"<p>{html.escape(report.gradcam_note)}</p>"]
    if report.gradcam is not None:
        report.gradcam.savefig(out / "figures" / "gradcam.png", dpi=110)
        md.append("\n![GradCAM of the champions](figures/gradcam.png)\n")
        page.append('<img src="figures/gradcam.png" alt="GradCAM of the champions">')
    for spec in FIGURES:
        fig, missing = report.figures[spec.id], report.figure_missing[spec.id]
        md.append(f"## {spec.title}")
        page.append(f"<h2>{html.escape(spec.title)}</h2>")
        if fig is not None:
            fig.savefig(out / "figures" / f"{spec.id}.png", dpi=110)
            md.append(f"\n![{spec.title}](figures/{spec.id}.png)")
            page.append(f'<img src="figures/{spec.id}.png" alt="{html.escape(spec.title)}">')
        md.append(_missing_md(missing).strip() + "\n")
        if missing:
            page.append(f"<p><em>Missing (no finished run): {html.escape('; '.join(missing))}.</em></p>")
    (out / "report.md").write_text("\n".join(md))
    style = "body{font-family:sans-serif;max-width:1100px;margin:2em auto} table{border-collapse:collapse}" \
            " td,th{padding:2px 8px;text-align:right} img{max-width:100%}"
    (out / "report.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>resnorm study</title><style>{style}</style>"
        f"</head><body>{''.join(page)}</body></html>\n"
    )
    report.files = sorted(p for p in out.rglob("*") if p.is_file())


def analyze(experiment: str, sweep_run_id: str, out_dir: str) -> Report:
    """Rebuild the tables and figures of a sweep, write them to ``out_dir`` and log them to an analysis run."""
    client = MlflowClient()
    parent, runs, tables, figures, missing = build(client, experiment, sweep_run_id)
    report = Report(parent.info.run_id, len(runs), tables, figures, missing, Path(out_dir))
    report.gradcam, report.gradcam_note = gradcam_of_champions(runs)
    write(report, parent.info.run_name)
    # Under `mlflow run -e analyze` the run exists already (MLFLOW_RUN_ID); otherwise it goes
    # next to the sweep.
    experiment_id = None if os.environ.get("MLFLOW_RUN_ID") else parent.info.experiment_id
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"analysis-{parent.info.run_name}") as run:
        mlflow.set_tags({TAG_ANALYSIS_OF: parent.info.run_id, names.TAG_PRESET: parent.data.tags.get(names.TAG_PRESET, "")})
        mlflow.log_artifacts(str(report.out_dir), artifact_path="report")
        report.run_id = run.info.run_id
    return report


def main_table_text(report: Report) -> str:
    table = report.tables[MAIN_TABLE]
    return f"{table.spec.title}\n\n{to_markdown(table.display())}{_missing_md(table.missing)}"

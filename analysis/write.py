"""Write a report as Markdown, CSV, LaTeX (tables and a document that compiles) and one
self-contained HTML page (figures embedded as data: URIs, so the MLflow UI's artifact preview,
a sandboxed iframe on a blob: URL where relative paths cannot load, shows them). ``write`` returns
the files it wrote: those, and only those, are the report."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from analysis import present
from analysis.figures import FIGURES
from analysis.report import Report
from analysis.stats import METHOD_TEXT
from analysis.tables import ALL_TABLE, MAIN_TABLE, Table
from resnorm.markdown import escape

DPI = 110
HOW_TO_READ = (
    "Rows are configurations: every training setting but the seed is the same within a row; runs that "
    "differ in anything else are separate rows. `seeds` is finished/planned; a row marked † has a seed "
    "that failed, is still running or never ran (listed under its table) and is neither tested nor "
    "ranked as if it were complete. Scores are percentages of the kept (best-validation) model in eval "
    "mode. Rows are ranked by mean test accuracy. " + METHOD_TEXT + " Cost: median seconds per epoch and "
    "images per second over every epoch of every seed, median seconds up to the kept epoch."
)
STYLE = (
    "body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em}"
    " .wide{overflow-x:auto} table{border-collapse:collapse;font-size:90%}"
    " td,th{padding:2px 8px;text-align:right;white-space:nowrap;border-bottom:1px solid #ddd}"
    " img{max-width:100%;height:auto} .note{color:#444}"
)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _img(data: bytes, alt: str) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}" alt="{html.escape(alt)}">'


@dataclass(frozen=True)
class Gradcam:
    """The GradCAM grid of the report (None when there is none) and which runs it explains, or why not."""

    figure: Figure | None
    note: str


def _table_parts(table: Table) -> tuple[str, list[str]]:
    """The caption and the notes under the table (unfinished seeds, missing rows, the test)."""
    notes = [f"Did not finish: {line}." for line in present.unfinished(table)]
    alike = [r.label for r in table.rows if r.alike]
    if alike:
        notes.append(
            f"{present.ALIKE_MARK} {', '.join(alike)}: every seed scored the same test accuracy, which is no "
            "evidence of zero spread; the interval shown is the binomial one of a run's test images, and the row is "
            "tested against no other."
        )
    if table.missing:
        notes.append("Not in this sweep (no run): " + "; ".join(table.missing) + ".")
    if table.spec.id == ALL_TABLE:
        notes.append(
            "No letter groups in this table: across every configuration of a sweep they compare "
            "hundreds of pairs and say little; Tables 1-6 and the claims test what the study compares."
        )
    elif table.rows and not table.tested:
        notes.append("No significance test: fewer than two complete rows with at least 2 finished seeds.")
    return present.caption(table), notes


def write_table(
    out: Path, table_id: str, table: Table, md: list[str], page: list[str], tex: list[str], files: list[Path]
) -> None:
    caption, notes = _table_parts(table)
    md += [f"## {table.spec.title}", "", f"*{escape(caption)}*", ""]
    page += [f"<h2>{html.escape(table.spec.title)}</h2>", f"<p class='note'>{html.escape(caption)}</p>"]
    if table.rows:
        shown = present.display(table)
        latex = present.to_latex(shown, caption)
        paths = {kind: out / "tables" / f"{table_id}.{kind}" for kind in ("csv", "md", "tex")}
        present.tidy(table).to_csv(paths["csv"], index=False)
        paths["md"].write_text(present.to_markdown(shown) + "\n")
        paths["tex"].write_text(latex)
        files += paths.values()
        md += [present.to_markdown(shown), ""]
        page.append(f"<div class='wide'>{shown.to_html(border=0)}</div>")
        tex.append(latex)
    md += [f"- {escape(n)}" for n in notes] + [""]
    page += [f"<p class='note'>{html.escape(n)}</p>" for n in notes]


def _claims(report: Report, md: list[str], page: list[str], tex: list[str]) -> None:
    """The study's six claims: one line each (verdict, effect, interval, seeds), the details, the method."""
    method = present.method_text(report.margin)
    table = present.claims_table(report.claims)
    md += ["## The study's claims", "", present.to_markdown(table.set_index("claim")), ""]
    page += ["<h2>The study's claims</h2>", f"<div class='wide'>{table.to_html(border=0, index=False)}</div><ul>"]
    tex += [r"\section*{The study's claims}", r"\begin{itemize}"]
    for c in report.claims:
        line = claim_line(c)
        md += [f"- **{c.id}. {c.statement}**: {escape(line)}", *[f"  - {escape(d)}" for d in c.details]]
        page.append(
            f"<li><b>{html.escape(f'{c.id}. {c.statement}')}</b>: {html.escape(line)}"
            + ("<ul>" + "".join(f"<li>{html.escape(d)}</li>" for d in c.details) + "</ul>" if c.details else "")
            + "</li>"
        )
        tex.append(rf"\item \textbf{{{present.latex_escape(f'{c.id}. {c.statement}')}}}: {present.latex_escape(line)}")
    design = f"Design: {report.design.describe()}."
    md += ["", f"*How each claim is tested.* {escape(method)} {escape(design)}", ""]
    page += ["</ul>", f"<p class='note'>How each claim is tested. {html.escape(method)} {html.escape(design)}</p>"]
    tex += [r"\end{itemize}", present.latex_escape(f"How each claim is tested. {method} {design}"), ""]


def claim_line(claim) -> str:
    """A claim's line, with what would decide it when it is open."""
    return claim.line + (f"; to decide it: {claim.needed}" if claim.needed else "")


def _figures(report: Report, gradcam: Gradcam, out: Path, md: list[str], page: list[str], files: list[Path]) -> None:
    items = [("gradcam", "GradCAM of the champions", gradcam.figure, [gradcam.note])]
    items += [
        (
            s.id,
            s.title,
            report.figures[s.id],
            [f"Missing (no finished run): {'; '.join(report.figure_missing[s.id])}."]
            if report.figure_missing[s.id]
            else [],
        )
        for s in FIGURES
    ]
    for fid, title, fig, notes in items:
        md += [f"## {title}", ""]
        page.append(f"<h2>{html.escape(title)}</h2>")
        if fig is not None:
            data = _png(fig)
            path = out / "figures" / f"{fid}.png"
            path.write_bytes(data)
            files.append(path)
            md += [f"![{title}](figures/{fid}.png)", ""]
            page.append(_img(data, title))
        md += [escape(n) for n in notes if n] + [""]
        page += [f"<p class='note'>{html.escape(n)}</p>" for n in notes if n]


def write(report: Report, gradcam: Gradcam, out: Path) -> list[Path]:
    """Write the report into ``out`` (made if missing); returns every file written, and nothing else
    that ``out`` may hold."""
    (out / "tables").mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    parent = report.parent
    title = f"resnorm study: sweep {parent.info.run_name} ({parent.info.run_id}), {parent.info.status}"
    md = [
        f"# {escape(title)}",
        "",
        "## Provenance",
        "",
        *[f"- **{k}**: {escape(v)}" for k, v in report.provenance],
        "",
        "## How to read the tables",
        "",
        HOW_TO_READ,
        "",
    ]
    page = [
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Provenance</h2><ul>",
        *[f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in report.provenance],
        "</ul><h2>How to read the tables</h2>",
        f"<p>{html.escape(HOW_TO_READ)}</p>",
    ]
    tex: list[str] = []
    files: list[Path] = []
    _claims(report, md, page, tex)
    for table_id, table in report.tables.items():
        if table.rows or table_id != ALL_TABLE:
            write_table(out, table_id, table, md, page, tex, files)
    _figures(report, gradcam, out, md, page, files)
    documents = {
        "report.md": "\n".join(md),
        "report.html": (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(page)}</body></html>\n"
        ),
        "report.tex": latex_document(title, report, tex),
    }
    for name, text in documents.items():
        (out / name).write_text(text)
        files.append(out / name)
    return files


def latex_document(title: str, report: Report, tables: list[str]) -> str:
    """A standalone document with the provenance and every table: ``pdflatex report.tex``."""
    esc = present.latex_escape
    items = [rf"\item \textbf{{{esc(k)}}}: {esc(v)}" for k, v in report.provenance]
    return "\n".join(
        [
            r"\documentclass[10pt]{article}",
            r"\usepackage[T1]{fontenc}",
            r"\usepackage[utf8]{inputenc}",
            r"\usepackage[margin=2cm]{geometry}",
            r"\usepackage{booktabs}",
            r"\usepackage{graphicx}",
            r"\begin{document}",
            rf"\section*{{{esc(title)}}}",
            r"\begin{itemize}",
            *items,
            r"\end{itemize}",
            esc(HOW_TO_READ.replace("`", "")),
            "",
            *tables,
            r"\end{document}",
            "",
        ]
    )


def summary(report: Report) -> str:
    """The main table (or, when the sweep has none of its rows, every configuration) and the claims'
    verdicts, as text."""
    table = report.tables[MAIN_TABLE] if report.tables[MAIN_TABLE].rows else report.tables[ALL_TABLE]
    caption, notes = _table_parts(table)
    claims = [f"{c.id}. {c.statement}: {claim_line(c)}" for c in report.claims]
    return "\n".join(
        [caption, "", present.to_markdown(present.display(table)), *notes, "", "The study's claims:", *claims]
    )

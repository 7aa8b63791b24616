"""Tables as text: the display frame (Markdown, HTML), LaTeX that compiles, and the long CSV
with the run ids behind every cell."""

from __future__ import annotations

import math

import pandas as pd

from analysis.tables import ACCURACY, SHOWN, Table, TableRow, ordered
from resnorm.markdown import table as to_markdown  # noqa: F401 (used as present.to_markdown)
from resnorm import names

SPREAD = "mean ± sd"
INCOMPLETE_MARK = "†"
SPLIT_SCORES = tuple((split, score) for split in ("train", "val", "test") for score in names.SCORES)  # a row with a seed that did not finish: not ranked


def _pct(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean * 100:.2f}" if math.isnan(std) else f"{mean * 100:.2f} ± {std * 100:.2f}"


def _ci(ci: tuple[float, float]) -> str:
    low, high = ci  # a score lies in [0, 1]: a t interval reaching past it is shown cut there
    return "–" if math.isnan(low) else f"[{max(low, 0.0) * 100:.1f}, {min(high, 1.0) * 100:.1f}]"


def _num(value: float, digits: int) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _devices(row: TableRow) -> str:
    found = sorted({d for d in row.group.finished.get("device", []) if d}) if row.n else []
    return ", ".join(found) or "–"


def display(table: Table) -> pd.DataFrame:
    """One line per configuration, ranked: seeds finished/planned, test accuracy mean ± sd with
    its 95 % CI and letter group, other scores, and cost."""
    records, index = [], []
    for row in ordered(table):
        mark = "" if row.group.complete else f" {INCOMPLETE_MARK}"
        record = {"seeds": row.group.seeds_text() + mark}
        for key, label in SHOWN.items():
            record[f"{label}, {SPREAD}"] = _pct(row.mean.get(key, math.nan), row.std.get(key, math.nan))
            if key == ACCURACY:
                record["95 % CI"] = _ci(row.ci.get(key, (math.nan, math.nan)))
                record["group"] = row.letters or "–"
        record["s/epoch"] = _num(row.cost.get("epoch_seconds", math.nan), 2)
        record["img/s"] = _num(row.cost.get("images_per_second", math.nan), 0)
        record["s to best"] = _num(row.cost.get("seconds_to_best", math.nan), 1)
        record["device"] = _devices(row)
        records.append(record)
        index.append(row.label)
    return pd.DataFrame.from_records(records, index=index)


def tidy(table: Table) -> pd.DataFrame:
    """Long form for CSV: one line per row and score (fractions in [0, 1]) with n, planned seeds,
    the 95 % CI, the letter group and the run ids (``;``-separated) the cell averages."""
    records = []
    for row in ordered(table):
        run_ids = ";".join(row.group.finished["run_id"]) if row.n else ""
        for split, score in SPLIT_SCORES:
            key = names.final_metric(split, score)
            low, high = row.ci.get(key, (math.nan, math.nan))
            records.append({
                "table": table.spec.id, "row": row.label, "configuration": row.group.config.run_name(),
                "split": split, "score": score, "mean": row.mean.get(key, math.nan),
                "std": row.std.get(key, math.nan), "runs": row.n, "planned": len(row.group.planned),
                "complete": row.group.complete, "ci_low": low, "ci_high": high, "group": row.letters,
                **row.cost, "run_ids": run_ids,
            })
    return pd.DataFrame.from_records(records)


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                 "±": r"$\pm$", "–": "--", "†": r"$^\dagger$"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(c, c) for c in str(text))


def to_latex(frame: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs table, every cell escaped, scaled to the text width."""
    columns = "l" + "r" * len(frame.columns)
    head = " & ".join(["", *(latex_escape(c) for c in frame.columns)]) + r" \\"
    body = [" & ".join([latex_escape(i), *(latex_escape(v) for v in row)]) + r" \\" for i, row in frame.iterrows()]
    return "\n".join([
        r"\begin{table}[htbp]", r"\centering", rf"\caption{{{latex_escape(caption)}}}", rf"\label{{{label}}}",
        r"\resizebox{\textwidth}{!}{%", rf"\begin{{tabular}}{{{columns}}}", r"\toprule", head, r"\midrule",
        *body, r"\bottomrule", r"\end{tabular}}", r"\end{table}", "",
    ])


def caption(table: Table) -> str:
    """The table's title and the settings fixed in it."""
    fixed = ", ".join(f"{k}={v}" for k, v in table.fixed.items())
    return f"{table.spec.title}. Fixed in every row: {fixed}." if fixed else f"{table.spec.title}."


def unfinished(table: Table) -> list[str]:
    """One line per seed of the table that did not finish: row, seed, status, run id, reason."""
    out = []
    for row in table.rows:
        for p in row.group.problems:
            run = f"run {p['run_id']}" if p["run_id"] else "no run"
            out.append(f"{row.label}, seed {p['seed']}: {p['status']} ({run}): {p['error']}")
    return out


def headline(table: Table) -> dict[str, float]:
    """Metrics the analysis run logs: per row, mean test accuracy, its CI, finished and planned seeds."""
    out = {}
    for row in table.rows:
        def key(stat, label=row.label):
            return names.analysis_metric(table.spec.id, label, stat)

        out[key("seeds_finished")] = float(row.n)
        out[key("seeds_planned")] = float(len(row.group.planned))
        if row.n:
            low, high = row.ci[ACCURACY]
            out[key("test_accuracy_mean")] = row.mean[ACCURACY]
            for stat, value in (("test_accuracy_ci_low", low), ("test_accuracy_ci_high", high)):
                if not math.isnan(value):
                    out[key(stat)] = value
    return out

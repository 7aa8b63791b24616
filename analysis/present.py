"""Tables as text: the display frame (Markdown, HTML), LaTeX that compiles, and the long CSV
with the run ids behind every cell."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from analysis import stats
from analysis.claims import MARGIN, PROBABILITY, Claim, band
from analysis.stats import BOOTSTRAP_RESAMPLES
from analysis.tables import ACCURACY, SHOWN, Table, TableRow, ordered
from resnorm import names
from resnorm.markdown import table as to_markdown  # noqa: F401 (used as present.to_markdown)

SPREAD = "mean ± sd"
INCOMPLETE_MARK = "†"
SPLIT_SCORES = tuple(
    (split, score) for split in ("train", "val", "test") for score in names.SCORES
)  # a row with a seed that did not finish: not ranked


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
            records.append(
                {
                    "table": table.spec.id,
                    "row": row.label,
                    "configuration": row.group.config.run_name(),
                    "split": split,
                    "score": score,
                    "mean": row.mean.get(key, math.nan),
                    "std": row.std.get(key, math.nan),
                    "runs": row.n,
                    "planned": len(row.group.planned),
                    "complete": row.group.complete,
                    "ci_low": low,
                    "ci_high": high,
                    "group": row.letters,
                    **row.cost,
                    "run_ids": run_ids,
                }
            )
    return pd.DataFrame.from_records(records)


LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "–": "--",
    "—": "---",
    "†": r"$^\dagger$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "−": "-",
    "’": "'",
}


def latex_escape(text: str) -> str:
    """``text`` as pdflatex reads it: its specials escaped, and every character its fonts lack (beyond
    Latin-1, e.g. CJK in a data path) written as its code point, so the document always compiles;
    report.md and report.html keep the characters themselves."""
    return "".join(LATEX_SPECIAL.get(c) or (c if ord(c) < 0x100 else f"[U+{ord(c):04X}]") for c in str(text))


def to_latex(frame: pd.DataFrame, caption: str) -> str:
    """A booktabs table, every cell escaped, scaled to the text width, under its caption as text (the
    report numbers its tables itself: LaTeX's \\caption would number them again)."""
    columns = "l" + "r" * len(frame.columns)
    head = " & ".join(["", *(latex_escape(c) for c in frame.columns)]) + r" \\"
    body = [" & ".join([latex_escape(i), *(latex_escape(v) for v in row)]) + r" \\" for i, row in frame.iterrows()]
    return "\n".join(
        [
            r"\begin{table}[htbp]",
            r"\centering",
            rf"\textbf{{{latex_escape(caption)}}}\par\smallskip",
            r"\resizebox{\textwidth}{!}{%",
            rf"\begin{{tabular}}{{{columns}}}",
            r"\toprule",
            head,
            r"\midrule",
            *body,
            r"\bottomrule",
            r"\end{tabular}}",
            r"\end{table}",
            "",
        ]
    )


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
    for index, row in enumerate(table.rows, 1):

        def key(stat, i=index, label=row.label):
            return names.analysis_metric(table.spec.id, i, label, stat)

        out[key("seeds_finished")] = float(row.n)
        out[key("seeds_planned")] = float(len(row.group.planned))
        if row.n:
            low, high = row.ci[ACCURACY]
            out[key("test_accuracy_mean")] = row.mean[ACCURACY]
            for stat, value in (("test_accuracy_ci_low", low), ("test_accuracy_ci_high", high)):
                if not math.isnan(value):
                    out[key(stat)] = value
    return out


# The claims (analysis.claims) as text: how each is tested, and one row per claim.


def method_text(margin: float = MARGIN, alpha: float = stats.ALPHA) -> str:
    """Every claim's test, margin and correction in plain words, for the report (check_claims' arguments)."""
    level, inner = f"{(1 - alpha) * 100:g} %", f"{(1 - 2 * alpha) * 100:g} %"
    return " ".join(
        (
            "Each of the study's six claims is tested on the finished seeds of the configurations it compares;",
            f"effects are in accuracy points with {level} confidence intervals, alpha {alpha:g}.",
            "(1) Augmentation reduces overfitting: torch_bn's train-minus-test accuracy gap per seed, without",
            "augmentation minus with, by Welch's two-sided t-test and its interval: supported when the gap shrinks",
            "significantly, contradicted when it grows significantly.",
            "(2) SGD lr 0.1 beats Adam lr 1e-4 and SGD lr 1e-4 for every norm: one two-sided Welch t-test on test",
            "accuracy per norm and alternative, Holm's step-down correction over all of them together (the intervals",
            "shown are not adjusted); supported only when every comparison is significant in favour of SGD lr 0.1,",
            "contradicted when any one is significant against it.",
            "(3) The hand-written bn matches torch_bn: an equivalence test, two one-sided Welch t-tests (TOST,",
            f"Schuirmann 1987) on test accuracy with a margin of {band(margin)}; equivalent when both reject, i.e.",
            f"the {inner} interval lies inside the margin; contradicted when the {level} interval lies wholly outside",
            "it. A difference that is not significant is not evidence of equality: only the equivalence test can",
            "support this claim.",
            "(4) The ranking of the seven norms (SGD lr 0.1, by mean test accuracy): for each pair of adjacent ranks",
            "the probability of improvement P(X > Y) + 0.5 P(X = Y) over all pairs of seeds (the normalised",
            "Mann-Whitney U statistic, as rliable defines it: Agarwal et al. 2021), with a",
            f"{level} percentile bootstrap interval (the two samples resampled independently, {BOOTSTRAP_RESAMPLES}",
            "times, fixed seed); supported only when every adjacent pair's interval lies above 0.5. With few seeds",
            "the bootstrap interval is too narrow (3 seeds that all beat 3 others give [1, 1]): read it with the",
            "seed counts.",
            "(5) Batch size matters for bn, not for gn: the interaction (bn at batch 8 minus 128) minus (gn at 8",
            "minus 128) in test accuracy, four independent means with a Welch-Satterthwaite t interval; supported",
            "when it excludes 0 and bn's effect is the larger in size, contradicted when it excludes 0 and gn's is.",
            "(6) Cosine is at least as good as the step schedule: cosine minus step test accuracy of torch_bn by",
            "Welch's two-sided t-test: supported when cosine is significantly better, contradicted when it is",
            "significantly worse, inconclusive otherwise (a tie is not support).",
            "A claim with fewer than 2 finished seeds on a side gets no verdict; a configuration with seeds that did",
            "not finish is tested on those that did, and its line says so; configurations that differ in anything",
            "but the seed (e.g. epochs) are never pooled.",
        )
    )


METHOD_TEXT = method_text()


def _effect(claim: Claim) -> str:
    if math.isnan(claim.effect):
        return "–"
    if claim.unit == PROBABILITY:
        shown = f"P = {claim.effect:.2f}"
        return shown if math.isnan(claim.ci[0]) else f"{shown} [{claim.ci[0]:.2f}, {claim.ci[1]:.2f}]"
    return f"{claim.effect:+.2f} pts [{claim.ci[0]:+.2f}, {claim.ci[1]:+.2f}]"


def claims_table(claims: Sequence[Claim]) -> pd.DataFrame:
    """One row per claim (claim, test, verdict, effect [95 % CI], seeds), ready for Markdown, HTML or LaTeX."""
    return pd.DataFrame.from_records(
        [
            {
                "claim": f"{c.id}. {c.statement}",
                "test": c.test,
                "verdict": c.verdict,
                "effect [95 % CI]": _effect(c),
                "seeds": c.seeds or "–",
            }
            for c in claims
        ]
    )

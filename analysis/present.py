"""Tables as text: the display frame (Markdown, HTML), LaTeX that compiles, and the long CSV
with the run ids behind every cell."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from analysis import stats
from analysis.claims import MARGIN, Claim, band
from analysis.tables import ACCURACY, SHOWN, Table, TableRow, ordered
from resnorm import names
from resnorm.markdown import table as to_markdown  # noqa: F401 (used as present.to_markdown)

SPREAD = "mean ± sd"
INCOMPLETE_MARK = "†"
ALIKE_MARK = "‡"  # the seeds scored alike: the CI shown is the test split's binomial interval
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
                record["95 % CI"] = _ci(row.ci.get(key, (math.nan, math.nan))) + (f" {ALIKE_MARK}" if row.alike else "")
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
    "‡": r"$^\ddagger$",
    "≈": r"$\approx$",
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
    """How every claim is decided, in plain words (the rules of analysis.decisions and analysis.looks, at
    ``margin`` and ``alpha``)."""
    m, wide, narrow = band(margin), f"{(1 - alpha) * 100:g} %", f"{(1 - 2 * alpha) * 100:g} %"
    return " ".join(
        (
            f"Every claim is read against one smallest effect of interest, the margin of {m}; effects are in",
            "accuracy points, from the finished seeds of the configurations a claim compares: t statistics on",
            "the degrees of freedom of the smallest sample (Hsu's, which keep their level whatever the spreads",
            "and at the small alphas an adaptive sweep's looks use, where Welch-Satterthwaite's do not), and",
            "intervals cut to the values an effect can take. An effect is found when its interval lies beyond",
            "zero, and negligible when its 1 - 2 alpha interval lies inside the margin (two one-sided tests, TOST:",
            "Schuirmann 1987). A claim that an effect exists is supported when the effect is found in the claimed",
            "direction and contradicted when it is found the other way or is negligible; an effect that is both",
            "found and negligible is real but smaller than the margin, and contradicts the claim. A claim of",
            "equality is supported when its 1 - alpha interval lies inside the margin and contradicted when it",
            "lies wholly outside (each side at half of alpha, as for non-inferiority: at exactly the margin the two",
            "verdicts together stay within alpha); a difference that is not significant is not evidence of",
            "equality. A claim's parts share its alpha equally (Bonferroni); a part's share passes to the others",
            "only once no null hypothesis of it that could be true is left (Shaffer's logic: a part decided on",
            "one of its two nulls keeps the other). Each interval is shown at the level its part was tested at.",
            "Otherwise a claim is inconclusive, and its line says about how many seeds per configuration would",
            "decide it (80 % power at the observed spread and effect, an estimate from the seeds there are).",
            "Seeds that all scored alike carry no estimate of their spread: a comparison with such a side is not",
            f"tested (identical seeds are not certainty). With alpha {alpha:g}, the intervals of a single part are",
            f"{wide} and {narrow}.",
            "(1) Augmentation reduces overfitting: torch_bn's train-minus-test accuracy gap per seed, without",
            "augmentation minus with, must be found above zero.",
            "(2) SGD lr 0.1 beats Adam lr 1e-4 and SGD lr 1e-4 for every norm: 14 effects (SGD lr 0.1 minus each",
            "alternative, per norm), alpha shared over them; supported when every one is found in favour of SGD",
            "lr 0.1, contradicted when one is found against it or negligible.",
            "(3) The hand-written bn matches torch_bn: an equality claim on their test accuracy.",
            "(4) The seven norms rank in a clear order: in Table 3's order (SGD lr 0.1, by mean test accuracy over",
            "every finished seed) each adjacent pair is better (the upper one's lead found) or tied (negligible);",
            "since which pairs are adjacent can change as seeds come in, every one of the 21 pairs is tested,",
            "alpha shared over them; supported when every adjacent pair is decided and one at least is better",
            "(the ranking, ties and all, is the answer), contradicted when every one is tied.",
            "(5) Batch size matters for bn, not for gn: bn's effect of batch 8 against 128 must be found (either",
            "way), gn's must be within the margin (an equality), and the interaction (bn 8 - 128) - (gn 8 - 128)",
            "must be found in bn's direction; contradicted when any one goes against the claim.",
            "(6) Cosine is at least as good as step: non-inferiority of torch_bn's test accuracy, cosine minus step,",
            f"supported when its {wide} interval starts above -{m.lstrip('±')} and contradicted when it ends below it.",
            "A claim with fewer than 2 finished seeds on a side gets no verdict; a configuration with seeds that did",
            "not finish is tested on those that did, and its line says so; configurations that differ in anything",
            "but the seed (e.g. epochs) are never pooled.",
        )
    )


METHOD_TEXT = method_text()


def _effect(claim: Claim) -> str:
    if math.isnan(claim.effect):
        return "–"
    if math.isnan(claim.ci[0]):
        return f"{claim.effect:+.2f} pts (no interval)"
    return f"{claim.effect:+.2f} pts [{claim.ci[0]:+.2f}, {claim.ci[1]:+.2f}]"


def claims_table(claims: Sequence[Claim]) -> pd.DataFrame:
    """One row per claim (claim, test, verdict, effect [CI], seeds, what would decide it), for Markdown,
    HTML or LaTeX."""
    return pd.DataFrame.from_records(
        [
            {
                "claim": f"{c.id}. {c.statement}",
                "test": c.test,
                "verdict": c.verdict + (f" ({c.look})" if c.look else ""),
                "effect [CI]": _effect(c),
                "seeds": c.seeds or "–",
                "to decide it": c.needed or "–",
            }
            for c in claims
        ]
    )

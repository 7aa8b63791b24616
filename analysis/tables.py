"""The study's Tables 1-5 (and the schedule table), rebuilt from a sweep's runs."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from analysis.runs import FINAL_METRICS, select
from resnorm import names
from resnorm.norms import NORM_NAMES

# The study's main setting; a row states only how it differs.
STUDY = {"optimizer": "sgd", "lr": 0.1, "augment": True, "batch_size": 32, "scheduler": "cosine"}
SPLITS = ("train", "val", "test")
SCORE_LABELS = {"accuracy": "accuracy", "micro_f1": "micro-F1", "macro_f1": "macro-F1"}


@dataclass(frozen=True)
class Row:
    label: str
    where: dict

    def selector(self) -> dict:
        return {**STUDY, **self.where}

    def describe(self) -> str:
        """The configuration in run-name form, e.g. ``bn-sgd-lr0.1-aug-bs32``."""
        c = {"norm": "*", **self.selector()}
        text = f"{c['norm']}-{c['optimizer']}-lr{c['lr']:g}-{'aug' if c['augment'] else 'noaug'}-bs{c['batch_size']}"
        return text if c["scheduler"] == "cosine" else f"{text}, {c['scheduler']} schedule"


@dataclass(frozen=True)
class TableSpec:
    id: str
    title: str
    rows: tuple[Row, ...]


def _norm_rows(**where) -> tuple[Row, ...]:
    return tuple(Row(n, {"norm": n, **where}) for n in NORM_NAMES)


TABLES = (
    TableSpec("table1", "Table 1: torch_bn, SGD lr 0.1, augmentation off vs on",
              (Row("augmentation off", {"norm": "torch_bn", "augment": False}),
               Row("augmentation on", {"norm": "torch_bn"}))),
    TableSpec("table2", "Table 2: torch.nn.BatchNorm2d vs the hand-written batch norm (sanity check)",
              (Row("torch_bn", {"norm": "torch_bn"}), Row("bn", {"norm": "bn"}))),
    TableSpec("table3", "Table 3: every norm, SGD lr 0.1, augmentation on", _norm_rows()),
    TableSpec("table4", "Table 4: every norm, Adam lr 1e-4", _norm_rows(optimizer="adam", lr=1e-4)),
    TableSpec("table5", "Table 5: every norm, SGD lr 1e-4", _norm_rows(lr=1e-4)),
    TableSpec("table6", "Table 6: torch_bn, cosine vs step schedule",
              (Row("cosine", {"norm": "torch_bn"}), Row("step", {"norm": "torch_bn", "scheduler": "step"}))),
)
MAIN_TABLE = "table3"


@dataclass
class Table:
    spec: TableSpec
    mean: pd.DataFrame  # rows x FINAL_METRICS, fractions
    std: pd.DataFrame  # the same, NaN with one run
    runs: pd.Series  # row -> number of runs (seeds) averaged
    missing: list[str] = field(default_factory=list)  # "label (config)" of rows with no run

    def display(self, percent: bool = True) -> pd.DataFrame:
        """Strings ``98.15`` or ``98.15 ± 0.30`` under (split, score) columns, plus ``runs``."""
        scale = 100.0 if percent else 1.0
        columns = pd.MultiIndex.from_tuples(
            [(s, SCORE_LABELS[m]) for s in SPLITS for m in names.SCORES], names=["split", "score"]
        )
        cells = []
        for label in self.mean.index:
            row = []
            for key in FINAL_METRICS:
                m, s = self.mean.at[label, key], self.std.at[label, key]
                if pd.isna(m):
                    row.append("missing")
                elif pd.isna(s):
                    row.append(f"{m * scale:.2f}")
                else:
                    row.append(f"{m * scale:.2f} ± {s * scale:.2f}")
            cells.append(row)
        out = pd.DataFrame(cells, index=self.mean.index, columns=columns)
        out[("", "runs")] = self.runs.astype(int)
        out.index.name = None
        return out

    def tidy(self) -> pd.DataFrame:
        """Long form for CSV: row, split, score, mean, std, runs (fractions in [0, 1])."""
        records = []
        for label in self.mean.index:
            for key in FINAL_METRICS:
                split, score = key.removeprefix("best_").split("_", 1)
                records.append({"row": label, "split": split, "score": score, "mean": self.mean.at[label, key],
                                "std": self.std.at[label, key], "runs": int(self.runs[label])})
        return pd.DataFrame.from_records(records)


def build_table(spec: TableSpec, runs: pd.DataFrame) -> Table:
    labels = [r.label for r in spec.rows]
    mean = pd.DataFrame(index=labels, columns=list(FINAL_METRICS), dtype=float)
    std = mean.copy()
    counts = pd.Series(0, index=labels)
    missing = []
    for row in spec.rows:
        chosen = select(runs, **row.selector())
        if chosen.empty:
            missing.append(f"{row.label} ({row.describe()})")
            continue
        values = chosen[list(FINAL_METRICS)].astype(float)
        mean.loc[row.label] = values.mean()
        std.loc[row.label] = values.std(ddof=1) if len(values) > 1 else float("nan")
        counts[row.label] = len(values)
    return Table(spec, mean, std, counts, missing)


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-style Markdown table (pandas' own needs the optional `tabulate`)."""
    def label(c):
        return " ".join(str(x) for x in c if str(x)) if isinstance(c, tuple) else str(c)

    header = ["", *(label(c) for c in frame.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in frame.iterrows():
        lines.append("| " + " | ".join([str(index), *(str(v) for v in row)]) + " |")
    return "\n".join(lines)

"""GitHub-style Markdown tables from DataFrames (pandas' own ``to_markdown`` needs ``tabulate``)."""

from __future__ import annotations

import pandas as pd


def table(frame: pd.DataFrame) -> str:
    """The frame with its index as the first column; MultiIndex column labels joined by spaces."""

    def label(c) -> str:
        return " ".join(str(x) for x in c if str(x)) if isinstance(c, tuple) else str(c)

    header = ["", *(label(c) for c in frame.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in frame.iterrows():
        lines.append("| " + " | ".join([str(index), *(str(v) for v in row)]) + " |")
    return "\n".join(lines)

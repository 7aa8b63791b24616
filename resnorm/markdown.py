"""GitHub-style Markdown: text escaped where labels, data paths and reasons are written, and tables
from DataFrames (pandas' own ``to_markdown`` needs ``tabulate``)."""

from __future__ import annotations

import pandas as pd

# What would change a Markdown page's structure if it came from a label, a data path or a reason: a cell's
# end, raw HTML (no tag opens without "<"), an entity, a code span, emphasis, a link or image ("](").
_ESCAPES = {"&": "&amp;", "<": "&lt;", "\\": "\\\\", "|": "\\|", "`": "\\`", "*": "\\*"}


def escape(text: object) -> str:
    """``text`` as literal Markdown text on one line: ``|``, backslash, backticks and ``*`` escaped, ``<``
    and ``&`` as entities (so no raw HTML passes), ``](`` broken (no link or image), line breaks as spaces.
    The report's own markup (``**bold**``, table rules) is written around escaped text."""
    out = "".join(_ESCAPES.get(c, c) for c in " ".join(str(text).splitlines()))
    return out.replace("](", "]\\(")


def table(frame: pd.DataFrame) -> str:
    """The frame with its index as the first column; MultiIndex column labels joined by spaces; every
    cell escaped."""

    def label(c) -> str:
        return " ".join(str(x) for x in c if str(x)) if isinstance(c, tuple) else str(c)

    header = ["", *(escape(label(c)) for c in frame.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in frame.iterrows():
        lines.append("| " + " | ".join([escape(index), *(escape(v) for v in row)]) + " |")
    return "\n".join(lines)

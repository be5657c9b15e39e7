"""Strings from traces and config are data: escape them for every place they are shown.

A scanned URI like `/<script>alert(1)</script>` must show as text in Markdown/HTML, a cell
like `=HYPERLINK(...)` must not become a spreadsheet formula, and `$x$` must not become
matplotlib mathtext.
"""

from __future__ import annotations

import html
import re

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
FORMULA_START = r"^[=+\-@\t\r]"
UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


def markdown_cell(value) -> str:
    """Text for a Markdown table cell: HTML-escaped, pipes and backticks escaped, one line."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    text = html.escape(str(value), quote=True)
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")
    text = text.replace("*", "\\*").replace("_", "\\_").replace("[", "\\[").replace("]", "\\]")
    # `$...$` is math on GitHub and in many Markdown renderers; `~~` strikes through.
    text = text.replace("$", "\\$").replace("~", "\\~")
    return " ".join(text.split())


def markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(markdown_cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(markdown_cell(v) for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Text cells that a spreadsheet would run as a formula get a leading apostrophe."""
    safe = frame.copy()
    for column in safe.columns:
        if pd.api.types.is_string_dtype(safe[column]) or safe[column].dtype == object:
            text = safe[column].astype("string")
            risky = text.str.startswith(FORMULA_PREFIXES).fillna(False)
            safe[column] = text.where(~risky, "'" + text)
    return safe


def spreadsheet_safe_array(values: pa.Array) -> pa.Array:
    """`spreadsheet_safe` for one Arrow string column."""
    risky = pc.fill_null(pc.match_substring_regex(values, FORMULA_START), False)
    return pc.if_else(risky, pc.binary_join_element_wise("'", values, ""), values)


def figure_text(value) -> str:
    """Text for a matplotlib title, label or legend: no mathtext from the data.

    Every `$` not already escaped gets a backslash, so escaping twice (a legend relabelled
    from escaped labels) changes nothing.
    """
    return UNESCAPED_DOLLAR.sub(r"\\$", str(value))

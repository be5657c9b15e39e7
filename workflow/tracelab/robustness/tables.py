"""Reading window matrices, and writing the robustness tables (CSV, Markdown, HTML).

Tables are written as CSV to download and compute with (cells a spreadsheet would run as
formulas defused), and, as shown, as Markdown to read on GitHub and HTML (escaped) that the
Snakemake report shows in the page. Each carries a title and a caption saying how many windows
and captures are behind it.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from tracelab.core.atomic import atomic_path, write_text
from tracelab.core.safe_text import markdown_cell, markdown_table, spreadsheet_safe

HTML_STYLE = ("body{font-family:sans-serif;font-size:13px;margin:1em}"
              "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;"
              "text-align:left}th{background:#eee}tr.mark td{background:#fde8d7}")


def read_windows(path) -> pd.DataFrame:
    """One trace's window matrix, its windows in order; `start_ns` is the start in ns."""
    windows = pq.read_table(path).to_pandas().sort_values("window", kind="stable")
    start = windows["start_ts"].astype("datetime64[ns, UTC]").astype("int64")
    return windows.assign(start_ns=start.to_numpy()).reset_index(drop=True)


def read_traces(paths: list[str], traces: list[str], labels: dict[str, str]) -> pd.DataFrame:
    """The window matrices of several traces, with `trace` and `label` columns."""
    parts = [read_windows(path).assign(trace=trace, label=labels.get(trace, trace))
             for trace, path in zip(traces, paths)]
    return pd.concat(parts, ignore_index=True)


def number(value, digits: int = 2) -> str:
    """A statistic for a table cell (n/a where undefined)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def with_interval(value, low, high) -> str:
    return f"{number(value)} [{number(low)}, {number(high)}]"


def counted(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def sides(windows: pd.DataFrame) -> str:
    """"N windows from M captures" of a set of windows."""
    captures = windows["trace"].nunique()
    return f"{counted(len(windows), 'window')} from {counted(captures, 'capture')}"


def write_csv(frame: pd.DataFrame, path) -> None:
    """A machine-readable table (cells a spreadsheet would run as formulas defused)."""
    with atomic_path(path) as tmp:
        spreadsheet_safe(frame).to_csv(tmp, index=False)


def write_tables(frame: pd.DataFrame, *, markdown, html_path, title: str, caption: str,
                 marked: pd.Series | None = None) -> None:
    """A table to read, as Markdown and as HTML; rows where `marked` holds are highlighted."""
    write_text(markdown, f"# {markdown_cell(title)}\n\n{markdown_cell(caption)}\n\n"
               + markdown_table(frame))
    marked = pd.Series(False, index=frame.index) if marked is None else marked
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = "".join(
        f"<tr{' class=mark' if mark else ''}>"
        + "".join(f"<td>{html.escape('' if pd.isna(v) else str(v))}</td>" for v in row) + "</tr>"
        for row, mark in zip(frame.itertuples(index=False), marked.to_numpy()))
    write_text(html_path, f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>"
               f"{html.escape(title)}</title><style>{HTML_STYLE}</style></head><body>"
               f"<h3>{html.escape(title)}</h3><p>{html.escape(caption)}</p><table><thead><tr>"
               f"{head}</tr></thead><tbody>{rows}</tbody></table></body></html>\n")

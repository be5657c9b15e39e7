"""HTML pages of tables, for the Snakemake report (which shows HTML results in the page).

Every text from a trace or the sheet is escaped here, once, whatever the caller passes: a URI
like `/<script>alert(1)</script>` shows as text. Pages are self-contained (inline style, no
script, no link out).
"""

from __future__ import annotations

import html
import itertools
import math
import re
from numbers import Integral, Real

import pandas as pd

from tracelab.core.atomic import write_text

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.2em; color: #1e293b; }
h1 { font-size: 1.35em; } h2 { font-size: 1.15em; margin-top: 1.6em; } h3 { font-size: 1em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 13px; }
th, td { border: 1px solid #cbd5e1; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #e2e8f0; position: sticky; top: 0; }
tr:nth-child(even) td { background: #f8fafc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
p.note { color: #475569; }
"""
UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")
BACKSLASH_ESCAPE = re.compile(r"\\(.)")
STRONG = re.compile(r"(?<!\\)\*\*(.+?)(?<!\\)\*\*")
CODE = re.compile(r"(?<!\\)`(.+?)(?<!\\)`")
HEADING = re.compile(r"^(#{1,6}) (.*)$")


def display_value(value) -> str:
    """A cell's text: whole numbers with thousands separators, others to 4 significant digits
    (larger ones whole), booleans as yes/no, missing values empty."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Integral):
        return f"{value:,}"
    if isinstance(value, Real):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def escaped(value) -> str:
    return html.escape(display_value(value), quote=True)


def _cell(value) -> str:
    number = isinstance(value, Real) and not isinstance(value, bool)
    return f'<td class="num">{escaped(value)}</td>' if number else f"<td>{escaped(value)}</td>"


def html_table(frame: pd.DataFrame) -> str:
    """A table of `frame`: header and cells escaped, numbers right-aligned."""
    head = "".join(f"<th>{escaped(column)}</th>" for column in frame.columns)
    rows = "".join("<tr>" + "".join(map(_cell, row)) + "</tr>"
                   for row in frame.astype(object).itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>\n"


def heading(level: int, text) -> str:
    return f"<h{level}>{escaped(text)}</h{level}>\n"


def paragraph(text, note: bool = False) -> str:
    opening = '<p class="note">' if note else "<p>"
    return f"{opening}{escaped(text)}</p>\n"


def _inline(text: str) -> str:
    """Markdown text of a line or cell (as `safe_text.markdown_cell` writes it) as HTML: any
    raw `<` or `&` escaped, entities kept, **bold** and `code` rendered, backslash escapes
    undone."""
    text = html.escape(html.unescape(text), quote=True)
    text = STRONG.sub(r"<strong>\1</strong>", text)
    text = CODE.sub(r"<code>\1</code>", text)
    return BACKSLASH_ESCAPE.sub(r"\1", text)


def _table_html(lines: list[str]) -> str:
    cells = [[_inline(cell.strip()) for cell in UNESCAPED_PIPE.split(line.strip())[1:-1]]
             for line in lines]
    head = "".join(f"<th>{cell}</th>" for cell in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>"
                   for row in cells[2:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n"


def _line_kind(line: str) -> str:
    if line.startswith("|"):
        return "table"
    if HEADING.match(line):
        return "heading"
    return "text" if line.strip() else "blank"


def _heading_html(line: str) -> str:
    marks, text = HEADING.match(line).groups()
    return f"<h{len(marks)}>{_inline(text)}</h{len(marks)}>\n"


def markdown_html(text: str) -> str:
    """The Markdown this package writes (headings, paragraphs, pipe tables of
    `safe_text.markdown_table`) as HTML, so that one text gives both files."""
    parts = []
    for kind, group in itertools.groupby(text.splitlines(), key=_line_kind):
        lines = list(group)
        if kind == "table":
            parts.append(_table_html(lines))
        elif kind == "heading":
            parts.extend(_heading_html(line) for line in lines)
        elif kind == "text":
            parts.append(f"<p>{_inline(' '.join(line.strip() for line in lines))}</p>\n")
    return "".join(parts)


def html_page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escaped(title)}</title><style>{STYLE}</style></head>\n"
            f"<body>\n{heading(1, title)}{body}</body></html>\n")


def write_html(path, title: str, body: str) -> None:
    write_text(path, html_page(title, body))

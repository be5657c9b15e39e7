"""HTML pages of tables, for the Snakemake report (which shows each HTML result in a frame).

Every text from a trace or the sheet is escaped here, once, whatever the caller passes: a URI
like `/<script>alert(1)</script>` shows as text. Pages are self-contained: inline style, one
inline script (TABLE_SCRIPT), no link out, and a Content-Security-Policy that lets no other
script run and nothing load.

Every table is sortable (click or Enter on a heading: ascending, then descending; numbers by the
`data-sort` key written here, so "14,328" sorts as 14328; text in natural order, so 10.0.0.9
before 10.0.0.10; empty cells last), filterable (a box above it keeps the rows holding every word
typed, case-insensitive) and shown 100 rows a page (previous / next). The script only moves the
rows the page holds, never reads text as HTML; without it the page is the plain table.

Tables hold every row they are given, unless the page would be too large for the report's
frame (PAGE_BYTES, about 1.5 MB): then the longest tables keep their first rows (the caller's
order, e.g. most bytes first) and say so under the table; the complete tables are the CSV and
Parquet files beside the page.
"""

from __future__ import annotations

import base64
import hashlib
import html
import itertools
import math
import re
from numbers import Integral, Real

import numpy as np
import pandas as pd

from tracelab.core.atomic import write_text

# Chromium opens no data: URL over 2 MiB, and the report embeds each page as one, base64 (4
# bytes for 3) after a prefix naming type and file (< 256 bytes): a larger page is a blank frame.
PAGE_BYTES = 3 * (2**21 - 256) // 4
# Rows of one table worth keeping for a page (callers reading a table in batches keep this many):
# at ~150 bytes a row (a conversation row takes ~350) they fill a page.
MAX_ROWS = 10_000
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.2em; color: #1e293b; }
h1 { font-size: 1.35em; } h2 { font-size: 1.15em; margin-top: 1.6em; } h3 { font-size: 1em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 13px; }
th, td { border: 1px solid #cbd5e1; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #e2e8f0; position: sticky; top: 0; cursor: pointer; }
th[aria-sort=ascending]::after { content: " \\25B2"; }
th[aria-sort=descending]::after { content: " \\25BC"; }
tr:nth-child(even) td { background: #f8fafc; }
tr.mark td { background: #fde8d7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
p.note { color: #475569; }
div.table-tools { display: flex; gap: 0.5em; align-items: center; margin-top: 0.6em; }
div.table-tools span { color: #475569; font-size: 13px; }
"""
TABLE_SCRIPT = """
"use strict";
(() => {
  const PAGE = 100;
  const collator = new Intl.Collator("en", {numeric: true, sensitivity: "base"});
  const key = (cell) => !cell ? "" :
    cell.dataset.sort !== undefined ? Number(cell.dataset.sort) : cell.textContent.trim();
  function compare(a, b, direction) {
    if (a === "" || b === "") return (a === "") - (b === "");  // empty cells last
    if (typeof a !== typeof b) return typeof a === "number" ? -1 : 1;  // numbers before text
    return direction * (typeof a === "number" ? a - b : collator.compare(a, b));
  }
  function control(tag, properties) {
    return Object.assign(document.createElement(tag), properties);
  }
  function setUp(table) {
    const body = table.tBodies[0];
    const text = (row) => Array.from(row.cells, (cell) => cell.textContent).join("\\t");
    const rows = Array.from(body.rows, (row) => ({row, text: text(row).toLowerCase()}));
    const filter = control("input", {type: "search", placeholder: "Filter rows"});
    filter.setAttribute("aria-label", "Filter rows");
    const previous = control("button", {type: "button", textContent: "\\u2039 previous"});
    const next = control("button", {type: "button", textContent: "next \\u203A"});
    const status = control("span", {});
    const tools = control("div", {className: "table-tools"});
    tools.append(filter, previous, next, status);
    table.before(tools);
    let order = rows, shown = rows, page = 0;
    function render() {
      const pages = Math.max(1, Math.ceil(shown.length / PAGE));
      page = Math.min(Math.max(page, 0), pages - 1);
      const first = page * PAGE, last = Math.min(shown.length, first + PAGE);
      body.replaceChildren(...shown.slice(first, last).map((r) => r.row));
      const of = rows.length.toLocaleString("en");
      status.textContent = !shown.length ? `no row matches (of ${of})` :
        `rows ${first + 1}\\u2013${last} of ${shown.length.toLocaleString("en")}` +
        (shown.length < rows.length ? ` matching (of ${of})` : "");
      previous.disabled = page === 0;
      next.disabled = page === pages - 1;
      previous.hidden = next.hidden = rows.length <= PAGE;
    }
    function refilter() {
      const words = filter.value.toLowerCase().split(/\\s+/).filter(Boolean);
      shown = order.filter((r) => words.every((word) => r.text.includes(word)));
      page = 0;
      render();
    }
    Array.from(table.tHead.rows[0].cells).forEach((heading, column) => {
      function sort() {
        const direction = heading.getAttribute("aria-sort") === "ascending" ? -1 : 1;
        for (const other of heading.parentNode.cells) other.removeAttribute("aria-sort");
        heading.setAttribute("aria-sort", direction > 0 ? "ascending" : "descending");
        const keyed = rows.map((r) => [key(r.row.cells[column]), r]);
        order = keyed.sort((x, y) => compare(x[0], y[0], direction)).map((x) => x[1]);
        refilter();
      }
      heading.tabIndex = 0;
      heading.addEventListener("click", sort);
      heading.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sort(); }
      });
    });
    filter.addEventListener("input", refilter);
    previous.addEventListener("click", () => { page -= 1; render(); });
    next.addEventListener("click", () => { page += 1; render(); });
    render();
  }
  document.querySelectorAll("table").forEach(setUp);
})();
"""
SCRIPT_ELEMENT = f"<script>{TABLE_SCRIPT}</script>"  # the only script of a page
SCRIPT_HASH = base64.b64encode(hashlib.sha256(TABLE_SCRIPT.encode()).digest()).decode()
# Only TABLE_SCRIPT may run (by its hash), no event handler, nothing may load.
POLICY = (f"default-src 'none'; script-src 'sha256-{SCRIPT_HASH}'; style-src 'unsafe-inline'; "
          "base-uri 'none'; form-action 'none'")
# A number at the start of a cell's text, ended by a space or the cell's end: "14,328",
# "0.12 [0.05, 0.2]", "12.5%"; not an address ("198.18.0.2") or a date.
LEADING_NUMBER = re.compile(
    r"\s*([-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?)%?(?:\s|$)")
NOTE_BYTES = 400  # room for the note under a table cut to fit (`_kept`)
ROW_START = re.compile(r"(?=<tr[ >])")
TABLE_BODY = re.compile(r"<tbody>(.*?)</tbody></table>\n", re.S)
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
        return _real_text(value)
    return str(value)


def _real_text(number) -> str:
    return f"{number:,.0f}" if abs(number) >= 1000 else f"{number:.4g}"


def escaped(value) -> str:
    return html.escape(display_value(value), quote=True)


def is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def sort_key(value) -> str | None:
    """The number a cell sorts by, exact (not its rounded text), as JavaScript's Number()
    reads it; None for text without a leading number (LEADING_NUMBER) and for missing values."""
    if is_number(value):
        number = float(value)
        if math.isnan(number):
            return None
        return str(int(value)) if isinstance(value, Integral) else _float_key(number)
    return _text_key(value) if isinstance(value, str) else None


def _float_key(number: float) -> str:
    """The sort key of a float that is not NaN."""
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    return repr(number)


def _text_key(text: str) -> str | None:
    match = LEADING_NUMBER.match(text)
    return match[1].replace(",", "") if match else None


def _cell(value, text: str) -> str:
    """A cell: `text` (already HTML) with its sort key; numbers right-aligned."""
    key = sort_key(value)
    attributes = (' class="num"' if is_number(value) else "") + (
        f' data-sort="{key}"' if key is not None else "")
    return f"<td{attributes}>{text}</td>"


def _integer_cells(numbers: list[int]) -> list[str]:
    return [f'<td class="num" data-sort="{number}">{number:,}</td>' for number in numbers]


def _float_cell(number: float) -> str:
    if number != number:  # NaN: no text and no sort key, but a number's cell
        return '<td class="num"></td>'
    return f'<td class="num" data-sort="{_float_key(number)}">{_real_text(number)}</td>'


def _float_cells(numbers: list[float]) -> list[str]:
    return [_float_cell(number) for number in numbers]


def _bool_cells(flags: list[bool]) -> list[str]:
    cells = {flag: _cell(flag, escaped(flag)) for flag in (False, True)}
    return [cells[flag] for flag in flags]


def _text_cell(text: str) -> str:
    key = _text_key(text)
    attributes = f' data-sort="{key}"' if key is not None else ""
    return f"<td{attributes}>{html.escape(text, quote=True)}</td>"


def _text_cells(column: pd.Series) -> list[str]:
    """The cells of a column of StringDtype: each distinct text rendered once (ports, types
    and addresses repeat)."""
    codes, texts = pd.factorize(column)
    missing = column.dtype.na_value  # pd.NA, or NaN for the "str" dtype
    # a missing value's code is -1: the last cell
    cells = [_text_cell(text) for text in texts.tolist()] + [_cell(missing, escaped(missing))]
    return [cells[code] for code in codes.tolist()]


# How an array of numbers or booleans renders, by its NumPy kind: NumPy and nullable arrays only
# (their `tolist()` gives Python numbers), of at most 8 bytes (a long double's is no float).
KIND_CELLS = {"b": _bool_cells, "i": _integer_cells, "u": _integer_cells, "f": _float_cells}
NUMBER_ARRAYS = (pd.arrays.NumpyExtensionArray, pd.arrays.BooleanArray, pd.arrays.IntegerArray,
                 pd.arrays.FloatingArray)


def _renderer(array):
    """The function of KIND_CELLS that renders `array`; None for any other array."""
    if not isinstance(array, NUMBER_ARRAYS):
        return None
    numpy_dtype = np.dtype(getattr(array.dtype, "numpy_dtype", array.dtype))
    return KIND_CELLS.get(numpy_dtype.kind) if numpy_dtype.itemsize <= 8 else None


def _nullable_cells(array, render) -> list[str]:
    """The cells of a nullable array: its values as `render` gives them, pd.NA's empty."""
    # pd.NA read as 0, whose cell is then replaced
    cells = render(array.to_numpy(dtype=array.dtype.numpy_dtype, na_value=0).tolist())
    missing = _cell(array.dtype.na_value, escaped(array.dtype.na_value))
    return [missing if absent else cell for cell, absent in zip(cells, array.isna().tolist())]


def _column_cells(column: pd.Series) -> list[str]:
    """The cells of `column`, each as `_cell(value, escaped(value))` gives it for the value of
    `column.astype(object)`: rendered for the whole column where its dtype says how (text,
    numbers, booleans), else (objects, dates, categories, ...) a cell at a time."""
    array = column.array
    if isinstance(array.dtype, pd.StringDtype):
        return _text_cells(column)
    render = _renderer(array)
    if render is None:
        return [_cell(value, escaped(value)) for value in column.astype(object).tolist()]
    if isinstance(array, pd.arrays.NumpyExtensionArray):
        return render(array.to_numpy().tolist())
    return _nullable_cells(array, render)


def _table(head: list[str], rows) -> str:
    heads = "".join(f"<th>{cell}</th>" for cell in head)
    return f"<table><thead><tr>{heads}</tr></thead><tbody>{''.join(rows)}</tbody></table>\n"


def html_table(frame: pd.DataFrame, marked: pd.Series | None = None) -> str:
    """A table of every row of `frame`, in its order (callers put the most telling rows
    first: a page too large for the report keeps its first rows, see `html_page`): header and
    cells escaped, numbers right-aligned with their exact value in `data-sort`; rows where
    `marked` (aligned with `frame`) holds are highlighted."""
    flags = [False] * len(frame) if marked is None else marked.to_numpy(dtype=bool).tolist()
    openings = ['<tr class="mark">' if flag else "<tr>" for flag in flags]
    columns = [_column_cells(column) for _, column in frame.items()]
    # a column at a time (see `_column_cells`), then joined a row at a time
    rows = map("".join, zip(openings, *columns, itertools.repeat("</tr>")))
    return _table([escaped(column) for column in frame.columns], rows)


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


def _plain(text: str) -> str:
    """The text a Markdown cell of `safe_text.markdown_cell` stands for (for its sort key)."""
    return html.unescape(BACKSLASH_ESCAPE.sub(r"\1", text))


def _table_html(lines: list[str]) -> str:
    cells = [[cell.strip() for cell in UNESCAPED_PIPE.split(line.strip())[1:-1]]
             for line in lines]
    rows = ("<tr>" + "".join(_cell(_plain(cell), _inline(cell)) for cell in row) + "</tr>"
            for row in cells[2:])
    return _table([_inline(cell) for cell in cells[0]], rows)


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


def _size(text: str) -> int:
    return len(text.encode("utf-8"))


def _share(sizes: list[int], room: int) -> int:
    """The largest share s with sum(min(size, s)) <= room: what each table may keep."""
    for done, size in enumerate(sorted(sizes)):
        if size * (len(sizes) - done) > room:
            return room // (len(sizes) - done)
        room -= size
    return max(sizes, default=0)


def _kept(rows: list[str], share: int) -> str:
    """The first rows that fit in `share` bytes, and a note after the table if any are cut."""
    sizes = list(itertools.accumulate(map(_size, rows)))
    kept = sum(size <= share for size in sizes)
    if kept == len(rows):
        return "".join(rows) + "</tbody></table>\n"
    return ("".join(rows[:kept]) + "</tbody></table>\n" + paragraph(
        f"Shown: the first {kept:,} of these {len(rows):,} rows, as many as the report's page "
        "holds (sorting and the filter act on these); every row is in the CSV or Parquet "
        "table this one is made from, in the results folder.", note=True))


def fitted(body: str, room: int = PAGE_BYTES) -> str:
    """`body` whole if it takes at most `room` bytes, else with the longest tables cut to
    their first rows, each to the same share of what is left, so that the page fits."""
    if _size(body) <= room:
        return body
    tables = list(TABLE_BODY.finditer(body))
    rows = [[row for row in ROW_START.split(table[1]) if row] for table in tables]
    sizes = [_size(table[1]) for table in tables]
    share = _share(sizes, room - (_size(body) - sum(sizes)) - NOTE_BYTES * len(tables))
    parts, end = [], 0
    for table, table_rows in zip(tables, rows):
        parts += [body[end:table.start(1)], _kept(table_rows, share)]
        end = table.end()
    return "".join(parts) + body[end:]


def html_page(title: str, body: str) -> str:
    """A page of `body` that the report can show: tables cut to fit PAGE_BYTES (`fitted`)
    rather than a blank frame. A 100,000-row conversations table thus keeps its first few
    thousand rows (~4,500), shown 100 at a time."""
    head = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{POLICY}\">"
            f"<title>{escaped(title)}</title><style>{STYLE}</style></head>\n"
            f"<body>\n{heading(1, title)}")
    tail = f"{SCRIPT_ELEMENT}</body></html>\n"
    return head + fitted(body, PAGE_BYTES - _size(head + tail)) + tail


def write_html(path, title: str, body: str) -> None:
    write_text(path, html_page(title, body))

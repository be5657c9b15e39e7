"""The report's HTML tables (tracelab.core.html), read back with the standard library's HTML
parser: every row present and escaped, exact sort keys in `data-sort`, pages that fit the
report's frame. Their behaviour in a browser (sort, filter, pages) is tested in test_report.py.
"""

import base64
import hashlib
import html
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracelab.core.html import (
    PAGE_BYTES,
    display_value,
    html_page,
    html_table,
    is_number,
    markdown_html,
    sort_key,
)
from tracelab.core.safe_text import markdown_table

HOSTILE = "/<script>alert(1)</script>"


class Cells(HTMLParser):
    """The tables of a page as the browser's parser sees them: per table its headings and its
    rows of (text, attributes) cells; and the text of every <script> element."""

    def __init__(self, page):
        super().__init__(convert_charrefs=True)
        self.tables, self.scripts, self.metas, self._cell, self._in_script = [], [], [], None, False
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append({"head": [], "rows": []})
        elif tag == "tr":
            self.tables[-1]["rows"].append(attrs)
            self.tables[-1]["cells"] = self.tables[-1].get("cells", []) + [[]]
        elif tag in ("td", "th"):
            self._cell = [tag, "", attrs]
        elif tag == "script":
            self._in_script = True
            self.scripts.append("")
        elif tag == "meta":
            self.metas.append(attrs)
        elif self._cell is not None or self._in_script:
            raise AssertionError(f"element <{tag}> inside a cell or script")

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            kind, text, attrs = self._cell
            table = self.tables[-1]
            if kind == "th":
                table["head"].append(text)
            else:
                table["cells"][-1].append((text, attrs))
            self._cell = None
        elif tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data
        elif self._cell is not None:
            self._cell[1] += data

    def body(self, index=0):
        """Rows of table `index` below its heading row, as lists of (text, attributes)."""
        return self.tables[index]["cells"][1:]


def conversations(rows):
    generator = np.random.default_rng(7)
    return pd.DataFrame({
        "address_a": [f"10.0.{i // 250}.{i % 250}" for i in range(rows)],
        "uri": [HOSTILE if i % 97 == 0 else f"/page/{i}" for i in range(rows)],
        "packets": generator.integers(1, 10**7, rows),
        "bytes": generator.integers(1, 10**10, rows),
        "duration_s": generator.random(rows) * 5000,
    })


def test_every_row_is_in_the_table_escaped_with_its_exact_sort_key():
    frame = conversations(1234)
    frame.loc[3, "duration_s"] = np.nan
    frame.loc[5, "duration_s"] = np.inf
    table = html_table(frame)
    assert "<script>" not in table
    parsed = Cells(table)
    assert parsed.tables[0]["head"] == list(frame.columns)
    rows = parsed.body()
    assert len(rows) == len(frame) == 1234
    for (_, row), cells in zip(frame.iterrows(), rows):
        assert cells[0] == (row["address_a"], {})  # an address is text, no sort key
        assert cells[1][0] == row["uri"]  # the hostile URI comes back as text
        packets, size = cells[2], cells[3]
        assert packets[0] == f"{row['packets']:,}" and size[0] == f"{row['bytes']:,}"
        assert int(size[1]["data-sort"]) == row["bytes"] and size[1]["class"] == "num"
        assert int(packets[1]["data-sort"]) == row["packets"]
    durations = [cells[4][1].get("data-sort") for cells in rows]
    assert durations[3] is None and rows[3][4][0] == ""
    assert durations[5] == "Infinity"
    exact = [float(key) for i, key in enumerate(durations) if i not in (3, 5)]
    assert exact == frame["duration_s"].drop([3, 5]).tolist()  # not the 4 digits shown


def test_text_cells_sort_by_a_leading_number_and_booleans_by_nothing():
    frame = pd.DataFrame({"cell": ["14,328", "0.12 [0.05, 0.2]", "12.5%", "198.18.0.2",
                                   "2026-12-07", "n/a", "-3e-05", "443", True]})
    keys = [cells[0][1].get("data-sort") for cells in Cells(html_table(frame)).body()]
    assert keys == ["14328", "0.12", "12.5", None, None, None, "-3e-05", "443", None]


def cell_by_cell(frame, marked=None):
    """`html_table` as the public per-cell functions give it, a row and a cell at a time."""
    flags = [False] * len(frame) if marked is None else list(marked.to_numpy(dtype=bool))
    rows = []
    for row, flag in zip(frame.astype(object).itertuples(index=False), flags):
        cells = []
        for value in row:
            key = sort_key(value)
            attributes = (' class="num"' if is_number(value) else "") + (
                f' data-sort="{key}"' if key is not None else "")
            cells.append(f"<td{attributes}>{html.escape(display_value(value), quote=True)}</td>")
        rows.append(('<tr class="mark">' if flag else "<tr>") + "".join(cells) + "</tr>")
    head = "".join(f"<th>{html.escape(display_value(name), quote=True)}</th>"
                   for name in frame.columns)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>\n"


FLOATS = [np.nan, np.inf, -np.inf, -0.0, 1e20, 0.00012345, 999.95, 1000.4, 0.1, -1234.5, 5e-324]
TEXTS = ["14,328 bytes", "<script>", "12.5%", "198.18.0.2", "", " 12 x", "-3e-05 s", "1,23",
         "é & \"q\" 'a'", "0.12 [0.05, 0.2]", None]


def cycled(values: list) -> list:
    return [values[i % len(values)] for i in range(len(FLOATS))]


def every_dtype() -> pd.DataFrame:
    """A column of each dtype a table may get, with missing and extreme values."""
    rows = len(FLOATS)
    return pd.DataFrame({
        "int64": np.arange(rows) * 123_457 - 500_000,
        "int32": np.arange(rows, dtype="int32"),
        "uint64": np.full(rows, 2**64 - 1, dtype="uint64"),
        "float64": FLOATS, "float32": np.array(FLOATS, dtype="float32"),
        "bool": cycled([True, False]),
        "Int32": pd.array(cycled([1, None, 1_234_567]), dtype="Int32"),
        "Int64": pd.array(cycled([2**40, None]), dtype="Int64"),
        "Float64": pd.array(FLOATS, dtype="Float64"),
        "boolean": pd.array(cycled([True, None, False]), dtype="boolean"),
        "string": pd.array(TEXTS, dtype="string"),
        "str": pd.array(TEXTS[::-1], dtype="str"),  # missing is NaN here, not pd.NA
        "object": [1, 2.5, None, "x<", np.int64(3), np.float32(1.5), np.nan, pd.NA, True,
                   np.bool_(True), 10**30],
        "datetime": pd.to_datetime(cycled(["2026-12-07 12:00", None]), utc=True),
        "category": pd.Categorical(TEXTS),
        "long double": np.array(FLOATS, dtype="longdouble"),
    }, index=range(100, 100 + rows))


@pytest.mark.parametrize("rows", [len(FLOATS), 0])
@pytest.mark.parametrize("marking", [False, True])
def test_tables_are_the_cells_of_the_per_cell_functions(rows, marking):
    frame = every_dtype().head(rows)
    marked = frame["bool"] if marking else None
    assert html_table(frame, marked) == cell_by_cell(frame, marked)


def test_a_table_without_columns_keeps_its_rows():
    frame = every_dtype()[[]]
    assert html_table(frame) == cell_by_cell(frame)


NUMBER_TEXTS = st.builds(lambda number, tail: f"{number:,}{tail}", st.integers() | st.floats(),
                         st.sampled_from(["", "%", " bytes", "x", ".5", "e3 s"]))
COLUMNS = {  # dtype: its values
    "int64": st.integers(-2**63, 2**63 - 1), "uint64": st.integers(0, 2**64 - 1),
    "float64": st.floats(), "float32": st.floats(width=32), "bool": st.booleans(),
    "Int64": st.none() | st.integers(-2**63, 2**63 - 1), "Float64": st.none() | st.floats(),
    "boolean": st.none() | st.booleans(), "string": st.none() | st.text() | NUMBER_TEXTS,
    "str": st.none() | st.text() | NUMBER_TEXTS,
    "object": st.none() | st.integers() | st.floats() | st.booleans() | st.text() | NUMBER_TEXTS,
}


@st.composite
def frames(draw):
    rows = draw(st.integers(0, 12))
    values = {dtype: draw(st.lists(elements, min_size=rows, max_size=rows))
              for dtype, elements in COLUMNS.items()}
    frame = pd.DataFrame({dtype: pd.array(column, dtype=dtype)
                          for dtype, column in values.items()})
    marked = draw(st.none() | st.lists(st.booleans(), min_size=rows, max_size=rows))
    return frame, None if marked is None else pd.Series(marked, dtype=bool)


@settings(max_examples=200, deadline=None)
@given(frames())
def test_any_values_give_the_cells_of_the_per_cell_functions(table):
    frame, marked = table
    assert html_table(frame, marked) == cell_by_cell(frame, marked)


def test_marked_rows_are_highlighted():
    frame = pd.DataFrame({"feature": ["a", "b", "c"], "d": [0.1, 0.9, 0.5]})
    rows = Cells(html_table(frame, marked=frame["d"] > 0.4)).tables[0]["rows"]
    assert [attrs.get("class") for attrs in rows[1:]] == [None, "mark", "mark"]


def test_markdown_tables_get_the_same_sort_keys():
    text = "## t\n\n" + markdown_table(pd.DataFrame({
        "source": ["198.18.0.2", "198.18.0.3"], "packets": ["1,586", "14,328"],
        "example": [HOSTILE + "|x", "0.5 [0.1, 0.9]"]}))
    parsed = Cells(markdown_html(text))
    rows = parsed.body()
    assert [[attrs.get("data-sort") for _, attrs in cells] for cells in rows] == [
        [None, "1586", None], [None, "14328", "0.5"]]
    assert rows[0][2][0] == HOSTILE + "|x"


def test_a_page_lets_only_its_own_script_run():
    page = html_page("t <b>", html_table(conversations(20)))
    parsed = Cells(page)
    assert len(parsed.scripts) == 1
    policy = next(meta["content"] for meta in parsed.metas
                  if meta.get("http-equiv") == "Content-Security-Policy")
    digest = base64.b64encode(hashlib.sha256(parsed.scripts[0].encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}';" in policy and "default-src 'none'" in policy
    assert "innerHTML" not in parsed.scripts[0] and "eval" not in parsed.scripts[0]


def test_a_small_page_keeps_every_row():
    page = html_page("t", html_table(conversations(3000)) + html_table(conversations(10)))
    assert len(page.encode()) <= PAGE_BYTES
    assert [len(Cells(page).body(i)) for i in (0, 1)] == [3000, 10]
    assert "Shown: the first" not in page


@pytest.mark.parametrize("small_rows", [10, 5000])
def test_a_large_page_keeps_the_first_rows_that_fit(small_rows):
    large, small = conversations(100_000), conversations(small_rows)
    page = html_page("t", "<p>before</p>" + html_table(large) + html_table(small) + "<p>after</p>")
    assert PAGE_BYTES * 0.9 < len(page.encode()) <= PAGE_BYTES
    parsed = Cells(page)
    kept = parsed.body(0)
    assert 2000 < len(kept) < 100_000
    assert [cells[0][0] for cells in kept] == large["address_a"].head(len(kept)).tolist()
    notes = re.findall(r"Shown: the first ([\d,]+) of these ([\d,]+) rows", page)
    if small_rows == 10:  # the small table fits whole; the large one takes what is left
        assert len(parsed.body(1)) == 10 and notes == [(f"{len(kept):,}", "100,000")]
    else:  # both are cut to the same share of the page
        assert len(notes) == 2 and abs(len(parsed.body(1)) - len(kept)) < 50
    assert page.index("<p>before</p>") < page.index("<p>after</p>")

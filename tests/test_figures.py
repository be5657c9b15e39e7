"""What the comparison figures draw: one style per trace everywhere, legends outside the data,
small multiples where scales differ, labels only where they can be read.

Each figure function is run with `save` replaced by a function that keeps the figure, and the
figure's artists are inspected.
"""

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.text import Annotation

from tracelab.compare import security as security_compare
from tracelab.compare import traces as compare_traces
from tracelab.compare.figures import trace_styles

matplotlib.use("Agg")

TRACES = ["log4j_scan", "web_browsing", "log4j_scan_pcap"]
LABELS = {"log4j_scan": "scan", "web_browsing": "normal", "log4j_scan_pcap": "scan"}


@pytest.fixture
def drawn(monkeypatch):
    """Figures the functions would have saved, by path."""
    figures = {}

    def keep(fig, path):
        fig.canvas.draw()
        figures[path] = fig

    monkeypatch.setattr(compare_traces, "save", keep)
    monkeypatch.setattr(security_compare, "save", keep)
    return figures


def distributions() -> pd.DataFrame:
    """Two recordings of one scan (identical curves, 23 s) and a browsing trace of 5,000 s."""
    parts = []
    for trace, duration in (("log4j_scan", 23), ("web_browsing", 5000), ("log4j_scan_pcap", 23)):
        xs = np.linspace(0.01, 10, 50)
        parts.append(pd.DataFrame({"kind": "iat_ecdf", "key": None, "x": xs,
                                   "y": np.linspace(0, 1, 50), "trace": trace}))
        parts += [pd.DataFrame({"kind": kind, "key": None, "x": np.arange(duration, dtype=float),
                                "y": np.full(duration, 70.0 * scale), "trace": trace})
                  for kind, scale in (("pps", 1), ("bps", 800))]
        parts.append(pd.DataFrame({"kind": "destinations", "key": None, "x": [0.0, duration],
                                   "y": [1.0, 5.0], "trace": trace}))
        parts.append(pd.DataFrame({"kind": "protocol_count", "key": ["TCP", "HTTP"],
                                   "x": 0.0, "y": [90.0, 10.0], "trace": trace}))
    return pd.concat(parts, ignore_index=True)


def legend_texts(fig) -> list[str]:
    return [text.get_text() for legend in fig.legends for text in legend.get_texts()]


def outside_every_axes(fig) -> bool:
    renderer = fig.canvas.get_renderer()
    boxes = [legend.get_window_extent(renderer) for legend in fig.legends]
    return all(not box.overlaps(ax.get_window_extent(renderer)) for box in boxes
               for ax in fig.axes if ax.get_visible())


def test_each_trace_keeps_one_colour_and_traces_of_a_label_stay_visible():
    styles = trace_styles(TRACES + ["synth"], {**LABELS, "synth": "mixed"})
    assert list(styles) == TRACES + ["synth"]
    assert len({style.color for style in styles.values()}) == 4
    first, second = styles["log4j_scan"], styles["log4j_scan_pcap"]
    # The later recording of the same label is thinner and dashed, drawn on top of the first.
    assert second.linewidth < first.linewidth and second.linestyle != "-"
    assert styles == trace_styles(TRACES + ["synth"], {**LABELS, "synth": "mixed"})


def test_line_figures_draw_every_trace_in_its_style_with_a_one_level_legend_outside(drawn):
    styles = trace_styles(TRACES, LABELS)
    compare_traces.ecdf_figure(distributions(), "iat_ecdf", styles, "iat.png", title="t",
                               xlabel="x", ylabel="y", log_x=True)
    fig = drawn["iat.png"]
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert [line.get_color() for line in lines] == [styles[t].color for t in TRACES]
    assert lines[2].get_linewidth() < lines[0].get_linewidth()  # drawn later, thinner
    assert legend_texts(fig) == ["log4j_scan (scan)", "web_browsing (normal)",
                                 "log4j_scan_pcap (scan)"]
    assert ax.get_legend() is None and outside_every_axes(fig)


def test_bar_figures_use_the_trace_colours_in_sheet_order(drawn):
    styles = trace_styles(TRACES, LABELS)
    states = pd.DataFrame({"trace": ["web_browsing", "log4j_scan", "log4j_scan_pcap"],
                           "conn_state": ["SF", "S0", "S0"], "share": [1.0, 1.0, 1.0]})
    security_compare.conn_states_figure(states, styles, "states.png")
    compare_traces.protocol_figure(distributions(), styles, "protocols.png")
    for path in ("states.png", "protocols.png"):
        fig = drawn[path]
        bars = [patch for patch in fig.axes[0].patches]
        colours = list(dict.fromkeys(tuple(bar.get_facecolor()[:3]) for bar in bars))
        assert colours == [styles[t].color for t in TRACES], path
        assert legend_texts(fig) == [styles[t].legend for t in TRACES], path
        assert outside_every_axes(fig), path


def test_rate_is_small_multiples_of_packets_and_bits_each_on_its_own_time_axis(drawn):
    styles = trace_styles(TRACES, LABELS)
    # Each trace's bin width as its summary.json records it (not re-derived from the series).
    bin_s = {trace: 1.0 for trace in TRACES}
    compare_traces.rate_figure(distributions(), styles, "rate.png", bin_s)
    fig = drawn["rate.png"]
    axes = np.array(fig.axes).reshape(len(TRACES), 2)
    titles = [ax.get_title(loc="left") for ax in axes.flat]
    assert all("packets per second" in t for t in titles[0::2])
    assert all("bits per second" in t for t in titles[1::2])
    # The 23 s scan is not squeezed to the left of the 5,000 s browsing trace.
    assert axes[0, 0].get_xlim()[1] == pytest.approx(23)
    assert axes[1, 0].get_xlim()[1] == pytest.approx(5000)
    # The 5,000 bins of the long trace are drawn merged, at the same mean rate.
    assert "bins of 10 s" in axes[1, 0].get_title(loc="left")
    assert axes[1, 1].get_ylim()[1] >= 70 * 800


def test_rate_bins_are_as_wide_as_the_features_stage_chose(drawn):
    """The width comes from each trace's summary.json (a one-bin series has no spacing)."""
    series = pd.DataFrame({"kind": ["pps", "bps"], "key": None, "trace": TRACES[0],
                           "x": 0.0, "y": 1.0})
    compare_traces.rate_figure(series, trace_styles(TRACES[:1], LABELS), "rate.png",
                               {TRACES[0]: 0.5})
    ax = drawn["rate.png"].axes[0]
    assert "bins of 0.5 s" in ax.get_title(loc="left")
    assert ax.get_xlim() == (0.0, 0.5)


def test_destinations_are_small_multiples(drawn):
    styles = trace_styles(TRACES, LABELS)
    compare_traces.destinations_figure(distributions(), styles, "destinations.png")
    fig = drawn["destinations.png"]
    assert len(fig.axes) == len(TRACES)
    assert [ax.get_xlim()[1] < 100 for ax in fig.axes] == [True, False, True]


def test_fanout_names_only_as_many_sources_as_can_be_read(drawn):
    """A scan of 200 flagged sources at nearly the same point: a few names, none overlapping."""
    rng = np.random.default_rng(1)
    n = 200
    hosts = pd.DataFrame({
        "trace": "log4j_scan", "label": "scan", "source": [f"198.18.0.{i}" for i in range(n)],
        "distinct_dst_hosts": rng.integers(250, 260, n), "failed_ratio": rng.uniform(0.9, 1, n),
        "flagged_by": "address_scan,trw"})
    hosts = pd.concat([hosts, pd.DataFrame({
        "trace": "web_browsing", "label": "normal", "source": ["10.0.0.1"],
        "distinct_dst_hosts": [3], "failed_ratio": [0.0], "flagged_by": [""]})])
    styles = trace_styles(TRACES, LABELS)
    security_compare.fanout_figure(hosts, styles, "fanout.png")
    fig = drawn["fanout.png"]
    renderer = fig.canvas.get_renderer()
    names = [child for ax in fig.axes for child in ax.get_children()
             if isinstance(child, Annotation)]
    assert 1 <= len(names) <= security_compare.MOST_LABELS
    boxes = [name.get_window_extent(renderer) for name in names]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    # One panel a trace (the pcap has no hosts here), markers by verdict in a legend outside.
    assert [ax.get_title(loc="left").split(":")[0] for ax in fig.axes if ax.get_visible()] == [
        styles[t].legend for t in TRACES]
    assert "not flagged" in legend_texts(fig) and outside_every_axes(fig)


def test_many_protocols_are_folded_into_one_group(drawn):
    names = [f"P{i}" for i in range(30)]
    data = pd.DataFrame({"kind": "protocol_count", "key": names * 2, "x": 0.0,
                         "y": [2.0 ** -i for i in range(30)] * 2,
                         "trace": ["log4j_scan"] * 30 + ["web_browsing"] * 30})
    styles = trace_styles(TRACES[:2], LABELS)
    compare_traces.protocol_figure(data, styles, "protocols.png")
    ticks = [t.get_text() for t in drawn["protocols.png"].axes[0].get_xticklabels()]
    assert len(ticks) == compare_traces.MOST_PROTOCOLS
    assert ticks[0] == "P0" and ticks[-1] == "19 others"

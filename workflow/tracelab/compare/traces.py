"""Stage 4, comparison: every trace's summary side by side, and the notebook's figures made
comparable (one style per trace throughout: tracelab.compare.figures)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from matplotlib.ticker import EngFormatter, MaxNLocator, NullLocator

from tracelab.compare.figures import (
    TraceStyle,
    empty_note,
    grouped_bars,
    legend_outside,
    new_figure,
    save,
    set_theme,
    trace_styles,
)
from tracelab.core.atomic import atomic_path, write_text
from tracelab.core.html import html_table, paragraph, write_html
from tracelab.core.safe_text import markdown_table, spreadsheet_safe

log = logging.getLogger(__name__)

# Rate panels: the distributions' kind, its unit, and what the panel shows.
RATE_PANELS = [("pps", "", "packets per second"), ("bps", "bit/s", "bits per second")]
# Bins drawn per rate panel at most: a longer series is shown in merged bins (about one a
# pixel); the full series stays in distributions.parquet.
MOST_DRAWN_BINS = 500
# Protocols drawn at most, the most frequent in any trace; the rest are summed as one group.
MOST_PROTOCOLS = 12


def summary_table(summaries: list[dict], labels: dict[str, str]) -> pd.DataFrame:
    """One row a trace; nested quantiles become columns, protocol counts one compact cell."""
    rows = []
    for summary in summaries:
        row = {"trace": summary["trace"], "label": labels.get(summary["trace"], "")}
        for key, value in summary.items():
            if key == "trace":
                continue
            if key == "protocol_counts":
                row[key] = "; ".join(f"{p}={c}" for p, c in value.items())
            elif isinstance(value, dict):
                prefix = key.removesuffix("_quantiles")
                row.update({f"{prefix}_{name}": v for name, v in value.items()})
            else:
                row[key] = value
        rows.append(row)
    return pd.DataFrame(rows)


def _long_distributions(paths: list[str], traces: list[str]) -> pd.DataFrame:
    frames = [pq.read_table(path).to_pandas().assign(trace=trace)
              for trace, path in zip(traces, paths)]
    return pd.concat(frames, ignore_index=True)


def _series(data: pd.DataFrame, kind: str, trace: str) -> pd.DataFrame:
    return data[(data["kind"] == kind) & (data["trace"] == trace)]


def _thinned_steps(data: pd.DataFrame, kind: str, most: int = 2000) -> pd.DataFrame:
    """A step series of each trace with at most `most` steps, evenly spread over its height,
    and its last point: one step per destination of a large scan (10^5 and more) draws the same
    line at figure resolution, in a fraction of the time. The full series stays in the data."""
    keep = pd.Series(True, index=data.index)
    for _, part in data[data["kind"] == kind].groupby("trace", sort=False):
        every = -(-len(part) // most)
        position = pd.RangeIndex(len(part))
        keep[part.index] = (position % every == 0) | (position == len(part) - 1)
    return data[keep]


def drawn_bins(start_s: np.ndarray, rate: np.ndarray, bin_s: float,
               most: int = MOST_DRAWN_BINS) -> tuple[np.ndarray, np.ndarray, float]:
    """(bin edges, rate per bin, bin width) of a rate series with at most `most` bins: k
    adjacent bins merged into one whose rate is their mean (the rate over the merged bin; the
    last one covers only the bins that exist)."""
    merge = max(1, -(-rate.size // most))
    if merge > 1:
        padded = np.append(rate, np.full(-rate.size % merge, np.nan)).reshape(-1, merge)
        rate = np.nanmean(padded, axis=1)
    width = bin_s * merge
    start = start_s[0] if start_s.size else 0.0
    edges = start + np.arange(rate.size + 1) * width
    if start_s.size:
        edges[-1] = min(edges[-1], start_s[-1] + bin_s)
    return edges, rate, width


def _panel_title(ax, style: TraceStyle, text: str) -> None:
    ax.set_title(f"{style.legend}: {text}", loc="left", fontsize=9, color=style.color)


def ecdf_figure(data: pd.DataFrame, kind: str, styles: dict[str, TraceStyle], path, *,
                title: str, xlabel: str, ylabel: str, log_x: bool = False) -> None:
    """One ECDF per trace on one axes, drawn in sheet order (a later trace on top)."""
    fig, axes = new_figure(9, 5)
    ax = axes[0, 0]
    for trace, style in styles.items():
        series = _series(data, kind, trace)
        if log_x:
            series = series[series["x"] > 0]
        ax.step(series["x"], series["y"], where="post", **style.line)
    if log_x:
        ax.set_xscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, ylim=(-0.02, 1.02))
    ax.grid(True, which="both", alpha=0.3)
    legend_outside(fig, [style.handle(marker=False) for style in styles.values()],
                   "trace (label)")
    save(fig, path)


def protocol_figure(data: pd.DataFrame, styles: dict[str, TraceStyle], path) -> None:
    """Share of each trace's packets per protocol: a group per protocol, a bar per trace."""
    counts = data[data["kind"] == "protocol_count"]
    shares = counts.pivot_table(index="key", columns="trace", values="y", aggfunc="sum")
    shares = shares / shares.sum()
    shares = shares.loc[shares.max(axis=1).sort_values(ascending=False, kind="stable").index]
    if len(shares) > MOST_PROTOCOLS:
        rest = shares.iloc[MOST_PROTOCOLS - 1:]
        shares = pd.concat([shares.iloc[:MOST_PROTOCOLS - 1], rest.sum(min_count=1).to_frame(
            f"{len(rest)} others").T])
    fig, axes = new_figure(max(7.0, 1.1 * len(shares) + 3), 5)
    ax = axes[0, 0]
    grouped_bars(ax, shares, styles)
    ax.set_title("Protocol share per trace (Wireshark's Protocol column)")
    ax.set_xlabel("protocol")
    # Log scale: the rare protocols (a few ICMPv6, TLS handshakes) are the informative ones.
    ax.set_yscale("log")
    ax.yaxis.set_minor_locator(NullLocator())  # the theme draws none; they cost layout time
    ax.set_ylabel("share of the trace's packets (log scale)")
    legend_outside(fig, [style.patch() for style in styles.values()], "trace (label)")
    save(fig, path)


def rate_figure(data: pd.DataFrame, styles: dict[str, TraceStyle], path,
                bin_s: dict[str, float]) -> None:
    """Small multiples: a row per trace, packets and bits per second side by side, each on
    its own time and rate scale (traces of very different length or volume stay readable);
    `bin_s` is each trace's rate bin width, as its features stage chose it."""
    fig, axes = new_figure(11, 1.9 * len(styles) + 0.9, len(styles), len(RATE_PANELS))
    for row, (trace, style) in zip(axes, styles.items()):
        for ax, (kind, unit, what) in zip(row, RATE_PANELS):
            series = _series(data, kind, trace).sort_values("x")
            if series.empty:
                empty_note(ax, "no packets")
                continue
            edges, rate, width = drawn_bins(series["x"].to_numpy(), series["y"].to_numpy(),
                                            bin_s[trace])
            ax.stairs(rate, edges, fill=True, color=style.color, alpha=0.3)
            ax.stairs(rate, edges, color=style.color, linewidth=1.2)
            ax.set_xlim(edges[0], edges[-1])
            ax.set_ylim(bottom=0)
            ax.yaxis.set_major_formatter(EngFormatter(unit=unit, sep=" " if unit else ""))
            _panel_title(ax, style, f"{what} (bins of {width:g} s)")
    for ax in axes[-1]:
        ax.set_xlabel("time since the trace's first packet (s)")
    fig.suptitle("Packet and bit rate over each capture (each panel on its own scales)")
    save(fig, path)


def destinations_figure(data: pd.DataFrame, styles: dict[str, TraceStyle], path) -> None:
    """Small multiples: distinct destinations so far, a row per trace on its own scales."""
    steps = _thinned_steps(data, "destinations")
    fig, axes = new_figure(9, 1.7 * len(styles) + 0.9, len(styles), 1)
    for (ax,), (trace, style) in zip(axes, styles.items()):
        series = _series(steps, "destinations", trace)
        if series.empty:
            empty_note(ax, "no packets")
            continue
        ax.step(series["x"], series["y"], where="post", color=style.color, linewidth=1.6)
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
        _panel_title(ax, style, f"{int(series['y'].iloc[-1]):,} distinct destinations")
    axes[-1, 0].set_xlabel("time since the trace's first packet (s)")
    fig.supylabel("distinct destination addresses so far", fontsize=10)
    fig.suptitle("Distinct destinations seen over each capture (each panel on its own scales)")
    save(fig, path)


def summary_html(table: pd.DataFrame) -> str:
    """The trace summary turned sideways: a row per quantity, a column per trace."""
    sideways = table.set_index("trace").T.rename_axis("quantity").reset_index()
    return (paragraph("One column per trace, the quantities of each trace's summary.json "
                      "(units: bytes, seconds, packets or bits per second; iat_ms in "
                      "milliseconds).", note=True) + html_table(sideways))


def compare_traces(*, traces: list[str], labels: dict[str, str], summary_paths: list[str],
                   distribution_paths: list[str], table_path, markdown_path, html_path,
                   iat_cdf_path, length_cdf_path, protocols_path, rate_path,
                   destinations_path) -> pd.DataFrame:
    summaries = []
    for path in summary_paths:
        with open(path, encoding="utf-8") as handle:
            summaries.append(json.load(handle))
    table = summary_table(summaries, labels)
    with atomic_path(table_path) as tmp:
        spreadsheet_safe(table).to_csv(tmp, index=False)
    write_text(markdown_path, "# Trace comparison\n\n" + markdown_table(table))
    write_html(html_path, "Trace comparison", summary_html(table))

    set_theme()
    styles = trace_styles(traces, labels)
    data = _long_distributions(distribution_paths, traces)
    ecdf_figure(data, "iat_ecdf", styles, iat_cdf_path, log_x=True,
                title="Inter-arrival time, CDF per trace (zero gaps omitted on the log axis)",
                xlabel="inter-arrival time (ms, log scale)", ylabel="cumulative share of gaps")
    ecdf_figure(data, "length_ecdf", styles, length_cdf_path,
                title="Frame length, CDF per trace", xlabel="frame length (bytes)",
                ylabel="cumulative share of packets")
    protocol_figure(data, styles, protocols_path)
    bin_s = {trace: summary["rate_bin_s"] for trace, summary in zip(traces, summaries)}
    rate_figure(data, styles, rate_path, bin_s)
    destinations_figure(data, styles, destinations_path)
    log.info("compared %d traces", len(traces))
    return table

"""Stage 4, comparison: every trace's summary side by side, and the notebook's figures made comparable."""

from __future__ import annotations

import json
import logging

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import seaborn as sns  # noqa: E402

from tracelab.core.atomic import atomic_path, write_text  # noqa: E402
from tracelab.core.safe_text import figure_text, markdown_table, spreadsheet_safe  # noqa: E402

log = logging.getLogger(__name__)

# Fixed for reproducible PNG bytes: no timestamps or software versions in the files.
PNG_METADATA = {"Software": None}


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


def _long_distributions(paths: list[str], traces: list[str], labels: dict[str, str]) -> pd.DataFrame:
    frames = []
    for trace, path in zip(traces, paths):
        frame = pq.read_table(path).to_pandas()
        frame["trace"] = trace
        frame["label"] = labels.get(trace, trace)
        frames.append(frame)
    data = pd.concat(frames, ignore_index=True)
    legend = {trace: figure_text(f"{trace} ({labels.get(trace, trace)})") for trace in traces}
    data["trace (label)"] = data["trace"].map(legend)
    return data


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


def _save(fig, path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata=PNG_METADATA)
    plt.close(fig)


def _line_figure(data, kind, path, *, title, xlabel, ylabel, log_x=False, step=False,
                 symlog_y=False):
    subset = data[data["kind"] == kind]
    if log_x:
        subset = subset[subset["x"] > 0]
    fig, ax = plt.subplots(figsize=(8, 5))
    sns.lineplot(data=subset, x="x", y="y", hue="trace (label)", style="label", ax=ax,
                 drawstyle="steps-post" if step else "default", errorbar=None, estimator=None,
                 sort=True)
    if log_x:
        ax.set_xscale("log")
    if symlog_y:
        # Rates span orders of magnitude between traces; linear below 1 keeps empty seconds.
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    _relabel_legend(ax)
    _save(fig, path)


def _relabel_legend(ax) -> None:
    legend = ax.get_legend()
    if legend is not None:
        for text in legend.get_texts():
            text.set_text(figure_text(text.get_text()))


def protocol_figure(data: pd.DataFrame, path) -> None:
    counts = data[data["kind"] == "protocol_count"].copy()
    counts["share"] = counts["y"] / counts.groupby("trace")["y"].transform("sum")
    counts["protocol"] = counts["key"].map(figure_text)
    fig, ax = plt.subplots(figsize=(8, 5))
    sns.barplot(data=counts, x="trace (label)", y="share", hue="protocol", ax=ax)
    ax.set_title("Protocol share per trace (Wireshark's Protocol column)")
    ax.set_xlabel("trace (label)")
    # Log scale: the rare protocols (a few ICMPv6, TLS handshakes) are the informative ones.
    ax.set_yscale("log")
    ax.set_ylabel("share of packets (log scale)")
    _save(fig, path)


def compare_traces(*, traces: list[str], labels: dict[str, str], summary_paths: list[str],
                   distribution_paths: list[str], table_path, markdown_path, iat_cdf_path,
                   length_cdf_path, protocols_path, rate_path, destinations_path) -> pd.DataFrame:
    summaries = []
    for path in summary_paths:
        with open(path, encoding="utf-8") as handle:
            summaries.append(json.load(handle))
    table = summary_table(summaries, labels)
    with atomic_path(table_path) as tmp:
        spreadsheet_safe(table).to_csv(tmp, index=False)
    write_text(markdown_path, "# Trace comparison\n\n" + markdown_table(table))

    sns.set_theme(style="whitegrid", context="notebook")
    data = _long_distributions(distribution_paths, traces, labels)
    _line_figure(data, "iat_ecdf", iat_cdf_path, log_x=True,
                 title="Inter-arrival time, CDF per trace (zero gaps omitted on the log axis)",
                 xlabel="inter-arrival time (ms, log scale)", ylabel="cumulative share of gaps")
    _line_figure(data, "length_ecdf", length_cdf_path,
                 title="Frame length, CDF per trace", xlabel="frame length (bytes)",
                 ylabel="cumulative share of packets")
    protocol_figure(data, protocols_path)
    _line_figure(data, "pps", rate_path, title="Packet rate over the capture", symlog_y=True,
                 xlabel="time since the trace's first packet (s)",
                 ylabel="packets per second (symmetric log scale)")
    _line_figure(_thinned_steps(data, "destinations"), "destinations", destinations_path,
                 step=True, title="Distinct destinations seen so far",
                 xlabel="time since the trace's first packet (s)",
                 ylabel="distinct destination addresses")
    log.info("compared %d traces", len(traces))
    return table

"""Across traces: which window features separate the traces, and which detectors flagged whom.

For every window feature and every pair of groups (labels, e.g. `normal` vs `scan`, when the
sheet gives at least two; and every pair of traces), two standard statistics on the windows'
values, with no threshold fitted to the data:
- the two-sample Kolmogorov-Smirnov statistic D (largest gap between the two empirical CDFs;
  1 = the samples do not overlap) and its p-value (scipy.stats.ks_2samp);
- ROC AUC of the feature as a score for group b against group a, from the Mann-Whitney U
  statistic (AUC = U_b / (n_a n_b); 0.5 = no better than chance, 0 or 1 = perfect), and
  `separation` = max(AUC, 1 - AUC), its direction-free form.
Rows are sorted by D, then separation. Each feature's robustness class and its reason stand
beside the score: an artefact (capture size, time of day, port numbers) can reach D = 1 on two
captures and still be useless, because another capture of the same behaviour flips it. With a
handful of windows per trace, p-values show how little any single pair of captures can prove.
"""

from __future__ import annotations

import itertools
import json
import logging

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import NullLocator
from scipy import stats

from tracelab.compare.figures import (
    CLASS_COLOURS,
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
from tracelab.core.html import markdown_html, write_html
from tracelab.core.safe_text import figure_text, markdown_cell, markdown_table, spreadsheet_safe
from tracelab.security.conn_state import ZEEK_CONN_STATES
from tracelab.security.windows import recorded_features

log = logging.getLogger(__name__)

VERDICT_ORDER = ["address/port scan and TRW", "TRW only", "address/port scan only", "not flagged"]
VERDICT_MARKERS = dict(zip(VERDICT_ORDER, ["X", "^", "s", "o"]))
# Source names written beside flagged points, per panel at most, and the least distance
# between two of them (points): more would print over each other on a large scan.
MOST_LABELS = 6
LABEL_SPACING_PT = 14


def two_sample(a: np.ndarray, b: np.ndarray) -> dict:
    """KS statistic and p-value, ROC AUC (b scored above a) and separation of two samples."""
    a = a[~np.isnan(a)]
    b = b[~np.isnan(b)]
    if a.size == 0 or b.size == 0:
        return {"ks_statistic": np.nan, "ks_pvalue": np.nan, "roc_auc": np.nan,
                "separation": np.nan}
    ks = stats.ks_2samp(a, b)
    u_b = stats.mannwhitneyu(b, a, alternative="two-sided").statistic
    auc = float(u_b) / (a.size * b.size)
    return {"ks_statistic": float(ks.statistic), "ks_pvalue": float(ks.pvalue),
            "roc_auc": auc, "separation": max(auc, 1 - auc)}


def _summary(values: np.ndarray, suffix: str) -> dict:
    values = values[~np.isnan(values)]
    if values.size == 0:
        return {f"n_{suffix}": 0, f"mean_{suffix}": np.nan, f"median_{suffix}": np.nan,
                f"p25_{suffix}": np.nan, f"p75_{suffix}": np.nan}
    p25, median, p75 = np.quantile(values, [0.25, 0.5, 0.75])
    return {f"n_{suffix}": int(values.size), f"mean_{suffix}": float(values.mean()),
            f"median_{suffix}": float(median), f"p25_{suffix}": float(p25),
            f"p75_{suffix}": float(p75)}


SEPARABILITY_COLUMNS = [
    "comparison", "group_a", "group_b", "rank", "feature", "unit", "robustness", "ks_statistic",
    "ks_pvalue", "roc_auc", "separation", "n_a", "mean_a", "median_a", "p25_a", "p75_a", "n_b",
    "mean_b", "median_b", "p25_b", "p75_b", "reason", "description"]


def comparisons(windows: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(kind, group a, group b): every pair of labels, when there are two labels or more; every
    pair of traces when there are not, or when a label holds several traces (two captures of
    the same behaviour that a feature tells apart expose that feature as an artefact)."""
    pairs = []
    labels = sorted(windows["label"].unique())
    if len(labels) >= 2:
        pairs += [("label", a, b) for a, b in itertools.combinations(labels, 2)]
    traces = list(dict.fromkeys(windows["trace"]))
    shared_label = windows.groupby("label")["trace"].nunique().max() > 1 if len(windows) else False
    if len(labels) < 2 or shared_label:
        pairs += [("trace", a, b) for a, b in itertools.combinations(traces, 2)]
    return pairs


def separability_table(windows: pd.DataFrame, features: pd.DataFrame) -> pd.DataFrame:
    """One row a (feature, comparison): group summaries, KS, AUC; sorted by separability."""
    rows = []
    for kind, a, b in comparisons(windows):
        in_a = windows[kind] == a
        in_b = windows[kind] == b
        for spec in features.itertuples():
            values_a = windows.loc[in_a, spec.name].to_numpy(np.float64)
            values_b = windows.loc[in_b, spec.name].to_numpy(np.float64)
            rows.append({"comparison": kind, "group_a": a, "group_b": b, "feature": spec.name,
                         "unit": spec.unit, "robustness": spec.robustness,
                         **two_sample(values_a, values_b), **_summary(values_a, "a"),
                         **_summary(values_b, "b"), "reason": spec.reason,
                         "description": spec.description})
    table = pd.DataFrame(rows)
    if table.empty:  # one trace: nothing to compare, but the same columns
        return pd.DataFrame(columns=SEPARABILITY_COLUMNS)
    table["comparison_order"] = table["comparison"].map({"label": 0, "trace": 1})
    table = table.sort_values(
        ["comparison_order", "group_a", "group_b", "ks_statistic", "separation", "feature"],
        ascending=[True, True, True, False, False, True], na_position="last", kind="stable")
    table["rank"] = table.groupby(["comparison", "group_a", "group_b"]).cumcount() + 1
    return table.drop(columns="comparison_order")[SEPARABILITY_COLUMNS]


def distribution_table(windows: pd.DataFrame, features: pd.DataFrame, by: str) -> pd.DataFrame:
    """Per feature and group (`trace` or `label`): windows, median and interquartile range."""
    rows = []
    for group, part in windows.groupby(by, sort=False):
        for spec in features.itertuples():
            summary = _summary(part[spec.name].to_numpy(np.float64), "x")
            rows.append({"feature": spec.name, "unit": spec.unit, by: group,
                         **{k[:-2]: v for k, v in summary.items()}})
    return pd.DataFrame(rows)


def _fmt(value, digits: int = 3) -> str:
    """A number for a table: `digits` significant digits, larger whole numbers in full."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    if abs(value) >= 10 ** digits:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def _features_markdown(table: pd.DataFrame, by_trace: pd.DataFrame, by_label: pd.DataFrame,
                       labels: dict[str, str]) -> str:
    lines = ["# Which window features separate the traces", "",
             "One row a window feature. **KS D**: two-sample Kolmogorov-Smirnov statistic "
             "(1 = the windows of the two groups do not overlap). **AUC**: ROC AUC of the "
             "feature as a score for group b over group a (0.5 = chance; 0 or 1 = perfect). "
             "**p**: KS p-value. **Robustness**: `behavioural` features describe what the "
             "traffic does; `artefact` features describe how and when it was recorded.", ""]
    if table.empty:
        lines += ["No comparison: the trace sheet lists one trace. Add a second trace (for "
                  "example one labelled `normal` beside a `scan`) to rank the features.", ""]
    for (kind, a, b), part in table.groupby(["comparison", "group_a", "group_b"], sort=False):
        title = f"{kind} {a} (a) vs {b} (b)"
        lines += [f"## {markdown_cell(title)}", ""]
        shown = pd.DataFrame({
            "rank": part["rank"], "feature": part["feature"], "unit": part["unit"],
            "robustness": part["robustness"], "KS D": part["ks_statistic"].map(_fmt),
            "p": part["ks_pvalue"].map(_fmt), "AUC": part["roc_auc"].map(_fmt),
            "median a [IQR]": [f"{_fmt(m)} [{_fmt(lo)}, {_fmt(hi)}] (n={n})" for m, lo, hi, n
                               in zip(part["median_a"], part["p25_a"], part["p75_a"],
                                      part["n_a"])],
            "median b [IQR]": [f"{_fmt(m)} [{_fmt(lo)}, {_fmt(hi)}] (n={n})" for m, lo, hi, n
                               in zip(part["median_b"], part["p25_b"], part["p75_b"],
                                      part["n_b"])],
            "why this class": part["reason"]})
        lines.append(markdown_table(shown))
        perfect = part[(part["ks_statistic"] == 1.0) & (part["robustness"] == "artefact")]
        if not perfect.empty:
            names = ", ".join(markdown_cell(name) for name in perfect["feature"])
            lines += [f"**Perfect and still bad:** {names} separate these groups completely "
                      "(KS D = 1), yet each is an artefact of how or when the traces were "
                      "recorded; another capture of the same behaviour would flip it. A "
                      "classifier trained on them learns the capture, not the scan.", ""]
    for title, part, by in (("Per trace", by_trace, "trace"), ("Per label", by_label, "label")):
        if part.empty:
            continue
        lines += [f"## {title}: median [interquartile range] of each feature over windows", ""]
        wide = part.assign(value=[f"{_fmt(m)} [{_fmt(lo)}, {_fmt(hi)}]" for m, lo, hi in
                                  zip(part["median"], part["p25"], part["p75"])])
        wide = wide.pivot(index=["feature", "unit"], columns=by, values="value").reset_index()
        if by == "trace":
            wide.columns = [f"{c} ({labels.get(c, c)})" if c in labels else c
                            for c in wide.columns]
        lines.append(markdown_table(wide))
    return "\n".join(lines)


def separability_figure(table: pd.DataFrame, path) -> None:
    """KS D and AUC separation of every feature, for the first comparison, coloured by class."""
    fig, axes = new_figure(12, 0.32 * max(len(table["feature"].unique()), 4) + 1.5, 1, 2,
                           sharey=True)
    if table.empty:
        fig.suptitle("No comparison: fewer than two traces")
        save(fig, path)
        return
    kind, a, b = table.iloc[0][["comparison", "group_a", "group_b"]]
    first = table[(table["comparison"] == kind) & (table["group_a"] == a)
                  & (table["group_b"] == b)].copy()
    first["feature "] = first["feature"].map(figure_text)
    for ax, column, label in ((axes[0, 0], "ks_statistic", "Kolmogorov-Smirnov D (0-1)"),
                              (axes[0, 1], "separation", "ROC AUC, max(AUC, 1 - AUC) (0.5-1)")):
        sns.barplot(data=first, y="feature ", x=column, hue="robustness",
                    palette=CLASS_COLOURS, dodge=False, ax=ax, legend=False)
        ax.set_xlabel(label)
        ax.set_ylabel("window feature" if ax is axes[0, 0] else "")
    axes[0, 1].set_xlim(0.5, 1.0)
    axes[0, 0].set_xlim(0.0, 1.0)
    legend_outside(fig, [Patch(facecolor=colour, label=name)
                         for name, colour in CLASS_COLOURS.items()], "robustness")
    fig.suptitle(figure_text(f"How well each window feature separates {kind} {a} from {b} "
                             f"(sorted by KS D)"))
    save(fig, path)


def _verdict(flagged_by: str) -> str:
    detectors = set(filter(None, str(flagged_by).split(",")))
    scan = bool(detectors & {"address_scan", "port_scan"})
    trw = "trw" in detectors
    return VERDICT_ORDER[0] if scan and trw else VERDICT_ORDER[1] if trw else \
        VERDICT_ORDER[2] if scan else VERDICT_ORDER[3]


def _readable_labels(ax, points: pd.DataFrame) -> pd.DataFrame:
    """The flagged points worth a label: largest fan-out first, at most MOST_LABELS, none
    closer than LABEL_SPACING_PT to one already labelled."""
    flagged = points[points["verdict"] != VERDICT_ORDER[-1]].sort_values(
        "distinct_dst_hosts", ascending=False, kind="stable")
    at = ax.transData.transform(flagged[["distinct_dst_hosts", "failed_ratio"]].to_numpy(
        np.float64)) * 72 / ax.figure.dpi
    kept: list[int] = []
    for index, position in enumerate(at):
        if len(kept) == MOST_LABELS:
            break
        if all(np.hypot(*(position - at[k])) >= LABEL_SPACING_PT for k in kept):
            kept.append(index)
    return flagged.iloc[kept]


def _fanout_panel(ax, points: pd.DataFrame, style: TraceStyle) -> None:
    for verdict, part in points.groupby("verdict", sort=False):
        ax.scatter(part["distinct_dst_hosts"], part["failed_ratio"], s=55, alpha=0.75,
                   marker=VERDICT_MARKERS[verdict], color=style.color, edgecolors="black",
                   linewidths=0.4)
    for row in _readable_labels(ax, points).itertuples():
        ax.annotate(figure_text(row.source), (row.distinct_dst_hosts, row.failed_ratio),
                    textcoords="offset points", xytext=(5, -11), fontsize=8)


def fanout_figure(hosts: pd.DataFrame, styles: dict[str, TraceStyle], path) -> None:
    """Distinct destinations against failed-attempt ratio, one point a source, a panel a trace
    (same scales), marker by scan verdict."""
    columns = min(len(styles), 3)
    rows = -(-len(styles) // columns)
    # The same limits in every panel, each with its own tick labels (a panel may have none
    # below it).
    fig, axes = new_figure(4.2 * columns + 1.8, 3.6 * rows + 0.6, rows, columns)
    data = hosts.assign(verdict=hosts["flagged_by"].map(_verdict))
    right = np.nanmax(data["distinct_dst_hosts"].to_numpy(np.float64), initial=1.0) * 3
    for ax, (trace, style) in zip(axes.flat, styles.items()):
        ax.set_xscale("log")
        # No minor ticks: the theme draws none, and a log axis works out dozens a panel at each
        # layout pass (half the figure's time).
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlim(0.7, right)
        ax.set_ylim(-0.05, 1.1)
        points = data[data["trace"] == trace]
        sources = f"{len(points):,} source" + ("s" if len(points) != 1 else "")
        flagged = int((points["verdict"] != VERDICT_ORDER[-1]).sum())
        ax.set_title(f"{style.legend}: {sources}, {flagged:,} flagged", loc="left", fontsize=9,
                     color=style.color)
        if points.empty:
            empty_note(ax, "no source opened a TCP or UDP connection")
        else:
            _fanout_panel(ax, points, style)
    for ax in axes.flat[len(styles):]:
        ax.set_visible(False)
    legend_outside(fig, [Line2D([], [], linestyle="", marker=VERDICT_MARKERS[verdict],
                                color="dimgray", markersize=7, label=verdict)
                         for verdict in VERDICT_ORDER], "scan verdict")
    fig.supxlabel("distinct destination hosts contacted (count, log scale)", fontsize=10)
    fig.supylabel("failed connection attempts (share of attempts)", fontsize=10)
    fig.suptitle("Fan-out and failures per source")
    save(fig, path)


def conn_states_figure(states: pd.DataFrame, styles: dict[str, TraceStyle], path) -> None:
    """Share of each conn_state among a trace's connections: a group per state, a bar per
    trace in its colour and sheet order."""
    fig, axes = new_figure(10, 4.5)
    ax = axes[0, 0]
    if states.empty:
        empty_note(ax, "No TCP or UDP connection in any trace")
    else:
        shares = states.pivot_table(index="conn_state", columns="trace", values="share",
                                    aggfunc="sum")
        shares = shares.loc[[s for s in ZEEK_CONN_STATES if s in shares.index]]
        grouped_bars(ax, shares, styles)
    ax.set_xlabel("Zeek conn_state")
    ax.set_ylabel("share of the trace's connections")
    ax.set_title("Connection states per trace (S0: no reply; REJ: rejected; SF: normal)")
    legend_outside(fig, [style.patch() for style in styles.values()], "trace (label)")
    save(fig, path)


def _evidence(host) -> list[str]:
    found = []
    if host.address_scan:
        found.append(f"address scan: failed attempts to {host.address_scan_hosts} distinct "
                     f"hosts on port {int(host.address_scan_port)} within one interval from "
                     f"{host.address_scan_at}")
    if host.port_scan:
        scanned = [entry.rpartition(":") for entry in str(host.port_scan_hosts).split(";")]
        found.append(f"port scan of {len(scanned)} host{'s' if len(scanned) > 1 else ''} "
                     "(distinct ports with failed attempts within one interval): "
                     + ", ".join(f"{name} ({ports} ports)" for name, _, ports in scanned)
                     + f"; the interval with the most began {host.port_scan_at}")
    if host.trw_verdict == "scanner":
        found.append(f"TRW: scanner after {host.trw_observed} first contacts "
                     f"({host.trw_failures} failed, {host.trw_successes} answered), "
                     f"log-likelihood ratio {host.trw_llr:.3f}, decided at {host.trw_decided_at}")
    return found


def scan_report(hosts: pd.DataFrame, http: pd.DataFrame, settings: dict, traces: list[str],
                labels: dict[str, str]) -> str:
    """Markdown: every flagged source with its detectors and evidence; JNDI senders."""
    lines = ["# Scan report", "",
             "Detectors: Zeek-style address scan (failed attempts to at least "
             f"{settings.get('address_scan_hosts')} hosts on one port within "
             f"{_fmt(settings.get('interval_s'))} s), port scan (at least "
             f"{settings.get('port_scan_ports')} ports on one host within the same interval), "
             "and Threshold Random Walk (Jung et al. 2004) over first-contact attempts with "
             f"theta0 = {settings.get('theta0')}, theta1 = {settings.get('theta1')}, "
             f"eta1 = P_D/P_F = {_fmt(settings.get('eta1'), 4)} "
             f"(log {_fmt(settings.get('log_eta1'), 4)}), "
             f"eta0 = (1-P_D)/(1-P_F) = {_fmt(settings.get('eta0'), 4)} "
             f"(log {_fmt(settings.get('log_eta0'), 4)}).", ""]
    for trace in traces:
        lines += [f"## {markdown_cell(trace)} ({markdown_cell(labels.get(trace, trace))})", ""]
        mine = hosts[hosts["trace"] == trace]
        flagged = mine[mine["flagged_by"] != ""]
        if flagged.empty:
            lines += [f"No source flagged ({len(mine)} sources checked).", ""]
        else:
            rows = pd.DataFrame({
                "source": flagged["source"], "detectors": flagged["flagged_by"],
                "evidence": ["; ".join(_evidence(h)) for h in flagged.itertuples()],
                "distinct hosts": flagged["distinct_dst_hosts"],
                "failed ratio": flagged["failed_ratio"].map(_fmt)})
            lines += [markdown_table(rows)]
        unflagged = mine[mine["flagged_by"] == ""]
        if not unflagged.empty:
            lines += ["Not flagged: " + ", ".join(
                f"{markdown_cell(h.source)} (TRW {h.trw_verdict}, log-likelihood ratio "
                f"{h.trw_llr:.3f} after {h.trw_observed} first contacts; {h.failed_attempts} "
                f"of {h.attempts} attempts failed)" for h in unflagged.itertuples()), ""]
        jndi = http[(http["trace"] == trace) & http["jndi"]]
        if not jndi.empty:
            senders = jndi.groupby("src", observed=True).agg(
                requests=("frame", "size"),
                obfuscated=("jndi_obfuscated", "sum"),
                schemes=("jndi_scheme", lambda s: ", ".join(sorted(set(s.dropna())))),
                callbacks=("callback", lambda s: ", ".join(sorted(set(s.dropna())))),
                example=("uri", "first")).reset_index()
            lines += ["Log4Shell indicators (JNDI lookups in request URIs, after undoing "
                      "obfuscation; request lines only, headers are not in the export):", "",
                      markdown_table(senders)]
    return "\n".join(lines)


def _read_all(paths: list[str], traces: list[str], labels: dict[str, str],
              columns=None) -> pd.DataFrame:
    parts = []
    for trace, path in zip(traces, paths):
        part = pq.read_table(path, columns=columns).to_pandas()
        parts.append(part.assign(trace=trace, label=labels.get(trace, trace)))
    return pd.concat(parts, ignore_index=True)


def _without_title(markdown: str) -> str:
    """A Markdown text without its `# title` line (the HTML page sets its own title)."""
    first, _, rest = markdown.partition("\n")
    return rest if first.startswith("# ") else markdown


def compare_security(*, traces: list[str], labels: dict[str, str], windows_paths: list[str],
                     hosts_paths: list[str], flows_paths: list[str], http_paths: list[str],
                     features_csv, features_md, features_html, separability_png, fanout_png,
                     conn_states_png, scan_report_md, scan_report_html) -> dict:
    """Stage: results/compare/ security outputs from every trace's features."""
    set_theme()
    styles = trace_styles(traces, labels)
    features = recorded_features(windows_paths)
    windows = _read_all(windows_paths, traces, labels)
    table = separability_table(windows, features)
    with atomic_path(features_csv) as tmp:
        spreadsheet_safe(table).to_csv(tmp, index=False)
    features_text = _features_markdown(
        table, distribution_table(windows, features, "trace"),
        distribution_table(windows, features, "label") if windows["label"].nunique() >= 2
        else pd.DataFrame(), labels)
    write_text(features_md, features_text)
    write_html(features_html, "Window features", markdown_html(_without_title(features_text)))
    separability_figure(table, separability_png)

    hosts = _read_all(hosts_paths, traces, labels)
    fanout_figure(hosts, styles, fanout_png)
    states = _read_all(flows_paths, traces, labels, columns=["conn_state"])
    states["conn_state"] = states["conn_state"].astype("string")
    shares = states.groupby(["trace", "label", "conn_state"]).size().rename("connections") \
        .reset_index()
    shares["share"] = shares["connections"] / shares.groupby("trace")["connections"].transform(
        "sum")
    conn_states_figure(shares, styles, conn_states_png)

    http = _read_all(http_paths, traces, labels,
                     columns=["frame", "src", "uri", "jndi", "jndi_obfuscated", "jndi_scheme",
                              "jndi_host", "jndi_port"])
    http["callback"] = (http["jndi_host"].astype("string") + ":" +
                        http["jndi_port"].astype("Int64").astype("string").fillna("?"))
    settings = json.loads(pq.read_schema(hosts_paths[0]).metadata[b"tracelab.scan_settings"]) \
        if hosts_paths else {}
    report_text = scan_report(hosts, http, settings, traces, labels)
    write_text(scan_report_md, report_text)
    write_html(scan_report_html, "Scan report", markdown_html(_without_title(report_text)))
    flagged = hosts[hosts["flagged_by"] != ""]
    log.info("compared %d traces, %d window features; flagged sources: %s", len(traces),
             len(features), list(zip(flagged["trace"], flagged["source"], flagged["flagged_by"])))
    return {"features": len(features), "flagged": int(len(flagged))}

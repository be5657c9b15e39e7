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

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import seaborn as sns  # noqa: E402
from scipy import stats  # noqa: E402

from tracelab.core.atomic import atomic_path, write_text  # noqa: E402
from tracelab.security.security_connections import ZEEK_CONN_STATES  # noqa: E402
from tracelab.core.safe_text import figure_text, markdown_cell, markdown_table, spreadsheet_safe  # noqa: E402

log = logging.getLogger(__name__)

PNG_METADATA = {"Software": None}
ROBUSTNESS_COLOURS = {"behavioural": "#1b9e77", "artefact": "#d95f02"}
VERDICT_ORDER = ["address/port scan and TRW", "TRW only", "address/port scan only", "not flagged"]


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


def _save(fig, path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata=PNG_METADATA)
    plt.close(fig)


def separability_figure(table: pd.DataFrame, path) -> None:
    """KS D and AUC separation of every feature, for the first comparison, coloured by class."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.32 * max(len(table["feature"].unique()), 4)
                                            + 1.5), sharey=True)
    if table.empty:
        fig.suptitle("No comparison: fewer than two traces")
        _save(fig, path)
        return
    kind, a, b = table.iloc[0][["comparison", "group_a", "group_b"]]
    first = table[(table["comparison"] == kind) & (table["group_a"] == a)
                  & (table["group_b"] == b)].copy()
    first["feature "] = first["feature"].map(figure_text)
    for ax, column, label in ((axes[0], "ks_statistic", "Kolmogorov-Smirnov D (0-1)"),
                              (axes[1], "separation", "ROC AUC, max(AUC, 1 - AUC) (0.5-1)")):
        sns.barplot(data=first, y="feature ", x=column, hue="robustness",
                    palette=ROBUSTNESS_COLOURS, dodge=False, ax=ax, legend=ax is axes[0])
        ax.set_xlabel(label)
        ax.set_ylabel("window feature" if ax is axes[0] else "")
    axes[1].set_xlim(0.5, 1.0)
    axes[0].set_xlim(0.0, 1.0)
    fig.suptitle(figure_text(f"How well each window feature separates {kind} {a} from {b} "
                             f"(sorted by KS D; colour: robustness class)"))
    _save(fig, path)


def _verdict(flagged_by: str) -> str:
    detectors = set(filter(None, str(flagged_by).split(",")))
    scan = bool(detectors & {"address_scan", "port_scan"})
    trw = "trw" in detectors
    return VERDICT_ORDER[0] if scan and trw else VERDICT_ORDER[1] if trw else \
        VERDICT_ORDER[2] if scan else VERDICT_ORDER[3]


def fanout_figure(hosts: pd.DataFrame, path) -> None:
    """Distinct destinations against failed-attempt ratio, one point a source."""
    fig, ax = plt.subplots(figsize=(8, 5.5))
    data = hosts.assign(verdict=hosts["flagged_by"].map(_verdict),
                        trace_label=[figure_text(f"{t} ({lab})") for t, lab in
                                     zip(hosts["trace"], hosts["label"])])
    if data.empty:
        ax.text(0.5, 0.5, "No source opened a TCP or UDP connection", ha="center",
                transform=ax.transAxes)
    else:
        sns.scatterplot(data=data, x="distinct_dst_hosts", y="failed_ratio", hue="verdict",
                        hue_order=[v for v in VERDICT_ORDER if v in set(data["verdict"])],
                        style="trace_label", s=90, ax=ax)
        for row in data[data["verdict"] != VERDICT_ORDER[3]].itertuples():
            ax.annotate(figure_text(row.source), (row.distinct_dst_hosts, row.failed_ratio),
                        textcoords="offset points", xytext=(6, 6), fontsize=8)
        ax.legend(fontsize=8, loc="center right")
    ax.set_xscale("log")
    ax.set_xlim(0.7, np.nanmax(data["distinct_dst_hosts"].to_numpy(np.float64), initial=1.0) * 3)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("distinct destination hosts contacted (count, log scale)")
    ax.set_ylabel("failed connection attempts (share of attempts)")
    ax.set_title("Fan-out and failures per source, coloured by scan verdict")
    _save(fig, path)


def conn_states_figure(states: pd.DataFrame, path) -> None:
    """Share of each conn_state among a trace's connections."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    order = [s for s in ZEEK_CONN_STATES if s in set(states["conn_state"])]
    if states.empty:
        ax.text(0.5, 0.5, "No TCP or UDP connection in any trace", ha="center",
                transform=ax.transAxes)
    else:
        sns.barplot(data=states, x="conn_state", y="share", hue="trace_label", order=order,
                    ax=ax)
        ax.legend(title="trace (label)", fontsize=8)
    ax.set_xlabel("Zeek conn_state")
    ax.set_ylabel("share of the trace's connections")
    ax.set_title("Connection states per trace (S0: no reply; REJ: rejected; SF: normal)")
    _save(fig, path)


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


def _feature_specs(paths: list[str]) -> pd.DataFrame:
    """The feature registry as recorded in the windows files (the first one names the order)."""
    specs = {}
    for path in paths:
        for spec in json.loads(pq.read_schema(path).metadata[b"tracelab.features"]):
            specs.setdefault(spec["name"], spec)
    return pd.DataFrame(list(specs.values()))


def compare_security(*, traces: list[str], labels: dict[str, str], windows_paths: list[str],
                     hosts_paths: list[str], flows_paths: list[str], http_paths: list[str],
                     features_csv, features_md, separability_png, fanout_png, conn_states_png,
                     scan_report_md) -> dict:
    """Stage: results/compare/ security outputs from every trace's features."""
    sns.set_theme(style="whitegrid", context="notebook")
    features = _feature_specs(windows_paths)
    windows = _read_all(windows_paths, traces, labels)
    table = separability_table(windows, features)
    with atomic_path(features_csv) as tmp:
        spreadsheet_safe(table).to_csv(tmp, index=False)
    write_text(features_md, _features_markdown(
        table, distribution_table(windows, features, "trace"),
        distribution_table(windows, features, "label") if windows["label"].nunique() >= 2
        else pd.DataFrame(), labels))
    separability_figure(table, separability_png)

    hosts = _read_all(hosts_paths, traces, labels)
    fanout_figure(hosts, fanout_png)
    states = _read_all(flows_paths, traces, labels, columns=["conn_state"])
    states["conn_state"] = states["conn_state"].astype("string")
    shares = states.groupby(["trace", "label", "conn_state"]).size().rename("connections") \
        .reset_index()
    shares["share"] = shares["connections"] / shares.groupby("trace")["connections"].transform(
        "sum")
    shares["trace_label"] = [figure_text(f"{t} ({lab})") for t, lab in
                             zip(shares["trace"], shares["label"])]
    conn_states_figure(shares, conn_states_png)

    http = _read_all(http_paths, traces, labels,
                     columns=["frame", "src", "uri", "jndi", "jndi_obfuscated", "jndi_scheme",
                              "jndi_host", "jndi_port"])
    http["callback"] = (http["jndi_host"].astype("string") + ":" +
                        http["jndi_port"].astype("Int64").astype("string").fillna("?"))
    settings = json.loads(pq.read_schema(hosts_paths[0]).metadata[b"tracelab.scan_settings"]) \
        if hosts_paths else {}
    write_text(scan_report_md, scan_report(hosts, http, settings, traces, labels))
    flagged = hosts[hosts["flagged_by"] != ""]
    log.info("compared %d traces, %d window features; flagged sources: %s", len(traces),
             len(features), list(zip(flagged["trace"], flagged["source"], flagged["flagged_by"])))
    return {"features": len(features), "flagged": int(len(flagged))}

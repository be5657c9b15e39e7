"""Stage: how well each window feature separates the labels, with block-bootstrap intervals
(results/robustness/separation.*).

The same comparisons and statistics as results/compare/features.csv (KS D, ROC AUC of group b
over group a, windows where a feature is undefined left out), each with a percentile interval
from the moving-block bootstrap: every trace's windows resampled in runs of consecutive
windows, so a burst that spans several windows counts once, not once a window. Every row names
the windows and distinct captures on each side: two captures of one label are two
observations of its behaviour, not two hundred.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from tracelab.compare.figures import MEASURED_COLOURS, empty_note, save
from tracelab.compare.security import comparisons
from tracelab.core.safe_text import figure_text
from tracelab.robustness.bootstrap import (
    BootstrapSettings,
    bootstrap_settings,
    job_rng,
    ks_statistic,
    moving_block_indices,
    percentile_interval,
    roc_auc,
)
from tracelab.robustness.tables import (
    read_traces,
    sides,
    with_interval,
    write_csv,
    write_tables,
)

log = logging.getLogger(__name__)

TABLE_COLUMNS = ["comparison", "group_a", "group_b", "feature", "declared", "measured", "ks_d",
                 "ks_low", "ks_high", "auc", "auc_low", "auc_high", "windows_a", "captures_a",
                 "windows_b", "captures_b"]


def _side(windows: pd.DataFrame, features: list[str], resamples: np.ndarray) -> tuple:
    """A side's windows (traces in order) as the data row and the resampled rows."""
    values = windows[features].to_numpy(np.float64)
    return values, values[resamples]


def separation_table(windows: pd.DataFrame, classes: pd.DataFrame, bootstrap: BootstrapSettings,
                     rng: np.random.Generator) -> pd.DataFrame:
    """One row a (comparison, feature): KS D and AUC with intervals, windows and captures."""
    features = classes["feature"].tolist()
    rows = []
    for kind, a, b in comparisons(windows):
        side_a = windows[windows[kind] == a]
        side_b = windows[windows[kind] == b]
        lengths = {name: part.groupby("trace", sort=False).size().tolist()
                   for name, part in (("a", side_a), ("b", side_b))}
        values_a, resampled_a = _side(side_a, features, moving_block_indices(
            lengths["a"], bootstrap.block_windows, bootstrap.resamples, rng))
        values_b, resampled_b = _side(side_b, features, moving_block_indices(
            lengths["b"], bootstrap.block_windows, bootstrap.resamples, rng))
        for column, spec in enumerate(classes.itertuples()):
            ks = ks_statistic(resampled_a[:, :, column], resampled_b[:, :, column])
            auc = roc_auc(resampled_a[:, :, column], resampled_b[:, :, column])
            point_a, point_b = values_a[:, column], values_b[:, column]
            rows.append({
                "comparison": kind, "group_a": a, "group_b": b, "feature": spec.feature,
                "declared": spec.declared, "measured": spec.measured,
                "ks_d": float(ks_statistic(point_a, point_b)[0]),
                **dict(zip(("ks_low", "ks_high"), percentile_interval(ks, bootstrap.confidence))),
                "auc": float(roc_auc(point_a, point_b)[0]),
                **dict(zip(("auc_low", "auc_high"),
                           percentile_interval(auc, bootstrap.confidence))),
                "windows_a": int((~np.isnan(point_a)).sum()),
                "captures_a": side_a["trace"].nunique(),
                "windows_b": int((~np.isnan(point_b)).sum()),
                "captures_b": side_b["trace"].nunique()})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def shown_table(table: pd.DataFrame) -> pd.DataFrame:
    ordered = table.sort_values(["comparison", "group_a", "group_b", "ks_d", "feature"],
                                ascending=[True, True, True, False, True], kind="stable")
    return pd.DataFrame({
        "comparison": [f"{k} {a} (a) vs {b} (b)" for k, a, b in
                       zip(ordered["comparison"], ordered["group_a"], ordered["group_b"])],
        "feature": ordered["feature"], "declared": ordered["declared"],
        "measured": ordered["measured"],
        "KS D [interval]": [with_interval(*v) for v in
                            zip(ordered["ks_d"], ordered["ks_low"], ordered["ks_high"])],
        "AUC [interval]": [with_interval(*v) for v in
                           zip(ordered["auc"], ordered["auc_low"], ordered["auc_high"])],
        "windows (captures) a": [f"{w} ({c})" for w, c in
                                 zip(ordered["windows_a"], ordered["captures_a"])],
        "windows (captures) b": [f"{w} ({c})" for w, c in
                                 zip(ordered["windows_b"], ordered["captures_b"])]})


def why_no_comparison(windows: pd.DataFrame) -> str:
    """Why the sheet gives nothing to compare ("" when it does)."""
    if windows["trace"].nunique() < 2:
        return ("Nothing to compare: the sheet holds one trace. Separation needs two labels, or "
                "two traces of one label.")
    return ""


def direction_free(auc: pd.Series, low: pd.Series, high: pd.Series) -> tuple:
    """max(AUC, 1 - AUC) and its interval: how well a threshold on the feature separates the
    two sides, whichever side is higher (an interval across 0.5 starts at 0.5)."""
    value = np.maximum(auc, 1 - auc)
    lower = np.where(low >= 0.5, low, np.where(high <= 0.5, 1 - high, 0.5))
    upper = np.where(low >= 0.5, high, np.where(high <= 0.5, 1 - low, np.maximum(1 - low, high)))
    return value, lower, upper


def separation_figure(table: pd.DataFrame, windows: pd.DataFrame, confidence: float,
                      path) -> None:
    """Direction-free separability with its interval per feature, for the label comparison
    (else the first), coloured by measured class; the marker says which side is higher."""
    fig = Figure(figsize=(9, 0.3 * max(table["feature"].nunique(), 4) + 2))
    ax = fig.subplots()
    if table.empty:
        ax.set_axis_off()
        empty_note(ax, why_no_comparison(windows) or "No comparison")
        save(fig, path)
        return
    kinds = table["comparison"].tolist()
    kind, a, b = table.iloc[kinds.index("label") if "label" in kinds else 0][
        ["comparison", "group_a", "group_b"]]
    first = table[(table["comparison"] == kind) & (table["group_a"] == a)
                  & (table["group_b"] == b)].copy()
    first["separability"], first["sep_low"], first["sep_high"] = direction_free(
        first["auc"], first["auc_low"], first["auc_high"])
    first = first.sort_values(["separability", "feature"], kind="stable")
    positions = np.arange(len(first))
    for (measured, higher), part in first.groupby(
            ["measured", np.where(first["auc"] >= 0.5, b, a)]):
        at = positions[((first["measured"] == measured)
                        & (np.where(first["auc"] >= 0.5, b, a) == higher)).to_numpy()]
        ax.errorbar(part["separability"], at,
                    xerr=[part["separability"] - part["sep_low"],
                          part["sep_high"] - part["separability"]],
                    fmt=">" if higher == b else "<", color=MEASURED_COLOURS.get(measured, "grey"),
                    capsize=3, label=figure_text(f"measured {measured}; higher in {higher}"))
    ax.set_yticks(positions, [figure_text(f"{f} (declared {d})") for f, d in
                              zip(first["feature"], first["declared"])])
    ax.set_xlim(0.48, 1.02)
    ax.set_xlabel(f"separability max(AUC, 1 - AUC) of {a} vs {b}, with its {confidence:.0%} "
                  "block-bootstrap interval (0.5 = chance, 1 = a threshold separates all "
                  "windows, whichever side is higher)")
    ax.legend(loc="lower right", fontsize=8)
    in_a, in_b = windows[windows[kind] == a], windows[windows[kind] == b]
    ax.set_title(figure_text(f"{kind} {a}: {sides(in_a)}; {b}: {sides(in_b)}"), fontsize=10)
    save(fig, path)


def write_separation(*, traces: list[str], labels: dict[str, str], windows_paths: list[str],
                     classes_csv, settings: dict, table_csv, table_md, table_html,
                     figure_png) -> dict:
    """Stage: results/robustness/separation.{csv,md,html,png}."""
    sns.set_theme(style="whitegrid", context="notebook")
    bootstrap = bootstrap_settings(settings["bootstrap"])
    classes = pd.read_csv(classes_csv)
    windows = read_traces(windows_paths, traces, labels)
    table = separation_table(windows, classes, bootstrap, job_rng(settings["seed"], "separation"))
    write_csv(table, table_csv)
    caption = (f"KS D and ROC AUC (group b over group a) of every window feature, each with its "
               f"{bootstrap.confidence:.0%} moving-block bootstrap interval (runs of "
               f"{bootstrap.block_windows} consecutive windows of a trace, "
               f"{bootstrap.resamples} resamples). Windows and distinct captures on each side "
               f"are in the last two columns. All traces: {sides(windows)}. Resampling "
               f"windows cannot show how another capture would differ: with one capture on a "
               f"side, a perfect score keeps an interval of zero width (the transfer table "
               f"tests that). {why_no_comparison(windows)}")
    write_tables(shown_table(table), markdown=table_md, html_path=table_html,
                 title="Separation with uncertainty", caption=caption)
    separation_figure(table, windows, bootstrap.confidence, figure_png)
    log.info("%d comparisons x %d features",
             len(table[["comparison", "group_a", "group_b"]].drop_duplicates()), len(classes))
    return {"rows": len(table)}

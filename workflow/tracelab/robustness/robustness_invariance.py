"""Stage: the invariance of every window feature under every perturbation, and the measured
robustness class beside the declared one (results/robustness/invariance.*, classes.*)."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from tracelab.compare.figures import save
from tracelab.core.safe_text import figure_text
from tracelab.robustness.bootstrap import job_rng
from tracelab.robustness.invariance import (
    BootstrapSettings,
    InvarianceSettings,
    Pairs,
    invariance_table,
    match_windows,
    measured_classes,
    pairs_of,
)
from tracelab.robustness.tables import (
    read_windows,
    with_interval,
    write_csv,
    write_tables,
)
from tracelab.security.windows import recorded_features

log = logging.getLogger(__name__)

EXPORT_FORMAT = "export_format"


def matched_pairs(traces, windows_paths, variants, variant_windows_paths, record_paths,
                  format_pairs: dict[str, str], features: list[str]) -> dict[str, Pairs]:
    """Per perturbation (in the order given; the export format last), the matched windows."""
    original = {trace: read_windows(path) for trace, path in zip(traces, windows_paths)}
    matched = defaultdict(list)
    for (trace, name), windows_path, record_path in zip(variants, variant_windows_paths,
                                                        record_paths):
        offset = json.loads(Path(record_path).read_text())["time_offset_ns"]
        perturbed = read_windows(windows_path)
        rows, original_rows = match_windows(original[trace], perturbed, offset)
        matched[name].append((trace, original[trace].iloc[original_rows],
                              perturbed.iloc[rows]))
    for trace, other in format_pairs.items():
        rows, original_rows = match_windows(original[trace], original[other], 0)
        matched[EXPORT_FORMAT].append((trace, original[trace].iloc[original_rows],
                                       original[other].iloc[rows]))
    return {name: pairs_of(parts, features) for name, parts in matched.items()}


def classes_table(classes: pd.DataFrame, specs: pd.DataFrame) -> pd.DataFrame:
    """The class table as shown: disagreements first, then by how much the feature moves."""
    shown = classes.merge(specs[["name", "unit", "reason"]], left_on="feature", right_on="name")
    shown = shown.sort_values(["agrees", "ks_high", "feature"], ascending=[True, False, True],
                              kind="stable")
    return pd.DataFrame({
        "feature": shown["feature"], "unit": shown["unit"], "declared": shown["declared"],
        "measured": shown["measured"],
        "agrees": np.where(shown["agrees"], "yes", "NO"),
        "moved most by": shown["moved_most_by"].fillna(""),
        "KS D [interval]": [with_interval(d, lo, hi) for d, lo, hi in
                            zip(shown["ks_d"], shown["ks_low"], shown["ks_high"])],
        "windows (captures) compared": [
            "" if pd.isna(w) else f"{int(w)} ({int(c)})"
            for w, c in zip(shown["windows"], shown["captures"])],
        "moved by (upper end above the threshold)": shown["moving"].fillna(""),
        "why declared so": shown["reason"]}).reset_index(drop=True)


def heatmap(table: pd.DataFrame, classes: pd.DataFrame, max_ks_d: float, confidence: float,
            path) -> None:
    """Feature x perturbation: KS D, a star where the interval's upper end is above the
    threshold; features labelled with declared -> measured class."""
    order = list(dict.fromkeys(table["perturbation"]))
    counts = table.drop_duplicates("perturbation").set_index("perturbation")
    columns = [figure_text(f"{name}\n{counts.at[name, 'windows']} windows,\n"
                           f"{counts.at[name, 'captures']} captures") for name in order]
    by_class = classes.set_index("feature")
    rows = [figure_text(f"{f}  [{by_class.at[f, 'declared']} -> {by_class.at[f, 'measured']}]"
                        + ("  (disagree)" if not by_class.at[f, "agrees"] else ""))
            for f in classes["feature"]]
    d = table.pivot(index="feature", columns="perturbation", values="ks_d") \
        .reindex(index=classes["feature"], columns=order)
    high = table.pivot(index="feature", columns="perturbation", values="ks_high") \
        .reindex(index=classes["feature"], columns=order)
    notes = np.where(d.isna(), "", d.map(lambda v: f"{v:.2f}").to_numpy()
                     + np.where(high.to_numpy() > max_ks_d, "*", ""))
    fig = Figure(figsize=(1.0 * len(order) + 6, 0.34 * len(rows) + 2.5))
    ax = fig.subplots()
    sns.heatmap(pd.DataFrame(d.to_numpy(), index=rows, columns=columns), vmin=0, vmax=1,
                cmap="rocket_r", annot=notes, fmt="", annot_kws={"fontsize": 7}, ax=ax,
                cbar_kws={"label": "KS D, original vs perturbed windows (0 = unmoved)"})
    ax.set_xlabel("perturbation of the recording (windows compared, captures)")
    ax.set_ylabel("window feature [declared -> measured class]")
    ax.set_title(figure_text(
        f"How far each perturbation moves each feature (* upper end of the {confidence:.0%} "
        f"block-bootstrap interval above {max_ks_d}: the feature moves)"), fontsize=10)
    save(fig, path)


def perturbations_table(records: list[dict]) -> pd.DataFrame:
    rows = [{"perturbation": r["perturbation"], "trace": r["trace"],
             "packets kept": f"{r['packets_out']} of {r['packets_in']}",
             "time moved (s)": r["time_offset_ns"] / 1e9,
             "values changed": ", ".join(f"{k}: {v}" for k, v in r["changed"].items() if v),
             "what it does": r["description"]} for r in records]
    return pd.DataFrame(rows)


def write_invariance(*, traces: list[str], windows_paths: list[str], variants: list[list[str]],
                     variant_windows_paths: list[str], record_paths: list[str],
                     format_pairs: dict[str, str], skipped_pairs: list[str], settings: dict,
                     table_csv, classes_csv, classes_md, classes_html, perturbations_md,
                     perturbations_html, heatmap_png) -> dict:
    """Stage: results/robustness/ invariance table, class table, perturbation records, figure."""
    sns.set_theme(style="white", context="notebook")
    specs = recorded_features(windows_paths)
    invariance = InvarianceSettings(**settings["invariance"])
    bootstrap = BootstrapSettings(**settings["bootstrap"])
    pairs = matched_pairs(traces, windows_paths, variants, variant_windows_paths, record_paths,
                          format_pairs, specs["name"].tolist())
    table = invariance_table(pairs, specs["name"].tolist(), invariance, bootstrap,
                             job_rng(settings["seed"], "invariance"))
    write_csv(table, table_csv)
    classes = measured_classes(table, specs.set_index("name")["robustness"], invariance)
    write_csv(classes, classes_csv)
    shown = classes_table(classes, specs)
    windows = sum(len(read_windows(path)) for path in windows_paths)
    skipped = f" Export-format pairs skipped: {'; '.join(skipped_pairs)}." if skipped_pairs else ""
    caption = (f"{len(traces)} captures, {windows} original windows. KS D compares each "
               f"trace's windows with the matching windows of its perturbed copy, averaged "
               f"over the traces; the windows and captures compared are given per row (for the "
               f"perturbation that moves the feature most) and per perturbation in "
               f"invariance.csv and the figure. Behavioural: the upper end of the "
               f"{bootstrap.confidence:.0%} block-bootstrap "
               f"interval of KS D is at most {invariance.max_ks_d} under every perturbation "
               f"({', '.join(pairs)}). Rows where the measured class disagrees with the "
               f"declared one are marked and come first.{skipped}")
    write_tables(shown, markdown=classes_md, html_path=classes_html,
                 title="Measured robustness of each window feature", caption=caption,
                 marked=shown["agrees"] == "NO")
    records = [json.loads(Path(path).read_text()) for path in record_paths]
    write_tables(perturbations_table(records), markdown=perturbations_md,
                 html_path=perturbations_html, title="What each perturbation changed",
                 caption="One row a perturbed copy of a trace: packets kept, the time moved, "
                         "and how many values of each column changed.")
    heatmap(table, classes, invariance.max_ks_d, bootstrap.confidence, heatmap_png)
    counts = classes["measured"].value_counts().to_dict()
    log.info("%d features x %d perturbations; measured classes %s; %d disagree with the "
             "declared class", len(specs), len(pairs), counts, int((~classes["agrees"]).sum()))
    return counts

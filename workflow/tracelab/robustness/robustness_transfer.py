"""Stage: leave-one-capture-out detectors per feature set (results/robustness/transfer.*).

Per left-out trace, model and feature set: the share of its windows classified correctly, and
ROC AUC where its windows hold both labels, each with a moving-block bootstrap interval over
its windows. A last row per model and feature set pools every left-out trace's windows (each
scored by the model that did not see it): there both labels are present, so AUC is defined.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from tracelab.compare.figures import save
from tracelab.core.safe_text import figure_text
from tracelab.robustness.bootstrap import (
    job_rng,
    moving_block_indices,
    percentile_interval,
    roc_auc,
)
from tracelab.robustness.invariance import BootstrapSettings
from tracelab.robustness.tables import (
    read_traces,
    sides,
    with_interval,
    write_csv,
    write_tables,
)
from tracelab.robustness.transfer import (
    MODELS,
    Fold,
    TransferSettings,
    feature_sets,
    leave_one_capture_out,
)

log = logging.getLogger(__name__)

POOLED = "all traces, pooled"


def scores(windows: pd.DataFrame, folds: list[Fold], bootstrap: BootstrapSettings,
           rng: np.random.Generator) -> dict:
    """Accuracy and AUC of the windows of `folds` (in order), with intervals."""
    truth = windows["label"].to_numpy()
    predicted = np.concatenate([fold.predicted for fold in folds])
    score = np.concatenate([fold.score for fold in folds])
    labels = sorted(set(windows["label"]))
    trained = np.array([p is not None for p in predicted])
    if not trained.any():
        return {"accuracy": np.nan, "accuracy_low": np.nan, "accuracy_high": np.nan,
                "auc": np.nan, "auc_low": np.nan, "auc_high": np.nan}
    correct = (predicted == truth).astype(np.float64)
    correct[~trained] = np.nan
    resamples = moving_block_indices([len(fold.predicted) for fold in folds],
                                     bootstrap.block_windows, bootstrap.resamples, rng)
    result = {"accuracy": float(np.nanmean(correct))}
    result["accuracy_low"], result["accuracy_high"] = percentile_interval(
        np.nanmean(correct[resamples], axis=1), bootstrap.confidence)
    positive = truth == labels[-1]
    both = len(labels) == 2 and positive[trained].any() and (~positive[trained]).any()
    if both:
        negatives = np.where(positive, np.nan, score)
        positives = np.where(positive, score, np.nan)
        result["auc"] = float(roc_auc(negatives, positives)[0])
        result["auc_low"], result["auc_high"] = percentile_interval(
            roc_auc(negatives[resamples], positives[resamples]), bootstrap.confidence)
    else:
        result.update(auc=np.nan, auc_low=np.nan, auc_high=np.nan)
    return result


def transfer_table(windows: pd.DataFrame, classes: pd.DataFrame, settings: TransferSettings,
                   bootstrap: BootstrapSettings, seed: int) -> pd.DataFrame:
    rng = job_rng(seed, "transfer")
    rows = []
    for set_name, features in feature_sets(classes).items():
        for model in MODELS:
            folds = leave_one_capture_out(windows, features, model, set_name, settings, seed)
            for fold in folds:
                mine = windows[windows["trace"] == fold.trace]
                rows.append({"left_out": fold.trace, "label": mine["label"].iloc[0],
                             "model": model, "feature_set": set_name,
                             "features": len(features), "windows": len(mine), "captures": 1,
                             "training": sides(windows[windows["trace"] != fold.trace]),
                             **scores(mine, [fold], bootstrap, rng), "note": fold.note})
            scored = [fold.trace for fold in folds if not fold.note]
            rows.append({"left_out": POOLED, "label": ", ".join(sorted(set(windows["label"]))),
                         "model": model, "feature_set": set_name, "features": len(features),
                         "windows": int(windows["trace"].isin(scored).sum()),
                         "captures": len(scored),
                         "training": "every trace but the one scored",
                         **scores(windows, folds, bootstrap, rng), "note": ""})
    return pd.DataFrame(rows)


def shown_table(table: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "left-out trace (label)": [f"{t} ({lab})" for t, lab in
                                   zip(table["left_out"], table["label"])],
        "model": table["model"], "feature set": table["feature_set"],
        "features": table["features"],
        "windows (captures) scored": [f"{w} ({c})" for w, c in
                                      zip(table["windows"], table["captures"])],
        "trained on": table["training"],
        "accuracy [interval]": [with_interval(*v) for v in zip(
            table["accuracy"], table["accuracy_low"], table["accuracy_high"])],
        "AUC [interval]": [with_interval(*v) for v in zip(
            table["auc"], table["auc_low"], table["auc_high"])],
        "note": table["note"]})


def transfer_figure(table: pd.DataFrame, windows: pd.DataFrame, confidence: float,
                    path) -> None:
    """Accuracy per left-out trace and feature set, one panel a model."""
    models = list(dict.fromkeys(table["model"]))
    fig = Figure(figsize=(11, 3.6 * len(models)))
    axes = fig.subplots(len(models), 1, squeeze=False)
    counts = table.groupby("left_out", sort=False)["windows"].max()
    names = {trace: figure_text(f"{trace}\n({count} windows scored)")
             for trace, count in counts.items()}
    sets = list(dict.fromkeys(table["feature_set"]))
    palette = dict(zip(sets, sns.color_palette("colorblind", len(sets))))
    for ax, model in zip(axes[:, 0], models):
        part = table[table["model"] == model]
        traces = list(dict.fromkeys(part["left_out"]))
        width = 0.7 / len(sets)
        for k, name in enumerate(sets):
            rows = part[part["feature_set"] == name].set_index("left_out").reindex(traces)
            at = np.arange(len(traces)) + (k - (len(sets) - 1) / 2) * width
            ax.errorbar(at, rows["accuracy"], yerr=[rows["accuracy"] - rows["accuracy_low"],
                                                    rows["accuracy_high"] - rows["accuracy"]],
                        fmt="o", color=palette[name], capsize=2, label=name)
        for position, trace in enumerate(traces):
            if part.loc[part["left_out"] == trace, "accuracy"].isna().all():
                ax.text(position, 0.5, "not trainable:\nthe other traces\nhold one label",
                        ha="center", va="center", fontsize=8, color="grey")
        ax.set_xticks(np.arange(len(traces)), [names[t] for t in traces], fontsize=8)
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel("share of windows correct")
        ax.set_title(figure_text(f"{model}: trained on every other trace ({sides(windows)} in "
                                 f"all); bars: {confidence:.0%} block-bootstrap interval"),
                     fontsize=9)
    axes[0, 0].legend(title="feature set", fontsize=7, ncols=3, loc="upper center",
                      bbox_to_anchor=(0.5, -0.25))
    fig.tight_layout()
    save(fig, path)


def write_transfer(*, traces: list[str], labels: dict[str, str], windows_paths: list[str],
                   classes_csv, settings: dict, table_csv, table_md, table_html,
                   figure_png) -> dict:
    """Stage: results/robustness/transfer.{csv,md,html,png}."""
    sns.set_theme(style="whitegrid", context="notebook")
    bootstrap = BootstrapSettings(**settings["bootstrap"])
    classes = pd.read_csv(classes_csv)
    windows = read_traces(windows_paths, traces, labels)
    table = transfer_table(windows, classes, TransferSettings(**settings["transfer"]),
                           bootstrap, settings["seed"])
    write_csv(table, table_csv)
    caption = (f"Leave-one-capture-out: each trace scored by detectors trained on the windows "
               f"of every other trace ({sides(windows)} in all), per feature set and model. "
               f"Accuracy: share of the left-out trace's windows given its label; AUC where "
               f"both labels are scored (the pooled rows). Intervals: {bootstrap.confidence:.0%} "
               f"moving-block bootstrap over the scored windows (within captures: the spread "
               f"between left-out captures is the uncertainty that matters).")
    write_tables(shown_table(table), markdown=table_md, html_path=table_html,
                 title="Does a detector transfer to an unseen capture?", caption=caption)
    transfer_figure(table, windows, bootstrap.confidence, figure_png)
    pooled = table[table["left_out"] == POOLED].set_index(["model", "feature_set"])["accuracy"]
    log.info("pooled leave-one-capture-out accuracy: %s", pooled.round(3).to_dict())
    return {"rows": len(table)}

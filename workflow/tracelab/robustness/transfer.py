"""Stage: does a detector transfer to a capture it has not seen? Leave-one-capture-out
baselines per feature set (results/robustness/transfer.*, answer.*).

For every feature set (all features; behavioural only and artefact only, by the measured class
and by the declared one) and two standard models on standardized window features
(scikit-learn's logistic regression and random forest; undefined values imputed with the
training median), each trace is left out in turn: the model is trained on the windows of every
other trace and scores the windows of the one left out. A feature that separates the training
captures only because of how they were recorded then meets a capture recorded differently.

Per left-out trace, model and feature set: the share of its windows classified correctly, and
ROC AUC where its windows hold both labels, each with a moving-block bootstrap interval over
its windows. A last row per model and feature set pools every left-out trace's windows (each
scored by the model that did not see it): there both labels are present, so AUC is defined.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tracelab.compare.figures import feature_set_colour, save
from tracelab.core.config import settings as config_settings
from tracelab.core.safe_text import figure_text
from tracelab.robustness.answer import why_unanswerable, write_answer
from tracelab.robustness.bootstrap import (
    BootstrapSettings,
    bootstrap_settings,
    job_rng,
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

POOLED = "all traces, pooled"


@dataclass(frozen=True)
class TransferSettings:
    forest_trees: int
    logistic_c: float


def transfer_settings(values: dict | None = None) -> TransferSettings:
    return config_settings(TransferSettings, "robustness.transfer", values)


MODELS = {
    "logistic regression": lambda settings, seed: LogisticRegression(
        C=settings.logistic_c, max_iter=2000),
    "random forest": lambda settings, seed: RandomForestClassifier(
        n_estimators=settings.forest_trees, random_state=seed, n_jobs=1),
}


def feature_sets(classes: pd.DataFrame) -> dict[str, list[str]]:
    """All features, and each class by the measured and by the declared robustness."""
    sets = {"all": classes["feature"].tolist()}
    for source in ("measured", "declared"):
        for name in ("behavioural", "artefact"):
            sets[f"{name} ({source})"] = classes.loc[classes[source] == name,
                                                     "feature"].tolist()
    return sets


def detector(model: str, settings: TransferSettings, seed: int):
    return make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True),
                         StandardScaler(), MODELS[model](settings, seed))


@dataclass(frozen=True)
class Fold:
    """One left-out trace scored by one model on one feature set."""

    trace: str
    model: str
    feature_set: str
    predicted: np.ndarray  # label per window of the left-out trace
    score: np.ndarray  # probability of the positive label (NaN unless there are two labels)
    note: str


def fold_note(features: list[str], train: pd.DataFrame, label: str) -> str:
    """Why a fold cannot test transfer ("" when it can)."""
    if not features:
        return "no feature in this set"
    if train.empty:
        return "no other trace to train on"
    if train["label"].nunique() < 2:
        return "the other traces hold one label"
    if label not in set(train["label"]):
        return f"no other trace is labelled {label}"
    return ""


def same_traffic(format_pairs: dict[str, str]) -> dict[str, set[str]]:
    """trace -> the traces holding the same traffic in another format (left out with it: a
    detector trained on the capture of a left-out export has seen its traffic)."""
    partners: dict[str, set[str]] = {}
    for trace, other in format_pairs.items():
        partners.setdefault(trace, set()).add(other)
        partners.setdefault(other, set()).add(trace)
    return partners


@dataclass
class Detectors:
    """Detectors fitted so far, by model, features and the traces left out of training: a
    trace and its other format leave the same training set, and two feature sets may hold the
    same features, so such folds share one fit (the same data and seed give the same model)."""

    settings: TransferSettings
    seed: int
    fitted: dict = field(default_factory=dict)

    def fit(self, model: str, features: list[str], train: pd.DataFrame, left_out: frozenset):
        key = (model, tuple(features), left_out)
        if key not in self.fitted:
            self.fitted[key] = detector(model, self.settings, self.seed).fit(
                train[features].to_numpy(np.float64), train["label"].to_numpy())
        return self.fitted[key]


def leave_one_capture_out(windows: pd.DataFrame, features: list[str], model: str,
                          feature_set: str, detectors: Detectors,
                          partners: dict[str, set[str]]) -> list[Fold]:
    """Every trace left out in turn; a fold that cannot test transfer is noted, not trained:
    no feature, no other trace, one label among the others (nothing to tell apart), or the
    left-out trace's label in no other trace (it could only be misread)."""
    labels = sorted(windows["label"].unique())
    folds = []
    for trace in dict.fromkeys(windows["trace"]):
        test = windows["trace"] == trace
        left_out = frozenset({trace, *partners.get(trace, ())})
        train = windows[~windows["trace"].isin(left_out)]
        n = int(test.sum())
        note = fold_note(features, train, windows.loc[test, "label"].iloc[0])
        if note:
            folds.append(Fold(trace, model, feature_set, np.full(n, None, dtype=object),
                              np.full(n, np.nan), note))
            continue
        fitted = detectors.fit(model, features, train, left_out)
        x = windows.loc[test, features].to_numpy(np.float64)
        score = fitted.predict_proba(x)[:, list(fitted.classes_).index(labels[1])] \
            if len(labels) == 2 and labels[1] in fitted.classes_ else np.full(n, np.nan)
        folds.append(Fold(trace, model, feature_set, fitted.predict(x), score, ""))
    return folds


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
                   bootstrap: BootstrapSettings, seed: int,
                   partners: dict[str, set[str]]) -> pd.DataFrame:
    rng = job_rng(seed, "transfer")
    detectors = Detectors(settings, seed)
    rows = []
    for set_name, features in feature_sets(classes).items():
        for model in MODELS:
            folds = leave_one_capture_out(windows, features, model, set_name, detectors,
                                          partners)
            for fold in folds:
                mine = windows[windows["trace"] == fold.trace]
                rows.append({"left_out": fold.trace, "label": mine["label"].iloc[0],
                             "model": model, "feature_set": set_name,
                             "features": len(features), "windows": len(mine), "captures": 1,
                             "training": sides(windows[~windows["trace"].isin(
                                 {fold.trace, *partners.get(fold.trace, ())})]),
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
    palette = {name: feature_set_colour(name) for name in sets}
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
                   format_pairs: dict[str, str], classes_csv, settings: dict, table_csv,
                   table_md, table_html, figure_png, answer_png, answer_md) -> dict:
    """Stage: results/robustness/transfer.{csv,md,html,png} and answer.{png,md}
    (`settings`: the config's `robustness` section)."""
    sns.set_theme(style="whitegrid", context="notebook")
    bootstrap = bootstrap_settings(settings["bootstrap"])
    classes = pd.read_csv(classes_csv)
    windows = read_traces(windows_paths, traces, labels)
    partners = same_traffic(format_pairs)
    # One name for every trace of the same traffic: what counts as one capture.
    windows["traffic"] = [min({trace, *partners.get(trace, ())}) for trace in windows["trace"]]
    table = transfer_table(windows, classes, transfer_settings(settings["transfer"]),
                           bootstrap, settings["seed"], partners)
    write_csv(table, table_csv)
    caption = (f"Leave-one-capture-out: each trace scored by detectors trained on the windows "
               f"of every other trace ({sides(windows)} in all) but those holding the same "
               f"traffic in another format, per feature set and model. "
               f"Accuracy: share of the left-out trace's windows given its label; AUC where "
               f"both labels are scored (the pooled rows). Intervals: {bootstrap.confidence:.0%} "
               f"moving-block bootstrap over the scored windows (within captures: the spread "
               f"between left-out captures is the uncertainty that matters). "
               f"{why_unanswerable(windows)}")
    write_tables(shown_table(table), markdown=table_md, html_path=table_html,
                 title="Does a detector transfer to an unseen capture?", caption=caption)
    transfer_figure(table, windows, bootstrap.confidence, figure_png)
    pooled = table[table["left_out"] == POOLED]
    log.info("%s", write_answer(pooled, classes, windows, bootstrap.confidence, answer_png,
                                answer_md))
    return {"rows": len(table)}

"""Does a detector transfer to a capture it has not seen? Leave-one-capture-out baselines.

For every feature set (all features; behavioural only and artefact only, by the measured class
and by the declared one) and two standard models on standardized window features
(scikit-learn's logistic regression and random forest; undefined values imputed with the
training median), each trace is left out in turn: the model is trained on the windows of every
other trace and scores the windows of the one left out. A feature that separates the training
captures only because of how they were recorded then meets a capture recorded differently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


@dataclass(frozen=True)
class TransferSettings:
    forest_trees: int
    logistic_c: float


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


def leave_one_capture_out(windows: pd.DataFrame, features: list[str], model: str,
                          feature_set: str, settings: TransferSettings, seed: int) -> list[Fold]:
    """Every trace left out in turn; a fold whose training traces hold one label is noted, not
    trained (nothing to tell apart)."""
    labels = sorted(windows["label"].unique())
    folds = []
    for trace in dict.fromkeys(windows["trace"]):
        test = windows["trace"] == trace
        train = windows[~test]
        n = int(test.sum())
        if not features or train["label"].nunique() < 2:
            note = "no feature in this set" if not features else \
                "the other traces hold one label"
            folds.append(Fold(trace, model, feature_set, np.full(n, None, dtype=object),
                              np.full(n, np.nan), note))
            continue
        fitted = detector(model, settings, seed).fit(train[features].to_numpy(np.float64),
                                                     train["label"].to_numpy())
        x = windows.loc[test, features].to_numpy(np.float64)
        score = fitted.predict_proba(x)[:, list(fitted.classes_).index(labels[1])] \
            if len(labels) == 2 and labels[1] in fitted.classes_ else np.full(n, np.nan)
        folds.append(Fold(trace, model, feature_set, fitted.predict(x), score, ""))
    return folds

"""How far each perturbation moves each window feature, and the measured robustness class.

A perturbed trace's windows are compared with the original windows of the same traffic: each
perturbed window is matched to the original window its middle falls in (in the original's time,
undoing the perturbation's time offset), so a cut is compared with the part of the trace it
kept, not with the whole. For a feature and a perturbation, each trace's matched pairs give
two samples, original and perturbed, and their KS D: the largest change, over every threshold,
of the share of the trace's windows above it; D is averaged over the traces, weighted by their
windows (a perturbation acts on one capture at a time: pooling traces could hide a change).
A window where the feature is undefined counts as a value below all others (a perturbation
that makes a feature undefined moves it), and a value that moved by at most
`relative_tolerance` counts as unmoved.

The interval is a moving-block bootstrap of the pairs (blocks of consecutive windows within a
trace, the same windows on both sides). A feature is *behavioural* when the upper end of the
interval is at most `max_ks_d` under every perturbation, *artefact* otherwise, with the
perturbation that moves it most.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tracelab.robustness.bootstrap import (
    ks_statistic,
    moving_block_indices,
    percentile_interval,
)

BEHAVIOURAL = "behavioural"
ARTEFACT = "artefact"
NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class InvarianceSettings:
    max_ks_d: float
    relative_tolerance: float


@dataclass(frozen=True)
class BootstrapSettings:
    resamples: int
    block_windows: int
    confidence: float


@dataclass(frozen=True)
class Pairs:
    """Matched windows of one perturbation over all traces, ordered by trace then time."""

    trace: np.ndarray
    original: pd.DataFrame
    perturbed: pd.DataFrame

    def lengths(self) -> list[int]:
        _, first, counts = np.unique(self.trace, return_index=True, return_counts=True)
        return counts[np.argsort(first)].tolist()


def match_windows(original: pd.DataFrame, perturbed: pd.DataFrame,
                  offset_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """(perturbed rows, original rows) of the perturbed windows whose middle, in the
    original's time, falls in an original window."""
    middle = perturbed["start_ns"].to_numpy() + perturbed["duration_s"].to_numpy() * 5e8 \
        - offset_ns
    start = original["start_ns"].to_numpy()
    row = np.searchsorted(start, middle, side="right") - 1
    inside = row >= 0
    end = start + original["duration_s"].to_numpy() * 1e9
    inside[inside] = middle[inside] < end[row[inside]]
    return np.flatnonzero(inside), row[inside]


def pairs_of(matched: list[tuple[str, pd.DataFrame, pd.DataFrame]], features: list[str]) -> Pairs:
    """Pairs from (trace, original rows, perturbed rows) of every trace."""
    if not matched:
        empty = pd.DataFrame(columns=features, dtype=np.float64)
        return Pairs(np.array([], dtype=object), empty, empty)
    return Pairs(
        trace=np.concatenate([np.full(len(o), trace, dtype=object) for trace, o, _ in matched]),
        original=pd.concat([o[features] for _, o, _ in matched], ignore_index=True),
        perturbed=pd.concat([p[features] for _, _, p in matched], ignore_index=True))


def _compared(original: np.ndarray, perturbed: np.ndarray, tolerance: float):
    """Both sides as compared: a move within the tolerance undone, undefined as -inf."""
    with np.errstate(invalid="ignore"):
        close = np.abs(perturbed - original) <= tolerance * np.maximum(np.abs(original),
                                                                       np.abs(perturbed))
    perturbed = np.where(close, original, perturbed)
    return (np.where(np.isnan(original), -np.inf, original),
            np.where(np.isnan(perturbed), -np.inf, perturbed))


def within_traces(original: np.ndarray, perturbed: np.ndarray, lengths: list[int]) -> np.ndarray:
    """KS D of each row, computed within each trace (a run of columns) and averaged over the
    traces weighted by their windows: pooled traces could hide a change, as a 12-hour shift of
    a 03:00 and a 15:00 capture swaps two hours and leaves the pooled hours alike."""
    total, start = 0.0, 0
    for n in lengths:
        part = slice(start, start + n)
        total = total + n * ks_statistic(original[:, part], perturbed[:, part])
        start += n
    return total / max(start, 1)


def feature_shift(pairs: Pairs, feature: str, indices: np.ndarray, settings: InvarianceSettings,
                  bootstrap: BootstrapSettings) -> dict:
    """KS D between a feature's original and perturbed windows, its interval, windows moved."""
    original, perturbed = _compared(pairs.original[feature].to_numpy(np.float64),
                                    pairs.perturbed[feature].to_numpy(np.float64),
                                    settings.relative_tolerance)
    if original.size == 0:
        return {"ks_d": np.nan, "ks_low": np.nan, "ks_high": np.nan, "moved": 0}
    lengths = pairs.lengths()
    low, high = percentile_interval(
        within_traces(original[indices], perturbed[indices], lengths), bootstrap.confidence)
    return {"ks_d": float(within_traces(original[None, :], perturbed[None, :], lengths)[0]),
            "ks_low": low, "ks_high": high, "moved": int((original != perturbed).sum())}


def invariance_table(pairs: dict[str, Pairs], features: list[str], settings: InvarianceSettings,
                     bootstrap: BootstrapSettings, rng: np.random.Generator) -> pd.DataFrame:
    """One row a (feature, perturbation): KS D with its interval, windows compared and moved."""
    rows = []
    for name, matched in pairs.items():
        indices = moving_block_indices(matched.lengths(), bootstrap.block_windows,
                                       bootstrap.resamples, rng)
        for feature in features:
            rows.append({"feature": feature, "perturbation": name,
                         **feature_shift(matched, feature, indices, settings, bootstrap),
                         "windows": len(matched.trace),
                         "captures": len(set(matched.trace))})
    return pd.DataFrame(rows, columns=["feature", "perturbation", "ks_d", "ks_low", "ks_high",
                                       "moved", "windows", "captures"])


def measured_classes(table: pd.DataFrame, declared: pd.Series,
                     settings: InvarianceSettings) -> pd.DataFrame:
    """Per feature: the measured class, the perturbation that moves it most (by the upper end
    of D's interval, then D), and the declared class beside it."""
    rows = []
    for feature in declared.index:
        measured = table[table["feature"] == feature].dropna(subset=["ks_high"])
        if measured.empty:
            rows.append({"feature": feature, "measured": NOT_MEASURED})
            continue
        worst = measured.sort_values(["ks_high", "ks_d"], ascending=False, kind="stable").iloc[0]
        moved = worst["ks_high"] > settings.max_ks_d
        rows.append({"feature": feature, "measured": ARTEFACT if moved else BEHAVIOURAL,
                     # Nothing to name where no perturbation moved a single window.
                     "moved_most_by": worst["perturbation"] if worst["ks_high"] > 0 else "",
                     "ks_d": worst["ks_d"],
                     "ks_low": worst["ks_low"], "ks_high": worst["ks_high"],
                     "windows": worst["windows"], "captures": worst["captures"],
                     "moving": ", ".join(measured.loc[measured["ks_high"] > settings.max_ks_d,
                                                      "perturbation"])})
    classes = pd.DataFrame(rows, columns=["feature", "measured", "moved_most_by", "ks_d",
                                          "ks_low", "ks_high", "windows", "captures",
                                          "moving"]).set_index("feature")
    classes.insert(0, "declared", declared.reindex(classes.index))
    classes["agrees"] = classes["declared"] == classes["measured"]
    return classes.reset_index()

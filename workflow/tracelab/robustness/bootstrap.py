"""Block bootstrap over time, and the two statistics it is applied to (KS D, ROC AUC).

Neighbouring windows of a trace are not independent (a scan burst spans several), so intervals
come from the moving-block bootstrap (Kuensch 1989): each trace's windows are resampled as runs
of `block` consecutive windows starting at random positions, until the trace's number of windows
is reached; traces are resampled separately (stratified), so every resample has the same number
of windows from each capture as the data. Percentile intervals.

Both statistics take a matrix of resamples (one resample a row) and work on all rows at once.
NaN marks a window where the feature is undefined (no HTTP request, say); it is left out, as
scipy's `nan_policy="omit"` would.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tracelab.core.config import settings as config_settings


@dataclass(frozen=True)
class BootstrapSettings:
    resamples: int
    block_windows: int
    confidence: float


def bootstrap_settings(values: dict | None = None) -> BootstrapSettings:
    """BootstrapSettings from config values over the schema's defaults."""
    return config_settings(BootstrapSettings, "robustness.bootstrap", values)


def job_seed(seed: int, *names: str) -> list[int]:
    """A seed of its own for each (seed, trace, perturbation or stage): the same in every run
    and on every machine (crc32, unlike hash(), is not salted per process)."""
    return [seed, *(zlib.crc32(name.encode()) for name in names)]


def job_rng(seed: int, *names: str) -> np.random.Generator:
    return np.random.default_rng(job_seed(seed, *names))


def moving_block_indices(lengths: Sequence[int], block: int, resamples: int,
                         rng: np.random.Generator) -> np.ndarray:
    """(resamples, sum(lengths)) positions into the concatenated groups (traces, in order):
    each group of n positions is filled from ceil(n / b) runs of b = min(block, n) consecutive
    positions of that group."""
    parts, offset = [], 0
    for n in lengths:
        if n == 0:
            continue
        run = min(block, n)
        runs = -(-n // run)
        starts = rng.integers(0, n - run + 1, size=(resamples, runs))
        positions = (starts[:, :, None] + np.arange(run)).reshape(resamples, -1)[:, :n]
        parts.append(positions + offset)
        offset += n
    return np.concatenate(parts, axis=1) if parts else np.zeros((resamples, 0), np.int64)


def _two_rows(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b = np.atleast_2d(a).astype(np.float64), np.atleast_2d(b).astype(np.float64)
    n_a = (~np.isnan(a)).sum(axis=1)
    n_b = (~np.isnan(b)).sum(axis=1)
    return np.concatenate([a, b], axis=1), n_a, n_b


def ks_statistic(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two-sample Kolmogorov-Smirnov D of each row of `a` against the same row of `b`: the
    largest gap between the two empirical CDFs (NaN where a side has no value)."""
    values, n_a, n_b = _two_rows(a, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.concatenate([np.broadcast_to((1 / n_a)[:, None], np.atleast_2d(a).shape),
                               np.broadcast_to((-1 / n_b)[:, None], np.atleast_2d(b).shape)],
                              axis=1)
    step = np.where(np.isnan(values), 0.0, step)
    order = np.argsort(values, axis=1, kind="stable")  # NaN last
    ordered = np.take_along_axis(values, order, axis=1)
    gap = np.abs(np.cumsum(np.take_along_axis(step, order, axis=1), axis=1))
    # The CDFs are compared after the last of tied values only.
    last_of_value = np.ones_like(ordered, dtype=bool)
    last_of_value[:, :-1] = ordered[:, 1:] != ordered[:, :-1]
    gap = np.where(last_of_value & ~np.isnan(ordered), gap, 0.0)
    # Sums of +1/n_a and -1/n_b leave rounding residue (1e-17) where the CDFs meet.
    d = np.round(gap.max(axis=1, initial=0.0), 12)
    return np.where((n_a > 0) & (n_b > 0), d, np.nan)


def roc_auc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ROC AUC of each row's values as a score for `b` over `a` (ties count one half): the
    Mann-Whitney U of b divided by n_a n_b (NaN where a side has no value)."""
    # Imported here: scipy.stats takes 0.6 CPU s to import, and the variants job, which needs
    # only job_seed of this module, never ranks.
    from scipy import stats

    values, n_a, n_b = _two_rows(a, b)
    ranks = stats.rankdata(values, axis=1, nan_policy="omit")
    rank_sum_b = np.nansum(ranks[:, np.atleast_2d(a).shape[1]:], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sum_b - n_b * (n_b + 1) / 2) / (n_a * n_b)
    return np.where((n_a > 0) & (n_b > 0), auc, np.nan)


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central `confidence` share of the resampled statistics (NaN if none is defined)."""
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return np.nan, np.nan
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)

"""The statistics and the block bootstrap behind every interval, against scipy and by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tracelab.robustness.bootstrap import (
    job_rng,
    ks_statistic,
    moving_block_indices,
    percentile_interval,
    roc_auc,
)
from tracelab.robustness.invariance import match_windows, windows_needed, within_traces


@pytest.mark.filterwarnings("ignore:ks_2samp:RuntimeWarning")
def test_ks_and_auc_match_scipy_row_by_row_with_missing_values_left_out():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 6, size=(40, 11)).astype(float)
    b = rng.integers(0, 8, size=(40, 7)).astype(float)
    a[rng.random(a.shape) < 0.2] = np.nan
    d, auc = ks_statistic(a, b), roc_auc(a, b)
    for row in range(a.shape[0]):
        left = a[row][~np.isnan(a[row])]
        assert d[row] == pytest.approx(stats.ks_2samp(left, b[row]).statistic)
        u = stats.mannwhitneyu(b[row], left).statistic
        assert auc[row] == pytest.approx(u / (left.size * b.shape[1]))


def test_statistics_are_undefined_without_values_on_a_side():
    assert np.isnan(ks_statistic(np.array([np.nan]), np.array([1.0]))[0])
    assert np.isnan(roc_auc(np.array([1.0]), np.array([np.nan, np.nan]))[0])
    assert ks_statistic(np.array([-np.inf, 2.0]), np.array([2.0, 2.0]))[0] == 0.5


def test_moving_blocks_stay_in_their_trace_and_run_consecutively():
    positions = moving_block_indices([7, 2, 5], block=3, resamples=200, rng=job_rng(1, "x"))
    assert positions.shape == (200, 14)
    first, second, third = positions[:, :7], positions[:, 7:9], positions[:, 9:]
    assert first.min() >= 0 and first.max() <= 6
    assert (second == [7, 8]).all()  # a trace no longer than a block is always whole
    assert third.min() >= 9 and third.max() <= 13
    runs = first[:, :6].reshape(200, 2, 3)
    assert (np.diff(runs, axis=2) == 1).all()  # each block is 3 consecutive windows
    assert len({tuple(row) for row in first}) > 20  # and the starts vary


def test_the_same_seed_gives_the_same_resamples():
    one = moving_block_indices([9, 4], 2, 50, job_rng(14, "trace", "hour_shift"))
    two = moving_block_indices([9, 4], 2, 50, job_rng(14, "trace", "hour_shift"))
    other = moving_block_indices([9, 4], 2, 50, job_rng(14, "trace", "clock_ms"))
    assert (one == two).all() and not (one == other).all()


def test_percentile_interval():
    assert percentile_interval(np.arange(101.0), 0.9) == pytest.approx((5.0, 95.0))
    assert np.isnan(percentile_interval(np.array([np.nan]), 0.9)[0])


def test_shift_is_measured_within_each_trace_not_on_the_pooled_windows():
    # A 03:00 and a 15:00 capture shifted by 12 hours swap hours: the pooled hours are alike.
    original = np.array([[3.0, 3.0, 15.0, 15.0]])
    shifted = np.array([[15.0, 15.0, 3.0, 3.0]])
    assert ks_statistic(original, shifted)[0] == 0.0
    assert within_traces(original, shifted, [2, 2])[0] == 1.0


def windows(starts_s, duration_s=10.0):
    start = pd.Timestamp("2026-01-01", tz="UTC").value
    return pd.DataFrame({"start_ns": [start + int(s * 1e9) for s in starts_s],
                         "duration_s": duration_s})


def test_perturbed_windows_meet_the_original_window_their_middle_falls_in():
    original = windows([0, 10, 20, 30])
    # A copy started at 10.6 s and moved 12 h later: its windows' middles fall in 10-20, 20-30,
    # 30-40, and past the original's end.
    later = windows(np.array([10.6, 20.6, 30.6, 40.6]) + 12 * 3600)
    start = pd.Timestamp("2026-01-01", tz="UTC").value
    shift = {"original_from_ns": start, "perturbed_from_ns": start + 12 * 3600 * 10**9,
             "scale": 1.0}
    rows, original_rows = match_windows(original, later, shift)
    assert rows.tolist() == [0, 1, 2] and original_rows.tolist() == [1, 2, 3]


def test_a_stretched_copy_maps_its_windows_back_through_the_scale():
    original = windows([0, 10, 20, 30])
    # Twice as slow from the first packet: copy windows 0-10, 10-20, ... stood at 0-5, 5-10...
    slower = windows([0, 10, 20, 30, 40, 50, 60])
    start = pd.Timestamp("2026-01-01", tz="UTC").value
    rows, original_rows = match_windows(original, slower, {
        "original_from_ns": start, "perturbed_from_ns": start, "scale": 2.0})
    assert rows.tolist() == list(range(7)) and original_rows.tolist() == [0, 0, 1, 1, 2, 2, 3]


def test_windows_needed_is_a_float_and_infinite_on_the_threshold():
    """A D a rounding residue below the threshold (as traces' averages give it) sits on it: no
    number of windows would move it off, and the count must stay a float the pages can show
    (an astronomic Python integer broke the class table of a three-trace sheet)."""
    effect = {"ks_d": 0.24999999999987, "ks_low": 0.125, "ks_high": 0.5, "noise_d": 0.125}
    assert windows_needed(8, effect, 0.25) == math.inf
    below = windows_needed(8, {**effect, "ks_d": 0.125}, 0.25)
    above = windows_needed(8, {**effect, "ks_d": 0.5, "ks_low": 0.375}, 0.25)
    assert isinstance(below, float) and isinstance(above, float)
    # Below: ((0.5 - 0.125) / (0.25 - 0.125))^2 = 9 times the windows; above: the larger of
    # ((0.5 - 0.375) / (0.5 - 0.25))^2 = 1/4 and (0.125 / 0.5)^2 = 1/16.
    assert (below, above) == (72.0, 2.0)

"""Array primitives over rows sorted by group (TCP conversation instances): each row's
group start and end, running maxima within a group, the last row with a property so far.
Vectorised with numpy; no loop over rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def pick(pairs: np.ndarray, at: np.ndarray) -> np.ndarray:
    """pairs[row, side] for flat positions at = 2 * row + side of an (m, 2) array: one 1-D
    take (indexing with a row and a side array is several times slower)."""
    return pairs.ravel().take(at)


def factorize_rows(columns: list[np.ndarray]) -> np.ndarray:
    """Dense codes, in order of first appearance, of the distinct rows of several non-negative
    integer columns (exact: columns are folded into one int64 while their product of sizes
    fits in it, then factorized). A column of one value changes nothing and is skipped; one of
    small values (ports) is folded in as it is, without factorizing it first."""
    codes = np.zeros(len(columns[0]), dtype=np.int64)
    bound = 1       # codes < bound
    for column in columns:
        low, high = int(column.min()), int(column.max())
        if low == high:
            continue
        if high < 1 << 20:
            more, size = column.astype(np.int64), high + 1
        else:
            more, uniques = pd.factorize(column)
            size = len(uniques)
        if bound * size >= 1 << 62:
            codes, uniques = pd.factorize(codes)
            bound = len(uniques)
        codes = codes * size + more
        bound *= size
    return pd.factorize(codes)[0]


def group_starts(group: np.ndarray) -> np.ndarray:
    """For rows sorted by group: each row's group's first row."""
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    return np.repeat(starts, np.diff(np.r_[starts, len(group)]))


def group_ends(group_start: np.ndarray) -> np.ndarray:
    """The last row of each group."""
    starts = np.flatnonzero(np.r_[True, group_start[1:] != group_start[:-1]])
    return np.r_[starts[1:], len(group_start)] - 1


def group_last_row(mask: np.ndarray, group_start: np.ndarray) -> np.ndarray:
    """Each row gets its group's last row with `mask` (-1 if none)."""
    m = len(mask)
    starts = np.flatnonzero(np.r_[True, group_start[1:] != group_start[:-1]])
    last = np.maximum.reduceat(np.where(mask, np.arange(m), -1), starts)
    return np.repeat(last, np.diff(np.r_[starts, m]))


def last_before(mask: np.ndarray, group_start: np.ndarray, inclusive: bool = False):
    """Per column of `mask`: the last row with it set before (or at) each row, within the
    row's group (-1 if none)."""
    m = len(mask)
    # In place where possible: fresh batch-sized arrays cost page faults.
    run = np.where(mask, np.arange(m)[:, None], -1)
    np.maximum.accumulate(run, axis=0, out=run)
    if not inclusive:
        run[1:] = run[:-1].copy()
        run[0] = -1
    np.putmask(run, run < group_start[:, None], -1)
    return run


def group_first(mask: np.ndarray, group_start: np.ndarray) -> np.ndarray:
    """Each row gets its group's first row with `mask` (m if none)."""
    m = len(mask)
    starts = np.flatnonzero(np.r_[True, group_start[1:] != group_start[:-1]])
    first = np.minimum.reduceat(np.where(mask, np.arange(m), m), starts)
    return np.repeat(first, np.diff(np.r_[starts, m]))


def grouped_cummax(values: np.ndarray, group_start: np.ndarray) -> np.ndarray:
    """Running maximum within each group; values >= -1 and below 2**40."""
    group = np.cumsum(np.r_[True, group_start[1:] != group_start[:-1]])
    lifted = group * (1 << 41) + (values + 1)
    return np.maximum.accumulate(lifted) - group * (1 << 41) - 1

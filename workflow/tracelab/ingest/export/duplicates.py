"""Exact copies of a row among the rows before it."""

from __future__ import annotations

import numpy as np
import pyarrow as pa_arrow
import pyarrow.compute as pc

from tracelab.core.packets import STAGED_BASE

# Exact copies are looked for among this many rows before each row (memory stays bounded).
DUPLICATE_LOOKBACK = 32


KEY_COLUMNS = ["ts", "length", "src", "dst", "protocol", "info"]
# The rows the next batch's duplicate check looks back at: their keys and lines.
RECENT_SCHEMA = pa_arrow.schema([STAGED_BASE.field(name) for name in KEY_COLUMNS] +
                                [("line", pa_arrow.int64())])


def duplicate_of(keys: pa_arrow.Table, candidate: np.ndarray, lines: np.ndarray,
                  recent: pa_arrow.Table) -> np.ndarray:
    """For each `candidate` row of a batch (`keys`: its KEY_COLUMNS), the line of the nearest
    earlier exact copy among the DUPLICATE_LOOKBACK candidates before it (those of the batch
    before it in `recent` first), or 0.

    Copies share their time: the rows are sorted by time (nearly sorted already, so this is
    quick), and only rows in runs of equal times are paired and their text compared.
    """
    first_new = recent.num_rows
    ts = np.concatenate([recent.column("ts").cast(pa_arrow.int64()).to_numpy(),
                         keys.column("ts").cast(pa_arrow.int64()).to_numpy()[candidate]])
    length = np.concatenate([recent.column("length").to_numpy(),
                             keys.column("length").to_numpy()[candidate]])
    earlier_line = np.zeros(candidate.size, dtype=np.int64)
    order = np.argsort(ts, kind="stable")
    in_run = np.flatnonzero(ts[order][1:] == ts[order][:-1])
    if not in_run.size:
        return earlier_line
    members = order[np.union1d(in_run, in_run + 1)]  # by time, then position
    later, earlier = [], []
    for step in range(1, min(DUPLICATE_LOOKBACK, members.size - 1) + 1):
        a, b = members[step:], members[:-step]
        pair = (ts[a] == ts[b]) & (a - b <= DUPLICATE_LOOKBACK) & (length[a] == length[b]) & \
            (a >= first_new)
        later.append(a[pair])
        earlier.append(b[pair])
    later, earlier = np.concatenate(later), np.concatenate(earlier)
    copy = np.zeros(later.size, dtype=bool)
    later_rows = keys.take(candidate[later - first_new])
    for in_batch in (True, False):
        group = (earlier >= first_new) == in_batch
        if not group.any():
            continue
        earlier_rows = keys.take(candidate[earlier[group] - first_new]) if in_batch \
            else recent.take(earlier[group])
        same = np.ones(int(group.sum()), dtype=bool)
        for name in ("src", "dst", "protocol", "info"):
            same &= pc.fill_null(pc.equal(later_rows.column(name).filter(group),
                                          earlier_rows.column(name)),
                                 False).to_numpy(zero_copy_only=False)
        copy[group] = same
    later, earlier = later[copy], earlier[copy]
    nearest = np.lexsort((-earlier, later))  # per row, the nearest copy first
    found, first = np.unique(later[nearest], return_index=True)
    all_lines = np.concatenate([recent.column("line").to_numpy(), lines[candidate]])
    earlier_line[found - first_new] = all_lines[earlier[nearest][first]]
    return earlier_line

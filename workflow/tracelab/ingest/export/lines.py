"""Where each row of an export is in the file: its first and last line."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa_arrow
import pyarrow.compute as pc


@dataclass
class BatchLines:
    """Where a batch's rows are in the file: first and last line of each row, the malformed
    records among them as (line, fields, text), and the last line placed."""

    start: np.ndarray
    end: np.ndarray
    malformed: list[tuple[int, int, str]]
    last: int


class Lines:
    """The line in the file where each row starts, batch by batch.

    The reader hands a record with the wrong number of fields to the invalid-row handler with
    its record number (header = 1, blank lines not counted) and leaves it out of the batch, so
    the batch's rows take the numbers around it; a quoted field with line breaks makes its
    record span several lines, which moves every later record down.
    """

    def __init__(self):
        self.record = 1  # the header
        self.breaks = 0  # line breaks inside fields before the next record
        self.last = 1  # last line placed
        self._pending: list[tuple[int | None, int, str]] = []

    def malformed(self, number: int | None, fields: int, text: str) -> None:
        """A record the reader left out: its number (None if not given), fields and text."""
        self._pending.append((number, fields, text))

    def place(self, batch) -> BatchLines:
        """Lines of `batch`'s rows, and the malformed records among them; `batch=None` at the
        end of the file takes every remaining one."""
        n = batch.num_rows if batch is not None else 0
        records = np.arange(self.record + 1, self.record + 1 + n)
        taken = []
        self._pending.sort(key=lambda item: (item[0] is None, item[0] or 0))
        while self._pending:
            number, fields, text = self._pending[0]
            last = max(int(records[-1]) if n else self.record, taken[-1][0] if taken else 0)
            if number is None:  # not numbered by the reader: put after this batch's rows
                number = last + 1
            elif number > last + 1 and batch is not None:
                break  # a later batch's
            records[records >= number] += 1
            taken.append((number, fields, text))
            self._pending.pop(0)
        numbers = np.concatenate([records, np.array([t[0] for t in taken], dtype=np.int64)])
        breaks = np.array([t[2].count("\n") for t in taken], dtype=np.int64)
        if n:
            inside = np.zeros(n, dtype=np.int64)
            for column in batch.columns:
                if _may_hold_line_breaks(column):
                    inside += pc.fill_null(pc.count_substring(column, "\n"), 0).to_numpy()
            breaks = np.concatenate([inside, breaks])
        order = np.argsort(numbers, kind="stable")
        before = np.empty_like(breaks)
        before[order] = self.breaks + np.cumsum(breaks[order]) - breaks[order]
        lines = numbers + before
        if numbers.size:
            self.record = int(numbers.max())
            self.breaks += int(breaks.sum())
            self.last = int((lines + breaks).max())
        return BatchLines(lines[:n], lines[:n] + breaks[:n],
                           [(int(line), fields, text)
                            for line, (_, fields, text) in zip(lines[n:], taken)], self.last)


def _may_hold_line_breaks(column: pa_arrow.Array) -> bool:
    """False when the column's bytes hold no line break at all: a memchr-speed scan that
    spares the per-value count in nearly every batch."""
    data = column.buffers()[2]
    return data is not None and data.to_pybytes().find(b"\n") >= 0


def rows_holding(bad_lines: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """For each line of `bad_lines`, the row (by its first and last line) holding it, or -1."""
    if not start.size:
        return np.full(bad_lines.size, -1)
    row = np.searchsorted(start, bad_lines, side="right") - 1
    inside = (row >= 0) & (end[np.maximum(row, 0)] >= bad_lines)
    return np.where(inside, row, -1)

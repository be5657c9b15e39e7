"""The sample a large trace's copies are made of: the run of whole windows around its middle
that holds at most `robustness.sample_packets` packets.

A sampled trace's copies are compared with the sample's own windows, its connections assembled
from the sample alone, so they need none of the original's connections, requests or windows:
`is_sampled` says so from the packet count alone, for the workflow to let the copies start as
soon as the packet table is written (beside the connection stage) and for the stage to take
the same decision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tracelab.robustness.perturbations import NS_PER_S, window_numbers


def is_sampled(packets: int, budget: int | None) -> bool:
    """Whether a trace of `packets` packets is measured on a sample (`budget`:
    robustness.sample_packets, None for no sampling)."""
    return budget is not None and packets > budget


@dataclass(frozen=True)
class Sample:
    """The run of whole windows [first_window, stop_window) of a trace's window grid the copies
    are made of, and its packets."""

    first_window: int
    stop_window: int
    packets: int
    trace_packets: int

    def summary(self, window_s: float) -> dict:
        return {"packets": self.packets, "trace_packets": self.trace_packets,
                "from_s": self.first_window * window_s, "to_s": self.stop_window * window_s}

    def span_ns(self, first_ns: int, window_s: float) -> tuple[int, int]:
        """[start, stop) of the sample's windows, in ns, on the grid from `first_ns`."""
        window_ns = int(window_s * NS_PER_S)
        return first_ns + self.first_window * window_ns, first_ns + self.stop_window * window_ns

    def within(self, rows: pa.Table, first_ns: int, window_s: float) -> pa.Table:
        """The rows of `rows` in the sample's windows (the grid from `first_ns`)."""
        window = window_numbers(rows, first_ns, window_s)
        return rows.filter(pa.array((window >= self.first_window) & (window < self.stop_window)))


def middle_run(occupied: np.ndarray, counts: np.ndarray, budget: int | None) -> Sample | None:
    """The run of windows around the trace's middle packet that holds at most `budget` packets,
    grown a window at a time on the side that holds fewer so far (at least one window); None
    when the whole trace is within the budget. `occupied`: the windows of the trace's grid
    that hold a packet, ascending; `counts`: how many each holds (`WindowTally.occupied`)."""
    total = int(counts.sum())
    if not is_sampled(total, budget):
        return None
    low = high = int(np.searchsorted(np.cumsum(counts), total / 2))
    taken, held = int(counts[low]), {"low": 0, "high": 0}  # packets each side of the middle
    while True:
        for side in sorted(held, key=held.get):
            index = low - 1 if side == "low" else high + 1
            if 0 <= index < len(counts) and taken + counts[index] <= budget:
                break
        else:
            return Sample(int(occupied[low]), int(occupied[high]) + 1, taken, total)
        taken, held[side] = taken + int(counts[index]), held[side] + int(counts[index])
        low, high = (index, high) if side == "low" else (low, index)

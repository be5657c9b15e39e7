"""Progress lines for long jobs: rows done, rate, elapsed and estimated remaining time, written
to the job's log at most once every `interval_s` (follow them with `tail -f results/logs/...`).

A stage makes one Progress per pass over its input and calls `update` as it goes (or wraps its
loop in `track`). The interval is the config's progress_interval_s, which run_stage sets for the
whole job with `set_interval`; until then (a stage called from Python) nothing is logged.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

log = logging.getLogger("tracelab.progress")


@dataclass
class ProgressSettings:
    """The job's setting, made once by run_stage: there is one job per process."""
    interval_s: float = math.inf


SETTINGS = ProgressSettings()


def set_interval(seconds: float) -> None:
    """Seconds between two progress lines, for every Progress made after this call."""
    SETTINGS.interval_s = float(seconds)


@dataclass
class Progress:
    """How far one pass over an input has got. `total_bytes` (the input's size) or
    `total_rows`, when known, give the share done and so the time remaining."""
    what: str
    total_bytes: int | None = None
    total_rows: int | None = None
    clock: Callable[[], float] = time.monotonic
    interval_s: float = field(default_factory=lambda: SETTINGS.interval_s)
    started: float = field(init=False)
    last: float = field(init=False)

    def __post_init__(self):
        self.started = self.last = self.clock()

    def update(self, rows: int, bytes_done: int | None = None) -> None:
        """Record that `rows` rows (and `bytes_done` bytes of the input) are done so far;
        log a line if `interval_s` has passed since the last one."""
        now = self.clock()
        if now - self.last < self.interval_s:
            return
        self.last = now
        elapsed = now - self.started
        line = f"{self.what}: {rows:,} rows in {elapsed:.1f} s ({rows / elapsed:,.0f} rows/s)"
        share = self._share(rows, bytes_done)
        if share:
            line += f", {share:.0%} done, about {elapsed * (1 - share) / share:.0f} s left"
        log.info("%s", line)

    def _share(self, rows: int, bytes_done: int | None) -> float | None:
        if self.total_bytes and bytes_done is not None:
            return min(bytes_done / self.total_bytes, 1.0)
        if self.total_rows:
            return min(rows / self.total_rows, 1.0)
        return None

    def track(self, batches: Iterable) -> Iterator:
        """The batches (anything with a length in rows), unchanged, updating as they pass."""
        rows = 0
        for batch in batches:
            yield batch
            rows += len(batch)
            self.update(rows)

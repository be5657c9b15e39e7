"""Progress of long passes: rows done, rate, elapsed and estimated remaining time.

A stage makes one Progress per pass over its input and calls `update` as it goes (or wraps its
loop in `track`, or its loops in `count` inside `with Progress(...)`). Where it shows depends
on who called the stage, set once per process:

- a workflow job (run_stage calls `set_interval` with the config's progress_interval_s): a log
  line at most every interval, in the job's log (`tail -f results/logs/...`);
- the command line and the Python API (`on_console`): a tqdm bar when stderr is a terminal, the
  same log lines otherwise (on stderr unless logging is configured);
- a stage called any other way (a test, a notebook calling a stage function): nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TextIO

from tracelab.core.config import defaults

log = logging.getLogger("tracelab.progress")


@dataclass
class ProgressSettings:
    """The process's setting, made once by run_stage or on_console."""
    interval_s: float = math.inf
    bar_file: TextIO | None = None   # a terminal: bars there instead of log lines


SETTINGS = ProgressSettings()


def set_interval(seconds: float) -> None:
    """Seconds between two progress lines, for every Progress made after this call."""
    SETTINGS.interval_s = float(seconds)


@contextlib.contextmanager
def on_console(stream: TextIO | None = None) -> Iterator[None]:
    """Progress of the passes inside the block shown on `stream` (default stderr): bars on a
    terminal, log lines every progress_interval_s (the config's default, unless set) otherwise.
    The lines go to the `tracelab.progress` logger; with logging not configured, to `stream`."""
    stream = stream or sys.stderr
    before = dataclasses.replace(SETTINGS)
    if math.isinf(SETTINGS.interval_s):
        SETTINGS.interval_s = float(defaults()["progress_interval_s"])
    handler = None
    if stream.isatty():
        SETTINGS.bar_file = stream
    elif not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("tracelab: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        yield
    finally:
        SETTINGS.interval_s, SETTINGS.bar_file = before.interval_s, before.bar_file
        if handler is not None:
            log.removeHandler(handler)
            log.setLevel(logging.NOTSET)


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
    bar: object = field(init=False, default=None)
    rows: int = field(init=False, default=0)  # counted by `count`

    def __post_init__(self):
        self.started = self.last = self.clock()
        if SETTINGS.bar_file is not None:
            from tqdm import tqdm  # only on a terminal: a job never draws one
            in_bytes = self.total_bytes is not None
            self.bar = tqdm(desc=self.what, total=self.total_bytes if in_bytes
                            else self.total_rows, unit="B" if in_bytes else " rows",
                            unit_scale=True, unit_divisor=1024 if in_bytes else 1000,
                            file=SETTINGS.bar_file, leave=False, dynamic_ncols=True)

    def update(self, rows: int, bytes_done: int | None = None) -> None:
        """Record that `rows` rows (and `bytes_done` bytes of the input) are done so far;
        move the bar, or log a line if `interval_s` has passed since the last one."""
        if self.bar is not None:
            done = bytes_done if self.total_bytes is not None else rows
            self.bar.update((done or 0) - self.bar.n)
            return
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

    def close(self) -> None:
        """The pass is over: the bar drawn as it ends (tqdm skips draws less than 0.1 s
        apart), then taken off the terminal."""
        if self.bar is not None:
            self.bar.refresh()
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def count(self, batches: Iterable, bytes_done: Callable[[], int] | None = None) -> Iterator:
        """The batches (anything with a length in rows), unchanged, their rows added to the
        pass's count as they pass (a pass over several tables counts each in turn);
        `bytes_done()`, when given, says how much of the input they took."""
        for batch in batches:
            yield batch
            self.rows += len(batch)
            self.update(self.rows, None if bytes_done is None else bytes_done())

    def track(self, batches: Iterable, bytes_done: Callable[[], int] | None = None) -> Iterator:
        """`count` of the batches, closing the pass when they end."""
        try:
            yield from self.count(batches, bytes_done)
        finally:
            self.close()

"""Running totals of grouped rows, held or routed into partitions on disk: the machinery of
`tracelab.features.statistics`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from tracelab.core.streaming import route

# Packets per partition of a large trace: its endpoints are totalled partition by partition of
# their address, its conversations of their address pair, so memory follows this, not the
# trace's length (a trace of one partition is totalled in memory at once).
PARTITION_PACKETS = 2_000_000
# Grouped rows that wait before they are merged into the running totals.
MERGE_ROWS = 1 << 18
# Fibonacci hashing's multiplier: spreads address codes over the partitions.
_MIX = np.uint64(0x9E3779B97F4A7C15)


@dataclass
class Rollup:
    """Running totals of grouped rows: each batch's groups wait in a list and are merged
    into one table once they outnumber MERGE_ROWS and the merged table (so each row is merged
    a bounded number of times on average, however many distinct keys). `how` maps a column to
    its aggregate (sum, min or max)."""

    keys: list[str]
    how: dict[str, str]
    parts: list[pa.Table] = field(default_factory=list)
    waiting: int = 0
    merged: int = 0
    sink: PartitionSink | None = None  # grouped batches go there instead, when set
    stored: Path | None = None  # a partition's grouped rows, read when totalled (`partitions`)

    def add(self, rows: pa.Table) -> None:
        if self.sink is not None:
            self.sink.write(self._grouped(rows))
            return
        self.parts.append(self._grouped(rows))
        self.waiting += self.parts[-1].num_rows
        if self.waiting > max(MERGE_ROWS, self.merged):
            self.parts = [self.result()]
            self.waiting, self.merged = 0, self.parts[0].num_rows

    def _grouped(self, rows: pa.Table) -> pa.Table:
        # use_threads=False keeps the groups in the order they are met, so totals come out in
        # the same order on every run (the tables' sorts keep ties in it); one chunk.
        grouped = rows.combine_chunks().group_by(self.keys, use_threads=False).aggregate(
            list(self.how.items()))
        return grouped.select([f"{c}_{h}" for c, h in self.how.items()] + self.keys) \
            .rename_columns([*self.how, *self.keys])

    def result(self) -> pa.Table | None:
        parts = self.parts if self.stored is None else _stored_rows(self.stored)
        return self._grouped(pa.concat_tables(parts)) if parts else None


class PartitionSink:
    """Grouped rows routed into one Arrow IPC file (lz4) a partition, by a hash of their
    `routed` code columns (a pair of codes hashed as one: both directions alike)."""

    def __init__(self, directory: Path, name: str, count: int, routed: list[str]):
        self.paths = [directory / f"{name}-{index:05d}.arrows" for index in range(count)]
        self.routed = routed
        self.writers: list | None = None

    def write(self, rows: pa.Table) -> None:
        if self.writers is None:
            options = pa.ipc.IpcWriteOptions(compression="lz4")
            self.writers = [pa.ipc.new_stream(str(path), rows.schema, options=options)
                            for path in self.paths]
        codes = [rows.column(name).to_numpy().astype(np.uint64) for name in self.routed]
        key = codes[0] if len(codes) == 1 else (codes[0] << np.uint64(32)) | codes[1]
        route(rows, ((key * _MIX) >> np.uint64(32)).astype(np.int64) % len(self.paths),
              self.writers)

    def close(self) -> None:
        for writer in self.writers or []:
            writer.close()


def _stored_rows(path: Path) -> list[pa.Table]:
    """A partition file's rows, in the order written (none: an empty list)."""
    with pa.OSFile(str(path)) as source:
        table = pa.ipc.open_stream(source).read_all()
    return [table] if table.num_rows else []


def partitions(rollup: Rollup) -> Iterator[Rollup]:
    """`rollup` itself when it holds its totals, else one Rollup a partition, its rows read
    when it is totalled (so that partitions can be read and totalled at once)."""
    if rollup.sink is None:
        yield rollup
        return
    rollup.sink.close()
    written = rollup.sink.writers is not None
    for path in rollup.sink.paths:
        yield Rollup(rollup.keys, rollup.how, stored=path if written else None)

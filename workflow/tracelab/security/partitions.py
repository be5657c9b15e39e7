"""A packet table split into partitions that can each be made into connections on their own.

Every packet goes to the partition of its *unordered address pair* (`partition_of`): all
packets of a connection, in both directions, and every port-less row of a CSV export between
the same two hosts (which joins a connection of that pair) land in the same partition, whatever
the number of partitions. A stage that works connection by connection then holds one partition
at a time: its memory is bounded by the partition size chosen, not by the trace's length (a
single pair of hosts is never split, so one pair carrying most of a trace makes one large
partition). The same routing can place the packets of a shard of a trace on a cluster node.

The partitions are Arrow IPC streams (lz4) in a temporary folder; the packet table is read row
group by row group, only the columns asked for.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tracelab.core.streaming import (
    derived_row_groups,
    non_empty_groups,
    ordered_map,
    routed,
    write_routed,
)

log = logging.getLogger(__name__)

# Fibonacci hashing's multiplier (2^64 / golden ratio): spreads the summed address hashes.
_MIX = np.uint64(0x9E3779B97F4A7C15)


def address_hash(addresses: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash of each address's text, the same in every process, row group and
    dictionary (pandas' SipHash with its fixed key); a dictionary array is hashed once per
    distinct value."""
    if isinstance(addresses, pa.ChunkedArray):
        parts = [address_hash(chunk) for chunk in addresses.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, np.uint64)
    if pa.types.is_dictionary(addresses.type):
        values = address_hash(addresses.dictionary)
        return values[pc.fill_null(addresses.indices, 0).to_numpy(zero_copy_only=False)]
    text = np.asarray(addresses.fill_null("").to_numpy(zero_copy_only=False), dtype=object)
    return pd.util.hash_array(text, categorize=False)


def partition_of(src, dst, n: int) -> np.ndarray:
    """Partition (0..n-1) of each packet, from its unordered pair of addresses (Arrow string or
    dictionary arrays): the same for both directions and for any row group."""
    pair = address_hash(src) + address_hash(dst)  # wraps around: symmetric, order-free
    return ((pair * _MIX) >> np.uint64(32)).astype(np.int64) % n


def partition_count(packets: int, partition_packets: int) -> int:
    """Partitions for a table of `packets` rows, each about `partition_packets` rows."""
    return max(1, math.ceil(packets / partition_packets))


@dataclass
class Partitions:
    """The partition files of one packet table."""

    paths: list[Path]

    def tables(self):
        """Each partition as one Arrow table, in partition order (one in memory at a time)."""
        for path in self.paths:
            with pa.OSFile(str(path)) as source:
                yield pa.ipc.open_stream(source).read_all()


def _routed(rows: pa.Table, n: int, pair: tuple[str, str]) -> tuple[pa.Table, np.ndarray]:
    return routed(rows, partition_of(rows.column(pair[0]), rows.column(pair[1]), n), n)


def split_packets(packets_path, columns: list[str], n: int, directory: Path,
                  threads: int = 1) -> Partitions:
    """Route the packet table's rows (`columns` only) into `n` partition files in `directory`,
    row group by row group (the next one read on a background thread; `threads` groups ordered
    by partition at once while the oldest is written)."""
    return split_by_pair(packets_path, columns, n, directory, threads=threads)


def split_by_pair(path, columns: list[str], n: int, directory: Path, *, threads: int = 1,
                  pair: tuple[str, str] = ("src", "dst"),
                  derive: Callable[[pa.Table], pa.Table] = lambda rows: rows) -> Partitions:
    """`split_packets` of any table whose rows name two addresses (`pair`: a flow's orig and
    resp), of the rows `derive` keeps of each batch: rows of one address pair, whichever
    table they come from, land in the same partition."""
    parquet = pq.ParquetFile(path)
    schema = parquet.schema_arrow
    schema = pa.schema([schema.field(name) for name in columns])
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"partition-{index:05d}.arrows" for index in range(n)]
    options = pa.ipc.IpcWriteOptions(compression="lz4")
    sinks = [pa.OSFile(str(path), "wb") for path in paths]
    writers = [pa.ipc.new_stream(sink, schema, options=options) for sink in sinks]
    try:
        # Empty row groups are skipped: a perturbed copy that cut the trace has some.
        groups = derived_row_groups(parquet, columns, non_empty_groups(parquet), derive)
        for parts in ordered_map(partial(_routed, n=n, pair=pair), groups, threads):
            write_routed(parts, writers)
    finally:
        for writer, sink in zip(writers, sinks):
            writer.close()
            sink.close()
    return Partitions(paths)


def partition_tables(packets_path, columns: list[str], partition_packets: int, scratch: Path,
                     threads: int = 1):
    """The packet table (`columns` only) as Arrow tables of about `partition_packets` rows each,
    one in memory at a time: the whole table when it is that small, else its partitions, split
    into files in `scratch` (on `threads` threads)."""
    rows = pq.ParquetFile(packets_path).metadata.num_rows
    count = partition_count(rows, partition_packets)
    log.info("%d packets in %d partition(s)", rows, count)
    if count == 1:
        return [pq.read_table(packets_path, columns=columns)]
    return split_packets(packets_path, columns, count, scratch, threads).tables()

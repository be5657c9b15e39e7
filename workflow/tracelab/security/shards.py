"""A large trace's connection stage as shards: one cluster job a shard, then one merge.

A trace of more than `sharding.packets_per_shard` packets is split into
`shard_count(packets, packets_per_shard)` shards by its packets' unordered address pair (as
`tracelab.security.partitions` routes them, with a hash of its own): every packet of a
connection, in both directions, and every port-less row of an export between the same two hosts
land in one shard, so each shard is made into connections on its own by `write_connections`,
unchanged. The merge writes the shards' flows in the order of their first packet (as an
unsharded trace's are), conn.log from them, the placements of rows without ports by frame, and
appends the HTTP requests in shard order. Uids
depend on the trace and the connection only, so the merged tables hold the same rows whatever
the number of shards; only the order of ties in time and of the HTTP requests differs.

Files: `split_shards` writes one Parquet file a shard (the packet columns connections need) in a
folder; `write_shard_connections` makes one shard's flows, HTTP requests and placements;
`connections_stage`
is the connection rule's stage, which merges the shards' outputs when there are shards and makes
the connections of the whole trace otherwise.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tracelab.core.atomic import atomic_path, parquet_options
from tracelab.core.streaming import merge_sorted, record_batches, route
from tracelab.security.connections import (
    FLOW_ORDER,
    PACKET_COLUMNS,
    PLACEMENT_ORDER,
    stored_flows,
    write_connections,
)
from tracelab.security.names import trace_dns_answers
from tracelab.security.partitions import address_hash, partition_count
from tracelab.security.zeek_log import conn_log_writer, trace_span

log = logging.getLogger(__name__)

# A multiplier other than partitions.py's: a shard's packets share their partition hash modulo
# the shard count, so with the same hash its partitions would be as uneven as the two counts'
# common factors make them (2 shards of 2 partitions: one partition full, one empty).
_SHARD_MIX = np.uint64(0xC2B2AE3D27D4EB4F)

shard_count = partition_count  # shards of `packets` rows, each about `packets_per_shard` rows


def shard_of(src, dst, n: int) -> np.ndarray:
    """Shard (0..n-1) of each packet, from its unordered pair of addresses: the same for both
    directions and for any row group."""
    pair = address_hash(src) + address_hash(dst)  # wraps around: symmetric, order-free
    return ((pair * _SHARD_MIX) >> np.uint64(32)).astype(np.int64) % n


def shard_file(directory, shard: int) -> Path:
    return Path(directory) / f"shard-{shard:05d}.parquet"


def split_shards(*, packets_path, directory, shards: int) -> dict:
    """Stage: the packet table's rows (PACKET_COLUMNS) routed into `shards` Parquet files in
    `directory`, row group by row group (a shard may be empty)."""
    parquet = pq.ParquetFile(packets_path)
    schema = pa.schema([parquet.schema_arrow.field(name) for name in PACKET_COLUMNS])
    Path(directory).mkdir(parents=True, exist_ok=True)
    rows = np.zeros(shards, np.int64)
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(pq.ParquetWriter(shard_file(directory, shard), schema,
                                                        **parquet_options(schema)))
                   for shard in range(shards)]
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=PACKET_COLUMNS)
            # time order kept within a shard
            rows += route(table, shard_of(table.column("src"), table.column("dst"), shards),
                          writers)
    log.info("%d packets in %d shards: %s", rows.sum(), shards, rows.tolist())
    return {"shard_packets": rows.tolist()}


def write_shard_connections(*, trace: str, directory, shard: int, flows_path, http_path,
                            placements_path, settings: dict, threads: int = 1) -> dict:
    """Stage: the flows, HTTP requests and placements of one shard (the files `split_shards`
    wrote in `directory`); the merge writes conn.log."""
    return write_connections(trace=trace, packets_path=shard_file(directory, shard),
                             flows_path=flows_path, http_path=http_path,
                             placements_path=placements_path, settings=settings,
                             threads=threads)


@dataclass(frozen=True)
class ShardOutputs:
    """The outputs of a trace's shard jobs, in shard order."""

    flows: list[str]
    http: list[str]
    placements: list[str]


def connections_stage(*, trace: str, packets_path, shards: ShardOutputs, flows_path, http_path,
                      conn_log_path, placements_path, settings: dict, threads: int = 1) -> dict:
    """Stage of the connection rule: the shards' outputs merged when the trace was sharded, the
    whole trace's connections made here otherwise."""
    if not shards.flows:
        return write_connections(trace=trace, packets_path=packets_path, flows_path=flows_path,
                                 http_path=http_path, conn_log_path=conn_log_path,
                                 placements_path=placements_path, settings=settings,
                                 threads=threads)
    flows = _merge_flows(shards.flows, flows_path, conn_log_path, trace_span(packets_path),
                         trace_dns_answers(packets_path))
    requests = _append_parquet(shards.http, http_path)
    _merge_placements(shards.placements, placements_path)
    log.info("%s: %d connections, %d HTTP requests, merged from %d shards", trace, flows,
             requests, len(shards.flows))
    return {"connections": flows, "http_requests": requests}


def _without(schema: pa.Schema, key: bytes) -> pa.Schema:
    return schema.remove_metadata().with_metadata(
        {k: v for k, v in (schema.metadata or {}).items() if k != key})


def _merge_flows(paths: list[str], flows_path, conn_log_path, span: tuple[str, str],
                 dns: dict[str, str]) -> int:
    """The shards' flows in the order of their first packet, into one flows file (the first
    shard's schema and metadata, the rows left out summed) and conn.log (dated by the whole
    trace, names resolved with its DNS answers `dns`); the rows written."""
    key = b"tracelab.rows_in_no_connection"
    opened, closed = span
    schema = _without(pq.ParquetFile(paths[0]).schema_arrow, key)
    left_out = Counter()
    for path in paths:
        left_out.update(json.loads(pq.ParquetFile(path).metadata.metadata.get(key, b"{}")))
    rows = 0
    with atomic_path(flows_path) as flows_file, \
            pq.ParquetWriter(flows_file, schema, **parquet_options(schema)) as writer, \
            atomic_path(conn_log_path) as log_file, log_file.open("wb") as handle:
        conn_log = conn_log_writer(handle, opened, dns)
        for flows in merge_sorted(paths, FLOW_ORDER):
            writer.write_table(stored_flows(flows))
            conn_log.write_flows(flows)
            rows += flows.num_rows
        conn_log.close(closed)
        writer.add_key_value_metadata({key.decode(): json.dumps(dict(left_out))})
    return rows


def _merge_placements(paths: list[str], path) -> None:
    """The shards' placements in frame order, into one file with the first one's schema."""
    schema = pq.ParquetFile(paths[0]).schema_arrow
    with atomic_path(path) as temporary, pq.ParquetWriter(temporary, schema,
                                                          **parquet_options(schema)) as writer:
        for placed in merge_sorted(paths, PLACEMENT_ORDER):
            writer.write_table(placed)


def _append_parquet(paths: list[str], path) -> int:
    """The tables at `paths` appended into one file, batch by batch, with the first one's
    schema."""
    schema = pq.ParquetFile(paths[0]).schema_arrow
    rows = 0
    with atomic_path(path) as temporary, pq.ParquetWriter(temporary, schema,
                                                          **parquet_options(schema)) as writer:
        for part in paths:
            for batch in record_batches(pq.ParquetFile(part)):
                writer.write_batch(batch)
                rows += batch.num_rows
    return rows

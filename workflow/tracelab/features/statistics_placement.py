"""An export's rows without ports placed in their connection, for Wireshark's statistics.

In a Wireshark CSV export the Info of HTTP and TLS rows, and of the TCP rows "[TCP segment of a
reassembled PDU]" that start a message, shows no ports, while Wireshark's Conversations and
Endpoints count such frames in their TCP conversation. The connection stage places these rows
in their connection from the sequence numbers around them (`tracelab.security.attach`: on the
bundled browsing export, every row it places is in its true connection, and it leaves out what
the export cannot decide). The statistics place them the same way, with the same settings
(`security.flows`), by calling that stage's assembly on the packets of the address pairs that
have such rows, a partition of address pairs at a time (`tracelab.security.partitions`): a
placed row gets its connection's ports (the originator's as source when it was sent by the
originator) and transport. Rows left out stay without ports and count only in the address
endpoints and conversations; `Placement` counts both.

No per-frame placement is read from the connection stage's outputs: its flows table has none,
and a sharded trace's connections are made in other jobs. The assembly is repeated here on the
address pairs concerned only; a capture has no such rows and is read as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tracelab.core.streaming import record_batches
from tracelab.security.connections import (
    NOT_TRANSPORT,
    PACKET_COLUMNS,
    FlowSettings,
    assemble_connections,
)
from tracelab.security.partitions import address_hash, partition_tables

# Packets a partition of address pairs holds while its connections are assembled: the
# connection stage measures about 1 MB a thousand packets, so about 250 MB here (the placement
# does not depend on it: an address pair is never split).
PLACEMENT_PACKETS = 250_000
# Column added to each placed batch: the transport of a placed row's connection (True: TCP,
# False: UDP), null for the other rows.
PLACED_TCP = "placed_tcp"


@dataclass
class Placement:
    """Rows without ports of a transport protocol: placed in a connection, or not."""

    placed: int = 0
    unplaced: int = 0

    def metadata(self) -> dict:
        return {"rows_without_ports_placed": self.placed,
                "rows_without_ports_unplaced": self.unplaced}


def waiting_rows(table: pa.Table | pa.RecordBatch) -> np.ndarray:
    """Rows without both ports whose protocol is not below the transport layer (the rows the
    connection stage tries to place)."""
    protocol = table.column("protocol")
    if isinstance(protocol, pa.ChunkedArray):
        protocol = protocol.combine_chunks()
    if not pa.types.is_dictionary(protocol.type):
        protocol = pc.dictionary_encode(protocol)
    below = pc.match_substring_regex(protocol.dictionary, NOT_TRANSPORT.pattern)
    transport = ~pc.take(below, protocol.indices).to_numpy(zero_copy_only=False)
    ported = pc.and_(table.column("src_port").is_valid(), table.column("dst_port").is_valid())
    return transport & ~np.asarray(ported.to_numpy(zero_copy_only=False), bool)


def has_waiting_rows(packets_path) -> bool:
    """Whether the packet table holds any row to place (one pass over three columns)."""
    batches = record_batches(pq.ParquetFile(packets_path), ["protocol", "src_port", "dst_port"])
    return any(waiting_rows(batch).any() for batch in batches)


def _with_ports(table: pa.Table, rows: np.ndarray, ports: dict[str, np.ndarray]) -> pa.Table:
    """`table` with `ports` (src_port, dst_port values) written into `rows`."""
    for name, values in ports.items():
        column = table.column(name).combine_chunks()
        filled = column.fill_null(-1).to_numpy().astype(np.int32)
        filled[rows] = values
        table = table.set_column(table.schema.get_field_index(name), name,
                                 pa.array(filled, pa.int32(), mask=filled < 0))
    return table


def placed_table(table: pa.Table, settings: FlowSettings, trace: str,
                 placement: Placement) -> pa.Table:
    """`table` (a partition of whole address pairs, PACKET_COLUMNS at least) with its waiting
    rows that the connection stage places given their connection's ports, and PLACED_TCP."""
    waiting = waiting_rows(table)
    placed_tcp = np.zeros(table.num_rows, bool)
    placed = np.zeros(table.num_rows, bool)
    if waiting.any():
        pair = address_hash(table.column("src")) + address_hash(table.column("dst"))
        rows = np.flatnonzero(np.isin(pair, pair[waiting]))
        connections = assemble_connections(table.take(rows).select(PACKET_COLUMNS), settings,
                                           trace)
        flow = connections.packet_flow
        inside = waiting[rows] & (flow >= 0)
        rows, flow, is_orig = rows[inside], flow[inside], connections.packet_is_orig[inside]
        flows = connections.flows
        orig, resp = (flows[name].to_numpy(np.int32)[flow] for name in ("orig_port",
                                                                          "resp_port"))
        table = _with_ports(table, rows, {"src_port": np.where(is_orig, orig, resp),
                                          "dst_port": np.where(is_orig, resp, orig)})
        placed[rows] = True
        placed_tcp[rows] = flows["proto"].to_numpy(object)[flow] == "tcp"
    placement.placed += int(placed.sum())
    placement.unplaced += int(waiting.sum() - placed.sum())
    return table.append_column(PLACED_TCP, pa.array(placed_tcp, mask=~placed))


@dataclass(frozen=True)
class PlacementRun:
    """What a placement needs besides the packet table: the connection stage's settings, the
    trace's name (its connections' uids), a scratch folder for the partitions, the counts."""

    settings: FlowSettings
    trace: str
    scratch: Path
    placement: Placement


def placed_batches(packets_path, columns: list[str], run: PlacementRun,
                   batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The packet table's `columns` and PLACED_TCP, a partition of address pairs after another
    (rows in file order within one), in batches of at most `batch_rows`."""
    read = list(dict.fromkeys([*PACKET_COLUMNS, *columns]))
    for table in partition_tables(packets_path, read, PLACEMENT_PACKETS, run.scratch):
        placed = placed_table(table, run.settings, run.trace, run.placement)
        yield from placed.select([*columns, PLACED_TCP]).to_batches(max_chunksize=batch_rows)

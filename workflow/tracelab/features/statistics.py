"""Wireshark's Statistics menus as tables, per trace: Endpoints, Conversations, Protocol Hierarchy.

The packet table is read in batches; each batch's conversation rows are grouped with pyarrow, by
integer codes of its texts (`tracelab.features.statistics_codes`). The endpoints are totalled
from the conversations' totals (two rows a conversation, one an end: far fewer than the four a
packet they took when grouped from the packets). The stage routes the grouped conversation rows
by address pair into partitions on disk (one a PARTITION_PACKETS packets), totals each partition
alone, routes the endpoint rows made of its totals by address into partitions of their own, and
merges the partitions' sorted rows into each table in its order: memory holds one partition's
endpoints or conversations, whatever the trace's length (a large capture has millions of TCP
endpoints and conversations); a trace of one partition is totalled and written from memory,
without scratch files. `file_statistics` holds all totals at once (running totals merged batch
by batch). The trace's page, statistics.html, is made in `tracelab.features.statistics_page`.
Wireshark's meanings:

- Bytes are frame lengths on the wire (`length`), as in every Wireshark statistic.
- Endpoints (Statistics › Endpoints): every address, with the frames it sent (tx) and received
  (rx); a TCP or UDP endpoint is an address and a port. `type` is the address family: IPv4,
  IPv6, Ethernet (a MAC address: the packet table has one only for non-IP frames) or `name`
  (an export shows addresses resolved to names); TCP or UDP for the port endpoints.
- Conversations (Statistics › Conversations): frames between two addresses (IPv4, IPv6, ...)
  or two address:port endpoints (TCP, UDP), both directions. A is the sender of the
  conversation's first frame in file order. `rel_start_s` is that frame's time since the
  trace's first packet; `duration_s` the span to its last frame.
- Protocol hierarchy (Statistics › Protocol Hierarchy): frames and bytes per layer path such as
  `frame:ip:tcp:http`; a frame counts at its own path and every prefix of it. An
  approximation, from the packet table's columns rather than a dissector: the network layer
  comes from the source address (IPv4 `ip`, IPv6 `ipv6`, a MAC address none, a resolved name
  `ip`); the transport is `tcp` where the row has TCP flags, `udp` where it has ports but no
  flags, that of its connection for a row placed in one (below), else implied by the protocol
  (TCP, HTTP, TLS: tcp; UDP, DNS, QUIC...: udp); the last layer is the Protocol column
  (TLSv1.2 and other TLS/SSL versions as `tls`). The root is `frame`, whatever the link layer.
  Up to the transport, the counts equal Wireshark's; above it Wireshark counts every segment
  of a reassembled message and shows `data` and `_ws.short`, while the Protocol column names
  the segment where a message starts.

An export's rows without ports (HTTP, TLS, "[TCP segment of a reassembled PDU]") count in the
TCP/UDP endpoints and conversations of the connection the connection stage placed them in (its
placements.parquet, joined by frame: `tracelab.features.statistics_placement`); the rows left
unplaced count in the address rows only, and both are counted in the tables' metadata
(`tracelab.rows_without_ports_placed`, `..._unplaced`) and on the page. Ports are int32 with
nulls on address rows; the files carry pandas' metadata, so `pandas.read_parquet` gives them as
nullable Int32, not float64 (one table of both kinds, as Wireshark's dialog lists them, rather
than two).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tracelab.core.html import write_html
from tracelab.core.streaming import ordered_map, read_ahead, record_batches
from tracelab.core.tables import DICT_STRING, Column, Table
from tracelab.features.protocol_hierarchy import layer_path, prefix_totals
from tracelab.features.statistics_codes import ADDRESS_TYPES, Codebook, text_ranks
from tracelab.features.statistics_page import Largest, statistics_html
from tracelab.features.statistics_placement import PLACED_TCP, PlacedRows
from tracelab.features.statistics_tables import PartitionedTable, pandas_metadata
from tracelab.features.statistics_totals import (
    PARTITION_PACKETS,
    PartitionSink,
    Rollup,
    partitions,
)

log = logging.getLogger(__name__)

COLUMNS = ["frame", "t_rel_s", "src", "dst", "protocol", "length", "src_port", "dst_port",
           "tcp_flags"]
BATCH_ROWS = 1 << 16
# Each table's order (Wireshark's: by type, then most bytes or earliest start): its columns, and
# which of them sort in descending order.
ENDPOINT_ORDER = {"type": False, "bytes": True, "address": False, "port": False}
CONVERSATION_ORDER = {"type": False, "rel_start_s": False, "address_a": False,
                      "address_b": False}

ENDPOINT_TYPES = [*ADDRESS_TYPES, "TCP", "UDP"]
TYPE_NAMES = pa.array(ENDPOINT_TYPES, pa.string())
# Each type code's rank by its name (the tables sort types by name, as pandas sorts text).
TYPE_RANKS = text_ranks(ENDPOINT_TYPES)
TRANSPORTS = ["tcp", "udp"]
NO_PORT = -1

COUNTS = [
    Column("packets", pa.int64(), "Frames, both directions.", unit="frames"),
    Column("bytes", pa.int64(), "Frame bytes, both directions.", unit="bytes"),
]
TRACE = Column("trace", DICT_STRING, "Trace name from the sheet.")

ENDPOINTS = Table("endpoints", "results/features/{trace}/endpoints.parquet", (
    "One row an endpoint, as Wireshark's Statistics › Endpoints: an address, or an address "
    "and a TCP/UDP port. An export's rows without ports count in the port rows where the "
    "connection stage places them; metadata `tracelab.rows_without_ports_placed`, "
    "`tracelab.rows_without_ports_unplaced`."), [
    TRACE,
    Column("type", DICT_STRING, "IPv4, IPv6, Ethernet (MAC address of a non-IP frame), name "
           "(an address the export shows resolved), TCP or UDP (address and port)."),
    Column("address", pa.string(), "The address (or name)."),
    Column("port", pa.int32(), "The port, for TCP and UDP endpoints; null on address rows "
           "(pandas reads it as nullable Int32).", nullable=True),
    *COUNTS,
    Column("tx_packets", pa.int64(), "Frames it sent.", unit="frames"),
    Column("tx_bytes", pa.int64(), "Frame bytes it sent.", unit="bytes"),
    Column("rx_packets", pa.int64(), "Frames it received.", unit="frames"),
    Column("rx_bytes", pa.int64(), "Frame bytes it received.", unit="bytes"),
])

CONVERSATIONS = Table("conversations", "results/features/{trace}/conversations.parquet", (
    "One row a conversation, as Wireshark's Statistics › Conversations: two addresses, or two "
    "address:port endpoints of TCP or UDP; A sent the first frame. Rows without ports and "
    "metadata as in endpoints."), [
    TRACE,
    Column("type", DICT_STRING, "IPv4, IPv6, Ethernet or name (an address's type; where an "
           "export pairs a name with an address, the address's), TCP or UDP."),
    Column("address_a", pa.string(), "Address of A, the sender of the first frame."),
    Column("port_a", pa.int32(), "A's port (TCP, UDP).", nullable=True),
    Column("address_b", pa.string(), "Address of B."),
    Column("port_b", pa.int32(), "B's port (TCP, UDP).", nullable=True),
    *COUNTS,
    Column("packets_a_to_b", pa.int64(), "Frames from A to B.", unit="frames"),
    Column("bytes_a_to_b", pa.int64(), "Frame bytes from A to B.", unit="bytes"),
    Column("packets_b_to_a", pa.int64(), "Frames from B to A.", unit="frames"),
    Column("bytes_b_to_a", pa.int64(), "Frame bytes from B to A.", unit="bytes"),
    Column("rel_start_s", pa.float64(), "First frame, since the trace's first packet.",
           unit="s"),
    Column("duration_s", pa.float64(), "From the first frame to the last.", unit="s"),
])

PROTOCOL_HIERARCHY = Table(
    "protocol_hierarchy", "results/features/{trace}/protocol_hierarchy.parquet", (
        "One row a protocol layer path, as Wireshark's Statistics › Protocol Hierarchy; a "
        "frame counts at its path and every prefix (approximated from the Protocol, port and "
        "flag columns: see tracelab.features.statistics)."), [
        TRACE,
        Column("path", pa.string(), "Layers from the root, e.g. `frame:ip:tcp:http`."),
        Column("protocol", pa.string(), "The path's last layer."),
        Column("depth", pa.int32(), "Layers below the root (frame: 0)."),
        Column("frames", pa.int64(), "Frames at this path or under it.", unit="frames"),
        Column("bytes", pa.int64(), "Their frame bytes.", unit="bytes"),
        Column("frames_share", pa.float64(), "Share of the trace's frames (0-1)."),
        Column("bytes_share", pa.float64(), "Share of the trace's bytes (0-1)."),
    ])


def _ports(batch: pa.RecordBatch, name: str) -> np.ndarray:
    """A port column with NO_PORT for null."""
    return batch.column(name).fill_null(NO_PORT).to_numpy().astype(np.int32)


@dataclass
class TraceStatistics:
    """The running totals of one trace's endpoints, conversations and protocol paths, keyed
    by integer codes: addresses and protocols (Codebook), types (ENDPOINT_TYPES), transports
    (TRANSPORTS, -1 for none) and ports (NO_PORT for none)."""

    addresses: Codebook = field(default_factory=Codebook)
    protocols: Codebook = field(default_factory=Codebook)
    endpoints: Rollup = field(default_factory=lambda: Rollup(
        ["type", "address", "port"], {n: "sum" for n in ("tx_packets", "tx_bytes",
                                                           "rx_packets", "rx_bytes")}))
    conversations: Rollup = field(default_factory=lambda: Rollup(
        ["type", "low", "low_port", "high", "high_port"],
        {"forward_packets": "sum", "forward_bytes": "sum", "reverse_packets": "sum",
         "reverse_bytes": "sum", "first_row": "min", "start": "min", "end": "max"}))
    layers: Rollup = field(default_factory=lambda: Rollup(
        ["type", "transport", "protocol"], {"frames": "sum", "bytes": "sum"}))
    rows: int = 0  # packets added so far: the next batch's first row's place in the file

    def route(self, directory: Path, count: int) -> None:
        """Send conversation totals to `count` partitions in `directory` (by address pair),
        and the endpoint totals made of them (by address), instead of holding them."""
        self.conversations.sink = PartitionSink(directory, "conversations", count,
                                                ["low", "high"])
        self.endpoints.sink = PartitionSink(directory, "endpoints", count, ["address"])

    def conversation_totals(self) -> Iterator[pa.Table]:
        """Each partition's conversation totals (all of them when not routed; call after the
        last `add`), their endpoints' totals added to `endpoints` as each is given."""
        for part in partitions(self.conversations):
            totals, endpoint_rows = self.conversation_part(part)
            self.add_endpoints(endpoint_rows)
            yield totals

    def conversation_part(self, part: Rollup) -> tuple[pa.Table | None, pa.Table | None]:
        """One partition's conversation totals, the address pairs' made whole, and the
        endpoint rows made of them (None, None: no rows); changes nothing held, so partitions
        can be totalled at once."""
        totals = part.result()
        if totals is None:
            return None, None
        totals = _with_address_pairs(totals, self.addresses.kinds, part)
        return totals, _endpoint_rows(totals, self.addresses.kinds)

    def add_endpoints(self, rows: pa.Table | None) -> None:
        """Endpoint rows of a partition's conversations (`conversation_part`), in partition
        order."""
        if rows is not None:
            self.endpoints.add(rows)

    def endpoint_totals(self) -> Iterator[pa.Table]:
        """Each partition's endpoint totals (call after the conversation totals)."""
        for part in partitions(self.endpoints):
            yield part.result()

    def add(self, batch: pa.RecordBatch) -> None:
        src = self.addresses.encode(batch.column("src"))
        dst = self.addresses.encode(batch.column("dst"))
        src_type, dst_type = self.addresses.kinds[src], self.addresses.kinds[dst]
        length = batch.column("length").to_numpy().astype(np.int64)
        t_rel_s = batch.column("t_rel_s").to_numpy()
        src_port, dst_port = _ports(batch, "src_port"), _ports(batch, "dst_port")
        ported = (src_port != NO_PORT) & (dst_port != NO_PORT)
        # tcp where the row has TCP flags (or was placed in a TCP connection), udp where it
        # has ports but no flags, else none.
        tcp = batch.column("tcp_flags").is_valid().to_numpy(zero_copy_only=False)
        if PLACED_TCP in batch.schema.names:
            tcp = tcp | batch.column(PLACED_TCP).fill_null(False).to_numpy(zero_copy_only=False)
        transport = np.where(tcp, TRANSPORTS.index("tcp"),
                             np.where(ported, TRANSPORTS.index("udp"), -1)).astype(np.int8)
        self.layers.add(pa.table({
            "type": src_type, "transport": transport,
            "protocol": self.protocols.encode(batch.column("protocol")),
            "frames": np.ones(len(length), np.int64), "bytes": length}))
        # TCP or UDP conversations where the row has both ports; -1: not one.
        port_type = np.where(ported & (transport >= 0),
                             ENDPOINT_TYPES.index("TCP") + transport, -1).astype(np.int8)
        no_port = np.full(len(length), NO_PORT, np.int32)
        # An address row only for a packet without a port row (-1: none): the address pairs of
        # the others are totalled from the port pairs' totals (`_with_address_pairs`).
        lone = np.where(port_type < 0, src_type, -1).astype(np.int8)
        pairs = [((src, lone, no_port), (dst, dst_type, no_port)),
                 ((src, port_type, src_port), (dst, port_type, dst_port))]
        # A batch's rows grouped at once (address and port rows differ in type, so are never
        # one group). The endpoints are totalled from the conversations' totals, which are
        # fewer rows than packets.
        place = np.arange(self.rows, self.rows + len(length), dtype=np.int64)
        self.rows += len(length)
        self.conversations.add(pa.concat_tables([
            _conversation_rows(sender, receiver, t_rel_s, length, place)
            for sender, receiver in pairs]))

    def tables(self, trace: str) -> tuple[pa.Table, pa.Table, pa.Table]:
        """The three tables, all totals held (not routed)."""
        conversations = self.conversation_table(trace, next(self.conversation_totals()))
        return (self.endpoint_table(trace, next(self.endpoint_totals())), conversations,
                self.hierarchy_table(trace))

    def endpoint_table(self, trace: str, totals: pa.Table | None) -> pa.Table:
        """ENDPOINTS rows of endpoint totals, in Wireshark's order."""
        if totals is None:
            return ENDPOINTS.schema.empty_table()
        values = {name: totals.column(name).to_numpy() for name in totals.column_names}
        values["packets"] = values["tx_packets"] + values["rx_packets"]
        values["bytes"] = values["tx_bytes"] + values["rx_bytes"]
        # Wireshark's order (ENDPOINT_ORDER; null ports, NO_PORT, first as in `order_keys`:
        # only address rows have them); np.lexsort's last key sorts first.
        order = np.lexsort([values["port"],
                            self.addresses.sort_ranks()[values["address"]], -values["bytes"],
                            TYPE_RANKS[values["type"]]])
        values = {name: column[order] for name, column in values.items()}
        return _with_trace({**values, **self._named(values, ["address"], ["port"])}, trace,
                           ENDPOINTS)

    def conversation_table(self, trace: str, totals: pa.Table | None) -> pa.Table:
        """CONVERSATIONS rows of conversation totals, in Wireshark's order."""
        if totals is None:
            return CONVERSATIONS.schema.empty_table()
        low_first = (totals.column("first_row").to_numpy() & 1).astype(bool)
        values = {"type": totals.column("type").to_numpy()}
        # (A's column, B's column) from (the low side's, the high side's).
        sides = {("address_a", "address_b"): ("low", "high"),
                 ("port_a", "port_b"): ("low_port", "high_port"),
                 ("packets_a_to_b", "packets_b_to_a"): ("forward_packets", "reverse_packets"),
                 ("bytes_a_to_b", "bytes_b_to_a"): ("forward_bytes", "reverse_bytes")}
        for (a, b), (low, high) in sides.items():
            low, high = totals.column(low).to_numpy(), totals.column(high).to_numpy()
            values[a], values[b] = np.where(low_first, low, high), np.where(low_first, high, low)
        values["packets"] = values["packets_a_to_b"] + values["packets_b_to_a"]
        values["bytes"] = values["bytes_a_to_b"] + values["bytes_b_to_a"]
        values["rel_start_s"] = totals.column("start").to_numpy()
        values["duration_s"] = totals.column("end").to_numpy() - values["rel_start_s"]
        # Wireshark's order (CONVERSATION_ORDER), ties in the totals' order (lexsort is
        # stable; its last key sorts first).
        ranks = self.addresses.sort_ranks()
        order = np.lexsort([ranks[values["address_b"]], ranks[values["address_a"]],
                            values["rel_start_s"], TYPE_RANKS[values["type"]]])
        values = {name: column[order] for name, column in values.items()}
        return _with_trace({**values, **self._named(values, ["address_a", "address_b"],
                                                    ["port_a", "port_b"])}, trace, CONVERSATIONS)

    def _named(self, values: dict, addresses: list[str], ports: list[str]) -> dict:
        """Arrow columns of codes named: types, addresses; NO_PORT as null."""
        named = {"type": TYPE_NAMES.take(values["type"])}
        for column in addresses:
            named[column] = self.addresses.decode(values[column])
        for column in ports:
            named[column] = pa.array(values[column], pa.int32(), mask=values[column] == NO_PORT)
        return named

    def hierarchy_table(self, trace: str) -> pa.Table:
        totals = self.layers.result()
        if totals is None:
            return PROTOCOL_HIERARCHY.schema.empty_table()
        frame = totals.to_pandas()
        frame["path"] = [layer_path(ADDRESS_TYPES[kind], TRANSPORTS[way] if way >= 0 else None,
                                    self.protocols.names[protocol])
                         for kind, way, protocol in zip(frame["type"], frame["transport"],
                                                        frame["protocol"])]
        return _with_trace(prefix_totals(frame), trace, PROTOCOL_HIERARCHY)


def _with_address_pairs(totals: pa.Table, kinds: np.ndarray, rollup: Rollup) -> pa.Table:
    """Conversation totals with the address pairs' totals made whole: the packets of a port
    pair (TCP, UDP) count in the address pair of its two addresses, of the first of their
    types, in the same direction, except between an address and itself (one side: all from
    the low side, as an address row orders them). `rollup` says how totals are grouped."""
    types = totals.column("type").to_numpy()
    port_rows = totals.filter(types >= len(ADDRESS_TYPES))
    low, high = port_rows.column("low").to_numpy(), port_rows.column("high").to_numpy()
    one_address = low == high
    forward_packets, forward_bytes, reverse_packets, reverse_bytes = (
        port_rows.column(name).to_numpy() for name in
        ("forward_packets", "forward_bytes", "reverse_packets", "reverse_bytes"))
    first_row = port_rows.column("first_row").to_numpy()
    no_port = np.full(len(low), NO_PORT, np.int32)
    derived = pa.table({
        "forward_packets": np.where(one_address, forward_packets + reverse_packets,
                                    forward_packets),
        "forward_bytes": np.where(one_address, forward_bytes + reverse_bytes, forward_bytes),
        "reverse_packets": np.where(one_address, 0, reverse_packets),
        "reverse_bytes": np.where(one_address, 0, reverse_bytes),
        "first_row": np.where(one_address, first_row | 1, first_row),
        "start": port_rows.column("start"), "end": port_rows.column("end"),
        "type": np.minimum(kinds[low], kinds[high]), "low": low, "low_port": no_port,
        "high": high, "high_port": no_port}).cast(totals.schema)
    addresses = Rollup(rollup.keys, rollup.how, [totals.filter(types < len(ADDRESS_TYPES)),
                                                derived]).result()
    return pa.concat_tables([port_rows, addresses])


def _endpoint_rows(conversations: pa.Table, kinds: np.ndarray) -> pa.Table:
    """Two rows a conversation's totals: what its low side (A when it sent the first row) and its
    high side sent and received. An endpoint's totals are the sums of its rows: each packet
    a conversation counts was sent by one of its ends and received by the other. An address
    row's endpoint is of its own address's type (a conversation's is the first of its two);
    a port row's, TCP or UDP, the conversation's."""
    types = conversations.column("type").to_numpy()
    port_rows = types >= len(ADDRESS_TYPES)
    sides = []
    for address, port, sent, received in (("low", "low_port", "forward", "reverse"),
                                          ("high", "high_port", "reverse", "forward")):
        codes = conversations.column(address).to_numpy()
        sides.append(pa.table({
            "type": np.where(port_rows, types, kinds[codes]).astype(np.int8),
            "address": codes, "port": conversations.column(port),
            "tx_packets": conversations.column(f"{sent}_packets"),
            "tx_bytes": conversations.column(f"{sent}_bytes"),
            "rx_packets": conversations.column(f"{received}_packets"),
            "rx_bytes": conversations.column(f"{received}_bytes")}))
    return pa.concat_tables(sides)


def _conversation_rows(sender, receiver, t_rel_s: np.ndarray, length: np.ndarray,
                       place: np.ndarray) -> pa.Table:
    """Rows keyed by the pair in a fixed order (low, high: by address code), counted per
    direction; the conversation's type is the first of its two addresses' in ENDPOINT_TYPES
    (one type a pair whatever the codes: where an export pairs a name with an address, the
    address's, as Wireshark shows the capture). `first_row` is the packet's `place` in the
    file, doubled, plus 1 where the low side sent it: its least over a conversation's rows
    says whether the low side sent the first (Arrow's "min" groups in half the time of its
    "first", and the totals of any batches merge in any order)."""
    (src, src_type, src_port), (dst, dst_type, dst_port) = sender, receiver
    forward = (src < dst) | ((src == dst) & (src_port <= dst_port))
    types = np.minimum(src_type, dst_type)
    keep = types >= 0
    forward, src, dst, length = forward[keep], src[keep], dst[keep], length[keep]
    src_port, dst_port, t_rel_s, place = src_port[keep], dst_port[keep], t_rel_s[keep], place[keep]
    zero = np.zeros(len(length), np.int64)
    return pa.table({
        "type": types[keep],
        "low": np.where(forward, src, dst), "low_port": np.where(forward, src_port, dst_port),
        "high": np.where(forward, dst, src), "high_port": np.where(forward, dst_port, src_port),
        "forward_packets": forward.astype(np.int64),
        "forward_bytes": np.where(forward, length, zero),
        "reverse_packets": (~forward).astype(np.int64),
        "reverse_bytes": np.where(forward, zero, length),
        "first_row": place * 2 + forward, "start": t_rel_s, "end": t_rel_s})


def _with_trace(columns: dict | pd.DataFrame, trace: str, table: Table) -> pa.Table:
    """`columns` (arrays by name, or a frame) as `table` declares them, with the trace's name
    and pandas' metadata (`pandas_metadata`)."""
    rows = (pa.table({**columns, "trace": pa.repeat(trace, len(columns["type"]))})
            if isinstance(columns, dict) else columns.assign(trace=trace))
    return table.conform(rows).replace_schema_metadata(pandas_metadata(table))


def _fed(packets_path, statistics: TraceStatistics, placed: PlacedRows) -> TraceStatistics:
    """`statistics` fed the packet file batch by batch, in file order, its rows without ports
    in the connection the connection stage `placed` them in."""
    batches = record_batches(pq.ParquetFile(packets_path), COLUMNS, batch_size=BATCH_ROWS)
    for batch in read_ahead(placed.joined(batch) for batch in batches if batch.num_rows):
        statistics.add(batch)
    placed.check_all_joined()
    return statistics


def file_statistics(packets_path, trace: str,
                    placements_path) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Endpoints, conversations and protocol hierarchy of a packet file, streamed, the totals
    held in memory (the stage, `trace_statistics`, holds one partition at a time); rows without
    ports placed as the connection stage's `placements_path` says."""
    return _fed(packets_path, TraceStatistics(), PlacedRows.read(placements_path)).tables(trace)


@dataclass(frozen=True)
class StatisticsRun:
    """What the stage needs besides the packet table: the trace's name, the connection stage's
    placements of rows without ports, a scratch folder for the partitions, and how many
    partitions are totalled (and tables written) at once."""

    trace: str
    placed: PlacedRows
    scratch: Path
    threads: int = 1


@dataclass(frozen=True)
class _Totalling:
    """A partition's totals made into its part of the two tables (`PartitionedTable.part`):
    each call reads what `add` built and changes none of it, so partitions run at once."""

    statistics: TraceStatistics
    trace: str
    endpoints: PartitionedTable
    conversations: PartitionedTable

    def conversation_part(self, indexed: tuple[int, Rollup]):
        """(the conversations' part, the endpoint rows made of them) of a partition."""
        index, rollup = indexed
        totals, endpoint_rows = self.statistics.conversation_part(rollup)
        table = self.statistics.conversation_table(self.trace, totals)
        return self.conversations.part(index, table), endpoint_rows

    def endpoint_part(self, indexed: tuple[int, Rollup]) -> pa.Table | Path:
        index, rollup = indexed
        return self.endpoints.part(index, self.statistics.endpoint_table(self.trace,
                                                                         rollup.result()))


def _written(table_path: tuple[PartitionedTable, str], metadata: dict) -> Largest:
    table, path = table_path
    return table.write(path, metadata)


def partitioned_statistics(packets_path, run: StatisticsRun,
                           outputs: dict) -> tuple[Largest, Largest, pa.Table]:
    """Write the three tables to `outputs` (endpoints, conversations, hierarchy paths),
    holding PARTITION_PACKETS packets' endpoints or conversations a thread at a time (`run`'s
    threads total partitions, and write the two tables, at once); return what the page shows
    of them."""
    trace, scratch = run.trace, run.scratch
    rows = pq.ParquetFile(packets_path).metadata.num_rows
    count = max(1, math.ceil(rows / PARTITION_PACKETS))
    statistics = TraceStatistics()
    if count > 1:
        statistics.route(scratch, count)
    _fed(packets_path, statistics, run.placed)
    merged = scratch if count > 1 else None
    names = (pa.array(sorted({*statistics.addresses.names, *ENDPOINT_TYPES}), pa.string())
             if merged else None)
    totalling = _Totalling(statistics, trace,
                           PartitionedTable(ENDPOINTS, ENDPOINT_ORDER, merged, names),
                           PartitionedTable(CONVERSATIONS, CONVERSATION_ORDER, merged, names))
    for part, endpoint_rows in ordered_map(
            totalling.conversation_part, enumerate(partitions(statistics.conversations)),
            run.threads):
        totalling.conversations.keep(part)
        statistics.add_endpoints(endpoint_rows)
    for part in ordered_map(totalling.endpoint_part, enumerate(partitions(statistics.endpoints)),
                            run.threads):
        totalling.endpoints.keep(part)
    hierarchy = statistics.hierarchy_table(trace)
    PROTOCOL_HIERARCHY.write(hierarchy, outputs["hierarchy"], {"trace": trace})
    metadata = {"trace": trace, **run.placed.placement.metadata()}
    endpoints, conversations = ordered_map(
        partial(_written, metadata=metadata),
        [(totalling.endpoints, outputs["endpoints"]),
         (totalling.conversations, outputs["conversations"])], run.threads)
    return endpoints, conversations, hierarchy


def trace_statistics(*, trace: str, packets_path, placements_path, summary_path,
                     validation_path, endpoints_path, conversations_path, hierarchy_path,
                     html_path, threads: int = 1) -> dict:
    """Stage: a trace's endpoints, conversations and protocol hierarchy, and its page; rows
    without ports placed as the connection stage's placements (`placements_path`) say;
    `threads` partitions totalled at once (a trace of more than PARTITION_PACKETS)."""
    placed = PlacedRows.read(placements_path)
    with tempfile.TemporaryDirectory(prefix=".statistics-",
                                     dir=Path(endpoints_path).parent) as scratch:
        run = StatisticsRun(trace, placed, Path(scratch), threads)
        endpoints, conversations, hierarchy = partitioned_statistics(
            packets_path, run, {"endpoints": endpoints_path,
                                "conversations": conversations_path,
                                "hierarchy": hierarchy_path})
    with open(summary_path, encoding="utf-8") as handle:
        summary = json.load(handle)
    with open(validation_path, encoding="utf-8") as handle:
        validation = json.load(handle)
    write_html(html_path, f"Trace {trace}", statistics_html(
        summary, validation, (endpoints, conversations, hierarchy), placed.placement))
    counts = {"endpoints": sum(endpoints.counts.values()),
              "conversations": sum(conversations.counts.values()),
              **placed.placement.metadata()}
    log.info("%s: %d endpoints, %d conversations, %d protocol paths; rows without ports: "
             "%d placed in their connection, %d not", trace, counts["endpoints"],
             counts["conversations"], hierarchy.num_rows, placed.placement.placed,
             placed.placement.unplaced)
    return counts

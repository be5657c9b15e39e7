"""Connections: packets grouped into bidirectional TCP/UDP connections, in Zeek's conn.log terms.

A connection is the packets of one 5-tuple (either direction), cut into separate connections by
an idle gap, by an active timeout, and by a new SYN after the previous one was closed (port
reuse). Its originator is the first packet's sender unless Zeek would flip the roles
(`TCPAnalyzer::WantConnection`, `Connection::FlipRoles`): a TCP connection whose first packet
is not a pure SYN (a SYN-ACK or a mid-stream packet) sent from a likely server port
(`LIKELY_SERVER_PORTS`) to a port that is not one, or to one with a higher number unless the
packet is a SYN-ACK; a UDP connection whose first packet goes from a likely server port to a
port that is not one. A flipped connection's history starts with `^`. (Zeek's other flip, a
SYN arriving after its own SYN-ACK, is not made.) `history` and `conn_state` follow Zeek's
definitions (TCPSessionAdapter.cc `update_history`, the endpoint state machine, and
base/protocols/conn/main.zeek `conn_state`), computed from per-direction aggregates of the flag
bits instead of a packet-by-packet state machine:

- history letters, uppercase for the originator, lowercase for the responder, in order of first
  occurrence: S (SYN without ACK), H (SYN+ACK), A (pure ACK), D (payload), F (FIN), R (RST),
  I (FIN+RST in one packet), Q (SYN with FIN or RST), and logarithmically repeated T
  (retransmitted payload, from Wireshark's "Retransmission" analysis) and W (zero window),
  written at the 1st, 10th, 100th... occurrence; `^` first when the roles were flipped. UDP:
  D/d. Zeek repeats S/F/R when a later packet carries a different sequence number; here each
  appears once.
- conn_state: S0, S1, SF, REJ, S2, S3, RSTO, RSTR, RSTOS0, RSTRH, SH, SHR, OTH (TCP); for UDP
  SF (both sides sent), S0 (only the originator), SHR (only the responder: flipped roles).

Bytes, as Zeek counts them (`TCP_Endpoint::Size`, conn.log's `orig_bytes`): a TCP direction's
payload bytes are the sequence space it covered, from its lowest sequence number to the highest
of its own `seq + len (+1 for SYN, FIN)` and of the ACKs its peer sent, less one for a SYN and
one for a FIN (RSTs carry no trustworthy numbers and are left out). Where a direction has no
packet with a sequence number (UDP, or rows of an export whose Info shows none), its bytes are
the sum of its packets' payload: TCP's segment length where known, else the frame length less
the connection's header overhead (below); UDP's the frame length less a 14-byte Ethernet
header, the IP header (20 bytes IPv4, 40 IPv6) and 8. `missed_bytes` is the sequence space of
both directions that no captured, non-retransmitted payload covers. `*_ip_bytes` are IP-level
bytes: frame lengths less a 14-byte Ethernet II header (the link type of Wireshark exports and
of the bundled captures; Ethernet padding of short frames is counted too); `*_frame_bytes` are
frame lengths as captured.

Rows without ports (in Wireshark CSV exports, HTTP and TLS rows and some reassembled segments:
their Info shows no ports) are attached to a connection between the same two addresses, in the
same direction, by TCP sequence numbers: where a direction's next Seq (or its peer's Ack) jumps
past what its ported packets carried, the missing bytes are the unported rows sent in between,
and a row goes to a gap its payload fits (see `_attach_portless`). Rows no gap explains go to
the connection of the nearest packet of the same directed pair within the idle timeout. On the
bundled web_browsing export, checked against the ports in its pcapng, 671 of 708 such rows land
in their true connection (the rest are parallel TLS handshakes with records of equal sizes).
Their payload is estimated as the frame length minus the connection's header overhead (the
smallest `length - tcp_len` among its packets with a known segment length). Rows of link- and
network-layer protocols (ARP, ICMP, ...) are not connections and stay out; every row left out
is counted.

Memory: the packet table is split by address pair (`tracelab.security.partitions`) into
partitions of about `partition_packets` packets, made into connections `threads` at a time;
the tables hold the same rows whatever the number of partitions. Connections are written in
the order of their first packet (ties: partition order), merged from the partitions; HTTP
requests in partition order, by time within one. A uid is Zeek-style ('C' and 17 base62
digits), a hash of the trace name, the connection's endpoints and its first packet's time:
unique across traces, the same on every rerun and for any partitioning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import tempfile
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pandera.pandas import Check

from tracelab.core.atomic import atomic_path, tracelab_metadata
from tracelab.core.config import settings as config_settings
from tracelab.core.packets import PORT_CHECK, TCP_FLAG_BITS
from tracelab.core.streaming import MERGE_BATCH_ROWS, merge_sorted
from tracelab.core.tables import DICT_STRING, TIMESTAMP, Column, Table
from tracelab.security import http
from tracelab.security.attach import attach_portless
from tracelab.security.partitions import partition_count, split_packets
from tracelab.security.zeek_log import (
    LogField,
    ZeekLogWriter,
    count_text,
    interval_text,
    string_text,
    time_text,
    unset,
)

log = logging.getLogger(__name__)

FIN, SYN, RST, ACK = (TCP_FLAG_BITS[n] for n in ("FIN", "SYN", "RST", "ACK"))

ZEEK_CONN_STATES = ("S0", "S1", "SF", "REJ", "S2", "S3", "RSTO", "RSTR", "RSTOS0", "RSTRH",
                    "SH", "SHR", "OTH")

# Protocols below the transport layer: their rows carry no ports and belong to no connection.
NOT_TRANSPORT = re.compile(
    r"^(?:ARP|RARP|ICMP|ICMPv6|IGMP(?:v\d)?|MLD(?:v\d)?|STP|RSTP|LLDP|CDP|EAPOL|VRRP|OSPF|"
    r"PIM(?:v\d)?|GRE|ESP|AH|IPv4|IPv6|LLC|NDP)$")

# Zeek's `likely_server_ports` is the set of ports its analyzers register. Here: the IANA
# well-known ports (0-1023) and the ports Zeek's base analyzers register above them.
LIKELY_SERVER_PORTS = np.zeros(65536, bool)
LIKELY_SERVER_PORTS[:1024] = True
LIKELY_SERVER_PORTS[[1080, 1194, 1433, 1434, 1812, 1813, 1883, 2049, 2123, 2152, 2811, 3128,
                     3268, 3306, 3389, 3544, 4789, 5060, 5072, 5222, 5223, 5269, 5353, 5355,
                     5432, 5900, 6081, 6379, 6666, 6667, 6668, 6669, 8000, 8080, 8443, 8888,
                     20000]] = True

# Bytes of the link-layer header assumed (Ethernet II), and of IPv4/IPv6 and UDP headers.
LINK_HEADER, IPV4_HEADER, IPV6_HEADER, UDP_HEADER = 14, 20, 40, 8

# Endpoint states of Zeek's TCP analyzer (analyzer/protocol/tcp/TCP_Endpoint.h).
INACTIVE, SYN_SENT, SYN_ACK_SENT, PARTIAL, ESTABLISHED, CLOSED, RESET = range(7)

PACKET_COLUMNS = ["frame", "ts", "src", "dst", "protocol", "length", "src_port", "dst_port",
                  "tcp_flags", "tcp_seq", "tcp_ack", "tcp_win", "tcp_len", "tcp_analysis",
                  "http_method", "http_uri", "http_version", "http_status"]

_BYTES = {"unit": "bytes", "checks": [Check.ge(0)]}
FLOWS = Table("flows", "results/features/{trace}/flows.parquet", (
    "One row a TCP or UDP connection, in the terms of Zeek's conn.log (Zeek's names keep "
    "Zeek's meaning; see `tracelab.security.connections` for how each is computed "
    "from a packet table). Also written as `conn.log` in Zeek's ASCII format."), [
    Column("trace", DICT_STRING, "Trace name, as in the trace sheet."),
    Column("uid", pa.string(), "Connection id, 'C' and 17 base62 digits, unique across traces "
           "and the same on every run.", unique=True,
           checks=[Check.str_matches(r"^C[0-9A-Za-z]{17}$")]),
    Column("proto", DICT_STRING, "Transport protocol.", checks=[Check.isin(["tcp", "udp"])]),
    Column("orig", DICT_STRING, "Originator's address (Zeek's id.orig_h)."),
    Column("orig_port", pa.int32(), "Originator's port (id.orig_p).", checks=[PORT_CHECK]),
    Column("resp", DICT_STRING, "Responder's address (id.resp_h)."),
    Column("resp_port", pa.int32(), "Responder's port (id.resp_p).", checks=[PORT_CHECK]),
    Column("first_ts", TIMESTAMP, "First packet (Zeek's ts).", unit="ns"),
    Column("last_ts", TIMESTAMP, "Last packet.", unit="ns"),
    Column("duration_s", pa.float64(), "last_ts - first_ts (Zeek's duration).", unit="s",
           checks=[Check.ge(0)]),
    Column("service", pa.string(), "Protocols above TCP/UDP seen in the connection, sorted, "
           "comma-joined, as Wireshark names them (TLS for every TLS/SSL version).",
           nullable=True),
    Column("orig_bytes", pa.int64(), "Payload bytes the originator sent, from sequence "
           "numbers (Zeek's orig_bytes).", **_BYTES),
    Column("resp_bytes", pa.int64(), "Payload bytes the responder sent (resp_bytes).", **_BYTES),
    Column("conn_state", DICT_STRING, "Zeek's connection state (S0, SF, REJ, ...).",
           checks=[Check.isin(list(ZEEK_CONN_STATES))]),
    Column("missed_bytes", pa.int64(), "Sequence space of both directions no captured payload "
           "covers (missed_bytes).", **_BYTES),
    Column("history", pa.string(), "Zeek's history letters (ShADadFf, ...).",
           checks=[Check.str_matches(r"^\^?[SHADFRIQTWshadfriqtw]*$")]),
    Column("orig_pkts", pa.int64(), "Packets the originator sent.", unit="packets",
           checks=[Check.ge(0)]),
    Column("orig_ip_bytes", pa.int64(), "IP-level bytes the originator sent: frame lengths "
           "less the link header (orig_ip_bytes).", **_BYTES),
    Column("resp_pkts", pa.int64(), "Packets the responder sent.", unit="packets",
           checks=[Check.ge(0)]),
    Column("resp_ip_bytes", pa.int64(), "IP-level bytes the responder sent (resp_ip_bytes).",
           **_BYTES),
    Column("orig_frame_bytes", pa.int64(), "Frame bytes the originator sent, as captured.",
           **_BYTES),
    Column("resp_frame_bytes", pa.int64(), "Frame bytes the responder sent.", **_BYTES),
    Column("attached_pkts", pa.int64(), "Rows without ports (CSV exports) attached to the "
           "connection by sequence gaps or the nearest packet of the address pair.",
           unit="packets", checks=[Check.ge(0)]),
    Column("iat_min_s", pa.float64(), "Smallest time between consecutive packets (both "
           "directions); null for one packet.", unit="s", nullable=True),
    Column("iat_mean_s", pa.float64(), "Mean time between consecutive packets.", unit="s",
           nullable=True),
    Column("iat_std_s", pa.float64(), "Standard deviation (population) of those times.",
           unit="s", nullable=True),
    Column("iat_max_s", pa.float64(), "Largest time between consecutive packets.", unit="s",
           nullable=True),
    Column("len_min", pa.float64(), "Smallest frame length.", unit="bytes"),
    Column("len_mean", pa.float64(), "Mean frame length.", unit="bytes"),
    Column("len_std", pa.float64(), "Standard deviation (population) of frame lengths.",
           unit="bytes"),
    Column("len_max", pa.float64(), "Largest frame length.", unit="bytes"),
])

# conn.log: Zeek's default fields, in Zeek's order, each from a FLOWS column (None: unset).
CONN_LOG_FIELDS = [
    (LogField("ts", "time"), "first_ts"), (LogField("uid", "string"), "uid"),
    (LogField("id.orig_h", "addr"), "orig"), (LogField("id.orig_p", "port"), "orig_port"),
    (LogField("id.resp_h", "addr"), "resp"), (LogField("id.resp_p", "port"), "resp_port"),
    (LogField("proto", "enum"), "proto"), (LogField("service", "string"), "service"),
    (LogField("duration", "interval"), "duration_s"),
    (LogField("orig_bytes", "count"), "orig_bytes"),
    (LogField("resp_bytes", "count"), "resp_bytes"),
    (LogField("conn_state", "string"), "conn_state"),
    (LogField("local_orig", "bool"), None), (LogField("local_resp", "bool"), None),
    (LogField("missed_bytes", "count"), "missed_bytes"),
    (LogField("history", "string"), "history"),
    (LogField("orig_pkts", "count"), "orig_pkts"),
    (LogField("orig_ip_bytes", "count"), "orig_ip_bytes"),
    (LogField("resp_pkts", "count"), "resp_pkts"),
    (LogField("resp_ip_bytes", "count"), "resp_ip_bytes"),
    (LogField("tunnel_parents", "set[string]"), None),
]
# Zeek's analyzer names for the services Wireshark names otherwise.
ZEEK_SERVICE_NAMES = {"tls": "ssl"}


@dataclass(frozen=True)
class FlowSettings:
    """The `security.flows` config section (defaults: the config schema)."""

    idle_timeout_s: float
    active_timeout_s: float
    partition_packets: int


def flow_settings(values: dict | None = None) -> FlowSettings:
    """FlowSettings from config values over the schema's defaults."""
    return config_settings(FlowSettings, "security.flows", values)


@dataclass
class Connections:
    """The connection table, and each packet's connection (a row of `flows`, or -1) and
    direction."""

    flows: pd.DataFrame
    packet_flow: np.ndarray
    packet_is_orig: np.ndarray
    left_out: dict[str, int]

    @property
    def packet_uid(self) -> np.ndarray:
        """Each packet's connection uid (None outside connections)."""
        uids = np.append(self.flows["uid"].to_numpy(object), None)
        return uids[self.packet_flow]


@dataclass
class _Packets:
    """The packet columns connections are made of, as numpy arrays, one entry a packet;
    addresses as codes into `addresses`, protocols as codes into `protocols`."""

    frame: np.ndarray
    t: np.ndarray
    length: np.ndarray
    addresses: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    ported: np.ndarray
    src_port: np.ndarray
    dst_port: np.ndarray
    known_flags: np.ndarray
    flags: np.ndarray
    is_tcp: np.ndarray
    seq: np.ndarray
    ack: np.ndarray
    tcp_len: np.ndarray
    window: np.ndarray
    retransmission: np.ndarray
    protocols: np.ndarray
    protocol: np.ndarray

    @classmethod
    def of(cls, table: pa.Table) -> _Packets:
        src_names, src = _dictionary(table.column("src"))
        dst_names, dst = _dictionary(table.column("dst"))
        addresses = pd.Index(src_names).union(pd.Index(dst_names))
        protocols, protocol = _dictionary(table.column("protocol"))
        ported = _valid(table.column("src_port")) & _valid(table.column("dst_port"))
        known_flags = _valid(table.column("tcp_flags"))
        return cls(
            frame=_integers(table.column("frame")), t=_integers(table.column("ts")),
            length=_integers(table.column("length")), addresses=addresses.to_numpy(object),
            src=addresses.get_indexer(src_names)[src], dst=addresses.get_indexer(dst_names)[dst],
            ported=ported, src_port=_integers(table.column("src_port")),
            dst_port=_integers(table.column("dst_port")), known_flags=known_flags,
            flags=_integers(table.column("tcp_flags")), is_tcp=known_flags & ported,
            seq=_floats(table.column("tcp_seq")), ack=_floats(table.column("tcp_ack")),
            tcp_len=_floats(table.column("tcp_len")), window=_floats(table.column("tcp_win")),
            retransmission=pc.fill_null(pc.match_substring(
                table.column("tcp_analysis"), "Retransmission"), False).to_numpy(
                    zero_copy_only=False),
            protocols=protocols, protocol=protocol)

    def pair(self, rows: np.ndarray) -> np.ndarray:
        """A number for the unordered address pair of each of `rows`."""
        low = np.minimum(self.src[rows], self.dst[rows])
        return low * len(self.addresses) + np.maximum(self.src[rows], self.dst[rows])


def _dictionary(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A dictionary or string column as (distinct values, each row's code)."""
    if pa.types.is_dictionary(column.type):
        column = column.unify_dictionaries()
    array = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    if not pa.types.is_dictionary(array.type):
        array = array.dictionary_encode()
    names = array.dictionary.to_numpy(zero_copy_only=False).astype(object)
    return names, pc.fill_null(array.indices, 0).to_numpy(zero_copy_only=False).astype(np.int64)


def _valid(column: pa.ChunkedArray) -> np.ndarray:
    return column.is_valid().to_numpy(zero_copy_only=False)


def _integers(column: pa.ChunkedArray) -> np.ndarray:
    """Integers (timestamps as nanoseconds) with null as 0."""
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.int64())
    return pc.fill_null(column, 0).to_numpy(zero_copy_only=False).astype(np.int64)


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    """Numbers as float64 with null as NaN."""
    return column.cast(pa.float64()).to_numpy(zero_copy_only=False)


def load_packets(path) -> pa.Table:
    """The packet columns connections need, the whole table at once."""
    return pq.read_table(path, columns=PACKET_COLUMNS)


def _concat_per_flow(flow: np.ndarray, chars: np.ndarray, n_flows: int) -> np.ndarray:
    """The characters of each flow joined in order (rows sorted by flow), without a Python
    loop: each flow's characters fill one row of a fixed-width grid, read back as a string."""
    starts = _starts(flow)
    position = np.arange(len(flow)) - np.flatnonzero(starts)[np.cumsum(starts) - 1]
    width = int(position.max(initial=0)) + 1
    grid = np.zeros((n_flows, width), dtype="U1")
    grid[flow, position] = chars
    return grid.view(f"U{width}").ravel()


def _starts(values: np.ndarray) -> np.ndarray:
    """True where a run of equal values begins (always at the first element)."""
    starts = np.ones(len(values), bool)
    starts[1:] = values[1:] != values[:-1]
    return starts


def _flow_boundaries(key, ts, flags, is_tcp, settings: FlowSettings) -> np.ndarray:
    """Flow number of each row; rows sorted by (key, ts). Cuts: idle gap, reuse, active timeout."""
    n = len(key)
    idle_ns = int(settings.idle_timeout_s * 1e9)
    active_ns = int(settings.active_timeout_s * 1e9)
    segment_start = _starts(key) | (np.diff(ts, prepend=ts[:1]) > idle_ns)
    # Port reuse: a SYN (no ACK) after a FIN or RST since the previous SYN starts a connection.
    pure_syn = is_tcp & ((flags & (SYN | ACK | RST | FIN)) == SYN)
    closing = is_tcp & ((flags & (FIN | RST)) != 0)
    block = np.cumsum(pure_syn | segment_start) - 1
    block_closed = np.bincount(block, weights=closing, minlength=block.max(initial=-1) + 1) > 0
    reuse = pure_syn & ~segment_start & block_closed[np.maximum(block - 1, 0)]
    boundary = segment_start | reuse
    # Active timeout: each step moves every over-long flow's start to its first late packet;
    # the loop runs once per chunk of the longest flow, not once per packet.
    start_ts = ts[np.maximum.accumulate(np.where(boundary, np.arange(n), 0))]
    chunk = np.zeros(n, np.int64)
    while True:
        late = (ts - start_ts) >= active_ns
        if not late.any():
            break
        first_late = late & _starts(late)
        chunk[late] += 1
        restart = np.maximum.accumulate(np.where(first_late, np.arange(n), 0))
        start_ts = np.where(late, ts[restart], start_ts)
    return np.cumsum(boundary | _starts(chunk)) - 1


def _attach_portless(rows: pd.DataFrame, ported: pd.DataFrame, idle_ns: int) -> pd.DataFrame:
    """Each portless row's flow and direction (row, flow, is_orig), for the rows whose
    connection the evidence decides: see `tracelab.security.attach`."""
    return attach_portless(rows, ported, idle_ns).attached

@dataclass
class _Membership:
    """Each packet's flow (-1: none; flows numbered in 5-tuple order) and direction, each
    flow's first packet and whether its roles were flipped."""

    flow_of: np.ndarray
    is_orig: np.ndarray
    first_row: np.ndarray
    flipped: np.ndarray


def _flipped(packets: _Packets, first_row: np.ndarray) -> np.ndarray:
    """Zeek's `WantConnection` role flip, from each connection's first packet (module docs)."""
    flags = packets.flags[first_row]
    src_port, dst_port = packets.src_port[first_row], packets.dst_port[first_row]
    src_server = LIKELY_SERVER_PORTS[src_port]
    dst_server = LIKELY_SERVER_PORTS[dst_port]
    syn, ack = (flags & SYN) != 0, (flags & ACK) != 0
    tcp_flip = (~syn | ack) & src_server & (~dst_server | (~syn & (src_port < dst_port)))
    return np.where(packets.is_tcp[first_row], tcp_flip, src_server & ~dst_server)


def _membership(packets: _Packets, settings: FlowSettings) -> _Membership:
    """Flows of the ported rows: canonical 5-tuples (the lower address and port first), cut by
    `_flow_boundaries`, oriented by the first packet and Zeek's flip."""
    index = np.flatnonzero(packets.ported)
    src, dst = packets.src[index], packets.dst[index]
    src_port, dst_port = packets.src_port[index], packets.dst_port[index]
    src_low = (src < dst) | ((src == dst) & (src_port <= dst_port))
    pair = np.where(src_low, src, dst) * len(packets.addresses) + np.where(src_low, dst, src)
    pair_id = np.unique(pair, return_inverse=True)[1].reshape(-1)
    key = (pair_id << 34) | (np.where(src_low, src_port, dst_port) << 18) | \
        (np.where(src_low, dst_port, src_port) << 2) | packets.is_tcp[index]
    order = np.lexsort((packets.frame[index], packets.t[index], key))
    rows = index[order]
    flow_sorted = _flow_boundaries(key[order], packets.t[rows], packets.flags[rows],
                                   packets.is_tcp[rows], settings)
    first_row = rows[_starts(flow_sorted)]
    flipped = _flipped(packets, first_row)
    flow_of = np.full(len(packets.frame), -1, np.int64)
    flow_of[rows] = flow_sorted
    is_orig = np.zeros(len(packets.frame), bool)
    first = first_row[flow_sorted]
    is_orig[rows] = ((packets.src[rows] == packets.src[first])
                     & (packets.src_port[rows] == packets.src_port[first])) ^ flipped[flow_sorted]
    return _Membership(flow_of, is_orig, first_row, flipped)


def _row_frame(packets: _Packets, index: np.ndarray) -> pd.DataFrame:
    """The rows `index` in the frame `_attach_portless` takes (indexed by row number)."""
    return pd.DataFrame({
        "row": index, "src_code": packets.src[index], "dst_code": packets.dst[index],
        "t": packets.t[index], "frame": packets.frame[index], "length": packets.length[index]},
        index=index)


def _attach(packets: _Packets, member: _Membership, settings: FlowSettings) -> None:
    """Rows without ports (not below the transport layer) join a connection of their pair."""
    transport_like = ~pd.Series(packets.protocols, dtype="string").str.match(
        NOT_TRANSPORT.pattern, na=False).to_numpy(bool)
    portless = np.flatnonzero(~packets.ported & transport_like[packets.protocol])
    if not len(portless):
        return
    # Only connections between two hosts that exchanged port-less rows can take one.
    rows = np.flatnonzero(member.flow_of >= 0)
    rows = rows[np.isin(packets.pair(rows), packets.pair(portless))]
    rows = rows[np.lexsort((packets.frame[rows], packets.t[rows], member.flow_of[rows]))]
    ported = _row_frame(packets, rows).assign(
        flow=member.flow_of[rows], is_orig=member.is_orig[rows], is_tcp=packets.is_tcp[rows],
        flags=packets.flags[rows], seq=packets.seq[rows], ack=packets.ack[rows],
        len=packets.tcp_len[rows])
    attached = _attach_portless(_row_frame(packets, portless), ported,
                                int(settings.idle_timeout_s * 1e9))
    member.flow_of[attached["row"].to_numpy()] = attached["flow"].to_numpy()
    member.is_orig[attached["row"].to_numpy()] = attached["is_orig"].to_numpy()


def assemble_connections(packets: pa.Table | pd.DataFrame, settings: FlowSettings,
                         trace: str) -> Connections:
    """Group packets (PACKET_COLUMNS of a packet table, Arrow or pandas) into connections;
    see the module docstring for the rules."""
    if isinstance(packets, pd.DataFrame):
        packets = pa.Table.from_pandas(packets[PACKET_COLUMNS], preserve_index=False)
    arrays = _Packets.of(packets.select(PACKET_COLUMNS))
    member = _membership(arrays, settings)
    _attach(arrays, member, settings)
    inside = member.flow_of >= 0
    counts = np.bincount(arrays.protocol[~inside], minlength=len(arrays.protocols))
    left_out = {str(arrays.protocols[code]): int(counts[code]) for code in np.flatnonzero(counts)}
    flows, rank = _aggregate(arrays, member, trace)
    packet_flow = np.append(rank, -1)[member.flow_of]
    return Connections(flows=flows, packet_flow=packet_flow,
                       packet_is_orig=member.is_orig & inside, left_out=left_out)


class _PerFlow:
    """Per-flow reductions of row arrays sorted by flow, every flow 0..n-1 present."""

    def __init__(self, flow: np.ndarray):
        self.flow = flow
        self.starts = np.flatnonzero(_starts(flow))

    def any(self, mask) -> np.ndarray:
        return np.logical_or.reduceat(mask, self.starts)

    def sum(self, values) -> np.ndarray:
        return np.add.reduceat(values, self.starts)

    def min(self, values) -> np.ndarray:
        """Smallest value, ignoring NaN (NaN when all are)."""
        return np.fmin.reduceat(values, self.starts)

    def max(self, values) -> np.ndarray:
        return np.fmax.reduceat(values, self.starts)

    def first_position(self, mask) -> np.ndarray:
        """Row position of the first row where `mask` holds (inf when none)."""
        return self.min(np.where(mask, np.arange(len(mask)), np.inf))

    def mean_std(self, values) -> tuple[np.ndarray, np.ndarray]:
        """Mean and population standard deviation, ignoring NaN."""
        known = ~np.isnan(values)
        count = self.sum(known.astype(np.int64))
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.sum(np.where(known, values, 0.0)) / count
            deviation = np.where(known, values - mean[self.flow], 0.0)
            return mean, np.sqrt(self.sum(deviation ** 2) / count)


@dataclass
class _FlowRows:
    """A partition's member rows sorted by (flow, time, frame), with what the history, state
    and byte counts are made of."""

    flow: np.ndarray
    per: _PerFlow
    orig: np.ndarray
    tcp: np.ndarray
    known: np.ndarray
    syn: np.ndarray
    fin: np.ndarray
    rst: np.ndarray
    ack: np.ndarray
    payload: np.ndarray
    retransmitted: np.ndarray
    zero_window: np.ndarray

    @classmethod
    def of(cls, packets: _Packets, rows: np.ndarray, member: _Membership) -> _FlowRows:
        flow = member.flow_of[rows]
        per = _PerFlow(flow)
        orig = member.is_orig[rows]
        tcp = packets.is_tcp[member.first_row][flow]
        known = packets.known_flags[rows]
        flags = packets.flags[rows]
        syn, fin, rst, ack = (((flags & bit) != 0) & known & tcp for bit in (SYN, FIN, RST, ACK))
        # Payload: the segment length where known; else frame length less the flow's headers.
        length, tcp_len = packets.length[rows], packets.tcp_len[rows]
        overhead = per.min(length - tcp_len)
        payload = np.where(np.isnan(tcp_len), np.maximum(length - overhead[flow], 0), tcp_len)
        payload = np.where(tcp, np.nan_to_num(payload), 0.0)
        # Zeek's W: a zero window, not on or after a RST of this side, nor after the peer's FIN.
        position = np.arange(len(rows))
        own_rst = np.where(orig, per.first_position(rst & orig)[flow],
                           per.first_position(rst & ~orig)[flow])
        peer_fin = np.where(orig, per.first_position(fin & ~orig)[flow],
                            per.first_position(fin & orig)[flow])
        zero_window = tcp & (packets.window[rows] == 0) & (position < own_rst) & \
            (position < peer_fin)
        return cls(flow=flow, per=per, orig=orig, tcp=tcp, known=known, syn=syn, fin=fin,
                   rst=rst, ack=ack, payload=payload,
                   retransmitted=tcp & (payload > 0) & packets.retransmission[rows],
                   zero_window=zero_window)


# History letters by code (0: none; 1-8 in Zeek's order of checks), the originator's in upper
# case and the responder's in lower case; then T, W and the flip mark.
_LETTERS = np.array([list(" IQHSFRDATW^"), list(" iqhsfrdatw^")])
T_CODE, W_CODE, FLIP_CODE = 9, 10, 11


def _history(rows: _FlowRows, flipped: np.ndarray) -> np.ndarray:
    """Zeek's history string per flow."""
    several = (rows.syn.astype(int) + rows.fin + rows.rst) > 1
    data = rows.payload > 0
    code = np.select(
        [several & rows.fin & rows.rst, several, rows.syn & rows.ack, rows.syn, rows.fin,
         rows.rst, data, rows.ack & rows.known], np.arange(1, 9), 0)
    code = np.where(rows.tcp, code, 7)
    # First occurrence of each letter of each side of each flow.
    lettered = np.flatnonzero(code > 0)
    key = (rows.flow[lettered] * 2 + rows.orig[lettered]) * 16 + code[lettered]
    first = lettered[np.unique(key, return_index=True)[1]]
    events = [(rows.flow[first], first * 3, code[first], rows.orig[first])]
    for slot, (letter, happened) in enumerate(((T_CODE, rows.retransmitted),
                                               (W_CODE, rows.zero_window)), start=1):
        hits = np.flatnonzero(happened)
        side = rows.flow[hits] * 2 + rows.orig[hits]
        by_side = np.argsort(side, kind="stable")
        nth = np.empty(len(hits), np.int64)
        nth[by_side] = np.arange(len(hits)) - np.flatnonzero(_starts(side[by_side]))[
            np.cumsum(_starts(side[by_side])) - 1]
        kept = hits[np.isin(nth + 1, 10 ** np.arange(19))]
        events.append((rows.flow[kept], kept * 3 + slot, np.full(len(kept), letter),
                       rows.orig[kept]))
    flips = np.flatnonzero(flipped)
    events.append((flips, np.full(len(flips), -1), np.full(len(flips), FLIP_CODE),
                   np.ones(len(flips), bool)))
    flow, order, letters, orig = (np.concatenate(parts) for parts in zip(*events))
    sort = np.lexsort((order, flow))
    chars = _LETTERS[(~orig[sort]).astype(np.int64), letters[sort]]
    return _concat_per_flow(flow[sort], chars, len(flipped))


def _endpoint_state(pre, rst, fin, rst_order, fin_order, peer_fin):
    """Final state: RESET after a RST, CLOSED after a FIN; a RST after our own FIN and the
    peer's FIN (a normal close followed by a reset) leaves the endpoint CLOSED, as in Zeek."""
    reset_after_close = rst & fin & (fin_order < rst_order) & peer_fin
    return np.select([rst & ~reset_after_close, fin | reset_after_close], [RESET, CLOSED], pre)


def _side_flags(rows: _FlowRows, mine: np.ndarray) -> dict[str, np.ndarray]:
    """One side's per-flow control bits, in the terms of Zeek's endpoint states."""
    per = rows.per
    return {"syn": per.any(rows.syn & ~rows.ack & mine), "synack": per.any(rows.syn & rows.ack
                                                                          & mine),
            "fin": per.any(rows.fin & mine), "rst": per.any(rows.rst & mine),
            "any": per.any(mine), "data": per.any((rows.payload > 0) & mine),
            "fin_order": per.first_position(rows.fin & mine),
            "rst_order": per.first_position(rows.rst & mine)}


def _conn_state(is_tcp, o: dict, r: dict, no_payload, history) -> np.ndarray:
    """Zeek's conn_state (base/protocols/conn/main.zeek) from per-direction aggregates."""
    o_pre = np.select([~o["any"], o["syn"] & (r["syn"] | r["synack"]), o["syn"],
                       o["synack"] & r["syn"], o["synack"]],
                      [INACTIVE, ESTABLISHED, SYN_SENT, ESTABLISHED, SYN_ACK_SENT], PARTIAL)
    # A responder that only acks a SYN (no SYN-ACK, no data) stays inactive, as in Zeek.
    r_pre = np.select([r["syn"] | r["synack"], ~r["any"], o["syn"] & ~r["data"]],
                      [ESTABLISHED, INACTIVE, INACTIVE], PARTIAL)
    os_ = _endpoint_state(o_pre, o["rst"], o["fin"], o["rst_order"], o["fin_order"], r["fin"])
    rs = _endpoint_state(r_pre, r["rst"], r["fin"], r["rst_order"], r["fin_order"], o["fin"])
    o_inactive = (os_ == INACTIVE) | (os_ == PARTIAL)
    r_inactive = (rs == INACTIVE) | (rs == PARTIAL)
    syn_then_reset = pd.Series(history, dtype="string").str.contains(
        r"^\^?S[^HAFGIQ]*R", regex=True).to_numpy(bool)
    tcp_state = np.select(
        [
            (rs == RESET) & ((os_ == SYN_SENT) | (os_ == SYN_ACK_SENT)
                             | ((os_ == RESET) & no_payload)),
            (rs == RESET) & o_inactive,
            rs == RESET,
            (os_ == RESET) & r_inactive & syn_then_reset,
            (os_ == RESET) & r_inactive,
            os_ == RESET,
            (rs == CLOSED) & (os_ == CLOSED),
            (os_ == CLOSED) & r_inactive,
            os_ == CLOSED,
            (rs == CLOSED) & o_inactive,
            rs == CLOSED,
            (os_ == SYN_SENT) & (rs == INACTIVE),
            (os_ == ESTABLISHED) & (rs == ESTABLISHED),
        ],
        ["REJ", "RSTRH", "RSTR", "RSTOS0", "OTH", "RSTO", "SF", "SH", "S2", "SHR", "S3", "S0",
         "S1"],
        "OTH")
    # UDP: each side active once it sent anything.
    udp_state = np.select([o["any"] & r["any"], o["any"], r["any"]], ["SF", "S0", "SHR"], "OTH")
    return np.where(is_tcp, tcp_state, udp_state)


@dataclass
class _SideBytes:
    """One direction's byte counts per flow (module docstring: Zeek's definitions)."""

    payload: np.ndarray
    missed: np.ndarray
    frame: np.ndarray
    ip: np.ndarray


def _side_bytes(packets: _Packets, rows: np.ndarray, flow_rows: _FlowRows,
                mine: np.ndarray) -> _SideBytes:
    fr, per = flow_rows, flow_rows.per
    seq, ack_number = packets.seq[rows], packets.ack[rows]
    own = mine & fr.tcp & ~fr.rst & ~np.isnan(seq)
    start = per.min(np.where(own, seq, np.nan))
    own_end = per.max(np.where(own, seq + fr.payload + fr.syn + fr.fin, np.nan))
    peer_ack = per.max(np.where(~mine & fr.tcp & ~fr.rst & fr.ack, ack_number, np.nan))
    size = np.fmax(own_end, peer_ack) - start - per.any(fr.syn & own)
    size = np.maximum(np.where((size > 0) & per.any(fr.fin & own), size - 1, size), 0)
    length = packets.length[rows]
    ip_header = np.where(np.char.find(packets.addresses.astype(str), ":") >= 0, IPV6_HEADER,
                         IPV4_HEADER)[packets.src[rows]]
    udp_payload = np.maximum(length - LINK_HEADER - ip_header - UDP_HEADER, 0)
    summed = per.sum(np.where(mine, np.where(fr.tcp, fr.payload, udp_payload), 0.0))
    seen = per.sum(np.where(mine & ~fr.retransmitted & ~fr.rst, fr.payload, 0.0))
    numbered = ~np.isnan(start)
    return _SideBytes(
        payload=np.rint(np.where(numbered, size, summed)).astype(np.int64),
        missed=np.rint(np.where(numbered, np.maximum(size - seen, 0), 0)).astype(np.int64),
        frame=per.sum(np.where(mine, length, 0)),
        ip=per.sum(np.where(mine, np.maximum(length - LINK_HEADER, 0), 0)))


def _services(packets: _Packets, rows: np.ndarray, flow: np.ndarray, n_flows: int):
    """Each flow's protocols above TCP/UDP (TLS/SSL versions as TLS), sorted, comma-joined."""
    names = pd.Series(packets.protocols, dtype="string")
    names = names.where(~names.isin(["TCP", "UDP"]))
    names = names.where(~names.str.match(r"^(?:TLS|SSL)", na=False), "TLS")
    codes, catalogue = pd.factorize(names, sort=True)  # code order is name order; -1: none
    service = codes[packets.protocol[rows]]
    keyed = np.unique(flow[service >= 0] * (len(catalogue) + 1) + service[service >= 0])
    present_flow, present = keyed // (len(catalogue) + 1), keyed % (len(catalogue) + 1)
    # Code points 1.. stand for the names (0 is the grid's padding).
    combination = _concat_per_flow(present_flow, (present + 1).astype(np.uint32).view("U1"),
                                   n_flows)
    joined = {combo: ",".join(catalogue[ord(c) - 1] for c in combo)
              for combo in np.unique(combination) if combo}
    return pd.Series(combination).map(joined).to_numpy(object)


UID_ALPHABET = np.frombuffer(
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", np.uint8)
UID_DIGITS = 17  # the lowest 17 base62 digits of a 128-bit hash: about 101 bits
# SipHash keys (16 bytes each) of the two 64-bit halves of a uid's hash.
UID_KEYS = ("tracelab-uid-hi:", "tracelab-uid-lo:")


def connection_uids(keys: pa.Array) -> np.ndarray:
    """Zeek-style uids: 'C' and the lowest 17 base62 digits of a 128-bit hash (two SipHashes)
    of each key's text; Zeek's are 'C' and base62 of 96 random bits."""
    text = keys.to_numpy(zero_copy_only=False).astype(object)
    high, low = (pd.util.hash_array(text, hash_key=key, categorize=False) for key in UID_KEYS)
    mask = np.uint64(0xFFFFFFFF)
    limbs = [high >> np.uint64(32), high & mask, low >> np.uint64(32), low & mask]
    digits = np.empty((len(text), UID_DIGITS + 1), np.uint8)
    digits[:, 0] = ord("C")
    for place in range(UID_DIGITS, 0, -1):  # long division of the 128-bit number by 62
        remainder = np.zeros(len(text), np.uint64)
        for index, limb in enumerate(limbs):
            value = (remainder << np.uint64(32)) | limb
            limbs[index], remainder = value // np.uint64(62), value % np.uint64(62)
        digits[:, place] = UID_ALPHABET[remainder.astype(np.int64)]
    return digits.view(f"S{UID_DIGITS + 1}").ravel().astype(str).astype(object)


def uid_sort_keys(uids: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Two int64 arrays whose (first, second) order is the uids' text order: the 17 characters
    after 'C', each as its byte less ord('0') (0 to 74), ten in base 75 and then seven."""
    if isinstance(uids, pa.ChunkedArray):
        uids = uids.combine_chunks()
    width = UID_DIGITS + 1
    fixed = uids.cast(pa.binary(width))
    text = np.frombuffer(fixed.buffers()[1], np.uint8, count=len(fixed) * width,
                         offset=fixed.offset * width).reshape(-1, width)
    digits = text[:, 1:].astype(np.int64) - ord("0")
    high, low = digits[:, :10], digits[:, 10:]  # 75**10 < 2**63
    return high @ 75 ** np.arange(9, -1, -1), low @ 75 ** np.arange(6, -1, -1)


def _aggregate(packets: _Packets, member: _Membership, trace: str):
    """One row a flow, ordered by first packet; and each flow's row in that order."""
    n_flows = len(member.first_row)
    if not n_flows:
        return FLOWS.schema.empty_table().to_pandas(), np.zeros(0, np.int64)
    rows = np.flatnonzero(member.flow_of >= 0)
    rows = rows[np.lexsort((packets.frame[rows], packets.t[rows], member.flow_of[rows]))]
    flow_rows = _FlowRows.of(packets, rows, member)
    per, flow = flow_rows.per, flow_rows.flow
    history = _history(flow_rows, member.flipped)
    o = _side_flags(flow_rows, flow_rows.orig)
    r = _side_flags(flow_rows, ~flow_rows.orig)
    orig_bytes = _side_bytes(packets, rows, flow_rows, flow_rows.orig)
    resp_bytes = _side_bytes(packets, rows, flow_rows, ~flow_rows.orig)
    flow_is_tcp = packets.is_tcp[member.first_row]
    no_payload = ~o["data"] & ~r["data"]
    conn_state = _conn_state(flow_is_tcp, o, r, no_payload, history)

    t = packets.t[rows]
    iat = np.where(_starts(flow), np.nan, np.diff(t, prepend=t[:1]) / 1e9)
    iat_mean, iat_std = per.mean_std(iat)
    length = packets.length[rows].astype(np.float64)
    len_mean, len_std = per.mean_std(length)
    first_ts, last_ts = t[per.starts], np.maximum.reduceat(t, per.starts)

    first, flipped = member.first_row, member.flipped
    orig = np.where(flipped, packets.dst[first], packets.src[first])
    resp = np.where(flipped, packets.src[first], packets.dst[first])
    orig_port = np.where(flipped, packets.dst_port[first], packets.src_port[first])
    resp_port = np.where(flipped, packets.src_port[first], packets.dst_port[first])
    proto = np.where(flow_is_tcp, "tcp", "udp")
    address = packets.addresses
    # A connection's key: trace, protocol, endpoints and first packet's time.
    keys = pc.binary_join_element_wise(
        pa.repeat(pa.scalar(trace), n_flows), pa.array(proto),
        *(pa.array(values).cast(pa.string()) for values in (
            address[orig], orig_port, address[resp], resp_port, first_ts)), "|")
    flows = pd.DataFrame({
        "trace": trace, "uid": connection_uids(keys), "proto": proto,
        "orig": address[orig], "orig_port": orig_port.astype(np.int32),
        "resp": address[resp], "resp_port": resp_port.astype(np.int32),
        "first_ts": pd.DatetimeIndex(first_ts.astype("datetime64[ns]")).tz_localize("UTC"),
        "last_ts": pd.DatetimeIndex(last_ts.astype("datetime64[ns]")).tz_localize("UTC"),
        "duration_s": (last_ts - first_ts) / 1e9,
        "service": _services(packets, rows, flow, n_flows),
        "orig_bytes": orig_bytes.payload, "resp_bytes": resp_bytes.payload,
        "conn_state": conn_state,
        "missed_bytes": orig_bytes.missed + resp_bytes.missed,
        "history": history,
        "orig_pkts": per.sum(flow_rows.orig.astype(np.int64)), "orig_ip_bytes": orig_bytes.ip,
        "resp_pkts": per.sum((~flow_rows.orig).astype(np.int64)), "resp_ip_bytes": resp_bytes.ip,
        "orig_frame_bytes": orig_bytes.frame, "resp_frame_bytes": resp_bytes.frame,
        "attached_pkts": per.sum((~packets.ported[rows]).astype(np.int64)),
        "iat_min_s": per.min(iat), "iat_mean_s": iat_mean, "iat_std_s": iat_std,
        "iat_max_s": per.max(iat),
        "len_min": per.min(length), "len_mean": len_mean, "len_std": len_std,
        "len_max": per.max(length),
    })
    order = np.lexsort((packets.frame[first], first_ts))
    rank = np.empty(n_flows, np.int64)
    rank[order] = np.arange(n_flows)
    return flows.iloc[order].reset_index(drop=True), rank


def conn_log_fields(flows: pa.Table) -> list[pa.Array]:
    """conn.log's fields of each flow (a FLOWS table) as Zeek text. As Zeek's conn.log does,
    duration and the payload byte counts are left unset for a connection of no duration, and
    an empty history or service unset; service names are Zeek's (lowercase, `ssl` for TLS)."""
    flows = flows.combine_chunks()
    timed = pc.greater(flows.column("duration_s"), 0)
    first_ns = flows.column("first_ts").cast(pa.int64())
    last_ns = flows.column("last_ts").cast(pa.int64())
    service = pc.utf8_lower(flows.column("service"))
    for wireshark, zeek in ZEEK_SERVICE_NAMES.items():
        service = pc.replace_substring_regex(service, rf"\b{wireshark}\b", zeek)
    history = flows.column("history")
    text = {
        "first_ts": time_text(first_ns),
        "duration_s": interval_text(pc.if_else(timed, pc.subtract(last_ns, first_ns), None)),
        "service": string_text(service),
        "history": string_text(pc.if_else(pc.equal(history, ""), None, history)),
    }
    fields = []
    for log_field, column in CONN_LOG_FIELDS:
        if column is None:
            fields.append(unset(flows.num_rows))
        elif column in text:
            fields.append(text[column])
        elif column in ("orig_bytes", "resp_bytes"):
            fields.append(count_text(pc.if_else(timed, flows.column(column), None)))
        elif log_field.type in ("count", "port"):
            fields.append(count_text(flows.column(column)))
        else:
            fields.append(string_text(flows.column(column)))
    return [values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
            for values in fields]


def conn_log_writer(handle, opened: str) -> ZeekLogWriter:
    """A conn.log writer on `handle` (binary), its header dated `opened`."""
    return ZeekLogWriter(handle, "conn", [log_field for log_field, _ in CONN_LOG_FIELDS], opened)


class _TableAppender:
    """Appends checked parts of a declared table to one Parquet file (zstd), with `tracelab.*`
    metadata: known at the start in the Arrow schema, found on the way in the file's."""

    def __init__(self, table: Table, path: Path, metadata: dict):
        self.table = table
        schema = table.schema.with_metadata(tracelab_metadata(metadata))
        self.writer = pq.ParquetWriter(path, schema, compression="zstd")
        self.rows = 0

    def write(self, part: pd.DataFrame) -> pa.Table:
        """Conform, check and append `part`; returns it as written."""
        table = self.table.check(self.table.conform(part))
        self.append(table)
        return table

    def append(self, table: pa.Table) -> None:
        """Append rows checked already."""
        self.writer.write_table(table)
        self.rows += table.num_rows

    def close(self, metadata: dict) -> None:
        self.writer.add_key_value_metadata(tracelab_metadata(metadata))
        self.writer.close()


def _partition_tables(packets_path, settings: FlowSettings, scratch: Path):
    """The packet table (PACKET_COLUMNS) in partitions of about `partition_packets` rows."""
    rows = pq.ParquetFile(packets_path).metadata.num_rows
    count = partition_count(rows, settings.partition_packets)
    log.info("%d packets in %d partition(s)", rows, count)
    if count == 1:
        return [load_packets(packets_path)]
    return split_packets(packets_path, PACKET_COLUMNS, count, scratch).tables()


def _trace_span(packets_path) -> tuple[str, str]:
    """The first and last packet's times (from the row groups' statistics), as conn.log's
    #open and #close."""
    parquet = pq.ParquetFile(packets_path)
    column = parquet.schema_arrow.get_field_index("ts")
    stats = [parquet.metadata.row_group(g).column(column).statistics
             for g in range(parquet.num_row_groups)]
    times = [s.min for s in stats if s is not None and s.has_min_max] + \
        [s.max for s in stats if s is not None and s.has_min_max]
    if not times:
        return ("1970-01-01-00-00-00",) * 2
    return tuple(pd.Timestamp(t).strftime("%Y-%m-%d-%H-%M-%S") for t in (min(times), max(times)))


# The order flows.parquet and conn.log are written in: their connections' first packet.
FLOW_ORDER = ("first_ts",)


@dataclass
class _Outputs:
    """The stage's three outputs and what it counts. Each partition's connections go to a
    scratch file (sorted by first packet); `close` merges them into flows.parquet and conn.log
    in the order of their first packet, so that the readers of flows.parquet (hosts, windows)
    stream it in time order holding a batch a partition, not the whole table."""

    flows: _TableAppender
    http: _TableAppender
    conn_log: ZeekLogWriter | None
    trace: str
    scratch: Path
    partition_flows: list[Path] = field(default_factory=list)
    left_out: Counter = field(default_factory=Counter)
    states: Counter = field(default_factory=Counter)

    def write(self, packets: pa.Table, connections: Connections) -> None:
        path = self.scratch / f"flows-{len(self.partition_flows):05d}.parquet"
        pq.write_table(FLOWS.check(FLOWS.conform(connections.flows)), path, compression="lz4",
                       row_group_size=MERGE_BATCH_ROWS)
        self.partition_flows.append(path)
        is_http = pc.or_(packets.column("http_method").is_valid(),
                         packets.column("http_status").is_valid()).to_numpy()
        requests = packets.select(http.PACKET_COLUMNS).filter(is_http).to_pandas()
        self.http.write(http.http_requests(requests, connections.packet_uid[is_http],
                                           self.trace))
        self.left_out.update(connections.left_out)
        self.states.update(connections.flows["conn_state"].value_counts().to_dict())

    def close(self, closed: str) -> None:
        for flows in merge_sorted(self.partition_flows, FLOW_ORDER):
            self.flows.append(flows)
            if self.conn_log is not None:
                self.conn_log.write(conn_log_fields(flows))
        if self.conn_log is not None:
            self.conn_log.close(closed)
        self.flows.close({"rows_in_no_connection": json.dumps(dict(self.left_out))})
        self.http.close({})


def _assembled(tables: Iterable[pa.Table], settings: FlowSettings, trace: str,
               threads: int) -> Iterator[tuple[pa.Table, Connections]]:
    """Each partition with its connections, in partition order; `threads` partitions are
    assembled at once (sorts, reductions and Arrow kernels release the GIL) while the caller
    writes the oldest, so at most `threads` partitions are in memory."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque = deque()
        for packets in tables:
            pending.append((packets, pool.submit(assemble_connections, packets, settings, trace)))
            if len(pending) >= threads:
                packets, connections = pending.popleft()
                yield packets, connections.result()
        for packets, connections in pending:
            yield packets, connections.result()


def write_connections(*, trace: str, packets_path, flows_path, http_path, settings: dict,
                      conn_log_path=None, threads: int = 1) -> dict:
    """Stage: flows.parquet, http.parquet (both need each packet's connection) and, unless
    `conn_log_path` is None (a shard's job: the merge writes it), conn.log of one trace, one
    partition of the packet table at a time (`threads` at once)."""
    flow_settings_ = flow_settings(settings)
    opened, closed = _trace_span(packets_path)
    Path(flows_path).parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix=".partitions-", dir=Path(flows_path).parent)))
        out = _Outputs(
            flows=_TableAppender(FLOWS, stack.enter_context(atomic_path(flows_path)), {
                "trace": trace, "flow_settings": json.dumps(asdict(flow_settings_))}),
            http=_TableAppender(http.HTTP, stack.enter_context(atomic_path(http_path)),
                                {"trace": trace}),
            conn_log=None if conn_log_path is None else conn_log_writer(
                stack.enter_context(stack.enter_context(atomic_path(conn_log_path)).open("wb")),
                opened),
            trace=trace, scratch=scratch)
        tables = _partition_tables(packets_path, flow_settings_, scratch)
        for packets, connections in _assembled(tables, flow_settings_, trace, threads):
            out.write(packets, connections)
        out.close(closed)
    log.info("%s: %d connections (%s), %d HTTP requests; rows in no connection, by protocol: %s",
             trace, out.flows.rows, dict(out.states), out.http.rows, dict(out.left_out))
    return {"connections": out.flows.rows, "http_requests": out.http.rows}

"""Connections: packets grouped into bidirectional TCP/UDP connections, in Zeek's conn.log terms.

A connection is the packets of one 5-tuple (either direction), cut into separate connections
where Zeek's timers would have removed it (idle, attempt, close and reset delays), by a new SYN
after the previous one was closed (port reuse) and, if set, by an active timeout: see
`tracelab.security.conn_timers`. Who originated it (Zeek may flip the roles), its `history`,
`conn_state` and last time follow Zeek's definitions: see `tracelab.security.conn_state`, which
computes them from per-direction aggregates of the flag bits instead of a packet-by-packet
state machine; its `service`, `tracelab.security.services`.

Bytes, as Zeek counts them (`TCP_Endpoint::Size`, conn.log's `orig_bytes`): a TCP direction's
payload bytes are the sequence space it covered, from its lowest sequence number to the highest
of its own `seq + len (+1 for SYN, FIN)` and of the ACKs its peer sent, less one for a SYN and
one for a FIN (RSTs carry no trustworthy numbers and are left out). Where a direction has no
packet with a sequence number (UDP, or rows of an export whose Info shows none), its bytes are
the sum of its packets' payload: TCP's segment length where known, else the frame length less
the connection's header overhead (below); UDP's the UDP header's length less 8 (a capture's
`udp_len`, as Zeek's UDP analyzer counts it), else (an export) the frame length less a 14-byte
Ethernet header, the IP header (20 bytes IPv4, 40 IPv6) and 8. `missed_bytes` is the sequence
space of both directions that no captured payload covers (a gap a retransmission later filled
is not missed, as Zeek's reassembler delivers it). `*_ip_bytes` are IP-level bytes as Zeek's
ConnSize analyzer adds them, each packet's length as its IP header gives it (a capture's
`ip_len`: IPv4 total length, IPv6 40 + payload length, whatever the link type, VLAN tags or
Ethernet padding); an
export gives no IP lengths, so there they are frame lengths less a 14-byte Ethernet II header
(Ethernet padding of short frames then counts too); `*_frame_bytes` are frame lengths as
captured.

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
is counted. The rows placed are written too (PLACEMENTS, when asked: the statistics count them
in their connection from it, by frame).

Memory: the packet table is split by address pair (`tracelab.security.partitions`) into
partitions of about `partition_packets` packets, made into connections `threads` at a time;
the tables hold the same rows whatever the number of partitions. Connections are written in
the order of their first packet (ties: partition order), merged from the partitions; HTTP
requests in partition order, by time within one. A uid is Zeek-style ('C' and 17 base62
digits), a hash of the trace name, the connection's endpoints and its first packet's time:
unique across traces, the same on every rerun and for any partitioning
(`tracelab.security.uid`). conn.log is written in Zeek's ASCII format
(`tracelab.security.zeek_log`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pandera.pandas import Check

from tracelab.core.atomic import atomic_path
from tracelab.core.config import settings as config_settings
from tracelab.core.packets import PORT_CHECK, TCP_FLAG_BITS
from tracelab.core.progress import Progress
from tracelab.core.streaming import MERGE_BATCH_ROWS, merge_sorted, ordered_map
from tracelab.core.tables import DICT_STRING, TIMESTAMP, Column, Table, TableAppender
from tracelab.security import http
from tracelab.security.attach import attach_portless
from tracelab.security.conn_bytes import side_bytes
from tracelab.security.conn_state import (
    ZEEK_CONN_STATES,
    FlowRows,
    flipped_roles,
    zeek_conn_state,
    zeek_history,
    zeek_last_time,
)
from tracelab.security.conn_timers import LONG_IDLE_PORTS, KeyedRows, connection_numbers
from tracelab.security.flow_arrays import (
    Membership,
    PacketArrays,
    member_of,
    ranks,
    run_starts,
    stable_order,
)
from tracelab.security.names import trace_dns_answers
from tracelab.security.partitions import partition_tables
from tracelab.security.services import zeek_services
from tracelab.security.uid import connection_uids
from tracelab.security.zeek_log import (
    ConnLogWriter,
    conn_log_writer,
    trace_span,
)

log = logging.getLogger(__name__)

FIN, SYN, RST, ACK = (TCP_FLAG_BITS[n] for n in ("FIN", "SYN", "RST", "ACK"))

# Protocols below the transport layer: their rows carry no ports and belong to no connection.
NOT_TRANSPORT = re.compile(
    r"^(?:ARP|RARP|ICMP|ICMPv6|IGMP(?:v\d)?|MLD(?:v\d)?|STP|RSTP|LLDP|CDP|EAPOL|VRRP|OSPF|"
    r"PIM(?:v\d)?|GRE|ESP|AH|IPv4|IPv6|LLC|NDP)$")

PACKET_COLUMNS = ["frame", "ts", "src", "dst", "protocol", "length", "ip_len", "udp_len",
                  "src_port", "dst_port", "tcp_flags", "tcp_seq", "tcp_ack", "tcp_win", "tcp_len",
                  "tcp_analysis", "http_method", "http_uri", "http_version", "http_status"]

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
    Column("last_ts", TIMESTAMP, "Zeek's last time: the last packet, or the one with which "
           "both sides had closed (sent a FIN or RST) if earlier.", unit="ns"),
    Column("duration_s", pa.float64(), "last_ts - first_ts (Zeek's duration).", unit="s",
           checks=[Check.ge(0)]),
    Column("service", pa.string(), "Zeek's names (http, ssl, dns, ...) of the protocols "
           "above TCP/UDP seen in the connection, sorted, comma-joined (Zeek's service; "
           "`tracelab.security.services`).",
           nullable=True),
    Column("orig_bytes", pa.int64(), "Payload bytes the originator sent, from sequence "
           "numbers (TCP) or UDP length fields (Zeek's orig_bytes).", **_BYTES),
    Column("resp_bytes", pa.int64(), "Payload bytes the responder sent (resp_bytes).", **_BYTES),
    Column("conn_state", DICT_STRING, "Zeek's connection state (S0, SF, REJ, ...).",
           checks=[Check.isin(list(ZEEK_CONN_STATES))]),
    Column("missed_bytes", pa.int64(), "Sequence space of both directions no captured payload "
           "covers (missed_bytes).", **_BYTES),
    Column("history", pa.string(), "Zeek's history letters (ShADadFf, ...).",
           checks=[Check.str_matches(r"^\^?[SHADFRIQTWGshadfriqtwg]*$")]),
    Column("orig_pkts", pa.int64(), "Packets the originator sent.", unit="packets",
           checks=[Check.ge(0)]),
    Column("orig_ip_bytes", pa.int64(), "IP-level bytes the originator sent: packet lengths "
           "as the IP headers give them (orig_ip_bytes); for an export, frame lengths less 14 "
           "(Ethernet II).",
           **_BYTES),
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

PLACEMENTS = Table("placements", "results/features/{trace}/placements.parquet", (
    "One row an export's row without ports that the connection stage placed in a connection "
    "(see `tracelab.security.connections`), ordered by frame: the connection's ports as that "
    "row sent them, and its transport, so that the statistics count the row in its TCP/UDP "
    "conversation without placing it again. Rows left out are not listed; a capture's table "
    "is empty."), [
    Column("frame", pa.int64(), "The row's frame number in the packet table.", unique=True,
           checks=[Check.gt(0)]),
    Column("src_port", pa.int32(), "The connection's port on the row's sending side (the "
           "originator's port when the originator sent it).", checks=[PORT_CHECK]),
    Column("dst_port", pa.int32(), "The connection's port on the receiving side.",
           checks=[PORT_CHECK]),
    Column("proto", DICT_STRING, "The connection's transport protocol.",
           checks=[Check.isin(["tcp", "udp"])]),
])
# The order placements.parquet is written in.
PLACEMENT_ORDER = ("frame",)


@dataclass(frozen=True)
class FlowSettings:
    """The `security.flows` config section (defaults: the config schema)."""

    tcp_idle_timeout_s: float
    udp_idle_timeout_s: float
    active_timeout_s: float
    partition_packets: int

    @property
    def idle_ns(self) -> tuple[int, int]:
        """(TCP, UDP) idle timeouts in nanoseconds."""
        return int(self.tcp_idle_timeout_s * 1e9), int(self.udp_idle_timeout_s * 1e9)


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

    def placements(self, packets: pa.Table) -> pd.DataFrame:
        """The rows of `packets` (the table assembled) without both ports that are in a
        connection, as PLACEMENTS declares them, by frame."""
        ported = pc.and_(packets.column("src_port").is_valid(),
                         packets.column("dst_port").is_valid()).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero((self.packet_flow >= 0) & ~ported)
        flow, is_orig = self.packet_flow[rows], self.packet_is_orig[rows]
        orig, resp = (self.flows[name].to_numpy(np.int32)[flow]
                      for name in ("orig_port", "resp_port"))
        placed = pd.DataFrame({
            "frame": packets.column("frame").take(rows).to_numpy(),
            "src_port": np.where(is_orig, orig, resp), "dst_port": np.where(is_orig, resp, orig),
            "proto": self.flows["proto"].to_numpy(object)[flow]})
        return placed.sort_values("frame", kind="stable")


def load_packets(path) -> pa.Table:
    """The packet columns connections need, the whole table at once."""
    return pq.read_table(path, columns=PACKET_COLUMNS)


def _attach_portless(rows: pd.DataFrame, ported: pd.DataFrame, idle_ns: int) -> pd.DataFrame:
    """Each portless row's flow and direction (row, flow, is_orig), for the rows whose
    connection the evidence decides: see `tracelab.security.attach`."""
    return attach_portless(rows, ported, idle_ns).attached


def _membership(packets: PacketArrays, settings: FlowSettings) -> Membership:
    """Flows of the ported rows: canonical 5-tuples (the lower address and port first), cut by
    `connection_numbers`, oriented by the first packet and Zeek's flip."""
    index = np.flatnonzero(packets.ported)
    src, dst = packets.src[index], packets.dst[index]
    src_port, dst_port = packets.src_port[index], packets.dst_port[index]
    src_low = (src < dst) | ((src == dst) & (src_port <= dst_port))
    pair = np.where(src_low, src, dst) * len(packets.addresses) + np.where(src_low, dst, src)
    pair_id = pd.factorize(pair, sort=True)[0]  # np.unique's inverse, by hashing
    key = (pair_id << 34) | (np.where(src_low, src_port, dst_port) << 18) | \
        (np.where(src_low, dst_port, src_port) << 2) | packets.is_tcp[index]
    order = stable_order(key, packets.chrono[index])  # by key, time, frame
    rows = index[order]
    flags = packets.flags[rows]
    keyed = KeyedRows(key=key[order], ts=packets.t[rows], flags=flags,
                      is_tcp=packets.is_tcp[rows], forward=src_low[order],
                      flips=flipped_roles(packets, rows),
                      long_idle=packets.is_tcp[rows] & ((flags & (SYN | ACK)) == SYN | ACK)
                      & np.isin(packets.src_port[rows], LONG_IDLE_PORTS))
    flow_sorted = connection_numbers(keyed, settings.idle_ns, int(settings.active_timeout_s * 1e9))
    first_row = rows[run_starts(flow_sorted)]
    flipped = flipped_roles(packets, first_row)
    flow_of = np.full(len(packets.frame), -1, np.int64)
    flow_of[rows] = flow_sorted
    is_orig = np.zeros(len(packets.frame), bool)
    first = first_row[flow_sorted]
    is_orig[rows] = ((packets.src[rows] == packets.src[first])
                     & (packets.src_port[rows] == packets.src_port[first])) ^ flipped[flow_sorted]
    return Membership(flow_of, is_orig, first_row, flipped, rows)


def _row_columns(packets: PacketArrays, index: np.ndarray) -> dict[str, np.ndarray]:
    """The columns `_attach_portless` takes of every row, of the rows `index`."""
    return {"row": index, "src_code": packets.src[index], "dst_code": packets.dst[index],
            "t": packets.t[index], "frame": packets.frame[index],
            "length": packets.length[index]}


def _ported_frame(packets: PacketArrays, member: Membership, rows: np.ndarray) -> pd.DataFrame:
    """The rows in flows `rows` as `_attach_portless` takes them (indexed by row number)."""
    return pd.DataFrame({
        **_row_columns(packets, rows), "flow": member.flow_of[rows],
        "is_orig": member.is_orig[rows], "is_tcp": packets.is_tcp[rows],
        "flags": packets.flags[rows], "seq": packets.seq[rows], "ack": packets.ack[rows],
        "len": packets.tcp_len[rows]}, index=rows)


def _attach(packets: PacketArrays, member: Membership, settings: FlowSettings) -> None:
    """Rows without ports (not below the transport layer) join a connection of their pair."""
    transport_like = ~pd.Series(packets.protocols, dtype="string").str.match(
        NOT_TRANSPORT.pattern, na=False).to_numpy(bool)
    portless = np.flatnonzero(~packets.ported & transport_like[packets.protocol])
    if not len(portless):
        return
    # Only connections between two hosts that exchanged port-less rows can take one.
    taking = member_of(packets.pair(member.first_row), packets.pair(portless))
    rows = member.rows[taking[member.flow_of[member.rows]]]
    attached = _attach_portless(pd.DataFrame(_row_columns(packets, portless), index=portless),
                                _ported_frame(packets, member, rows), settings.idle_ns[0])
    added = attached["row"].to_numpy()
    member.flow_of[added] = attached["flow"].to_numpy()
    member.is_orig[added] = attached["is_orig"].to_numpy()
    rows = np.append(member.rows, added)  # in order but for the attached: a quick sort
    member.rows = rows[stable_order(member.flow_of[rows], packets.chrono[rows])]


def assemble_connections(packets: pa.Table | pd.DataFrame, settings: FlowSettings,
                         trace: str) -> Connections:
    """Group packets (PACKET_COLUMNS of a packet table, Arrow or pandas) into connections;
    see the module docstring for the rules."""
    if isinstance(packets, pd.DataFrame):
        packets = pa.Table.from_pandas(packets[PACKET_COLUMNS], preserve_index=False)
    arrays = PacketArrays.of(packets.select(PACKET_COLUMNS))
    member = _membership(arrays, settings)
    _attach(arrays, member, settings)
    inside = member.flow_of >= 0
    counts = np.bincount(arrays.protocol[~inside], minlength=len(arrays.protocols))
    left_out = {str(arrays.protocols[code]): int(counts[code]) for code in np.flatnonzero(counts)}
    flows, rank = _aggregate(arrays, member, trace)
    packet_flow = np.append(rank, -1)[member.flow_of]
    return Connections(flows=flows, packet_flow=packet_flow,
                       packet_is_orig=member.is_orig & inside, left_out=left_out)


def _aggregate(packets: PacketArrays, member: Membership, trace: str):
    """One row a flow, ordered by first packet; and each flow's row in that order."""
    n_flows = len(member.first_row)
    if not n_flows:
        return FLOWS.schema.empty_table().to_pandas(), np.zeros(0, np.int64)
    rows = member.rows
    flow_rows = FlowRows.of(packets, rows, member)
    per, flow = flow_rows.per, flow_rows.flow
    history, late_flip = zeek_history(flow_rows, member.flipped)
    flow_rows.flip(late_flip)
    member.flipped |= late_flip
    member.is_orig[rows] = flow_rows.orig
    orig_bytes, resp_bytes = side_bytes(packets, rows, flow_rows)
    flow_is_tcp = packets.is_tcp[member.first_row]
    conn_state = zeek_conn_state(flow_rows, flow_is_tcp, history, late_flip)

    t = packets.t[rows]
    iat = np.where(run_starts(flow), np.nan, np.diff(t, prepend=t[:1]) / 1e9)
    iat_mean, iat_std = per.mean_std(iat)
    length = packets.length[rows].astype(np.float64)
    len_mean, len_std = per.mean_std(length)
    first_ts, last_ts = t[per.starts], zeek_last_time(flow_rows, t)

    first, flipped = member.first_row, member.flipped
    orig = np.where(flipped, packets.dst[first], packets.src[first])
    resp = np.where(flipped, packets.src[first], packets.dst[first])
    orig_port = np.where(flipped, packets.dst_port[first], packets.src_port[first])
    resp_port = np.where(flipped, packets.src_port[first], packets.dst_port[first])
    # Text as Arrow arrays (see `_taken`).
    proto = pa.array(["tcp", "udp"]).take(np.where(flow_is_tcp, 0, 1))
    address = pa.array(packets.addresses, pa.string())
    orig_name, resp_name = address.take(orig), address.take(resp)
    # A connection's key: trace, protocol, endpoints and first packet's time.
    keys = pc.binary_join_element_wise(
        pa.repeat(pa.scalar(trace), n_flows), proto, orig_name,
        pa.array(orig_port).cast(pa.string()), resp_name,
        pa.array(resp_port).cast(pa.string()), pa.array(first_ts).cast(pa.string()), "|")
    # Columns taken in the order of the first packets (ties: frame) before the frame is made.
    order = np.lexsort((packets.frame[first], first_ts))
    columns = {
        "uid": connection_uids(keys), "proto": proto,
        "orig": orig_name, "orig_port": orig_port.astype(np.int32),
        "resp": resp_name, "resp_port": resp_port.astype(np.int32),
        "first_ts": pd.DatetimeIndex(first_ts.astype("datetime64[ns]")).tz_localize("UTC"),
        "last_ts": pd.DatetimeIndex(last_ts.astype("datetime64[ns]")).tz_localize("UTC"),
        "duration_s": (last_ts - first_ts) / 1e9,
        "service": pa.array(zeek_services(packets, rows, flow, flow_is_tcp), pa.string(),
                            from_pandas=True),
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
    }
    return pd.DataFrame({"trace": trace, **{name: _taken(values, order)
                                            for name, values in columns.items()}}), ranks(order)


def _taken(values: np.ndarray | pa.Array, order: np.ndarray):
    """A column of the flows frame, taken in `order`: Arrow text becomes pandas text through
    Arrow (pandas converts a numpy array of strings one at a time, holding the GIL: the
    uids, endpoints, protocols and services took ~25 ms of a 1M-packet partition)."""
    if isinstance(values, pa.Array):
        return pd.array(values.take(order), dtype="str")
    return values[order]


def connection_tables(packets: pa.Table, connections: Connections,
                      trace: str) -> tuple[pa.Table, pa.Table]:
    """The flows (FLOWS) and HTTP requests (`http.HTTP`) of a partition's connections, conformed
    to their tables and checked: what the stage writes of them."""
    flows, requests = conformed_tables(packets, connections, trace)
    return FLOWS.check(flows), http.HTTP.check(requests)


def conformed_tables(packets: pa.Table, connections: Connections,
                     trace: str) -> tuple[pa.Table, pa.Table]:
    """As `connection_tables`, unchecked: for tables no file keeps (the robustness experiment's
    copies, whose window matrices are checked as they are written)."""
    is_http = pc.or_(packets.column("http_method").is_valid(),
                     packets.column("http_status").is_valid()).to_numpy()
    requests = packets.select(http.PACKET_COLUMNS).filter(is_http).to_pandas()
    return (FLOWS.conform(connections.flows), http.HTTP.conform(http.http_requests(
        requests, connections.packet_uid[is_http], trace)))


# The order flows.parquet and conn.log are written in: their connections' first packet.
FLOW_ORDER = ("first_ts",)
# The partitions' flows as they wait for the merge: text as plain strings. A dictionary column
# keeps its partition's whole dictionary in every row group (as many addresses as the
# partition has), and the merge's batches, taken from every partition, the union of theirs:
# flows.parquet's resp column took 0.57 of the 2.5 CPU s of reading the 870k flows at 10M.
# Written without dictionary pages, for the same reason (0.07 -> 0.05 CPU s a 1M partition).
SCRATCH_FLOWS = pa.schema([field.with_type(pa.string()) if field.type == DICT_STRING
                           else field for field in FLOWS.schema])


def stored_flows(flows: pa.Table) -> pa.Table:
    """Merged flows as flows.parquet holds them: text columns dictionary-encoded anew, with
    only this batch's values (not the union of the dictionaries of the files merged)."""
    return flows.cast(SCRATCH_FLOWS).combine_chunks().cast(FLOWS.schema)


@dataclass
class _ConnLog:
    """conn.log's file and #open date, and the trace's DNS answers (its names' addresses),
    read on a background thread while the partitions are made."""

    handle: BinaryIO
    opened: str
    dns: Future

    def writer(self) -> ConnLogWriter:
        return conn_log_writer(self.handle, self.opened, self.dns.result())


def _stored_with_log_fields(flows: pa.Table,
                            conn_log: ConnLogWriter | None) -> tuple[pa.Table, list | None]:
    """Merged flows as stored (`stored_flows`) and their conn.log fields: made on a thread
    while the next flows are merged."""
    stored = stored_flows(flows)
    return stored, None if conn_log is None else conn_log.flow_fields(stored)


@dataclass
class _Outputs:
    """The stage's outputs and what it counts. Each partition's connections go to a scratch
    file (sorted by first packet); `close` merges them into flows.parquet and conn.log in the
    order of their first packet, so that the readers of flows.parquet (hosts, windows) stream
    it in time order holding a batch a partition, not the whole table; the placements alike,
    by frame."""

    flows: TableAppender
    http: TableAppender
    conn_log: _ConnLog | None
    placements: TableAppender | None
    trace: str
    scratch: Path
    threads: int
    partition_flows: list[Path] = field(default_factory=list)
    partition_placements: list[Path] = field(default_factory=list)
    left_out: Counter = field(default_factory=Counter)
    states: Counter = field(default_factory=Counter)

    def write(self, packets: pa.Table, connections: Connections) -> None:
        path = self.scratch / f"flows-{len(self.partition_flows):05d}.parquet"
        flows, requests = connection_tables(packets, connections, self.trace)
        pq.write_table(flows.cast(SCRATCH_FLOWS), path, compression="lz4", use_dictionary=False,
                       row_group_size=MERGE_BATCH_ROWS)
        self.partition_flows.append(path)
        self.http.append(requests)
        self.left_out.update(connections.left_out)
        self.states.update(connections.flows["conn_state"].value_counts().to_dict())
        if self.placements is not None:
            path = self.scratch / f"placements-{len(self.partition_placements):05d}.parquet"
            placed = PLACEMENTS.check(PLACEMENTS.conform(connections.placements(packets)))
            pq.write_table(placed, path, compression="lz4", row_group_size=MERGE_BATCH_ROWS)
            self.partition_placements.append(path)

    def close(self, closed: str) -> None:
        # The placements merge on their own thread while the flows merge: the main thread
        # merges and writes, and would otherwise do one after the other.
        with ThreadPoolExecutor(max_workers=1) as placing:
            placed = placing.submit(self._close_placements)
            self._close_flows(closed)
            placed.result()
        self.http.close({})

    def _close_flows(self, closed: str) -> None:
        conn_log = None if self.conn_log is None else self.conn_log.writer()
        merged = merge_sorted(self.partition_flows, FLOW_ORDER)
        for flows, fields in ordered_map(partial(_stored_with_log_fields, conn_log=conn_log),
                                         merged, self.threads):
            self.flows.append(flows)
            if conn_log is not None:
                conn_log.write(fields)
        if conn_log is not None:
            conn_log.close(closed)
        self.flows.close({"rows_in_no_connection": json.dumps(dict(self.left_out))})

    def _close_placements(self) -> None:
        if self.placements is None:
            return
        for placed in merge_sorted(self.partition_placements, PLACEMENT_ORDER):
            self.placements.append(placed)
        self.placements.close({})


def _assembled(tables: Iterable[pa.Table], settings: FlowSettings, trace: str,
               threads: int) -> Iterator[tuple[pa.Table, Connections]]:
    """Each partition with its connections, in partition order; `threads` partitions are
    assembled at once (sorts, reductions and Arrow kernels release the GIL) while the caller
    writes the oldest, so at most `threads` partitions are in memory."""
    return ordered_map(partial(_with_connections, settings=settings, trace=trace), tables,
                       threads)


def _with_connections(packets: pa.Table, settings: FlowSettings,
                      trace: str) -> tuple[pa.Table, Connections]:
    return packets, assemble_connections(packets, settings, trace)


def write_connections(*, trace: str, packets_path, flows_path, http_path, settings: dict,
                      conn_log_path=None, placements_path=None, threads: int = 1) -> dict:
    """Stage: flows.parquet, http.parquet (both need each packet's connection) and, unless
    `conn_log_path` is None (a shard's job: the merge writes it), conn.log of one trace, and
    unless `placements_path` is None (the robustness copies: no statistics read them), the
    placements of its rows without ports (PLACEMENTS); one partition of the packet table at a
    time (`threads` at once)."""
    flow_settings_ = flow_settings(settings)
    opened, closed = trace_span(packets_path)
    Path(flows_path).parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix=".partitions-", dir=Path(flows_path).parent)))
        background = stack.enter_context(ThreadPoolExecutor(max_workers=1))
        out = _Outputs(
            flows=TableAppender(FLOWS, stack.enter_context(atomic_path(flows_path)), {
                "trace": trace, "flow_settings": json.dumps(asdict(flow_settings_))}),
            http=TableAppender(http.HTTP, stack.enter_context(atomic_path(http_path)),
                                {"trace": trace}),
            conn_log=None if conn_log_path is None else _ConnLog(
                stack.enter_context(stack.enter_context(atomic_path(conn_log_path)).open("wb")),
                opened, background.submit(trace_dns_answers, packets_path)),
            placements=None if placements_path is None else TableAppender(
                PLACEMENTS, stack.enter_context(atomic_path(placements_path)), {"trace": trace}),
            trace=trace, scratch=scratch, threads=threads)
        tables = partition_tables(packets_path, PACKET_COLUMNS,
                                  flow_settings_.partition_packets, scratch, threads)
        progress = stack.enter_context(Progress(
            f"{trace}: connections", total_rows=pq.ParquetFile(packets_path).metadata.num_rows))
        done = 0
        for packets, connections in _assembled(tables, flow_settings_, trace, threads):
            out.write(packets, connections)
            done += packets.num_rows
            progress.update(done)
        out.close(closed)
    log.info("%s: %d connections (%s), %d HTTP requests; rows in no connection, by protocol: %s",
             trace, out.flows.rows, dict(out.states), out.http.rows, dict(out.left_out))
    return {"connections": out.flows.rows, "http_requests": out.http.rows}

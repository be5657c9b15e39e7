"""Connections: packets grouped into bidirectional TCP/UDP connections, in Zeek's conn.log terms.

A connection is the packets of one 5-tuple (either direction), cut into separate connections by
an idle gap, by an active timeout, and by a new SYN after the previous one was closed (port
reuse). The first packet's sender is the originator. `history` and `conn_state` follow Zeek's
definitions (TCPSessionAdapter.cc `update_history`, the endpoint state machine, and
base/protocols/conn/main.zeek `conn_state`), computed from per-direction aggregates of the flag
bits instead of a packet-by-packet state machine:

- history letters, uppercase for the originator, lowercase for the responder, in order of first
  occurrence: S (SYN without ACK), H (SYN+ACK), A (pure ACK), D (payload), F (FIN), R (RST),
  I (FIN+RST in one packet), Q (SYN with FIN or RST), and logarithmically repeated T
  (retransmitted payload, from Wireshark's "Retransmission" analysis) and W (zero window),
  written at the 1st, 10th, 100th... occurrence. UDP: D/d. Zeek repeats S/F/R when a later
  packet carries a different sequence number; here each appears once.
- conn_state: S0, S1, SF, REJ, S2, S3, RSTO, RSTR, RSTOS0, RSTRH, SH, SHR, OTH (TCP); SF or S0
  (UDP, depending on whether the responder sent anything).

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
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_arrow
import pyarrow.parquet as pq

from tracelab.core.atomic import write_parquet
from tracelab.core.packets import DICT_STRING, TCP_FLAG_BITS, TIMESTAMP, read_packets
from tracelab.security.attach import attach_portless

log = logging.getLogger(__name__)

FIN, SYN, RST, ACK = (TCP_FLAG_BITS[n] for n in ("FIN", "SYN", "RST", "ACK"))

ZEEK_CONN_STATES = ("S0", "S1", "SF", "REJ", "S2", "S3", "RSTO", "RSTR", "RSTOS0", "RSTRH",
                    "SH", "SHR", "OTH")

# Protocols below the transport layer: their rows carry no ports and belong to no connection.
NOT_TRANSPORT = re.compile(
    r"^(?:ARP|RARP|ICMP|ICMPv6|IGMP(?:v\d)?|MLD(?:v\d)?|STP|RSTP|LLDP|CDP|EAPOL|VRRP|OSPF|"
    r"PIM(?:v\d)?|GRE|ESP|AH|IPv4|IPv6|LLC|NDP)$")

# Endpoint states of Zeek's TCP analyzer (analyzer/protocol/tcp/TCP_Endpoint.h).
INACTIVE, SYN_SENT, SYN_ACK_SENT, PARTIAL, ESTABLISHED, CLOSED, RESET = range(7)

PACKET_COLUMNS = ["frame", "ts", "src", "dst", "protocol", "length", "src_port", "dst_port",
                  "tcp_flags", "tcp_seq", "tcp_ack", "tcp_win", "tcp_len", "tcp_analysis",
                  "http_method", "http_uri", "http_version", "http_status"]

FLOW_SCHEMA = pa_arrow.schema([
    ("uid", pa_arrow.int64()),
    ("proto", DICT_STRING),
    ("orig", DICT_STRING),
    ("orig_port", pa_arrow.int32()),
    ("resp", DICT_STRING),
    ("resp_port", pa_arrow.int32()),
    ("first_ts", TIMESTAMP),
    ("last_ts", TIMESTAMP),
    ("duration_s", pa_arrow.float64()),
    ("orig_pkts", pa_arrow.int64()),
    ("resp_pkts", pa_arrow.int64()),
    ("orig_bytes", pa_arrow.int64()),
    ("resp_bytes", pa_arrow.int64()),
    ("orig_payload", pa_arrow.int64()),
    ("resp_payload", pa_arrow.int64()),
    ("history", pa_arrow.string()),
    ("conn_state", DICT_STRING),
    ("service", pa_arrow.string()),
    ("attached_pkts", pa_arrow.int64()),
    ("iat_min_s", pa_arrow.float64()),
    ("iat_mean_s", pa_arrow.float64()),
    ("iat_std_s", pa_arrow.float64()),
    ("iat_max_s", pa_arrow.float64()),
    ("len_min", pa_arrow.float64()),
    ("len_mean", pa_arrow.float64()),
    ("len_std", pa_arrow.float64()),
    ("len_max", pa_arrow.float64()),
])


class FlowModel(pa.DataFrameModel):
    """Checks on flows.parquet before it is written."""

    uid: pd.Int64Dtype = pa.Field(ge=0, unique=True)
    proto: str = pa.Field(isin=["tcp", "udp"])
    orig: str
    resp: str
    orig_port: pd.Int32Dtype = pa.Field(ge=0, le=65535)
    resp_port: pd.Int32Dtype = pa.Field(ge=0, le=65535)
    duration_s: float = pa.Field(ge=0)
    orig_pkts: pd.Int64Dtype = pa.Field(ge=1)
    resp_pkts: pd.Int64Dtype = pa.Field(ge=0)
    orig_bytes: pd.Int64Dtype = pa.Field(ge=0)
    resp_bytes: pd.Int64Dtype = pa.Field(ge=0)
    orig_payload: pd.Int64Dtype = pa.Field(ge=0, nullable=True)
    resp_payload: pd.Int64Dtype = pa.Field(ge=0, nullable=True)
    history: str = pa.Field(str_matches=r"^[SHADFRIQTWshadfriqtw]*$")
    conn_state: str = pa.Field(isin=list(ZEEK_CONN_STATES))

    class Config:
        strict = False
        coerce = False


@dataclass(frozen=True)
class FlowSettings:
    # A connection ends after this long without a packet (nfstream's default; Zeek: 5 min TCP).
    idle_timeout_s: float = 120.0
    # ...and is cut after this long even while active (nfstream's default).
    active_timeout_s: float = 1800.0


@dataclass
class Connections:
    """The connection table, and each packet's connection (uid, or -1) and direction."""

    flows: pd.DataFrame
    packet_uid: np.ndarray
    packet_is_orig: np.ndarray
    left_out: dict[str, int]


def load_packets(path) -> pd.DataFrame:
    """The packet columns connections need, as pandas (nullable integers become floats)."""
    return read_packets(path, columns=PACKET_COLUMNS).to_pandas()


def _address_codes(packets: pd.DataFrame) -> tuple[pd.Index, np.ndarray, np.ndarray]:
    """One code space for source and destination addresses (their dictionaries differ)."""
    src = packets["src"].astype("category")
    dst = packets["dst"].astype("category")
    addresses = src.cat.categories.union(dst.cat.categories)
    src_code = addresses.get_indexer(src.cat.categories)[src.cat.codes.to_numpy()]
    dst_code = addresses.get_indexer(dst.cat.categories)[dst.cat.codes.to_numpy()]
    return addresses, src_code.astype(np.int64), dst_code.astype(np.int64)


def _int(series: pd.Series, fill: int = 0) -> np.ndarray:
    return series.fillna(fill).to_numpy(dtype=np.int64)


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


def _history(flow, is_orig, flags, known_flags, payload, is_tcp, retransmitted, zero_window,
             n_flows):
    """Zeek's history string per flow (rows sorted by flow, then time)."""
    syn, fin, rst, ack = ((flags & bit) != 0 for bit in (SYN, FIN, RST, ACK))
    several = (syn.astype(int) + fin + rst) > 1
    data = np.nan_to_num(payload, nan=0.0) > 0
    # One letter a packet, checked in Zeek's order: several control bits, one, then none.
    tcp_letter = np.select(
        [several & fin & rst, several, syn & ack, syn, fin, rst, data, ack & known_flags],
        ["I", "Q", "H", "S", "F", "R", "D", "A"], "")
    letter = np.where(is_tcp, tcp_letter, "D")
    position = np.arange(len(flow))
    events = [pd.DataFrame({"flow": flow, "order": position * 3, "letter": letter,
                            "is_orig": is_orig})
              .loc[lambda d: d["letter"] != ""]
              .drop_duplicates(["flow", "is_orig", "letter"])]
    for slot, (code, happened) in enumerate((("T", retransmitted), ("W", zero_window)), start=1):
        hits = pd.DataFrame({"flow": flow[happened], "order": position[happened] * 3 + slot,
                             "is_orig": is_orig[happened]})
        count = hits.groupby(["flow", "is_orig"]).cumcount().to_numpy() + 1
        events.append(hits[np.isin(count, 10 ** np.arange(19))].assign(letter=code))
    events = pd.concat(events, ignore_index=True).sort_values(["flow", "order"], kind="stable")
    letters = np.where(events["is_orig"], events["letter"], events["letter"].str.lower())
    return _concat_per_flow(events["flow"].to_numpy(), letters, n_flows)


class _PerFlow:
    """Per-flow reductions of row arrays (rows sorted by flow), indexed 0..n_flows-1."""

    def __init__(self, flow: np.ndarray, n_flows: int):
        self.flow = flow
        self.n_flows = n_flows

    def _reduce(self, values, how: str) -> pd.Series:
        return getattr(pd.Series(values).groupby(self.flow), how)().reindex(range(self.n_flows))

    def any(self, mask) -> np.ndarray:
        return self._reduce(mask, "max").fillna(False).to_numpy(bool)

    def sum(self, values) -> pd.Series:
        return self._reduce(values, "sum")

    def first_position(self, mask) -> np.ndarray:
        """Row position of the first row where `mask` holds (inf when none)."""
        positions = pd.Series(np.arange(len(self.flow)), dtype=np.float64).where(mask)
        return positions.groupby(self.flow).min().reindex(range(self.n_flows)).fillna(
            np.inf).to_numpy()


def _endpoint_state(pre, rst, fin, rst_order, fin_order, peer_fin):
    """Final state: RESET after a RST, CLOSED after a FIN; a RST after our own FIN and the
    peer's FIN (a normal close followed by a reset) leaves the endpoint CLOSED, as in Zeek."""
    reset_after_close = rst & fin & (fin_order < rst_order) & peer_fin
    return np.select([rst & ~reset_after_close, fin | reset_after_close], [RESET, CLOSED], pre)


def _conn_state(is_tcp, agg: pd.DataFrame, history: pd.Series) -> np.ndarray:
    """Zeek's conn_state (base/protocols/conn/main.zeek) from per-direction aggregates."""
    o, r = {}, {}
    for side, out in (("o", o), ("r", r)):
        for name in ("syn", "synack", "fin", "rst", "any", "data", "fin_order", "rst_order"):
            out[name] = agg[f"{side}_{name}"].to_numpy()
    o_pre = np.select([o["syn"] & (r["syn"] | r["synack"]), o["syn"], o["synack"] & r["syn"],
                       o["synack"]], [ESTABLISHED, SYN_SENT, ESTABLISHED, SYN_ACK_SENT], PARTIAL)
    # A responder that only acks a SYN (no SYN-ACK, no data) stays inactive, as in Zeek.
    r_pre = np.select([r["syn"] | r["synack"], ~r["any"], o["syn"] & ~r["data"]],
                      [ESTABLISHED, INACTIVE, INACTIVE], PARTIAL)
    os_ = _endpoint_state(o_pre, o["rst"], o["fin"], o["rst_order"], o["fin_order"], r["fin"])
    rs = _endpoint_state(r_pre, r["rst"], r["fin"], r["rst_order"], r["fin_order"], o["fin"])
    o_inactive = (os_ == INACTIVE) | (os_ == PARTIAL)
    r_inactive = (rs == INACTIVE) | (rs == PARTIAL)
    no_payload = (agg["orig_payload"].fillna(0).to_numpy() == 0) & \
        (agg["resp_payload"].fillna(0).to_numpy() == 0)
    syn_then_reset = pd.Series(history).str.contains(r"^\^?S[^HAFGIQ]*R", regex=True) \
        .to_numpy(bool)
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
    udp_state = np.where(r["any"], "SF", "S0")
    return np.where(is_tcp, tcp_state, udp_state)


def _service_names(protocol: pd.Series) -> pd.Series:
    """A row's service: its protocol unless that is plain TCP/UDP; TLS/SSL versions become TLS."""
    categories = protocol.astype("category").cat.categories
    names = pd.Series(categories, index=categories, dtype="string")
    names = names.where(~names.isin(["TCP", "UDP"]))
    names = names.where(~names.str.match(r"^(?:TLS|SSL)", na=False), "TLS")
    return protocol.astype("string").map(names)


def assemble_connections(packets: pd.DataFrame, settings: FlowSettings) -> Connections:
    """Group packets into connections; see the module docstring for the rules."""
    n = len(packets)
    addresses, src_code, dst_code = _address_codes(packets)
    t = packets["ts"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    ported = (packets["src_port"].notna() & packets["dst_port"].notna()).to_numpy()
    src_port, dst_port = _int(packets["src_port"]), _int(packets["dst_port"])
    flags = _int(packets["tcp_flags"])
    known_flags = packets["tcp_flags"].notna().to_numpy()
    is_tcp = known_flags & ported

    # Canonical 5-tuple of the ported rows: the lower (address, port) endpoint first.
    index = np.flatnonzero(ported)
    src_low = (src_code[index] < dst_code[index]) | (
        (src_code[index] == dst_code[index]) & (src_port[index] <= dst_port[index]))
    tuples = pd.DataFrame({
        "tcp": is_tcp[index],
        "low": np.where(src_low, src_code[index], dst_code[index]),
        "low_port": np.where(src_low, src_port[index], dst_port[index]),
        "high": np.where(src_low, dst_code[index], src_code[index]),
        "high_port": np.where(src_low, dst_port[index], src_port[index]),
    })
    key = tuples.groupby(list(tuples.columns), sort=False).ngroup().to_numpy()
    order = np.lexsort((packets["frame"].to_numpy()[index], t[index], key))
    rows = index[order]
    flow_sorted = _flow_boundaries(key[order], t[rows], flags[rows], is_tcp[rows], settings)
    flow_of = np.full(n, -1, np.int64)
    flow_of[rows] = flow_sorted
    first_row = rows[_starts(flow_sorted)]
    is_orig = np.zeros(n, bool)
    is_orig[rows] = (src_code[rows] == src_code[first_row][flow_sorted]) & \
        (src_port[rows] == src_port[first_row][flow_sorted])

    # Rows without ports (not below the transport layer) join a connection of the same pair.
    protocol_text = packets["protocol"].astype("string")
    transport_like = ~protocol_text.str.match(NOT_TRANSPORT.pattern, na=False).to_numpy()
    portless = np.flatnonzero(~ported & transport_like)
    table = pd.DataFrame({
        "row": np.arange(n), "src_code": src_code, "dst_code": dst_code, "t": t,
        "frame": packets["frame"].to_numpy(np.int64),
        "length": packets["length"].to_numpy(np.int64)})
    ported_rows = table.iloc[rows].assign(
        flow=flow_of[rows], is_orig=is_orig[rows], is_tcp=is_tcp[rows], flags=flags[rows],
        seq=packets["tcp_seq"].to_numpy(np.float64, na_value=np.nan)[rows],
        ack=packets["tcp_ack"].to_numpy(np.float64, na_value=np.nan)[rows],
        len=packets["tcp_len"].to_numpy(np.float64, na_value=np.nan)[rows])
    attached = _attach_portless(table.iloc[portless], ported_rows,
                                int(settings.idle_timeout_s * 1e9))
    flow_of[attached["row"].to_numpy()] = attached["flow"].to_numpy()
    is_orig[attached["row"].to_numpy()] = attached["is_orig"].to_numpy()
    member = flow_of >= 0
    left_out = protocol_text[~member].value_counts().to_dict()
    if left_out:
        log.info("rows in no connection, by protocol: %s", left_out)

    flows, uid_of_flow = _aggregate(packets, member, flow_of, is_orig, t, known_flags, is_tcp,
                                    first_row, addresses, src_code, dst_code, src_port, dst_port,
                                    ported)
    packet_uid = np.full(n, -1, np.int64)
    packet_uid[member] = uid_of_flow[flow_of[member]]
    return Connections(flows=flows, packet_uid=packet_uid, packet_is_orig=is_orig & member,
                       left_out={str(k): int(v) for k, v in left_out.items()})


def _aggregate(packets, member, flow_of, is_orig, t, known_flags, is_tcp_row, first_row,
               addresses, src_code, dst_code, src_port, dst_port, ported):
    """One row a flow: endpoints, counts, bytes, payload, history, conn_state, service, stats."""
    rows = np.flatnonzero(member)
    rows = rows[np.lexsort((packets["frame"].to_numpy()[rows], t[rows], flow_of[rows]))]
    flow = flow_of[rows]
    n_flows = len(first_row)
    orig = is_orig[rows]
    length = packets["length"].to_numpy(dtype=np.int64)[rows]
    flags = _int(packets["tcp_flags"])[rows]
    known = known_flags[rows]
    flow_is_tcp = is_tcp_row[first_row]
    tcp = flow_is_tcp[flow]

    # Payload: the segment length where known; else frame length minus the flow's header size.
    tcp_len = packets["tcp_len"].to_numpy(dtype=np.float64, na_value=np.nan)[rows]
    overhead = pd.Series(length - tcp_len).groupby(flow).min().reindex(range(n_flows)).to_numpy()
    payload = np.where(np.isnan(tcp_len), np.maximum(length - overhead[flow], 0), tcp_len)
    payload = np.where(tcp, payload, np.nan)

    analysis = packets["tcp_analysis"].astype("string").to_numpy(dtype=object, na_value="")[rows]
    retransmitted = tcp & (np.nan_to_num(payload) > 0) & \
        pd.Series(analysis).str.contains("Retransmission", regex=False).to_numpy(bool)
    window = packets["tcp_win"].to_numpy(dtype=np.float64, na_value=np.nan)[rows]
    syn, fin, rst, ack = ((flags & bit) != 0 for bit in (SYN, FIN, RST, ACK))
    syn, fin, rst, ack = (bits & known & tcp for bits in (syn, fin, rst, ack))
    # Zeek's W: a zero window, not on or after a RST of this side, nor after the peer's FIN.
    own_rst_so_far = pd.Series(rst).groupby([flow, orig]).cummax().to_numpy(bool)
    orig_fin_so_far = pd.Series(fin & orig).groupby(flow).cummax().to_numpy(bool)
    resp_fin_so_far = pd.Series(fin & ~orig).groupby(flow).cummax().to_numpy(bool)
    peer_fin_before = np.where(orig, resp_fin_so_far, orig_fin_so_far)
    zero_window = tcp & (window == 0) & ~own_rst_so_far & ~peer_fin_before

    history = _history(flow, orig, flags, known, payload, tcp, retransmitted, zero_window,
                       n_flows)

    by_flow = _PerFlow(flow, n_flows)
    agg = pd.DataFrame(index=range(n_flows))
    for prefix, side, mine in (("o", "orig", orig), ("r", "resp", ~orig)):
        agg[f"{prefix}_syn"] = by_flow.any(syn & ~ack & mine)
        agg[f"{prefix}_synack"] = by_flow.any(syn & ack & mine)
        agg[f"{prefix}_fin"] = by_flow.any(fin & mine)
        agg[f"{prefix}_rst"] = by_flow.any(rst & mine)
        agg[f"{prefix}_any"] = by_flow.any(mine)
        agg[f"{prefix}_data"] = by_flow.any((np.nan_to_num(payload) > 0) & mine)
        agg[f"{prefix}_fin_order"] = by_flow.first_position(fin & mine)
        agg[f"{prefix}_rst_order"] = by_flow.first_position(rst & mine)
        agg[f"{side}_pkts"] = by_flow.sum(mine.astype(np.int64))
        agg[f"{side}_bytes"] = by_flow.sum(np.where(mine, length, 0))
        agg[f"{side}_payload"] = by_flow.sum(np.where(mine, payload, 0.0)).where(flow_is_tcp)
    conn_state = _conn_state(flow_is_tcp, agg, history)

    # Inter-arrival times within a flow (both directions), and frame lengths.
    iat = np.where(_starts(flow), np.nan, np.diff(t[rows], prepend=t[rows][:1]) / 1e9)
    iat_stats = pd.Series(iat).groupby(flow).agg(["min", "mean", "max"]).reindex(range(n_flows))
    iat_std = pd.Series(iat).groupby(flow).std(ddof=0).reindex(range(n_flows))
    len_stats = pd.Series(length, dtype=np.float64).groupby(flow).agg(["min", "mean", "max"])
    len_std = pd.Series(length, dtype=np.float64).groupby(flow).std(ddof=0)

    # Services: each flow's distinct names, sorted, comma-joined; joined once per combination.
    names = _service_names(packets["protocol"].iloc[rows]).to_numpy(dtype=object)
    present = pd.DataFrame({"flow": flow, "service": names}).dropna().drop_duplicates() \
        .sort_values(["flow", "service"])
    codes, catalogue = pd.factorize(present["service"], sort=True)
    # Code points 1.. stand for the names (0 is the grid's padding).
    as_chars = (codes + 1).astype(np.uint32).view("U1")
    combination = _concat_per_flow(present["flow"].to_numpy(), as_chars, n_flows)
    joined = {combo: ",".join(catalogue[ord(c) - 1] for c in combo)
              for combo in np.unique(combination) if combo}
    service = pd.Series(combination).map(joined)

    first_ts = pd.Series(t[rows]).groupby(flow).min().reindex(range(n_flows)).to_numpy()
    last_ts = pd.Series(t[rows]).groupby(flow).max().reindex(range(n_flows)).to_numpy()
    attached = by_flow.sum((~ported[rows]).astype(np.int64))

    # uid: flows numbered in order of their first packet.
    by_start = np.lexsort((packets["frame"].to_numpy()[first_row], first_ts))
    uid_of_flow = np.empty(n_flows, np.int64)
    uid_of_flow[by_start] = np.arange(n_flows)
    address_text = addresses.astype("string")
    flows = pd.DataFrame({
        "uid": pd.array(uid_of_flow, dtype="Int64"),
        "proto": pd.Series(np.where(flow_is_tcp, "tcp", "udp"), dtype="str"),
        "orig": pd.Series(address_text[src_code[first_row]], dtype="str"),
        "orig_port": pd.array(src_port[first_row], dtype="Int32"),
        "resp": pd.Series(address_text[dst_code[first_row]], dtype="str"),
        "resp_port": pd.array(dst_port[first_row], dtype="Int32"),
        "first_ts": pd.to_datetime(first_ts, utc=True),
        "last_ts": pd.to_datetime(last_ts, utc=True),
        "duration_s": (last_ts - first_ts) / 1e9,
        "orig_pkts": pd.array(agg["orig_pkts"], dtype="Int64"),
        "resp_pkts": pd.array(agg["resp_pkts"], dtype="Int64"),
        "orig_bytes": pd.array(agg["orig_bytes"], dtype="Int64"),
        "resp_bytes": pd.array(agg["resp_bytes"], dtype="Int64"),
        "orig_payload": pd.array(agg["orig_payload"].round(), dtype="Int64"),
        "resp_payload": pd.array(agg["resp_payload"].round(), dtype="Int64"),
        "history": pd.Series(history, dtype="str"),
        "conn_state": pd.Series(conn_state, dtype="str"),
        "service": pd.Series(service.to_numpy(dtype=object), dtype="str"),
        "attached_pkts": pd.array(attached, dtype="Int64"),
        "iat_min_s": iat_stats["min"].to_numpy(),
        "iat_mean_s": iat_stats["mean"].to_numpy(),
        "iat_std_s": iat_std.to_numpy(),
        "iat_max_s": iat_stats["max"].to_numpy(),
        "len_min": len_stats["min"].reindex(range(n_flows)).to_numpy(),
        "len_mean": len_stats["mean"].reindex(range(n_flows)).to_numpy(),
        "len_std": len_std.reindex(range(n_flows)).to_numpy(),
        "len_max": len_stats["max"].reindex(range(n_flows)).to_numpy(),
    })
    flows = flows.sort_values("uid", kind="stable").reset_index(drop=True)
    return flows, uid_of_flow


def flows_to_table(flows: pd.DataFrame) -> pa_arrow.Table:
    return pa_arrow.Table.from_pandas(flows, preserve_index=False).cast(FLOW_SCHEMA)


def read_flows(path) -> pd.DataFrame:
    return pq.read_table(path).to_pandas(types_mapper={
        pa_arrow.int64(): pd.Int64Dtype(), pa_arrow.int32(): pd.Int32Dtype()}.get)


def write_connections(*, trace: str, packets_path, flows_path, http_path,
                      settings: dict) -> dict:
    """Stage: flows.parquet and http.parquet of one trace (both need each packet's connection)."""
    from tracelab.security.log4shell import HttpModel, http_requests, http_to_table

    flow_settings = FlowSettings(**settings)
    packets = load_packets(packets_path)
    connections = assemble_connections(packets, flow_settings)
    flows = connections.flows
    FlowModel.validate(flows, lazy=True)
    write_parquet(flows_to_table(flows), flows_path, {
        "trace": trace, "flow_settings": json.dumps(asdict(flow_settings)),
        "rows_in_no_connection": json.dumps(connections.left_out)})
    http = http_requests(packets, connections.packet_uid)
    HttpModel.validate(http, lazy=True)
    write_parquet(http_to_table(http), http_path, {"trace": trace})
    log.info("%s: %d connections (%s), %d HTTP requests, %d with a JNDI lookup", trace,
             len(flows), flows["conn_state"].value_counts().to_dict(), len(http),
             int(http["jndi"].sum()))
    return {"connections": len(flows), "http_requests": len(http)}

"""Zeek's view of one connection: who originated it, its `history` and its `conn_state`.

Zeek decides these packet by packet in its TCP analyzer (TCPSessionAdapter.cc `update_history`,
the endpoint state machine of TCP_Endpoint.h, and base/protocols/conn/main.zeek `conn_state`);
here they come from per-direction aggregates of the flag bits of each connection's packets, all
connections of a partition at once.

- Roles (`flipped_roles`): the originator is the first packet's sender unless Zeek would flip
  them (`TCPAnalyzer::WantConnection`, `Connection::FlipRoles`): a TCP connection whose first
  packet is not a pure SYN (a SYN-ACK or a mid-stream packet) sent from a likely server port
  (`LIKELY_SERVER_PORTS`) to a port that is not one, or to one with a higher number unless the
  packet is a SYN-ACK; a UDP connection whose first packet goes from a likely server port to a
  port that is not one. A flipped connection's history starts with `^`. (Zeek's other flip, a
  SYN arriving after its own SYN-ACK, is not made.)
- history letters (`zeek_history`), uppercase for the originator, lowercase for the
  responder, in order of first occurrence: S (SYN without ACK), H (SYN+ACK), A (pure ACK),
  D (payload), F (FIN), R (RST), I (FIN+RST in one packet), Q (SYN with FIN or RST), and
  logarithmically repeated T (retransmitted payload, from Wireshark's "Retransmission"
  analysis) and W (zero window), written at the 1st, 10th, 100th... occurrence; `^` first when
  the roles were flipped. UDP: D/d. Zeek repeats S/F/R when a later packet carries a different
  sequence number; here each appears once.
- conn_state (`zeek_conn_state`): S0, S1, SF, REJ, S2, S3, RSTO, RSTR, RSTOS0, RSTRH, SH, SHR,
  OTH (TCP); for UDP SF (both sides sent), S0 (only the originator), SHR (only the responder:
  flipped roles).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tracelab.core.packets import TCP_FLAG_BITS
from tracelab.security.flow_arrays import (
    Membership,
    PacketArrays,
    PerFlow,
    concat_per_flow,
    run_starts,
)

FIN, SYN, RST, ACK = (TCP_FLAG_BITS[n] for n in ("FIN", "SYN", "RST", "ACK"))

ZEEK_CONN_STATES = ("S0", "S1", "SF", "REJ", "S2", "S3", "RSTO", "RSTR", "RSTOS0", "RSTRH",
                    "SH", "SHR", "OTH")

# Zeek's `likely_server_ports` (init-bare.zeek): the server ports the base scripts pass to
# `Analyzer::register_for_ports` / `PacketAnalyzer::register_for_ports` (zeek/zeek a13de64,
# scripts/base/protocols/*/main.zeek and packet-protocols/*/main.zeek), per transport: not
# every well-known port (dhcp's client port 68/udp is not one, its server port 67/udp is).
ZEEK_SERVER_PORTS = {
    "tcp": (21, 22, 25, 53, 79, 80, 81, 88, 135, 139, 143, 389, 443, 445, 465, 502, 514, 563,
            585, 587, 614, 631, 636, 989, 990, 992, 993, 995, 1080, 1434, 1883, 2811, 3128,
            3268, 3306, 3389, 5222, 5223, 5269, 5432, 6379, 6666, 6667, 6668, 6669, 8000, 8080,
            8888, 20000),
    "udp": (53, 67, 88, 123, 137, 161, 162, 389, 443, 514, 1812, 2123, 2152, 3389, 3544, 4011,
            4754, 4789, 5060, 5072, 5353, 5355, 6081, 20000),
}
LIKELY_SERVER_PORTS = np.zeros((2, 65536), bool)  # row 0 UDP, row 1 TCP
LIKELY_SERVER_PORTS[0, list(ZEEK_SERVER_PORTS["udp"])] = True
LIKELY_SERVER_PORTS[1, list(ZEEK_SERVER_PORTS["tcp"])] = True

# Endpoint states of Zeek's TCP analyzer (analyzer/protocol/tcp/TCP_Endpoint.h).
INACTIVE, SYN_SENT, SYN_ACK_SENT, PARTIAL, ESTABLISHED, CLOSED, RESET = range(7)


def flipped_roles(packets: PacketArrays, first_row: np.ndarray) -> np.ndarray:
    """Zeek's `WantConnection` role flip, from each connection's first packet (module docs)."""
    flags = packets.flags[first_row]
    src_port, dst_port = packets.src_port[first_row], packets.dst_port[first_row]
    is_tcp = packets.is_tcp[first_row].astype(np.int64)
    src_server = LIKELY_SERVER_PORTS[is_tcp, src_port]
    dst_server = LIKELY_SERVER_PORTS[is_tcp, dst_port]
    syn, ack = (flags & SYN) != 0, (flags & ACK) != 0
    tcp_flip = (~syn | ack) & src_server & (~dst_server | (~syn & (src_port < dst_port)))
    return np.where(is_tcp == 1, tcp_flip, src_server & ~dst_server)


@dataclass
class FlowRows:
    """A partition's member rows sorted by (flow, time, frame), with what the history, state
    and byte counts are made of."""

    flow: np.ndarray
    per: PerFlow
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
    def of(cls, packets: PacketArrays, rows: np.ndarray, member: Membership) -> FlowRows:
        """`rows`: the member rows of `packets`, sorted by (flow, time, frame)."""
        flow = member.flow_of[rows]
        per = PerFlow(flow)
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


def zeek_history(rows: FlowRows, flipped: np.ndarray) -> np.ndarray:
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
        nth[by_side] = np.arange(len(hits)) - np.flatnonzero(run_starts(side[by_side]))[
            np.cumsum(run_starts(side[by_side])) - 1]
        kept = hits[np.isin(nth + 1, 10 ** np.arange(19))]
        events.append((rows.flow[kept], kept * 3 + slot, np.full(len(kept), letter),
                       rows.orig[kept]))
    flips = np.flatnonzero(flipped)
    events.append((flips, np.full(len(flips), -1), np.full(len(flips), FLIP_CODE),
                   np.ones(len(flips), bool)))
    flow, order, letters, orig = (np.concatenate(parts) for parts in zip(*events))
    sort = np.lexsort((order, flow))
    chars = _LETTERS[(~orig[sort]).astype(np.int64), letters[sort]]
    return concat_per_flow(flow[sort], chars, len(flipped))


def _endpoint_state(pre, rst, fin, rst_order, fin_order, peer_fin):
    """Final state: RESET after a RST, CLOSED after a FIN; a RST after our own FIN and the
    peer's FIN (a normal close followed by a reset) leaves the endpoint CLOSED, as in Zeek."""
    reset_after_close = rst & fin & (fin_order < rst_order) & peer_fin
    return np.select([rst & ~reset_after_close, fin | reset_after_close], [RESET, CLOSED], pre)


def _side_flags(rows: FlowRows, mine: np.ndarray) -> dict[str, np.ndarray]:
    """One side's per-flow control bits, in the terms of Zeek's endpoint states."""
    per = rows.per
    return {"syn": per.any(rows.syn & ~rows.ack & mine), "synack": per.any(rows.syn & rows.ack
                                                                          & mine),
            "fin": per.any(rows.fin & mine), "rst": per.any(rows.rst & mine),
            "any": per.any(mine), "data": per.any((rows.payload > 0) & mine),
            "fin_order": per.first_position(rows.fin & mine),
            "rst_order": per.first_position(rows.rst & mine)}


def zeek_conn_state(rows: FlowRows, is_tcp: np.ndarray, history: np.ndarray) -> np.ndarray:
    """Zeek's conn_state (base/protocols/conn/main.zeek) of each flow (`is_tcp`: per flow),
    from per-direction aggregates and the flow's `history`."""
    o, r = _side_flags(rows, rows.orig), _side_flags(rows, ~rows.orig)
    no_payload = ~o["data"] & ~r["data"]
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


def zeek_last_time(rows: FlowRows, t: np.ndarray) -> np.ndarray:
    """Each flow's last time (ns; `t`: its rows' times) as Zeek keeps it: TCPSessionAdapter.cc
    `Process` stops calling `SetLastTime` once both endpoints `did_close` (each sent a FIN or
    a RST), so the packets after the one that closed the second side (the last ACK) add to the
    counts but not to the duration."""
    closing = rows.fin | rows.rst
    closed = np.fmax(rows.per.first_position(closing & rows.orig),
                     rows.per.first_position(closing & ~rows.orig))
    counted = np.arange(len(t)) <= closed[rows.flow]
    return np.maximum.reduceat(np.where(counted, t, np.iinfo(np.int64).min), rows.per.starts)


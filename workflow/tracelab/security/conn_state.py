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
  port that is not one. A flipped connection's history starts with `^`. Zeek's second flip
  (TCP_Endpoint::CheckHistory) is made too: a connection left unflipped whose history is "H"
  (its first packet a SYN-ACK) when a pure ACK or a data packet comes, from either side, is
  flipped then: its history becomes "^h" and goes on with the roles swapped.
- history letters (`zeek_history`; TCPSessionAdapter.cc `update_history`), uppercase for the
  originator, lowercase for the responder, in the order Zeek adds them: S (SYN without ACK),
  H (SYN+ACK), A (pure ACK), D (payload), F (FIN), R (RST), I (FIN+RST in one packet),
  Q (SYN with FIN or RST). A, D, I and Q come once a side; S/H (one `hist_seen` bit for
  both), F and R come at a side's first such packet and again at each later one whose
  sequence number (a FIN's: after its payload) differs from the side's previous one of the
  kind. W (zero window), T (retransmitted payload, from Wireshark's "Retransmission"
  analysis) and G (content gap: `content_gaps`) are logarithmic
  (Session::ScaledHistoryEntry): at the 1st, 10th, 100th... occurrence of a side; in one
  packet they follow its letter in that order, as Zeek adds them. `^` first when the roles
  were flipped. UDP: D/d. Not given: C/c (bad checksum: the decoder checks no checksums, and
  Zeek drops such packets from all analysis), X (analyzer limits), and the quirk that Zeek
  keeps the `hist_seen` bits unswapped across the mid-history flip.
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
    seq: np.ndarray
    ack_number: np.ndarray
    segment_missing: np.ndarray

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
        # Zeek's W: a zero window, not on or after a RST of this side, nor after the peer's FIN
        # (checked at the few rows with a zero window).
        zero = np.flatnonzero(tcp & (packets.window[rows] == 0))
        zero_flow, zero_orig = flow[zero], orig[zero]
        own_rst = np.where(zero_orig, per.first_position(rst & orig)[zero_flow],
                           per.first_position(rst & ~orig)[zero_flow])
        peer_fin = np.where(zero_orig, per.first_position(fin & ~orig)[zero_flow],
                            per.first_position(fin & orig)[zero_flow])
        zero_window = np.zeros(len(rows), bool)
        zero_window[zero] = (zero < own_rst) & (zero < peer_fin)
        return cls(flow=flow, per=per, orig=orig, tcp=tcp, known=known, syn=syn, fin=fin,
                   rst=rst, ack=ack, payload=payload,
                   retransmitted=tcp & (payload > 0) & packets.retransmission[rows],
                   zero_window=zero_window, seq=packets.seq[rows],
                   ack_number=packets.ack[rows], segment_missing=packets.segment_missing[rows])

    def flip(self, flows: np.ndarray) -> None:
        """Swap the roles of the flows where `flows` (per flow) holds."""
        self.orig = self.orig ^ flows[self.flow]


# History letters by code (0: none; 1-8 in Zeek's order of checks), the originator's in upper
# case and the responder's in lower case; then T, W, G and the flip mark.
_LETTERS = np.array([list(" IQHSFRDATWG^"), list(" iqhsfrdatwg^")])
I_CODE, Q_CODE, H_CODE, S_CODE, F_CODE, R_CODE, D_CODE, A_CODE = range(1, 9)
T_CODE, W_CODE, G_CODE, FLIP_CODE = 9, 10, 11, 12
POWERS_OF_TEN = 10 ** np.arange(19)
# Sequence numbers as keys per flow (flow * SEQ_SPAN + number; relative numbers stay below).
SEQ_SPAN = 1 << 34


def _letter_codes(rows: FlowRows) -> np.ndarray:
    """Each row's letter in update_history's order of checks (0: none); UDP rows are D."""
    several = (rows.syn.astype(int) + rows.fin + rows.rst) > 1
    code = np.select(
        [several & rows.fin & rows.rst, several, rows.syn & rows.ack, rows.syn, rows.fin,
         rows.rst, rows.payload > 0, rows.ack & rows.known],
        [I_CODE, Q_CODE, H_CODE, S_CODE, F_CODE, R_CODE, D_CODE, A_CODE], 0)
    return np.where(rows.tcp, code, D_CODE)


def _scaled_letters(side: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Session::ScaledHistoryEntry: for events in order, each of a `side` (flow * 2 + orig)
    and happening `counts` times, how many letters each adds: one at the 1st, 10th, 100th...
    time on its side."""
    by_side = np.argsort(side, kind="stable")
    starts = run_starts(side[by_side])
    total = np.cumsum(counts[by_side])
    after = total - (total - counts[by_side])[starts][np.cumsum(starts) - 1]
    before = after - counts[by_side]
    letters = np.empty(len(side), np.int64)
    letters[by_side] = (np.searchsorted(POWERS_OF_TEN, after, side="right")
                        - np.searchsorted(POWERS_OF_TEN, before, side="right"))
    return letters


def _lettered_rows(rows: FlowRows, code: np.ndarray) -> np.ndarray:
    """The rows that add their letter: a side's first of each of Zeek's `hist_seen` bits (S and
    H share one), and a SYN, FIN or RST whose sequence number (a FIN's: after its payload)
    differs from that of the side's previous one of the kind (`hist_last_SYN`, ...)."""
    kind = np.where(code == H_CODE, S_CODE, code)
    lettered = np.flatnonzero(code > 0)
    key = (rows.flow[lettered] * 2 + rows.orig[lettered]) * 16 + kind[lettered]
    order = np.argsort(key, kind="stable")
    key, lettered = key[order], lettered[order]
    value = np.where(code == F_CODE, rows.seq + rows.payload, rows.seq)[lettered]
    changed = np.ones(len(lettered), bool)
    changed[1:] = value[1:] != value[:-1]   # NaN (no number) never differs
    changed[1:] &= ~np.isnan(value[1:]) & ~np.isnan(value[:-1])
    repeats = np.isin(code[lettered], (H_CODE, S_CODE, F_CODE, R_CODE)) & changed
    adds = np.zeros(len(code), bool)
    adds[lettered[run_starts(key) | repeats]] = True
    return np.flatnonzero(adds)


def zeek_history(rows: FlowRows, flipped: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zeek's history string per flow, and which flows Zeek flips in mid-history (their roles
    are still `rows`'; `FlowRows.flip` turns them): a connection that is not flipped at its
    first packet and whose history is "H" when an A or D comes (TCP_Endpoint::CheckHistory)
    becomes "^h" and goes on with the roles swapped."""
    code = _letter_codes(rows)
    first = _lettered_rows(rows, code)
    events = [(rows.flow[first], first * 4, code[first], rows.orig[first])]
    # In a packet Zeek adds its letter, then W (update_window), T (update_last_seq), then G
    # (the peer's AckReceived); each logarithmic.
    zero_window, retransmitted = (np.flatnonzero(m) for m in (rows.zero_window,
                                                              rows.retransmitted))
    scaled = [(W_CODE, zero_window, np.ones(len(zero_window), np.int64), rows.orig[zero_window]),
              (T_CODE, retransmitted, np.ones(len(retransmitted), np.int64),
               rows.orig[retransmitted]),
              (G_CODE, *content_gaps(rows))]
    for slot, (letter, hits, counts, orig) in enumerate(scaled, start=1):
        repeat = _scaled_letters(rows.flow[hits] * 2 + orig, counts)
        kept = np.repeat(hits, repeat)
        events.append((rows.flow[kept], kept * 4 + slot, np.full(len(kept), letter),
                       np.repeat(orig, repeat)))
    flow, order, letters, orig = (np.concatenate(parts) for parts in zip(*events))
    sort = np.lexsort((order, flow))
    flow, letters, orig = flow[sort], letters[sort], orig[sort]
    late = _handshake_flips(flow, letters, orig, flipped)
    orig = orig ^ late[flow]
    flips = np.flatnonzero(flipped | late)
    starts = np.searchsorted(flow, flips)
    flow, letters, orig = (np.insert(values, starts, inserted) for values, inserted in (
        (flow, flips), (letters, FLIP_CODE), (orig, True)))
    chars = _LETTERS[(~orig).astype(np.int64), letters]
    return concat_per_flow(flow, chars, len(flipped)), late


def _handshake_flips(flow: np.ndarray, letters: np.ndarray, orig: np.ndarray,
                     flipped: np.ndarray) -> np.ndarray:
    """Per flow: its history (events sorted by flow) starts "H" then A, a, D or d, unflipped."""
    starts = np.flatnonzero(run_starts(flow))
    second = starts + 1
    has_second = second < len(flow)
    second = np.where(has_second, second, 0)
    late = np.zeros(len(flipped), bool)
    late[flow[starts]] = ((letters[starts] == H_CODE) & orig[starts] & has_second
                          & (flow[second] == flow[starts])
                          & np.isin(letters[second], (A_CODE, D_CODE)))
    return late & ~flipped


def _established_rows(rows: FlowRows) -> np.ndarray:
    """Rows at which both endpoints are established (or closed from there) in Zeek's state
    machine: after the originator's SYN, the responder's SYN-ACK and the originator's next ACK,
    before any RST (a RST leaves its sender RESET)."""
    per, flow, position = rows.per, rows.flow, np.arange(len(rows.flow))
    syn = per.first_position(rows.syn & ~rows.ack & rows.orig)[flow]
    synack = per.first_position(rows.syn & rows.ack & ~rows.orig)[flow]
    acked = per.first_position(rows.ack & rows.orig & (position > synack))[flow]
    return (syn < synack) & (acked <= position) & (position < per.first_position(rows.rst)[flow])


def content_gaps(rows: FlowRows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zeek's content gaps (TCP_Reassembler::Undelivered calling Gap, counted by
    TCP_Endpoint::Gap only between established endpoints): each ACK that moves past what its
    peer's captured payload covers reveals one gap a stretch of uncovered sequence space
    between its peer's previous highest ACK and its own (a FIN's number excepted once the FIN
    was seen). Returns the rows whose ACK revealed gaps (ascending), how many, and whether the
    gaps are the originator's data. A side with payload rows of no known sequence number
    (export rows attached without ports) is left out."""
    if not rows.segment_missing.any():  # no flow can have gaps (`_side_gaps`): skip the work
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)
    established = _established_rows(rows)
    found = [_side_gaps(rows, sender, established) for sender in (True, False)]
    row, count, orig = (np.concatenate(parts) for parts in zip(*found))
    order = np.argsort(row, kind="stable")
    return row[order], count[order], orig[order]


def _side_gaps(rows: FlowRows, sender: bool,
               established: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`content_gaps` of one side's data (the originator's if `sender`; `established`:
    `_established_rows`)."""
    per, flow = rows.per, rows.flow
    mine = (rows.orig == sender) & rows.tcp & ~np.isnan(rows.seq)
    # Data starts after the SYN; a side with payload rows of no known number (export rows
    # attached without ports) has gaps tracelab cannot place: none are counted. Nor are they
    # in a flow where Wireshark's TCP analysis found no missing segment: an export can hide
    # the numbers of the data an ACK covers (an HTTP row left in no connection).
    unplaced = per.any((rows.orig == sender) & rows.tcp & np.isnan(rows.seq) & (rows.payload > 0))
    unplaced |= ~per.any(rows.segment_missing)
    base = np.where(unplaced, np.nan, per.min(np.where(mine & rows.syn, rows.seq + 1, np.nan)))
    fin = per.first_position(mine & rows.fin)
    fin_end = per.min(np.where(mine & rows.fin, rows.seq + rows.payload, np.nan))
    # Uncovered stretches of each flow's sequence space from `base` (the last one open).
    data = np.flatnonzero(mine & (rows.payload > 0) & ~rows.rst & ~np.isnan(base[flow]))
    data = data[np.lexsort((rows.seq[data], flow[data]))]
    start, end = rows.seq[data], rows.seq[data] + rows.payload[data]
    reach = pd.Series(end).groupby(flow[data]).cummax().to_numpy(np.float64)
    first = run_starts(flow[data])
    before = np.where(first, base[flow[data]], np.roll(reach, 1))
    holes = np.flatnonzero(start > before)
    last = np.flatnonzero(np.append(first[1:], len(data) > 0))
    opened = np.flatnonzero(np.isfinite(base) & (np.bincount(flow[data], minlength=len(base))
                                                 == 0))
    hole_flow = np.concatenate([flow[data][holes], flow[data][last], opened])
    hole_start = np.concatenate([before[holes], reach[last], base[opened]])
    hole_end = np.concatenate([start[holes], np.full(len(last) + len(opened), SEQ_SPAN - 1.0)])
    order = np.lexsort((hole_start, hole_flow))
    starts_key = _seq_key(hole_flow[order], hole_start[order])
    ends_key = _seq_key(hole_flow[order], hole_end[order])
    # The peer's ACKs: each covers from the highest before it (or `base`) to its own.
    acks = np.flatnonzero((rows.orig != sender) & rows.tcp & rows.ack & ~np.isnan(rows.ack_number)
                          & np.isfinite(base[flow]))
    ack_flow = flow[acks]
    high = rows.ack_number[acks]
    high = np.where(fin[ack_flow] < acks, np.fmin(high, fin_end[ack_flow]), high)
    reached = pd.Series(high).groupby(ack_flow).cummax().to_numpy(np.float64)
    low = np.where(run_starts(ack_flow), base[ack_flow], np.roll(reached, 1))
    low = np.maximum(low, base[ack_flow])
    # Stretches starting below the ACK, less those ending at or below the previous one.
    count = np.where(high > low, np.searchsorted(starts_key, _seq_key(ack_flow, high))
                     - np.searchsorted(ends_key, _seq_key(ack_flow, low), side="right"), 0)
    counted = (count > 0) & established[acks]
    return acks[counted], count[counted], np.full(int(counted.sum()), sender)


def _seq_key(flow: np.ndarray, number: np.ndarray) -> np.ndarray:
    return flow * SEQ_SPAN + np.clip(number, 0, SEQ_SPAN - 1).astype(np.int64)


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


def _acks_into_established(rows: FlowRows, late_flip: np.ndarray) -> np.ndarray:
    """Per flow: the originator's first packet is an ACK sent after the responder's SYN had
    made the responder ESTABLISHED (its own SYN not captured), which UpdateInactiveState
    (TCPSessionAdapter.cc: "No SYN packet from originator but SYN/ACK from responder, and now
    a pure ACK") takes as ESTABLISHED, not PARTIAL. Not after a mid-history flip
    (`late_flip`): Zeek took that SYN-ACK as the originator's (SYN_ACK_SENT)."""
    per = rows.per
    first = per.first_position(rows.orig)
    first_ack = per.any(rows.ack & (np.arange(len(rows.flow)) == first[rows.flow]))
    return first_ack & (per.first_position(rows.syn & ~rows.orig) < first) & ~late_flip


def zeek_conn_state(rows: FlowRows, is_tcp: np.ndarray, history: np.ndarray,
                    late_flip: np.ndarray) -> np.ndarray:
    """Zeek's conn_state (base/protocols/conn/main.zeek) of each flow (`is_tcp`: per flow),
    from per-direction aggregates, the flow's `history` and whether it was flipped in
    mid-history (`late_flip`, from zeek_history)."""
    o, r = _side_flags(rows, rows.orig), _side_flags(rows, ~rows.orig)
    no_payload = ~o["data"] & ~r["data"]
    o_pre = np.select([~o["any"], o["syn"] & (r["syn"] | r["synack"]), o["syn"],
                       o["synack"] & r["syn"], o["synack"],
                       _acks_into_established(rows, late_flip)],
                      [INACTIVE, ESTABLISHED, SYN_SENT, ESTABLISHED, SYN_ACK_SENT, ESTABLISHED],
                      PARTIAL)
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


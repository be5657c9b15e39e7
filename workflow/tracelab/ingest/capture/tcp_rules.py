"""The rules of Wireshark's tcp_analyze_sequence_number() (epan/dissectors/packet-tcp.c),
each vectorised over a sorted batch (tcp_batch.Batch) under the name Wireshark gives its flag,
and the bracketed notes the Info column shows for them ("TCP Retransmission",
"TCP Dup ACK 12#1", ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tracelab.ingest.capture import grouped
from tracelab.ingest.capture.tcp_batch import LOW32, Batch

# Wireshark's expert-info wording, as the Info column shows it in brackets.
REUSED = "TCP Port numbers reused"
ANALYSIS_ORDER = ("reused", "lost", "ack_lost", "keepalive", "keepalive_ack", "dup_ack",
                  "zwp", "zero_window", "zwp_ack", "window_update", "window_full",
                  "fast_retransmission", "spurious_retransmission", "out_of_order",
                  "retransmission")
ANALYSIS_TEXT = {"reused": REUSED, "lost": "TCP Previous segment not captured",
                 "ack_lost": "TCP ACKed unseen segment", "keepalive": "TCP Keep-Alive",
                 "keepalive_ack": "TCP Keep-Alive ACK", "zwp": "TCP ZeroWindowProbe",
                 "zero_window": "TCP ZeroWindow", "zwp_ack": "TCP ZeroWindowProbeAck",
                 "window_update": "TCP Window Update", "window_full": "TCP Window Full",
                 "fast_retransmission": "TCP Fast Retransmission",
                 "spurious_retransmission": "TCP Spurious Retransmission",
                 "out_of_order": "TCP Out-Of-Order", "retransmission": "TCP Retransmission"}
OOO_THRESHOLD_NS = 3_000_000
FAST_RETRANSMISSION_NS = 20_000_000


@dataclass
class _NextSeq:
    """Wireshark's nextseq of each row's side before the row, and when it last rose; the
    zero window probes, which do not advance it."""

    running: np.ndarray         # per side: nextseq after each row
    running_ts: np.ndarray      # per side: when it last rose, after each row
    nextseq: np.ndarray         # this side's, before the row (-1: unknown)
    nextseq_ts: np.ndarray
    zwp: np.ndarray

    @property
    def known(self) -> np.ndarray:
        return self.nextseq >= 0


@dataclass
class _DupAcks:
    count: np.ndarray           # the dup ACK number (Wireshark's dupacknum) as of each row
    nondup_frame: np.ndarray    # the frame of the side's last ACK that was not a duplicate


def _running_nextseq(b: Batch, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row and side: the highest seq+len(+SYN/FIN) sent so far by rows not `excluded`,
    and when it last rose (Wireshark's nextseq and nextseqtime, after the row)."""
    m = len(b.d)
    value = np.empty((m, 2), dtype=np.int64)
    when = np.empty((m, 2), dtype=np.int64)
    for side in (0, 1):
        reach = np.where((b.d == side) & ~excluded, b.rel_seq + b.s.seglen + b.synfin, -1)
        running = grouped.grouped_cummax(reach, b.istart)
        before = np.where(b.rows > b.istart, np.r_[-1, running[:-1]], -1)
        carried = b.carried.rows("nextseq")[:, side]
        rose = (reach > before) & (reach > carried)
        last_rise = grouped.last_before(rose[:, None], b.istart, inclusive=True)[:, 0]
        value[:, side] = np.maximum(running, carried)
        when[:, side] = np.where(last_rise >= 0, b.s.ts_ns[np.maximum(last_rise, 0)],
                                 b.carried.rows("nextseq_ts")[:, side])
    return value, when


def _next_sequence(b: Batch) -> _NextSeq:
    """nextseq, with the zero window probes found on the way: a one-byte segment at nextseq
    while the other side's window is zero (a probe does not advance nextseq)."""
    candidate = (b.s.seglen == 1) & (b.rev_window == 0)
    running, running_ts = _running_nextseq(b, candidate)
    before = b.before_row(running, "nextseq")
    zwp = candidate & (before >= 0) & (b.rel_seq == before)
    if not np.array_equal(zwp, candidate):   # (usually there is no candidate at all)
        running, running_ts = _running_nextseq(b, zwp)
    return _NextSeq(running=running, running_ts=running_ts,
                    nextseq=b.before_row(running, "nextseq"),
                    nextseq_ts=b.before_row(running_ts, "nextseq_ts"), zwp=zwp)


def _zero_window(b: Batch) -> np.ndarray:
    return (b.s.window == 0) & ~b.sfr


def _lost(b: Batch, n: _NextSeq) -> np.ndarray:
    """Previous segment not captured: the segment starts beyond nextseq."""
    return ~n.zwp & n.known & (b.rel_seq > n.nextseq) & ~b.rst


def _keepalive(b: Batch, n: _NextSeq) -> np.ndarray:
    """At most one byte, one before nextseq."""
    return ~n.zwp & (b.s.seglen <= 1) & (b.rel_seq == n.nextseq - 1) & ~b.sfr


def _window_update(b: Batch, n: _NextSeq) -> np.ndarray:
    """No data, the same ack, a new (non-zero) window."""
    return ~n.zwp & (b.s.seglen == 0) & (b.s.window != 0) & (b.s.window != b.fwd_window) & \
        (b.rel_seq == n.nextseq) & (b.s.ack == b.fwd_lastack) & ~b.sfr


def _window_full(b: Batch, n: _NextSeq) -> np.ndarray:
    """The segment fills the other side's advertised window exactly."""
    rev_ws = grouped.pick(b.ws_effective, b.at_o)
    window_end = (b.rev_lastack_rel + (b.rev_window << np.maximum(rev_ws, 0))) & LOW32
    return ~n.zwp & (b.s.seglen > 0) & (rev_ws != -1) & (b.rev_lastack >= 0) & \
        (b.rev_window >= 0) & ~b.sfr & ((b.rel_seq + b.s.seglen) & LOW32 == window_end)


def _repeated_ack(b: Batch, n: _NextSeq) -> np.ndarray:
    """No data, and seq, ack and window as the side's previous segment had them: a dup ACK,
    a keep-alive ACK or a zero window probe ACK."""
    return ~n.zwp & (b.s.seglen == 0) & (b.s.window == b.fwd_window) & \
        (b.rel_seq == n.nextseq) & (b.s.ack == b.fwd_lastack) & ~b.sfr


def _keepalive_ack(b: Batch, repeat: np.ndarray, keepalive: np.ndarray) -> np.ndarray:
    rev_keepalive = b.earlier(keepalive.astype(np.int64), "keepalive", b.other, True) == 1
    return repeat & (b.s.window != 0) & rev_keepalive


def _zwp_ack(b: Batch, repeat: np.ndarray, zwp: np.ndarray) -> np.ndarray:
    rev_zwp = b.earlier(zwp.astype(np.int64), "zwp", b.other, True) == 1
    return repeat & (b.s.window == 0) & rev_zwp


def _dup_ack(b: Batch, repeat: np.ndarray, keepalive_ack: np.ndarray) -> np.ndarray:
    return repeat & (b.s.window != 0) & ~keepalive_ack


def _dup_ack_count(b: Batch, dup_ack: np.ndarray) -> _DupAcks:
    """The dup ACKs counted on since the side's ack number last changed."""
    changed = b.s.ack != b.fwd_lastack
    run_start = grouped.pick(
        grouped.last_before(changed[:, None] & b.sides, b.istart, inclusive=True), b.at_d)
    dup_count = np.zeros((len(b.d), 2), dtype=np.int64)
    for side in (0, 1):
        dup_count[:, side] = np.cumsum(dup_ack & (b.d == side))
    counted = grouped.pick(dup_count, b.at_d)
    before_group = np.where(
        b.istart > 0, grouped.pick(dup_count, 2 * np.maximum(b.istart - 1, 0) + b.d), 0)
    count = counted - grouped.pick(dup_count, 2 * np.maximum(run_start, 0) + b.d)
    nondup_frame = b.s.frame[np.maximum(run_start, 0)]
    # Rows whose ack number has not changed in this batch count on from the carried state.
    carried = np.flatnonzero(run_start < 0)
    side = b.d[carried]
    count[carried] = b.carried.pick("dupacks", carried, side) + counted[carried] - \
        before_group[carried]
    nondup_frame[carried] = b.carried.pick("nondup_frame", carried, side)
    return _DupAcks(count=count, nondup_frame=nondup_frame)


def _ack_lost(b: Batch, n: _NextSeq) -> np.ndarray:
    """ACKed unseen segment: the ack goes beyond anything the other side was seen sending."""
    rev_nextseq = b.fill_carried(grouped.pick(n.running, 2 * np.maximum(b.other, 0) + 1 - b.d),
                          b.other, "nextseq", True)
    return b.has_ack & (rev_nextseq >= 0) & (b.rel_ack > rev_nextseq) & \
        (b.rel_ack - rev_nextseq < 1 << 31)


def _not_advanced(b: Batch, n: _NextSeq) -> np.ndarray:
    """seq below nextseq, unless the segment adds data right after a possible zero window
    probe (seq one below nextseq, more than one byte)."""
    return n.known & (b.rel_seq < n.nextseq) & \
        ~((b.s.seglen > 1) & (n.nextseq - 1 == b.rel_seq))


def _fast_retransmission(b: Batch, not_advanced: np.ndarray, dupacks: _DupAcks) -> np.ndarray:
    """At the seq the other side's dup ACKs (two or more) ask for, within 20 ms of its ACK."""
    rev_dupacks = b.earlier(dupacks.count, "dupacks", b.other, True)
    rev_lastack_ts = b.earlier(b.s.ts_ns, "lastack_ts", b.other, True)
    return not_advanced & (rev_dupacks >= 2) & (b.rev_lastack >= 0) & \
        (b.rev_lastack_rel == b.rel_seq) & _within(b.s.ts_ns - rev_lastack_ts,
                                                   FAST_RETRANSMISSION_NS)


def _within(elapsed: np.ndarray, limit) -> np.ndarray:
    """elapsed < limit as Wireshark compares times (unsigned: a packet stamped before the
    reference, reordered by the capture, is not within any limit)."""
    return (elapsed >= 0) & (elapsed < limit)


def _out_of_order(b: Batch, n: _NextSeq, not_advanced: np.ndarray) -> np.ndarray:
    """Within the first RTT (3 ms if unknown) of nextseq's last rise, and not ending at it
    (SYN and FIN count one)."""
    threshold = np.where(b.first_rtt > 0, b.first_rtt, OOO_THRESHOLD_NS)
    return not_advanced & _within(b.s.ts_ns - n.nextseq_ts, threshold) & \
        (n.nextseq != b.rel_seq + b.s.seglen + b.synfin)


def _spurious_retransmission(b: Batch) -> np.ndarray:
    """Data the other side has already acknowledged: seq + len at or before its latest ack,
    in sequence space (modulo 2**32, as Wireshark's LE_SEQ)."""
    behind = (b.rev_lastack_rel - b.rel_seq - b.s.seglen) & LOW32
    return (b.s.seglen > 0) & (b.rev_lastack > 0) & (behind < 1 << 31)


def _retransmissions(b: Batch, n: _NextSeq, keepalive, dupacks: _DupAcks) -> dict:
    """Segments with data (or SYN/FIN), keep-alives aside, go through Wireshark's checks in
    order (tcp_analyze_sequence_number, Wireshark 3.6 on): the first that holds names the
    segment. Data already acknowledged is a spurious retransmission whatever its timing."""
    remaining = ((b.s.seglen > 0) | (b.synfin > 0)) & ~keepalive
    not_advanced = _not_advanced(b, n)
    checks = {"spurious_retransmission": _spurious_retransmission(b),
              "fast_retransmission": _fast_retransmission(b, not_advanced, dupacks),
              "out_of_order": _out_of_order(b, n, not_advanced),
              "retransmission": not_advanced}
    found = {}
    for name, holds in checks.items():
        found[name] = remaining & holds
        remaining &= ~holds
    return found


def analysis(b: Batch) -> tuple[dict, _DupAcks, dict]:
    """Wireshark's TCP sequence analysis of a batch: each flag's rows, the dup ACK numbers,
    and each instance's state after its last row (all the next batch needs)."""
    n = _next_sequence(b)
    keepalive = _keepalive(b, n)
    repeat = _repeated_ack(b, n)
    keepalive_ack = _keepalive_ack(b, repeat, keepalive)
    dup_ack = _dup_ack(b, repeat, keepalive_ack)
    dupacks = _dup_ack_count(b, dup_ack)
    found = {"reused": b.reused, "lost": _lost(b, n), "ack_lost": _ack_lost(b, n),
             "keepalive": keepalive, "keepalive_ack": keepalive_ack, "dup_ack": dup_ack,
             "zwp": n.zwp, "zero_window": _zero_window(b), "zwp_ack": _zwp_ack(b, repeat, n.zwp),
             "window_update": _window_update(b, n), "window_full": _window_full(b, n),
             **_retransmissions(b, n, keepalive, dupacks)}
    return found, dupacks, _state_after(b, n, keepalive, dupacks)


def _state_after(b: Batch, n: _NextSeq, keepalive: np.ndarray, dupacks: _DupAcks) -> dict:
    """Each instance's state after its last row (`b.ends`)."""
    ends = b.ends
    state = {"base": b.base[ends], "ws": b.ws[ends], "tls": b.tls[ends],
             "nextseq": n.running[ends], "nextseq_ts": n.running_ts[ends]}
    last_at_end = b.last_on[ends]
    for name, values in (("lastack", b.s.ack), ("lastack_ts", b.s.ts_ns),
                         ("window", b.s.window), ("dupacks", dupacks.count),
                         ("nondup_frame", dupacks.nondup_frame), ("keepalive", keepalive),
                         ("zwp", n.zwp)):
        state[name] = np.where(last_at_end >= 0, values[np.maximum(last_at_end, 0)],
                               b.carried.at_end[name])
    return {**state, "syn_ts": b.syn_ts[ends], "rtt": b.first_rtt[ends]}


def analysis_text(found: dict, dupacks: _DupAcks, m: int) -> tuple[np.ndarray, pa.Array]:
    """The rows with flags, and their flags as Wireshark's bracketed Info notes, joined by
    "; "."""
    bits = np.zeros(m, dtype=np.int64)
    for k, name in enumerate(ANALYSIS_ORDER):
        bits |= found[name].astype(np.int64) << k
    rows = np.flatnonzero(bits)
    if not len(rows):
        return rows, pa.array([], pa.string())
    unique, inverse = np.unique(bits[rows], return_inverse=True)
    dup = ANALYSIS_ORDER.index("dup_ack")

    def names(value: int, ks) -> str:
        return "; ".join(ANALYSIS_TEXT[ANALYSIS_ORDER[k]] for k in ks if value >> k & 1)

    head = pa.array([names(int(u), range(dup)) for u in unique]).take(pa.array(inverse))
    tail = pa.array([names(int(u), range(dup + 1, len(ANALYSIS_ORDER)))
                     for u in unique]).take(pa.array(inverse))
    dup_text = pc.if_else(pa.array(found["dup_ack"][rows]), pc.binary_join_element_wise(
        "TCP Dup ACK ", pa.array(dupacks.nondup_frame[rows]).cast(pa.string()), "#",
        pa.array(dupacks.count[rows]).cast(pa.string()), ""), "")
    # All three parts are non-null strings (binary_join_element_wise drops rows whose
    # parts are all null); empty parts leave separators to tidy away.
    joined = pc.binary_join_element_wise(head, dup_text, tail, "; ")
    joined = pc.replace_substring_regex(joined, r"^(?:; )+|(?:; )+$", "")
    joined = pc.replace_substring_regex(joined, r"(?:; ){2,}", "; ")
    return rows, joined

"""Wireshark's TCP analysis, vectorised over the TCP segments of a batch.

TcpConversations carries each conversation's state from batch to batch; per batch it gives
the relative sequence and acknowledgement numbers, the scaled window, the TLS version a
connection settled on and the bracketed notes Wireshark shows in the Info column
("TCP Retransmission", "TCP Dup ACK 12#1", ...), each flag decided by the rule of Wireshark's
tcp_analyze_sequence_number() (epan/dissectors/packet-tcp.c) of the same name.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cached_property
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tracelab.core.packets import TCP_FLAG_BITS
from tracelab.ingest.capture import grouped

TH_FIN, TH_SYN, TH_RST, TH_ACK = (TCP_FLAG_BITS[name] for name in ("FIN", "SYN", "RST", "ACK"))

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
# Sequence arithmetic modulo 2**32: for int64, x & LOW32 == x % 2**32, without a division.
LOW32 = (1 << 32) - 1


@dataclass
class Segments:
    """The TCP segments of one batch, a row each."""

    key: np.ndarray             # (rows, 4) uint64: source address hi, lo, destination hi, lo
    family: np.ndarray          # IP version, 4 or 6
    src_port: np.ndarray
    dst_port: np.ndarray
    seq: np.ndarray             # raw sequence number
    ack: np.ndarray             # raw acknowledgement number
    flags: np.ndarray           # TCP_FLAG_BITS
    window: np.ndarray          # raw (unscaled) window
    seglen: np.ndarray          # payload bytes on the wire
    window_shift: np.ndarray    # a SYN's window scale option (-2: none; -1: not a SYN)
    ts_ns: np.ndarray
    frame: np.ndarray
    server_version: np.ndarray  # the TLS version a ServerHello in the segment chose (0: none)

    def __len__(self) -> int:
        return len(self.seq)

    def take(self, order: np.ndarray) -> Segments:
        return Segments(**{f.name: getattr(self, f.name)[order] for f in fields(self)})


@dataclass
class TcpColumns:
    """What the analysis gives per TCP row of a batch, in capture order."""

    seq: np.ndarray             # relative sequence number
    ack: np.ndarray             # relative acknowledgement number
    has_ack: np.ndarray         # whether the ACK flag is set (else `ack` is no number)
    window: np.ndarray          # the window, scaled
    tls_version: np.ndarray     # the TLS version the connection settled on (0: none yet)
    analysis_rows: np.ndarray   # the rows with notes, ascending
    analysis: pa.Array          # their notes, as Wireshark's Info column shows them

    @classmethod
    def empty(cls) -> TcpColumns:
        none = np.zeros(0, dtype=np.int64)
        return cls(seq=none, ack=none, has_ack=np.zeros(0, dtype=bool), window=none,
                   tls_version=none, analysis_rows=none, analysis=pa.array([], pa.string()))


class TcpConversations:
    """TCP state per conversation, carried from batch to batch.

    Follows Wireshark's tcp_analyze_sequence_number(): the base of each direction is its SYN's
    sequence number, or seq-1 of its first segment, or ack-1 of the first ACK from the other
    side, whichever comes first; a SYN with a new sequence number on a known 4-tuple starts a
    new conversation ("TCP Port numbers reused"). Window scale from the handshake's options.

    Rows are processed sorted by conversation instance, then capture order; "the previous row
    on this side" and "the other side's latest row" are found with running maxima of row
    indices, and an instance's values from earlier batches fill in where a batch has none.
    """

    STATE: ClassVar[dict] = {  # name: (initial value, one per direction)
        "base": (-1, True), "ws": (-1, True), "nextseq": (-1, True), "nextseq_ts": (0, True),
        "lastack": (-1, True), "lastack_ts": (0, True), "window": (-1, True),
        "dupacks": (0, True), "nondup_frame": (0, True), "keepalive": (0, True),
        "zwp": (0, True), "tls": (0, False), "syn_ts": (-1, False), "rtt": (-1, False),
    }

    def __init__(self):
        self.index: dict[bytes, int] = {}   # conversation key -> its current instance
        self.instances = 0
        self.state = {name: np.full((1024, 2) if pair else 1024, value, dtype=np.int64)
                      for name, (value, pair) in self.STATE.items()}
        self.conversations = 0
        self.reuses = 0

    def _grow(self, count: int) -> None:
        size = len(self.state["base"])
        if self.instances + count <= size:
            return
        new = max(self.instances + count, 2 * size, 1024)
        for name, (value, pair) in self.STATE.items():
            grown = np.full((new, 2) if pair else new, value, dtype=np.int64)
            grown[:size] = self.state[name]
            self.state[name] = grown

    def _conversations(self, segments: Segments):
        """Each row's conversation (batch-local), its direction (0: from the lower endpoint,
        address then port), each conversation's key and known instance (-1: new)."""
        key, family = segments.key, segments.family
        # The IP version rides with the port, so 198.18.0.1 is not ::c612:1.
        src = (key[:, 0], key[:, 1], (segments.src_port | family << 16).astype(np.uint64))
        dst = (key[:, 2], key[:, 3], (segments.dst_port | family << 16).astype(np.uint64))
        lower = (src[0] < dst[0]) | (src[0] == dst[0]) & (
            (src[1] < dst[1]) | (src[1] == dst[1]) & (src[2] <= dst[2]))
        columns = [np.where(lower, a, b) for a, b in zip(src, dst)] + \
            [np.where(lower, b, a) for a, b in zip(src, dst)]
        conversation = grouped.factorize_rows(columns)
        # Codes come in order of first appearance: a conversation's first row is where the
        # running maximum rises.
        first = np.flatnonzero(np.r_[True, conversation[1:] >
                                     np.maximum.accumulate(conversation)[:-1]])
        # Only distinct conversations meet Python: one dict lookup each, keyed by the
        # conversation's 48 key bytes.
        table = np.column_stack([column[first] for column in columns]).astype(np.uint64)
        keys = table.view(np.dtype((np.void, table.shape[1] * 8))).ravel().tolist()
        known = np.array([self.index.get(k, -1) for k in keys], dtype=np.int64)
        return keys, conversation, np.where(lower, 0, 1), known

    def update(self, segments: Segments) -> TcpColumns:
        """The relative numbers, scaled windows and analysis notes of a batch's segments."""
        m = len(segments)
        if not m:
            return TcpColumns.empty()
        keys, conv, direction, known = self._conversations(segments)
        # A stable sort of 16-bit codes is a radix sort, several times faster.
        order = np.argsort(conv.astype(np.uint16) if len(keys) <= 1 << 16 else conv,
                           kind="stable")
        s = segments.take(order)
        conv, d = conv[order], direction[order]
        own, reused, inst = self._instances(s, conv, d, keys, known)
        batch = _Batch.sorted_by_instance(s, d, inst, reused, self.state, own)
        found, dupacks, state = _analysis(batch)

        target = inst[batch.ends]
        for name, value in state.items():
            self.state[name][target] = value

        restore = np.empty(m, dtype=np.int64)
        restore[order] = np.arange(m)
        # Only the (few) rows with notes are put back in capture order.
        noted, text = _analysis_text(found, dupacks, m)
        noted = order[noted]
        back = np.argsort(noted)
        return TcpColumns(seq=batch.rel_seq[restore], ack=batch.rel_ack[restore],
                          has_ack=batch.has_ack[restore],
                          window=batch.scaled_window[restore],
                          tls_version=batch.tls[restore], analysis_rows=noted[back],
                          analysis=text.take(pa.array(back)))

    def _instances(self, s: Segments, conv, d, keys, known):
        """Each row's conversation instance (a pure SYN whose seq is not its side's base
        starts a new one: the port numbers were reused), recorded in the index; also the
        bases the conversations' own rows set, and which rows are reuses."""
        m = len(s)
        rows = np.arange(m)
        at_d = 2 * rows + d
        cstart = grouped.group_starts(conv)
        is_ack = (s.flags & TH_ACK) != 0
        pure_syn = ((s.flags & TH_SYN) != 0) & ~is_ack
        current = known[conv]
        carried_base = grouped.pick(np.take(self.state["base"], np.maximum(current, 0), axis=0),
                                    at_d)
        carried_base = np.where(current >= 0, carried_base, -1)
        own = _rule_base(cstart, d, s.seq, s.ack, s.flags)
        sides = d[:, None] == np.array([0, 1])
        previous_syn = grouped.pick(grouped.last_before(pure_syn[:, None] & sides, cstart), at_d)
        own_base = np.where(grouped.pick(own["pos"], at_d) < rows,
                            grouped.pick(own["value"], at_d), -1)
        base_now = np.where(previous_syn >= 0, s.seq[np.maximum(previous_syn, 0)],
                            np.where(carried_base >= 0, carried_base, own_base))
        reused = pure_syn & (base_now >= 0) & (s.seq != base_now)
        first_seen = (current < 0) & (rows == cstart)
        new_instance = reused | first_seen
        count = int(new_instance.sum())
        self._grow(count)
        ids = np.full(m, -1, dtype=np.int64)
        ids[new_instance] = np.arange(self.instances, self.instances + count)
        self.instances += count
        self.conversations += int(first_seen.sum())
        self.reuses += int(reused.sum())
        latest = grouped.last_before(new_instance[:, None], cstart, inclusive=True)[:, 0]
        inst = np.where(latest >= 0, ids[np.maximum(latest, 0)], current)
        # The index changes only for conversations that started an instance in this batch.
        conv_ends = grouped.group_ends(cstart)
        conv_ends = conv_ends[inst[conv_ends] != current[conv_ends]]
        self.index.update(zip((keys[c] for c in conv[conv_ends].tolist()),
                              inst[conv_ends].tolist()))
        return own, reused, inst


def _rule_base(group_start, d, seq, ack, flags) -> dict:
    """Per row and side: the base Wireshark sets from the group's own rows (seq of the side's
    first SYN, seq-1 of its first segment, or ack-1 of the other side's first ACK, whichever
    comes first) and the row that sets it (m if none)."""
    m = len(d)
    rows = np.arange(m)
    starts = np.flatnonzero(np.r_[True, group_start[1:] != group_start[:-1]])
    # Worked out per group, then repeated over the group's rows.
    value = np.empty((len(starts), 2), dtype=np.int64)
    position = np.empty((len(starts), 2), dtype=np.int64)
    is_syn, is_ack = (flags & TH_SYN) != 0, (flags & TH_ACK) != 0
    fwd_value = np.where(is_syn, seq, seq - 1) & LOW32
    rev_value = (ack - 1) & LOW32
    for side in (0, 1):
        first_fwd = np.minimum.reduceat(np.where(d == side, rows, m), starts)
        first_rev = np.minimum.reduceat(np.where((d != side) & is_ack, rows, m), starts)
        use_fwd = first_fwd <= first_rev
        chosen = np.where(use_fwd, first_fwd, first_rev)
        picked = np.where(use_fwd, fwd_value[np.minimum(first_fwd, m - 1)],
                          rev_value[np.minimum(first_rev, m - 1)])
        value[:, side] = np.where(chosen < m, picked, -1)
        position[:, side] = chosen
    sizes = np.diff(np.r_[starts, m])
    return {"value": np.repeat(value, sizes, axis=0), "pos": np.repeat(position, sizes, axis=0),
            "group_start": group_start}


class _Carried:
    """Each instance's state from earlier batches: per instance (`at_end`, the instances in
    batch order), spread over the instance's rows on first use (`rows`), or read for the
    few rows that need it (`pick`: rows without an earlier row of their side in the batch)."""

    def __init__(self, state: dict, instances: np.ndarray, sizes: np.ndarray):
        self.at_end = {name: np.take(values, instances, axis=0) for name, values in state.items()}
        self._sizes = sizes
        self._spread: dict[str, np.ndarray] = {}

    @cached_property
    def instance(self) -> np.ndarray:
        """Each row's instance, as an index into `at_end`."""
        return np.repeat(np.arange(len(self._sizes)), self._sizes)

    def rows(self, name: str) -> np.ndarray:
        if name not in self._spread:
            self._spread[name] = np.repeat(self.at_end[name], self._sizes, axis=0)
        return self._spread[name]

    def pick(self, name: str, rows: np.ndarray, side: np.ndarray) -> np.ndarray:
        return self.at_end[name][self.instance[rows], side]


@dataclass
class _Batch:
    """A batch's segments sorted by conversation instance, then capture order, and what the
    analysis rules share. Per-side arrays are (rows, 2), column 0 the side from the lower
    endpoint; `at_d` and `at_o` pick this row's side and the other side from them
    (grouped.pick). Values of rows before this batch come from `carried`."""

    s: Segments
    d: np.ndarray               # the row's side, 0 or 1
    istart: np.ndarray          # the first row of the row's instance
    ends: np.ndarray            # the last row of each instance
    carried: _Carried           # the instance's state from earlier batches
    reused: np.ndarray          # a pure SYN that starts a new instance of its conversation
    base: np.ndarray            # per side: the raw seq that relative numbers count from
    ws: np.ndarray              # per side: window scale shift (-2: not scaled; -1: unknown)
    tls: np.ndarray             # the TLS version of the instance as of the row (0: none)

    @classmethod
    def sorted_by_instance(cls, s: Segments, d, inst, reused, state: dict, own) -> _Batch:
        istart = grouped.group_starts(inst)
        ends = grouped.group_ends(istart)
        # Each instance's state read once (the tables are large: fewer scattered reads).
        carried = _Carried(state, inst[ends], np.diff(np.r_[-1, ends]))
        # The conversations' own bases hold for the instances unless a reuse split one.
        rule = own if np.array_equal(istart, own["group_start"]) else _rule_base(
            istart, d, s.seq, s.ack, s.flags)
        base = np.where(carried.rows("base") >= 0, carried.rows("base"), rule["value"])
        # Window scale: each side's shift from its SYN; if either side went without, neither
        # scales.
        ws = carried.rows("ws").copy()
        is_syn = (s.flags & TH_SYN) != 0
        for side in (0, 1):
            last = grouped.group_last_row(is_syn & (d == side), istart)
            ws[:, side] = np.where(last >= 0, s.window_shift[np.maximum(last, 0)], ws[:, side])
        # The TLS session's version, from its ServerHello on.
        hello = grouped.last_before((s.server_version > 0)[:, None], istart, inclusive=True)[:, 0]
        tls = np.where(hello >= 0, s.server_version[np.maximum(hello, 0)], carried.rows("tls"))
        return cls(s=s, d=d, istart=istart, ends=ends, carried=carried, reused=reused,
                   base=base, ws=ws, tls=tls)

    @cached_property
    def rows(self) -> np.ndarray:
        return np.arange(len(self.d))

    @cached_property
    def at_d(self) -> np.ndarray:
        return 2 * self.rows + self.d

    @cached_property
    def at_o(self) -> np.ndarray:
        return 2 * self.rows + 1 - self.d

    def flag(self, name: str) -> np.ndarray:
        return (self.s.flags & TCP_FLAG_BITS[name]) != 0

    @cached_property
    def syn(self) -> np.ndarray:
        return self.flag("SYN")

    @cached_property
    def has_ack(self) -> np.ndarray:
        return self.flag("ACK")

    @cached_property
    def rst(self) -> np.ndarray:
        return self.flag("RST")

    @cached_property
    def synfin(self) -> np.ndarray:
        """1 where SYN or FIN takes a sequence number."""
        return (self.syn | self.flag("FIN")).astype(np.int64)

    @cached_property
    def sfr(self) -> np.ndarray:
        return self.syn | self.flag("FIN") | self.rst

    @cached_property
    def base_fwd(self) -> np.ndarray:
        return grouped.pick(self.base, self.at_d)

    @cached_property
    def rel_seq(self) -> np.ndarray:
        return (self.s.seq - self.base_fwd) & LOW32

    @cached_property
    def rel_ack(self) -> np.ndarray:
        return (self.s.ack - grouped.pick(self.base, self.at_o)) & LOW32

    @cached_property
    def ws_effective(self) -> np.ndarray:
        return np.where((self.ws == -2).any(axis=1)[:, None], -2, self.ws)

    @cached_property
    def scaled_window(self) -> np.ndarray:
        shift = grouped.pick(np.maximum(self.ws_effective, 0), self.at_d)
        return np.where(self.syn, self.s.window, self.s.window << shift)

    @cached_property
    def sides(self) -> np.ndarray:
        return self.d[:, None] == np.array([0, 1])

    @cached_property
    def last_on(self) -> np.ndarray:
        """Per side: its latest row so far (-1: none in this batch)."""
        return grouped.last_before(self.sides, self.istart, inclusive=True)

    @cached_property
    def same(self) -> np.ndarray:
        """This side's previous row in the instance (-1: none in this batch)."""
        return np.where(self.rows > self.istart,
                        grouped.pick(self.last_on, np.maximum(self.at_d - 2, 0)), -1)

    @cached_property
    def other(self) -> np.ndarray:
        """The other side's latest row (-1: none in this batch)."""
        return grouped.pick(self.last_on, self.at_o)

    def earlier(self, values: np.ndarray, name: str, index: np.ndarray,
                other: bool) -> np.ndarray:
        """values[index], or where index < 0 (before this batch) the carried state's `name`
        of this side (of the other side if `other`)."""
        found = values[np.maximum(index, 0)]
        return self.fill_carried(found, index, name, other)

    def before_row(self, per_side: np.ndarray, name: str) -> np.ndarray:
        """This side's value of a per-side running array as of just before each row."""
        found = grouped.pick(per_side, 2 * np.maximum(self.same, 0) + self.d)
        return self.fill_carried(found, self.same, name, False)

    def fill_carried(self, found: np.ndarray, index: np.ndarray, name: str,
                     other: bool) -> np.ndarray:
        """`found`, with the carried state's `name` where index < 0."""
        missing = np.flatnonzero(index < 0)
        side = self.d[missing]
        found[missing] = self.carried.pick(name, missing, 1 - side if other else side)
        return found

    @cached_property
    def fwd_window(self) -> np.ndarray:
        return self.earlier(self.s.window, "window", self.same, False)

    @cached_property
    def fwd_lastack(self) -> np.ndarray:
        return self.earlier(self.s.ack, "lastack", self.same, False)

    @cached_property
    def rev_window(self) -> np.ndarray:
        return self.earlier(self.s.window, "window", self.other, True)

    @cached_property
    def rev_lastack(self) -> np.ndarray:
        """The other side's latest raw ack number (-1: none seen)."""
        return self.earlier(self.s.ack, "lastack", self.other, True)

    @cached_property
    def rev_lastack_rel(self) -> np.ndarray:
        """rev_lastack relative to this side's base."""
        return (self.rev_lastack - self.base_fwd) & LOW32


    @cached_property
    def syn_ts(self) -> np.ndarray:
        """The time of the instance's latest SYN (without ACK) so far (-1: none)."""
        last = grouped.last_before((self.syn & ~self.has_ack)[:, None], self.istart,
                                   inclusive=True)[:, 0]
        return np.where(last >= 0, self.s.ts_ns[np.maximum(last, 0)],
                        self.carried.rows("syn_ts"))

    @cached_property
    def first_rtt(self) -> np.ndarray:
        """The instance's first RTT as known at each row (-1: not yet): from its latest SYN
        to the first ACK (without SYN) after it, as Wireshark's ts_first_rtt."""
        m = len(self.d)
        ack = self.has_ack & ~self.syn & (self.syn_ts >= 0)
        first = grouped.group_first(ack, self.istart)
        at = np.minimum(first, m - 1)
        measured = np.where(first <= self.rows, self.s.ts_ns[at] - self.syn_ts[at], -1)
        carried = self.carried.rows("rtt")
        return np.where(carried >= 0, carried, measured)

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


def _running_nextseq(b: _Batch, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def _next_sequence(b: _Batch) -> _NextSeq:
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


def _zero_window(b: _Batch) -> np.ndarray:
    return (b.s.window == 0) & ~b.sfr


def _lost(b: _Batch, n: _NextSeq) -> np.ndarray:
    """Previous segment not captured: the segment starts beyond nextseq."""
    return ~n.zwp & n.known & (b.rel_seq > n.nextseq) & ~b.rst


def _keepalive(b: _Batch, n: _NextSeq) -> np.ndarray:
    """At most one byte, one before nextseq."""
    return ~n.zwp & (b.s.seglen <= 1) & (b.rel_seq == n.nextseq - 1) & ~b.sfr


def _window_update(b: _Batch, n: _NextSeq) -> np.ndarray:
    """No data, the same ack, a new (non-zero) window."""
    return ~n.zwp & (b.s.seglen == 0) & (b.s.window != 0) & (b.s.window != b.fwd_window) & \
        (b.rel_seq == n.nextseq) & (b.s.ack == b.fwd_lastack) & ~b.sfr


def _window_full(b: _Batch, n: _NextSeq) -> np.ndarray:
    """The segment fills the other side's advertised window exactly."""
    rev_ws = grouped.pick(b.ws_effective, b.at_o)
    window_end = (b.rev_lastack_rel + (b.rev_window << np.maximum(rev_ws, 0))) & LOW32
    return ~n.zwp & (b.s.seglen > 0) & (rev_ws != -1) & (b.rev_lastack >= 0) & \
        (b.rev_window >= 0) & ~b.sfr & ((b.rel_seq + b.s.seglen) & LOW32 == window_end)


def _repeated_ack(b: _Batch, n: _NextSeq) -> np.ndarray:
    """No data, and seq, ack and window as the side's previous segment had them: a dup ACK,
    a keep-alive ACK or a zero window probe ACK."""
    return ~n.zwp & (b.s.seglen == 0) & (b.s.window == b.fwd_window) & \
        (b.rel_seq == n.nextseq) & (b.s.ack == b.fwd_lastack) & ~b.sfr


def _keepalive_ack(b: _Batch, repeat: np.ndarray, keepalive: np.ndarray) -> np.ndarray:
    rev_keepalive = b.earlier(keepalive.astype(np.int64), "keepalive", b.other, True) == 1
    return repeat & (b.s.window != 0) & rev_keepalive


def _zwp_ack(b: _Batch, repeat: np.ndarray, zwp: np.ndarray) -> np.ndarray:
    rev_zwp = b.earlier(zwp.astype(np.int64), "zwp", b.other, True) == 1
    return repeat & (b.s.window == 0) & rev_zwp


def _dup_ack(b: _Batch, repeat: np.ndarray, keepalive_ack: np.ndarray) -> np.ndarray:
    return repeat & (b.s.window != 0) & ~keepalive_ack


def _dup_ack_count(b: _Batch, dup_ack: np.ndarray) -> _DupAcks:
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


def _ack_lost(b: _Batch, n: _NextSeq) -> np.ndarray:
    """ACKed unseen segment: the ack goes beyond anything the other side was seen sending."""
    rev_nextseq = b.fill_carried(grouped.pick(n.running, 2 * np.maximum(b.other, 0) + 1 - b.d),
                          b.other, "nextseq", True)
    return b.has_ack & (rev_nextseq >= 0) & (b.rel_ack > rev_nextseq) & \
        (b.rel_ack - rev_nextseq < 1 << 31)


def _not_advanced(b: _Batch, n: _NextSeq) -> np.ndarray:
    """seq below nextseq, unless the segment adds data right after a possible zero window
    probe (seq one below nextseq, more than one byte)."""
    return n.known & (b.rel_seq < n.nextseq) & \
        ~((b.s.seglen > 1) & (n.nextseq - 1 == b.rel_seq))


def _fast_retransmission(b: _Batch, not_advanced: np.ndarray, dupacks: _DupAcks) -> np.ndarray:
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


def _out_of_order(b: _Batch, n: _NextSeq, not_advanced: np.ndarray) -> np.ndarray:
    """Within the first RTT (3 ms if unknown) of nextseq's last rise, and not ending at it
    (SYN and FIN count one)."""
    threshold = np.where(b.first_rtt > 0, b.first_rtt, OOO_THRESHOLD_NS)
    return not_advanced & _within(b.s.ts_ns - n.nextseq_ts, threshold) & \
        (n.nextseq != b.rel_seq + b.s.seglen + b.synfin)


def _spurious_retransmission(b: _Batch) -> np.ndarray:
    """Data the other side has already acknowledged: seq + len at or before its latest ack,
    in sequence space (modulo 2**32, as Wireshark's LE_SEQ)."""
    behind = (b.rev_lastack_rel - b.rel_seq - b.s.seglen) & LOW32
    return (b.s.seglen > 0) & (b.rev_lastack > 0) & (behind < 1 << 31)


def _retransmissions(b: _Batch, n: _NextSeq, keepalive, dupacks: _DupAcks) -> dict:
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


def _analysis(b: _Batch) -> tuple[dict, _DupAcks, dict]:
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


def _state_after(b: _Batch, n: _NextSeq, keepalive: np.ndarray, dupacks: _DupAcks) -> dict:
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


def _analysis_text(found: dict, dupacks: _DupAcks, m: int) -> tuple[np.ndarray, pa.Array]:
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

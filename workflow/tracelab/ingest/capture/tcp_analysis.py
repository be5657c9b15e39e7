"""Wireshark's TCP analysis, vectorised over the TCP segments of a batch.

TcpConversations carries each conversation's state from batch to batch; per batch it gives
the relative sequence and acknowledgement numbers, the scaled window, the TLS version a
connection settled on and the bracketed notes Wireshark shows in the Info column
("TCP Retransmission", "TCP Dup ACK 12#1", ...), each flag decided by the rule Wireshark
gives its name (tcp_rules).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa

from tracelab.ingest.capture import grouped
from tracelab.ingest.capture.tcp_batch import TH_ACK, TH_SYN, Batch, Segments, rule_base
from tracelab.ingest.capture.tcp_rules import analysis, analysis_text


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
        batch = Batch.sorted_by_instance(s, d, inst, reused, self.state, own)
        found, dupacks, state = analysis(batch)

        target = inst[batch.ends]
        for name, value in state.items():
            self.state[name][target] = value

        restore = np.empty(m, dtype=np.int64)
        restore[order] = np.arange(m)
        # Only the (few) rows with notes are put back in capture order.
        noted, text = analysis_text(found, dupacks, m)
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
        own = rule_base(cstart, d, s.seq, s.ack, s.flags)
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

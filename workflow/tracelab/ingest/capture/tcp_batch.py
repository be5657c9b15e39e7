"""The TCP segments of a batch, sorted by conversation instance, with what Wireshark's
analysis rules (tcp_rules) share: relative numbers, each side's base and window scale, the
state carried over from earlier batches.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cached_property

import numpy as np

from tracelab.core.packets import TCP_FLAG_BITS
from tracelab.ingest.capture import grouped

TH_FIN, TH_SYN, TH_RST, TH_ACK = (TCP_FLAG_BITS[name] for name in ("FIN", "SYN", "RST", "ACK"))
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



def rule_base(group_start, d, seq, ack, flags) -> dict:
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


class Carried:
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
class Batch:
    """A batch's segments sorted by conversation instance, then capture order, and what the
    analysis rules share. Per-side arrays are (rows, 2), column 0 the side from the lower
    endpoint; `at_d` and `at_o` pick this row's side and the other side from them
    (grouped.pick). Values of rows before this batch come from `carried`."""

    s: Segments
    d: np.ndarray               # the row's side, 0 or 1
    istart: np.ndarray          # the first row of the row's instance
    ends: np.ndarray            # the last row of each instance
    carried: Carried           # the instance's state from earlier batches
    reused: np.ndarray          # a pure SYN that starts a new instance of its conversation
    base: np.ndarray            # per side: the raw seq that relative numbers count from
    ws: np.ndarray              # per side: window scale shift (-2: not scaled; -1: unknown)
    tls: np.ndarray             # the TLS version of the instance as of the row (0: none)

    @classmethod
    def sorted_by_instance(cls, s: Segments, d, inst, reused, state: dict, own) -> Batch:
        istart = grouped.group_starts(inst)
        ends = grouped.group_ends(istart)
        # Each instance's state read once (the tables are large: fewer scattered reads).
        carried = Carried(state, inst[ends], np.diff(np.r_[-1, ends]))
        # The conversations' own bases hold for the instances unless a reuse split one.
        rule = own if np.array_equal(istart, own["group_start"]) else rule_base(
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

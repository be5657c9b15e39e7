"""A partition's packets as numpy arrays, and per-flow reductions over them: the vocabulary in
which connections are cut (`tracelab.security.connections`) and Zeek's per-connection state is
computed (`tracelab.security.conn_state`), vectorised, without a loop over packets or flows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

# Wireshark's TCP analysis of a segment it knows is missing: "TCP Previous segment not captured"
# on the data after a hole, "TCP ACKed unseen segment" on an ACK past all data seen.
MISSING_SEGMENT = "Previous segment not captured|ACKed unseen segment"


@dataclass
class PacketArrays:
    """The packet columns connections are made of, as numpy arrays, one entry a packet;
    addresses as codes into `addresses`, protocols as codes into `protocols`; numbers that
    may be unknown (sequence numbers, the IP and UDP header lengths) as floats, NaN if so;
    `chrono`: each packet's place in the order of (time, frame, row)."""

    frame: np.ndarray
    t: np.ndarray
    chrono: np.ndarray
    length: np.ndarray
    ip_len: np.ndarray
    udp_len: np.ndarray
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
    segment_missing: np.ndarray
    protocols: np.ndarray
    protocol: np.ndarray

    @classmethod
    def of(cls, table: pa.Table) -> PacketArrays:
        """The arrays of a packet table (`connections.PACKET_COLUMNS`)."""
        src_names, src = _dictionary(table.column("src"))
        dst_names, dst = _dictionary(table.column("dst"))
        addresses = pd.Index(src_names).union(pd.Index(dst_names)).to_numpy(object)
        address_set = pa.array(addresses)
        protocols, protocol = _dictionary(table.column("protocol"))
        analysis = _encoded(table.column("tcp_analysis"))
        ported = _valid(table.column("src_port")) & _valid(table.column("dst_port"))
        known_flags = _valid(table.column("tcp_flags"))
        frame, t = _integers(table.column("frame")), _integers(table.column("ts"))
        return cls(
            frame=frame, t=t, chrono=ranks(np.lexsort((frame, t))),
            length=_integers(table.column("length")), ip_len=floats(table.column("ip_len")),
            udp_len=floats(table.column("udp_len")), addresses=addresses,
            src=_places(src_names, address_set)[src], dst=_places(dst_names, address_set)[dst],
            ported=ported, src_port=_integers(table.column("src_port")),
            dst_port=_integers(table.column("dst_port")), known_flags=known_flags,
            flags=_integers(table.column("tcp_flags")), is_tcp=known_flags & ported,
            seq=floats(table.column("tcp_seq")), ack=floats(table.column("tcp_ack")),
            tcp_len=floats(table.column("tcp_len")), window=floats(table.column("tcp_win")),
            retransmission=_matches(analysis, "Retransmission"),
            segment_missing=_matches(analysis, MISSING_SEGMENT),
            protocols=protocols, protocol=protocol)

    def pair(self, rows: np.ndarray) -> np.ndarray:
        """A number for the unordered address pair of each of `rows`."""
        low = np.minimum(self.src[rows], self.dst[rows])
        return low * len(self.addresses) + np.maximum(self.src[rows], self.dst[rows])


def _places(names: np.ndarray, values: pa.Array) -> np.ndarray:
    """Each of `names`' place in `values` (which hold them all, once): Arrow's hash lookup."""
    return pc.index_in(pa.array(names), value_set=values).to_numpy().astype(np.int64)


def ranks(order: np.ndarray) -> np.ndarray:
    """Each row's place in `order` (a permutation of the rows)."""
    ranks = np.empty(len(order), np.int64)
    ranks[order] = np.arange(len(order))
    return ranks


def _matches(texts: pa.DictionaryArray, pattern: str) -> np.ndarray:
    """Rows whose text (Wireshark's TCP analysis) matches `pattern` (a regular expression),
    matched once per distinct text."""
    matched = pc.match_substring_regex(texts.dictionary, pattern)
    return pc.fill_null(matched.take(texts.indices), False).to_numpy(zero_copy_only=False)


def _encoded(column: pa.ChunkedArray) -> pa.DictionaryArray:
    """A dictionary or string column as one dictionary array."""
    if pa.types.is_dictionary(column.type):
        column = column.unify_dictionaries()
    array = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    return array if pa.types.is_dictionary(array.type) else array.dictionary_encode()


def _dictionary(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A dictionary or string column as (distinct values, each row's code)."""
    array = _encoded(column)
    names = array.dictionary.to_numpy(zero_copy_only=False).astype(object)
    return names, _filled(array.indices, 0).to_numpy(zero_copy_only=False).astype(np.int64)


def _valid(column: pa.ChunkedArray) -> np.ndarray:
    return column.is_valid().to_numpy(zero_copy_only=False)


def _integers(column: pa.ChunkedArray) -> np.ndarray:
    """Integers (timestamps as nanoseconds) with null as 0."""
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.int64())
    return _filled(column, 0).to_numpy(zero_copy_only=False).astype(np.int64)


def floats(column: pa.ChunkedArray) -> np.ndarray:
    """Numbers as float64 with null as NaN (filled by Arrow: a column with nulls converted by
    `to_numpy` takes ten times as long)."""
    return _filled(column.cast(pa.float64()), np.nan).to_numpy()


def _filled(values: pa.Array | pa.ChunkedArray, fill) -> pa.Array | pa.ChunkedArray:
    """`values` with nulls replaced by `fill`; as they are when they have none (Arrow's
    fill_null copies every value: 20 ms of making a 1M-packet partition's arrays)."""
    return values if values.null_count == 0 else pc.fill_null(values, fill)


def concat_per_flow(flow: np.ndarray, chars: np.ndarray, n_flows: int) -> np.ndarray:
    """The characters of each flow joined in order (rows sorted by flow), without a Python
    loop: each flow's characters fill one row of a fixed-width grid, read back as a string."""
    starts = run_starts(flow)
    position = np.arange(len(flow)) - np.flatnonzero(starts)[np.cumsum(starts) - 1]
    width = int(position.max(initial=0)) + 1
    grid = np.zeros((n_flows, width), dtype="U1")
    grid[flow, position] = chars
    return grid.view(f"U{width}").ravel()


def union_length(flow: np.ndarray, start: np.ndarray, end: np.ndarray,
                 n_flows: int) -> np.ndarray:
    """Per flow, the length of the union of its intervals [start, end) (rows in any order):
    each interval adds what lies past the furthest end of the ones that start before it."""
    order = np.lexsort((start, flow))
    flow, start, end = flow[order], start[order], end[order]
    reach = pd.Series(end).groupby(flow).cummax().to_numpy(np.float64)
    before = np.where(run_starts(flow), -np.inf, np.roll(reach, 1))
    return np.bincount(flow, np.maximum(end - np.maximum(start, before), 0), minlength=n_flows)


def stable_order(major: np.ndarray, minor: np.ndarray) -> np.ndarray:
    """The order of rows by (major, minor), ties in row order, as np.lexsort((minor, major))
    gives it; for non-negative integers whose pair packs into one int64, a stable sort of that
    key: faster, and much faster on rows mostly in order already (timsort uses their runs)."""
    if not len(major) or min(major.min(), minor.min()) < 0 or \
            (int(major.max()) + 1) * (int(minor.max()) + 1) >= 1 << 63:
        return np.lexsort((minor, major))
    return np.argsort(major.astype(np.int64) * (int(minor.max()) + 1) + minor, kind="stable")


def occurrence(values: np.ndarray) -> np.ndarray:
    """Each row's count of earlier rows with its value (0 for the first): the n-th request or
    response of a connection, rows in time order."""
    order = np.argsort(values, kind="stable")
    per = PerFlow(values[order])
    counts = np.empty(len(values), np.int64)
    counts[order] = np.arange(len(values)) - np.repeat(per.starts, per.sizes())
    return counts


def ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The integer ranges [start, start + count) one after another."""
    return np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))


def member_of(values: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Whether each of `values` is one of `allowed`: pandas' hash lookup, several times faster
    than np.isin, which sorts both."""
    return pd.Series(values, copy=False).isin(allowed).to_numpy(bool)


def connected_labels(left: np.ndarray, right: np.ndarray, nodes: int) -> np.ndarray:
    """Each node's connected component in the undirected graph of the edges left[i]-right[i]
    (nodes 0..nodes-1), numbered 0, 1, ... in the order of each component's lowest node, as
    scipy's connected_components numbers them (without importing scipy.sparse: 0.13 CPU s a
    job). Each round hooks every root to the lowest root it has an edge to, then points every
    node at its root: parents never exceed their nodes, so a component's root is its lowest."""
    parent = np.arange(nodes)
    while True:
        a, b = parent[left], parent[right]
        apart = a != b
        if not apart.any():
            return np.unique(parent, return_inverse=True)[1]
        np.minimum.at(parent, np.maximum(a, b)[apart], np.minimum(a, b)[apart])
        while not np.array_equal(grandparent := parent[parent], parent):
            parent = grandparent


def run_starts(values: np.ndarray) -> np.ndarray:
    """True where a run of equal values begins (always at the first element)."""
    starts = np.ones(len(values), bool)
    starts[1:] = values[1:] != values[:-1]
    return starts


@dataclass
class Membership:
    """Each packet's flow (-1: none; flows numbered in 5-tuple order) and direction, each
    flow's first packet and whether its roles were flipped, and the rows in flows sorted by
    (flow, time, frame)."""

    flow_of: np.ndarray
    is_orig: np.ndarray
    first_row: np.ndarray
    flipped: np.ndarray
    rows: np.ndarray


class PerFlow:
    """Per-flow reductions of row arrays sorted by flow, a value a run of equal flows (any
    sorted key serves: windows too); `first_position` and `mean_std` index per-flow values by
    flow, so they need every flow 0..n-1 present."""

    def __init__(self, flow: np.ndarray):
        self.flow = flow
        self.starts = np.flatnonzero(run_starts(flow))

    def sizes(self) -> np.ndarray:
        """Rows a flow."""
        return np.diff(np.append(self.starts, len(self.flow)))

    def any(self, mask) -> np.ndarray:
        return np.logical_or.reduceat(mask, self.starts)

    def sum(self, values, dtype=None) -> np.ndarray:
        return np.add.reduceat(values, self.starts, dtype=dtype)

    def min(self, values) -> np.ndarray:
        """Smallest value, ignoring NaN (NaN when all are)."""
        return np.fmin.reduceat(values, self.starts)

    def max(self, values) -> np.ndarray:
        return np.fmax.reduceat(values, self.starts)

    def first_position(self, mask) -> np.ndarray:
        """Row position of the first row where `mask` holds (inf when none)."""
        hits = np.flatnonzero(mask)
        firsts = hits[run_starts(self.flow[hits])]  # rows are sorted by flow
        position = np.full(len(self.starts), np.inf)
        position[np.searchsorted(self.starts, firsts, side="right") - 1] = firsts
        return position

    def mean_std(self, values) -> tuple[np.ndarray, np.ndarray]:
        """Mean and population standard deviation, ignoring NaN."""
        known = ~np.isnan(values)
        count = self.sum(known.astype(np.int64))
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.sum(np.where(known, values, 0.0)) / count
            deviation = np.where(known, values - mean[self.flow], 0.0)
            return mean, np.sqrt(self.sum(deviation ** 2) / count)

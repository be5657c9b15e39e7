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
    may be unknown (sequence numbers, the IP and UDP header lengths) as floats, NaN if so."""

    frame: np.ndarray
    t: np.ndarray
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
        addresses = pd.Index(src_names).union(pd.Index(dst_names))
        protocols, protocol = _dictionary(table.column("protocol"))
        ported = _valid(table.column("src_port")) & _valid(table.column("dst_port"))
        known_flags = _valid(table.column("tcp_flags"))
        return cls(
            frame=_integers(table.column("frame")), t=_integers(table.column("ts")),
            length=_integers(table.column("length")), ip_len=_floats(table.column("ip_len")),
            udp_len=_floats(table.column("udp_len")), addresses=addresses.to_numpy(object),
            src=addresses.get_indexer(src_names)[src], dst=addresses.get_indexer(dst_names)[dst],
            ported=ported, src_port=_integers(table.column("src_port")),
            dst_port=_integers(table.column("dst_port")), known_flags=known_flags,
            flags=_integers(table.column("tcp_flags")), is_tcp=known_flags & ported,
            seq=_floats(table.column("tcp_seq")), ack=_floats(table.column("tcp_ack")),
            tcp_len=_floats(table.column("tcp_len")), window=_floats(table.column("tcp_win")),
            retransmission=_analysis(table, "Retransmission"),
            segment_missing=_analysis(table, MISSING_SEGMENT),
            protocols=protocols, protocol=protocol)

    def pair(self, rows: np.ndarray) -> np.ndarray:
        """A number for the unordered address pair of each of `rows`."""
        low = np.minimum(self.src[rows], self.dst[rows])
        return low * len(self.addresses) + np.maximum(self.src[rows], self.dst[rows])


def _analysis(table: pa.Table, pattern: str) -> np.ndarray:
    """Rows whose Wireshark TCP analysis matches `pattern` (a regular expression)."""
    return pc.fill_null(pc.match_substring_regex(table.column("tcp_analysis"), pattern),
                        False).to_numpy(zero_copy_only=False)


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


def run_starts(values: np.ndarray) -> np.ndarray:
    """True where a run of equal values begins (always at the first element)."""
    starts = np.ones(len(values), bool)
    starts[1:] = values[1:] != values[:-1]
    return starts


@dataclass
class Membership:
    """Each packet's flow (-1: none; flows numbered in 5-tuple order) and direction, each
    flow's first packet and whether its roles were flipped."""

    flow_of: np.ndarray
    is_orig: np.ndarray
    first_row: np.ndarray
    flipped: np.ndarray


class PerFlow:
    """Per-flow reductions of row arrays sorted by flow, every flow 0..n-1 present."""

    def __init__(self, flow: np.ndarray):
        self.flow = flow
        self.starts = np.flatnonzero(run_starts(flow))

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

"""Stage 3, per-trace features: the numbers and distributions the notebook drew, for one trace.

The packet table is read one row group at a time, in batches, and only accumulators are kept:
counts per distinct length and inter-arrival time, an entry per distinct address and
(source, destination) pair, one per rate bin, and the timestamps an unread row group may still
precede. So memory grows with distinct values, duration and disorder, not with packet count.
Quantiles and ECDFs are read off the counts with numpy's own index arithmetic, so they equal
np.quantile on the whole column; addresses are compared by name, through each batch's dictionary.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tracelab.core.atomic import write_json, write_parquet

log = logging.getLogger(__name__)

COLUMNS = ["ts", "length", "src", "dst", "protocol"]
BATCH_ROWS = 1 << 16
# Distinct values of several batches that ValueCounts collects before one merge.
MERGE_ROWS = 1 << 18
# Values below this are counted with np.bincount (an array this long), others by hashing.
BINCOUNT_LIMIT = 1 << 20
NEVER = np.iinfo(np.int64).max

QUANTILE_NAMES = {0.0: "min", 1.0: "max"}
DISTRIBUTION_SCHEMA = pa.schema([
    ("kind", pa.string()),    # iat_ecdf, length_ecdf, protocol_count, pps, bps, destinations
    ("key", pa.string()),     # protocol name for protocol_count, else null
    ("x", pa.float64()),      # value (ms, bytes) for ECDFs; relative time (s) for series
    ("y", pa.float64()),      # cumulative share, count, rate, distinct destinations so far
])


@dataclass
class FeatureSettings:
    quantiles: list[float] = field(default_factory=lambda: [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0])
    ecdf_points: int = 400
    rate_bin_s: float = 1.0


def quantile_name(q: float) -> str:
    return QUANTILE_NAMES.get(q, f"p{round(q * 100):g}")


class ValueCounts:
    """Counts per distinct integer value, sorted by value: the order statistics of every value
    added, in memory proportional to the distinct values only. Batches' counts wait in a list
    up to MERGE_ROWS, so that the sorted arrays are rewritten once per several batches."""

    def __init__(self):
        self._values = np.empty(0, np.int64)
        self._counts = np.empty(0, np.int64)
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []
        self._waiting = 0

    def add(self, values: np.ndarray) -> None:
        if not values.size:
            return
        if values.min() >= 0 and values.max() < BINCOUNT_LIMIT:
            per_value = np.bincount(values)
            new = np.flatnonzero(per_value)
            self._parts.append((new, per_value[new]))
        else:
            found = pc.value_counts(values)
            self._parts.append((found.field("values").to_numpy(),
                                found.field("counts").to_numpy()))
        self._waiting += self._parts[-1][0].size
        if self._waiting > MERGE_ROWS:
            self._merge()

    def _merge(self) -> None:
        if not self._parts:
            return
        values = np.concatenate([values for values, _ in self._parts])
        counts = np.concatenate([counts for _, counts in self._parts])
        self._parts, self._waiting = [], 0
        order = np.argsort(values, kind="stable")
        values, counts = values[order], counts[order]
        starts = np.flatnonzero(np.append(True, values[1:] != values[:-1]))
        values, counts = values[starts], np.add.reduceat(counts, starts)
        at = np.searchsorted(self._values, values)
        known = at < self._values.size
        known[known] = self._values[at[known]] == values[known]
        self._counts[at[known]] += counts[known]
        self._values = np.insert(self._values, at[~known], values[~known])
        self._counts = np.insert(self._counts, at[~known], counts[~known])

    @property
    def values(self) -> np.ndarray:
        self._merge()
        return self._values

    @property
    def counts(self) -> np.ndarray:
        self._merge()
        return self._counts

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def count_of(self, value: int) -> int:
        at = np.searchsorted(self.values, value)
        return int(self.counts[at]) if at < self.values.size and self.values[at] == value else 0

    def _ranked(self, ranks: np.ndarray) -> np.ndarray:
        """The values at 0-based `ranks` of the sorted sample."""
        return self.values[np.searchsorted(np.cumsum(self.counts), ranks, side="right")]

    # Both methods copy numpy's index and interpolation formulas, so that they equal
    # np.quantile on the sample bit for bit; `scale` maps stored values to the sample's.
    def quantiles(self, qs, scale=np.asarray) -> np.ndarray:
        """np.quantile(sample, qs), method 'linear'."""
        n = self.total
        virtual = (n - 1) * np.asarray(qs, dtype=np.float64)
        below = np.floor(virtual)
        a = scale(self._ranked(np.minimum(below, n - 1).astype(np.intp)))
        b = scale(self._ranked(np.minimum(below + 1, n - 1).astype(np.intp)))
        gamma = virtual - below
        diff = b - a
        found = np.add(a, diff * gamma)
        np.subtract(b, diff * (1 - gamma), out=found, where=gamma >= 0.5)
        return found

    def inverted_cdf(self, shares: np.ndarray, scale=np.asarray) -> np.ndarray:
        """np.quantile(sample, shares, method="inverted_cdf")."""
        index = self.total * shares - 1
        below = np.floor(index)
        ranks = np.maximum(np.where(index == below, below, below + 1), 0).astype(np.intp)
        return scale(self._ranked(ranks))


def _ns_to_ms(ns: np.ndarray) -> np.ndarray:
    return ns / 1e6


def _quantiles(counts: ValueCounts, qs: list[float],
               scale=np.asarray) -> dict[str, float | None]:
    if not counts.total:
        return {quantile_name(q): None for q in qs}
    return {quantile_name(q): float(v) for q, v in zip(qs, counts.quantiles(qs, scale))}


def _ecdf(kind: str, counts: ValueCounts, points: int, scale=np.asarray) -> pa.Table:
    """The ECDF at `points` evenly spaced cumulative shares (exact order statistics)."""
    if not counts.total:
        return DISTRIBUTION_SCHEMA.empty_table()
    shares = np.linspace(0.0, 1.0, min(points, counts.total))
    xs = counts.inverted_cdf(shares, scale).astype(np.float64)
    return pa.table({"kind": [kind] * len(xs), "key": pa.nulls(len(xs), pa.string()),
                     "x": xs, "y": shares}, schema=DISTRIBUTION_SCHEMA)


def _series(kind: str, x: np.ndarray, y: np.ndarray) -> pa.Table:
    return pa.table({"kind": [kind] * len(x), "key": pa.nulls(len(x), pa.string()),
                     "x": x.astype(np.float64), "y": y.astype(np.float64)},
                    schema=DISTRIBUTION_SCHEMA)


def _add_padded(total: np.ndarray, part: np.ndarray) -> np.ndarray:
    """total + part, the shorter one padded with zeros (per-bin sums of growing length)."""
    if part.size > total.size:
        total, part = part.astype(total.dtype), total
    total[:part.size] += part
    return total


def _encoded(column: pa.Array) -> pa.DictionaryArray:
    return column if pa.types.is_dictionary(column.type) else pc.dictionary_encode(column)


class _Accumulator:
    """Running totals of one trace. Batches come in file order, grouped as the file's row
    groups; after each group, `release(bound)` turns the timestamps no later group can precede
    (those <= `bound`, the earliest timestamp of all later groups) into sorted inter-arrival
    times."""

    def __init__(self, settings: FeatureSettings, first_ts: int):
        self.settings = settings
        self.first_ts = first_ts
        self.last_ts = first_ts
        self.packets = 0
        self.bytes = 0
        self.out_of_order = 0
        self.previous_ts: int | None = None     # last timestamp in file order
        self.lengths = ValueCounts()
        self.iat_ns = ValueCounts()
        self.held = np.empty(0, np.int64)        # sorted timestamps not yet released
        self.unsorted: list[np.ndarray] = []     # this row group's timestamps
        self.last_released: int | None = None
        self.pps = np.empty(0, np.int64)
        self.bps = np.empty(0, np.float64)
        self.protocols: dict[str, int] = {}
        self.address_ids: dict[str, int] = {}   # one id per distinct address name
        self.dictionary_ids: dict[str, tuple[pa.Array, np.ndarray]] = {}
        self.is_source = np.zeros(0, bool)
        self.is_destination = np.zeros(0, bool)
        self.first_as_destination = np.zeros(0, np.int64)   # earliest ts, NEVER if none
        self.pairs = ValueCounts()                # source id << 32 | destination id

    def add(self, batch: pa.RecordBatch) -> None:
        ts = batch.column("ts").cast(pa.int64()).to_numpy()
        if not ts.size:
            return
        lengths = batch.column("length").to_numpy().astype(np.int64, copy=False)
        self.packets += ts.size
        self.bytes += int(lengths.sum())
        self.last_ts = max(self.last_ts, int(ts.max()))
        self.out_of_order += int(np.count_nonzero(ts[1:] < ts[:-1]))
        if self.previous_ts is not None and ts[0] < self.previous_ts:
            self.out_of_order += 1
        self.previous_ts = int(ts[-1])
        self.unsorted.append(ts)
        self.lengths.add(lengths)

        bins = np.floor((ts - self.first_ts) / 1e9 / self.settings.rate_bin_s).astype(np.int64)
        self.pps = _add_padded(self.pps, np.bincount(bins))
        self.bps = _add_padded(self.bps, np.bincount(bins, weights=lengths * 8))

        protocol = _encoded(batch.column("protocol"))
        per_entry = np.bincount(protocol.indices.to_numpy(), minlength=len(protocol.dictionary))
        for name, count in zip(protocol.dictionary.to_pylist(), per_entry.tolist()):
            if count:
                self.protocols[name] = self.protocols.get(name, 0) + count

        src = self._ids("src", batch.column("src"))
        dst = self._ids("dst", batch.column("dst"))
        self.is_source[src] = True
        self.is_destination[dst] = True
        np.minimum.at(self.first_as_destination, dst, ts)
        self.pairs.add((src << 32) | dst)

    def _ids(self, side: str, column: pa.Array) -> np.ndarray:
        """Global address ids of a batch's column, mapping its dictionary once per row group."""
        column = _encoded(column)
        cached = self.dictionary_ids.get(side)
        if cached is None or not cached[0].equals(column.dictionary):
            ids, names = self.address_ids, column.dictionary.to_pylist()
            unseen = dict.fromkeys(address for address in names if address not in ids)
            ids.update(zip(unseen, range(len(ids), len(ids) + len(unseen))))
            mapping = np.fromiter(map(ids.__getitem__, names), np.int64, count=len(names))
            cached = self.dictionary_ids[side] = (column.dictionary, mapping)
            grow = len(ids) - self.is_source.size
            if grow > 0:
                self.is_source = np.append(self.is_source, np.zeros(grow, bool))
                self.is_destination = np.append(self.is_destination, np.zeros(grow, bool))
                self.first_as_destination = np.append(self.first_as_destination,
                                                      np.full(grow, NEVER))
        return cached[1][column.indices.to_numpy()]

    def release(self, bound: int) -> None:
        ts = np.sort(np.concatenate([self.held, *self.unsorted]), kind="stable")
        self.unsorted = []
        if ts.size and self.last_released is not None and ts[0] < self.last_released:
            raise ValueError("a row group's ts statistics are wrong: an earlier timestamp "
                             "follows its minimum")
        cut = int(np.searchsorted(ts, bound, side="right"))
        released, self.held = ts[:cut], ts[cut:].copy()
        if not released.size:
            return
        if self.last_released is not None:
            self.iat_ns.add(np.array([released[0] - self.last_released]))
        self.iat_ns.add(np.diff(released))
        self.last_released = int(released[-1])

    def result(self) -> tuple[dict, pa.Table]:
        settings, n = self.settings, self.packets
        duration_s = (self.last_ts - self.first_ts) / 1e9
        protocol_counts = dict(sorted(self.protocols.items(), key=lambda item: (-item[1], item[0])))
        iats = self.iat_ns.total
        summary = {
            "packets": n,
            "bytes": self.bytes,
            "duration_s": duration_s,
            "first_ts": _iso(self.first_ts) if n else None,
            "last_ts": _iso(self.last_ts) if n else None,
            "mean_pps": (n / duration_s) if duration_s > 0 else None,
            "mean_bps": (8 * self.bytes / duration_s) if duration_s > 0 else None,
            "mean_length": self.bytes / n if n else None,
            "unique_sources": int(np.count_nonzero(self.is_source)),
            "unique_destinations": int(np.count_nonzero(self.is_destination)),
            "unique_pairs": self.pairs.values.size,
            "protocol_counts": protocol_counts,
            "length_quantiles": _quantiles(self.lengths, settings.quantiles),
            "iat_ms_quantiles": _quantiles(self.iat_ns, settings.quantiles, _ns_to_ms),
            "iat_zero_share": self.iat_ns.count_of(0) / iats if iats else None,
            "out_of_order": self.out_of_order,
        }

        bin_start = np.arange(self.pps.size) * settings.rate_bin_s
        # Distinct destinations seen so far, stepping up at each destination's earliest packet.
        first_seen_s = np.sort((self.first_as_destination[self.is_destination]
                                - self.first_ts) / 1e9)
        # The step ends at the trace's last packet, not at the last new destination.
        destinations_x = np.append(first_seen_s, duration_s) if n else first_seen_s
        destinations_y = np.append(np.arange(1, first_seen_s.size + 1), first_seen_s.size) \
            if n else first_seen_s
        distributions = pa.concat_tables([
            _ecdf("iat_ecdf", self.iat_ns, settings.ecdf_points, _ns_to_ms),
            _ecdf("length_ecdf", self.lengths, settings.ecdf_points),
            pa.table({"kind": ["protocol_count"] * len(protocol_counts),
                      "key": list(protocol_counts), "x": [0.0] * len(protocol_counts),
                      "y": [float(c) for c in protocol_counts.values()]},
                     schema=DISTRIBUTION_SCHEMA),
            _series("pps", bin_start, self.pps / settings.rate_bin_s),
            _series("bps", bin_start, self.bps / settings.rate_bin_s),
            _series("destinations", destinations_x, destinations_y),
        ])
        return summary, distributions


def _accumulate(groups: Iterable[Iterable[pa.RecordBatch]], minima: list[int],
                settings: FeatureSettings) -> tuple[dict, pa.Table]:
    """Features of row groups (each an iterable of batches) whose earliest timestamps are
    `minima`, in the same order."""
    accumulator = _Accumulator(settings, min(minima, default=0))
    later = np.minimum.accumulate(np.array([*minima, NEVER], np.int64)[::-1])[::-1][1:]
    for batches, bound in zip(groups, later.tolist()):
        for batch in batches:
            accumulator.add(batch)
        accumulator.release(bound)
    return accumulator.result()


def compute_features(packets: pa.Table, settings: FeatureSettings) -> tuple[dict, pa.Table]:
    """Summary fields and distribution points of an in-memory packet table, each chunk taken
    as a row group."""
    batches = [b for b in packets.select(COLUMNS).to_batches() if b.num_rows]
    minima = [pc.min(b.column("ts").cast(pa.int64())).as_py() for b in batches]
    return _accumulate(([b] for b in batches), minima, settings)


def _row_group_minima(packets: pq.ParquetFile, groups: list[int]) -> list[int]:
    """The earliest `ts` of each row group: from the file's statistics when every group has
    them, else from one pass over the `ts` column alone."""
    metadata = packets.metadata
    column = metadata.schema.names.index("ts")
    stats = [metadata.row_group(i).column(column).statistics for i in groups]
    if all(s is not None and s.has_min_max and s.physical_type == "INT64" for s in stats):
        return [s.min_raw for s in stats]
    return [pc.min(packets.read_row_group(i, columns=["ts"]).column("ts").cast(pa.int64()))
            .as_py() for i in groups]


def file_features(packets_path, settings: FeatureSettings) -> tuple[dict, pa.Table]:
    """Summary fields and distribution points of a packet file, streamed by row group."""
    packets = pq.ParquetFile(packets_path)
    groups = [i for i in range(packets.num_row_groups) if packets.metadata.row_group(i).num_rows]
    minima = _row_group_minima(packets, groups)
    batches = (packets.iter_batches(batch_size=BATCH_ROWS, row_groups=[i], columns=COLUMNS)
               for i in groups)
    return _accumulate(batches, minima, settings)


def _iso(ns: int) -> str:
    return str(np.datetime64(ns, "ns")) + "Z"


def trace_features(*, trace: str, packets_path, summary_path, distributions_path,
                   settings: dict | None = None) -> dict:
    settings = FeatureSettings(**(settings or {}))
    summary, distributions = file_features(packets_path, settings)
    summary = {"trace": trace, **summary}
    write_parquet(distributions, distributions_path, {"trace": trace})
    write_json(summary_path, summary)
    log.info("%s: %d packets over %.3f s", trace, summary["packets"], summary["duration_s"])
    return summary

"""Stage 3, per-trace features: the numbers and distributions the notebook drew, for one trace.

The packet table is read one row group at a time, in batches, and only accumulators are kept:
counts per distinct length and inter-arrival time, an entry per distinct address and
(source, destination) pair, one per rate bin, and the timestamps an unread row group may still
precede. So memory grows with distinct values and disorder, not with packet count or duration:
the rate bins are the narrowest of rate_bin_s x 1, 2, 5, 10, 20, 50, ... that keeps their
number within `max_series_points` (the trace's time span is known from the row groups'
statistics before the first packet is read), and the destinations series keeps at most as many
steps, evenly spread over its height.
Quantiles and ECDFs are read off the counts with numpy's own index arithmetic, so they equal
np.quantile on the whole column; addresses are compared by name, through each batch's dictionary.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pandera.pandas import Check

from tracelab.core.atomic import write_json
from tracelab.core.config import settings as config_settings
from tracelab.core.streaming import NEVER, later_minima, non_empty_groups, time_ranges
from tracelab.core.tables import DICT_STRING, Column, Table

log = logging.getLogger(__name__)

COLUMNS = ["ts", "length", "src", "dst", "protocol"]
BATCH_ROWS = 1 << 16
# Distinct values of several batches that ValueCounts collects before one merge.
MERGE_ROWS = 1 << 18
# Values below this are counted with np.bincount (an array this long), others by hashing.
BINCOUNT_LIMIT = 1 << 20
# Multiples of rate_bin_s the rate bins may take, in each decade (1, 2, 5, 10, 20, 50, ...).
BIN_LADDER = (1, 2, 5)

QUANTILE_NAMES = {0.0: "min", 1.0: "max"}
KINDS = ("iat_ecdf", "length_ecdf", "protocol_count", "pps", "bps", "destinations")
DISTRIBUTIONS = Table("distributions", "results/features/{trace}/distributions.parquet", (
    "The points of one trace's figures, in long form: one row a point of a distribution or "
    "series (`kind`). Every kind has a bounded number of rows: ECDFs `features.ecdf_points`, "
    "series `features.max_series_points` (+1), one protocol_count row a protocol. File "
    "metadata: `tracelab.rate_bin_s`, the width of the rate bins."), [
    Column("trace", DICT_STRING, "Trace name, as in the trace sheet."),
    Column("kind", pa.string(), "iat_ecdf, length_ecdf (cumulative share y at value x), "
           "protocol_count (packets y of protocol `key`), pps, bps (rate y in the bin starting "
           "at x), destinations (distinct destinations y seen up to time x).",
           checks=[Check.isin(KINDS)]),
    Column("key", pa.string(), "Protocol name for protocol_count, else null.", nullable=True),
    Column("x", pa.float64(), "Inter-arrival time (ms) or frame length (bytes) for ECDFs; "
           "0 for protocol_count; seconds since the trace's first packet for series."),
    Column("y", pa.float64(), "Cumulative share, packets, packets/s, bits/s, or distinct "
           "destinations so far.", checks=[Check.ge(0)]),
])
DISTRIBUTION_SCHEMA = pa.schema([field for field in DISTRIBUTIONS.schema
                                 if field.name != "trace"])


@dataclass(frozen=True)
class FeatureSettings:
    quantiles: list[float]
    ecdf_points: int
    rate_bin_s: float
    max_series_points: int


def feature_settings(values: dict | None = None) -> FeatureSettings:
    """FeatureSettings from config values over the schema's defaults."""
    return config_settings(FeatureSettings, "features", values)


def rate_bin_width(span_ns: int, settings: FeatureSettings) -> float:
    """The narrowest of rate_bin_s x 1, 2, 5, 10, 20, 50, ... that cuts `span_ns` into at
    most max_series_points bins."""
    decade = 1
    while True:
        for step in BIN_LADDER:
            width = settings.rate_bin_s * step * decade
            if np.floor(span_ns / 1e9 / width) + 1 <= settings.max_series_points:
                return width
        decade *= 10


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


def _encoded(column: pa.Array) -> pa.DictionaryArray:
    return column if pa.types.is_dictionary(column.type) else pc.dictionary_encode(column)


class _Accumulator:
    """Running totals of one trace. Batches come in file order, grouped as the file's row
    groups; after each group, `release(bound)` turns the timestamps no later group can precede
    (those <= `bound`, the earliest timestamp of all later groups) into sorted inter-arrival
    times. `first_ts` and `last_ts` are the trace's extremes (they fix the rate bins)."""

    def __init__(self, settings: FeatureSettings, first_ts: int, last_ts: int):
        self.settings = settings
        self.first_ts = first_ts
        self.last_ts = first_ts
        self.bin_s = rate_bin_width(last_ts - first_ts, settings)
        self.packets = 0
        self.bytes = 0
        self.out_of_order = 0
        self.previous_ts: int | None = None     # last timestamp in file order
        self.lengths = ValueCounts()
        self.iat_ns = ValueCounts()
        self.held = np.empty(0, np.int64)        # sorted timestamps not yet released
        self.unsorted: list[np.ndarray] = []     # this row group's timestamps
        self.last_released: int | None = None
        bins = int(self._bins(np.array([last_ts]))[0]) + 1
        self.pps = np.zeros(bins, np.int64)
        self.bps = np.zeros(bins, np.float64)
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

        bins = self._bins(ts)
        packets = np.bincount(bins)
        self.pps[:packets.size] += packets
        self.bps[:packets.size] += np.bincount(bins, weights=lengths * 8)

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

    def _bins(self, ts: np.ndarray) -> np.ndarray:
        return np.floor((ts - self.first_ts) / 1e9 / self.bin_s).astype(np.int64)

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
            "rate_bin_s": self.bin_s,
        }

        bin_start = np.arange(self.pps.size if n else 0) * self.bin_s
        destinations_x, destinations_y = self._destinations(duration_s)
        distributions = pa.concat_tables([
            _ecdf("iat_ecdf", self.iat_ns, settings.ecdf_points, _ns_to_ms),
            _ecdf("length_ecdf", self.lengths, settings.ecdf_points),
            pa.table({"kind": ["protocol_count"] * len(protocol_counts),
                      "key": list(protocol_counts), "x": [0.0] * len(protocol_counts),
                      "y": [float(c) for c in protocol_counts.values()]},
                     schema=DISTRIBUTION_SCHEMA),
            _series("pps", bin_start, self.pps[:bin_start.size] / self.bin_s),
            _series("bps", bin_start, self.bps[:bin_start.size] / self.bin_s),
            _series("destinations", destinations_x, destinations_y),
        ])
        return summary, distributions

    def _destinations(self, duration_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Distinct destinations seen so far, stepping up at each destination's earliest
        packet: at most max_series_points - 1 of the steps (evenly spread over the height, the
        first and last included), then the trace's last packet (where the step ends)."""
        first_seen_s = np.sort((self.first_as_destination[self.is_destination]
                                - self.first_ts) / 1e9)
        if not self.packets:
            return first_seen_s, first_seen_s
        count = first_seen_s.size
        steps = min(count, self.settings.max_series_points - 1)
        ranks = np.unique(np.round(np.linspace(1, count, steps)).astype(np.int64)) if count \
            else np.empty(0, np.int64)
        return (np.append(first_seen_s[ranks - 1], duration_s),
                np.append(ranks, count).astype(np.float64))


def _accumulate(groups: Iterable[Iterable[pa.RecordBatch]], ranges: list[tuple[int, int]],
                settings: FeatureSettings) -> tuple[dict, pa.Table]:
    """Features of row groups (each an iterable of batches) whose earliest and latest
    timestamps are `ranges`, in the same order."""
    minima = [low for low, _ in ranges]
    accumulator = _Accumulator(settings, min(minima, default=0),
                               max((high for _, high in ranges), default=0))
    for batches, bound in zip(groups, later_minima(minima)):
        for batch in batches:
            accumulator.add(batch)
        accumulator.release(bound)
    return accumulator.result()


def compute_features(packets: pa.Table, settings: FeatureSettings) -> tuple[dict, pa.Table]:
    """Summary fields and distribution points of an in-memory packet table, each chunk taken
    as a row group."""
    batches = [b for b in packets.select(COLUMNS).to_batches() if b.num_rows]
    extremes = [pc.min_max(b.column("ts").cast(pa.int64())) for b in batches]
    ranges = [(e["min"].as_py(), e["max"].as_py()) for e in extremes]
    return _accumulate(([b] for b in batches), ranges, settings)


def file_features(packets_path, settings: FeatureSettings) -> tuple[dict, pa.Table]:
    """Summary fields and distribution points of a packet file, streamed by row group."""
    packets = pq.ParquetFile(packets_path)
    groups = non_empty_groups(packets)
    batches = (packets.iter_batches(batch_size=BATCH_ROWS, row_groups=[i], columns=COLUMNS)
               for i in groups)
    return _accumulate(batches, time_ranges(packets, groups), settings)


def _iso(ns: int) -> str:
    return str(np.datetime64(ns, "ns")) + "Z"


def trace_features(*, trace: str, packets_path, summary_path, distributions_path,
                   settings: dict | None = None) -> dict:
    chosen = feature_settings(settings)
    summary, distributions = file_features(packets_path, chosen)
    summary = {"trace": trace, **summary}
    distributions = distributions.add_column(
        0, "trace", pa.array([trace] * distributions.num_rows, pa.string()))
    DISTRIBUTIONS.write(distributions, distributions_path,
                        {"trace": trace, "rate_bin_s": summary["rate_bin_s"]})
    write_json(summary_path, summary)
    log.info("%s: %d packets over %.3f s", trace, summary["packets"], summary["duration_s"])
    return summary

"""Stage 3, per-trace features: the numbers and distributions the notebook drew, for one trace.

Reads only the columns it needs from the packet table, as Arrow/numpy arrays; addresses are
compared through their dictionary indices, never as Python strings per packet.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .atomic import write_json, write_parquet

log = logging.getLogger(__name__)

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


def _indices(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Dictionary indices over one dictionary shared by all chunks."""
    column = column.unify_dictionaries() if column.num_chunks > 1 else column
    combined = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    if not pa.types.is_dictionary(combined.type):
        combined = pc.dictionary_encode(combined)
    return combined.indices.to_numpy(zero_copy_only=False), combined.dictionary


def _distinct(indices: np.ndarray, size: int) -> int:
    """How many of `size` dictionary entries occur (a count per entry, no sort)."""
    return int(np.count_nonzero(np.bincount(indices, minlength=size))) if indices.size else 0


def _quantiles(values: np.ndarray, qs: list[float]) -> dict[str, float | None]:
    if values.size == 0:
        return {quantile_name(q): None for q in qs}
    found = np.quantile(values, qs)
    return {quantile_name(q): float(v) for q, v in zip(qs, found)}


def _ecdf(kind: str, values: np.ndarray, points: int) -> pa.Table:
    """The ECDF at `points` evenly spaced cumulative shares (exact order statistics)."""
    if values.size == 0:
        return DISTRIBUTION_SCHEMA.empty_table()
    shares = np.linspace(0.0, 1.0, min(points, values.size))
    xs = np.quantile(values, shares, method="inverted_cdf")
    return pa.table({"kind": [kind] * len(xs), "key": pa.nulls(len(xs), pa.string()),
                     "x": xs, "y": shares}, schema=DISTRIBUTION_SCHEMA)


def _series(kind: str, x: np.ndarray, y: np.ndarray) -> pa.Table:
    return pa.table({"kind": [kind] * len(x), "key": pa.nulls(len(x), pa.string()),
                     "x": x.astype(np.float64), "y": y.astype(np.float64)},
                    schema=DISTRIBUTION_SCHEMA)


def compute_features(packets: pa.Table, settings: FeatureSettings) -> tuple[dict, pa.Table]:
    """Summary fields and distribution points of one packet table."""
    ts = packets.column("ts").cast(pa.int64()).to_numpy()
    lengths = packets.column("length").to_numpy().astype(np.int64)
    src, src_names = _indices(packets.column("src"))
    dst, dst_names = _indices(packets.column("dst"))
    protocol, protocol_names = _indices(packets.column("protocol"))
    counts = np.bincount(protocol, minlength=len(protocol_names))
    protocol_counts = dict(sorted(
        ((name, int(count)) for name, count in zip(protocol_names.to_pylist(), counts) if count),
        key=lambda item: (-item[1], item[0])))

    n = ts.size
    first, last = (int(ts.min()), int(ts.max())) if n else (0, 0)
    duration_s = (last - first) / 1e9
    in_order_iat = np.diff(ts)
    iat_ms = np.diff(np.sort(ts)) / 1e6
    total_bytes = int(lengths.sum())
    # Hash-based distinct count of (src, dst) codes: no sort of the whole column.
    pairs = len(pc.unique(pa.array(src.astype(np.int64) * len(dst_names) + dst))) if n else 0

    summary = {
        "packets": int(n),
        "bytes": total_bytes,
        "duration_s": duration_s,
        "first_ts": _iso(first) if n else None,
        "last_ts": _iso(last) if n else None,
        "mean_pps": (n / duration_s) if duration_s > 0 else None,
        "mean_bps": (8 * total_bytes / duration_s) if duration_s > 0 else None,
        "mean_length": float(lengths.mean()) if n else None,
        "unique_sources": _distinct(src, len(src_names)),
        "unique_destinations": _distinct(dst, len(dst_names)),
        "unique_pairs": int(pairs),
        "protocol_counts": protocol_counts,
        "length_quantiles": _quantiles(lengths, settings.quantiles),
        "iat_ms_quantiles": _quantiles(iat_ms, settings.quantiles),
        "iat_zero_share": float((iat_ms == 0).mean()) if iat_ms.size else None,
        "out_of_order": int((in_order_iat < 0).sum()),
    }

    rel_s = (ts - first) / 1e9
    bins = np.floor(rel_s / settings.rate_bin_s).astype(np.int64) if n else np.array([], np.int64)
    n_bins = int(bins.max()) + 1 if n else 0
    pps = np.bincount(bins, minlength=n_bins) / settings.rate_bin_s
    bps = np.bincount(bins, weights=lengths * 8, minlength=n_bins) / settings.rate_bin_s
    bin_start = np.arange(n_bins) * settings.rate_bin_s
    # Distinct destinations seen so far, stepping up at each destination's earliest packet.
    first_seen_s = np.full(len(dst_names), np.inf)
    np.minimum.at(first_seen_s, dst, rel_s)
    first_seen_s = np.sort(first_seen_s[np.isfinite(first_seen_s)])
    # The step ends at the trace's last packet, not at the last new destination.
    destinations_x = np.append(first_seen_s, duration_s) if n else first_seen_s
    destinations_y = np.append(np.arange(1, first_seen_s.size + 1), first_seen_s.size) \
        if n else first_seen_s
    distributions = pa.concat_tables([
        _ecdf("iat_ecdf", iat_ms, settings.ecdf_points),
        _ecdf("length_ecdf", lengths.astype(np.float64), settings.ecdf_points),
        pa.table({"kind": ["protocol_count"] * len(protocol_counts),
                  "key": list(protocol_counts), "x": [0.0] * len(protocol_counts),
                  "y": [float(c) for c in protocol_counts.values()]},
                 schema=DISTRIBUTION_SCHEMA),
        _series("pps", bin_start, pps),
        _series("bps", bin_start, bps),
        _series("destinations", destinations_x, destinations_y),
    ])
    return summary, distributions


def _iso(ns: int) -> str:
    return str(np.datetime64(ns, "ns")) + "Z"


def trace_features(*, trace: str, packets_path, summary_path, distributions_path,
                   settings: dict | None = None) -> dict:
    settings = FeatureSettings(**(settings or {}))
    packets = pq.read_table(packets_path, columns=["ts", "length", "src", "dst", "protocol"])
    summary, distributions = compute_features(packets, settings)
    summary = {"trace": trace, **summary}
    write_parquet(distributions, distributions_path, {"trace": trace})
    write_json(summary_path, summary)
    log.info("%s: %d packets over %.3f s", trace, summary["packets"], summary["duration_s"])
    return summary

"""Per-trace features, streamed by row group, against a plain whole-column numpy computation:
out-of-order timestamps across row groups, duplicate and ns timestamps, a dictionary per row
group, files with and without `ts` statistics, and the empty and one-packet edge cases."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tracelab.features import summary as features
from tracelab.features.summary import (
    DISTRIBUTION_SCHEMA,
    DISTRIBUTIONS,
    ValueCounts,
    compute_features,
    feature_settings,
    quantile_name,
    rate_bin_width,
    trace_features,
)

SETTINGS = feature_settings({"quantiles": [0.0, 0.05, 0.25, 0.333, 0.5, 0.75, 0.95, 1.0],
                                 "ecdf_points": 50, "rate_bin_s": 0.5})
ADDRESSES = [f"10.0.{i // 256}.{i % 256}" for i in range(300)] + ["fe80::1", "ff02::fb"]
PROTOCOLS = ["TCP", "UDP", "DNS", "HTTP", "TLSv1.3", "ICMP"]
START_NS = 1_795_852_800_123_456_789


def disordered_trace(rng, packets: int, group_rows: int) -> dict[str, np.ndarray]:
    """Nanosecond times with duplicates, 1 us steps back, and row groups that start earlier
    than the previous one ended."""
    gaps = rng.choice([0, 0, 1, 999, 12_345, 2_000_000, 300_000_000], size=packets)
    ts = START_NS + np.cumsum(gaps)
    steps_back = rng.choice(np.arange(1, packets), size=packets // 50, replace=False)
    ts[steps_back] = ts[steps_back - 1] - 1_000
    group_starts = np.arange(group_rows, packets, group_rows)
    ts[group_starts] -= rng.integers(1, 400_000_000, group_starts.size)
    return {
        "ts": ts,
        "length": rng.choice([60, 60, 66, 1514, 590, 14, 262144], size=packets),
        "src": np.array(ADDRESSES)[rng.integers(0, 40, packets)],
        "dst": np.array(ADDRESSES)[rng.integers(0, len(ADDRESSES), packets)],
        "protocol": np.array(PROTOCOLS)[rng.integers(0, len(PROTOCOLS), packets)],
    }


def dictionary_column(rng, names: np.ndarray) -> pa.DictionaryArray:
    """`names` over a dictionary of its own: shuffled, with entries no packet uses."""
    dictionary = np.union1d(names, rng.choice(ADDRESSES + PROTOCOLS, 5))
    dictionary = dictionary[rng.permutation(dictionary.size)]
    order = np.argsort(dictionary)
    indices = order[np.searchsorted(dictionary[order], names)].astype(np.int32)
    return pa.DictionaryArray.from_arrays(indices, pa.array(dictionary))


def write_packets(path, rng, trace: dict, group_rows: int, **options) -> None:
    schema = pa.schema([("ts", pa.timestamp("ns", tz="UTC")), ("length", pa.int64()),
                        ("src", pa.dictionary(pa.int32(), pa.string())),
                        ("dst", pa.dictionary(pa.int32(), pa.string())),
                        ("protocol", pa.dictionary(pa.int32(), pa.string()))])
    with pq.ParquetWriter(path, schema, **options) as writer:
        for start in range(0, trace["ts"].size, group_rows):
            part = {name: values[start:start + group_rows] for name, values in trace.items()}
            writer.write_table(pa.table({
                "ts": pa.array(part["ts"]).cast(schema.field("ts").type),
                "length": part["length"],
                **{name: dictionary_column(rng, part[name]) for name in ("src", "dst", "protocol")},
            }, schema=schema))


def expected_features(trace: dict, settings, bin_s: float | None = None) -> tuple[dict, dict]:
    """The summary and the distribution points, from whole columns in the plainest numpy
    (rate bins of `bin_s`, rate_bin_s unless given; destinations thinned to at most
    max_series_points - 1 steps at evenly spread ranks)."""
    bin_s = bin_s or settings.rate_bin_s
    ts, lengths = trace["ts"], trace["length"]
    n = ts.size
    iat_ms = np.diff(np.sort(ts)) / 1e6
    first, last = int(ts.min()), int(ts.max())
    duration_s = (last - first) / 1e9
    protocols = sorted(Counter(trace["protocol"].tolist()).items(),
                       key=lambda item: (-item[1], item[0]))
    summary = {
        "packets": n, "bytes": int(lengths.sum()), "duration_s": duration_s,
        "first_ts": str(np.datetime64(first, "ns")) + "Z",
        "last_ts": str(np.datetime64(last, "ns")) + "Z",
        "mean_pps": n / duration_s, "mean_bps": 8 * int(lengths.sum()) / duration_s,
        "mean_length": float(lengths.mean()),
        "unique_sources": len(set(trace["src"].tolist())),
        "unique_destinations": len(set(trace["dst"].tolist())),
        "unique_pairs": len(set(zip(trace["src"].tolist(), trace["dst"].tolist()))),
        "protocol_counts": dict(protocols),
        "length_quantiles": dict(zip(map(quantile_name, settings.quantiles),
                                     np.quantile(lengths, settings.quantiles).tolist())),
        "iat_ms_quantiles": dict(zip(map(quantile_name, settings.quantiles),
                                     np.quantile(iat_ms, settings.quantiles).tolist())),
        "iat_zero_share": float(np.mean(iat_ms == 0)),
        "out_of_order": int(np.sum(np.diff(ts) < 0)),
        "rate_bin_s": bin_s,
    }
    rel_s = (ts - first) / 1e9
    bins = np.floor(rel_s / bin_s).astype(int)
    first_seen = {}
    for address, seconds in zip(trace["dst"].tolist(), rel_s.tolist()):
        first_seen[address] = min(seconds, first_seen.get(address, np.inf))
    steps = sorted(first_seen.values())
    ranks = sorted({round(r) for r in np.linspace(1, len(steps),
                                                  min(len(steps), settings.max_series_points - 1))})

    def ecdf(values):
        shares = np.linspace(0, 1, min(settings.ecdf_points, values.size))
        return np.quantile(values, shares, method="inverted_cdf"), shares

    distributions = {
        "iat_ecdf": ecdf(iat_ms),
        "length_ecdf": ecdf(lengths.astype(float)),
        "protocol_count": (np.zeros(len(protocols)), [count for _, count in protocols]),
        "pps": (np.arange(bins.max() + 1) * bin_s, np.bincount(bins) / bin_s),
        "bps": (np.arange(bins.max() + 1) * bin_s, np.bincount(bins, weights=8 * lengths) / bin_s),
        "destinations": ([steps[r - 1] for r in ranks] + [duration_s], ranks + [len(steps)]),
    }
    return summary, distributions


def assert_same_summary(found: dict, expected: dict) -> None:
    assert list(found) == list(expected)
    for name, value in expected.items():
        if isinstance(value, float) or name.endswith("_quantiles"):
            assert found[name] == pytest.approx(value, rel=1e-9, abs=0), name
        else:
            assert found[name] == value and type(found[name]) is type(value), name


def assert_same_distributions(found: pa.Table, expected: dict) -> None:
    assert found.schema == DISTRIBUTION_SCHEMA
    kinds = found.column("kind").to_numpy(zero_copy_only=False)
    assert list(dict.fromkeys(kinds)) == [kind for kind in expected if len(expected[kind][0])]
    for kind, (x, y) in expected.items():
        rows = found.filter(pa.array(kinds == kind))
        np.testing.assert_allclose(rows.column("x").to_numpy(), x, rtol=1e-9, atol=0,
                                   err_msg=kind)
        np.testing.assert_allclose(rows.column("y").to_numpy(), y, rtol=1e-9, atol=0,
                                   err_msg=kind)


@pytest.mark.parametrize("statistics", [True, False], ids=["ts-statistics", "no-statistics"])
def test_streamed_file_matches_whole_column_numpy(tmp_path, monkeypatch, statistics):
    monkeypatch.setattr(features, "MERGE_ROWS", 100)   # counts merged many times over
    rng = np.random.default_rng(20261128)
    trace = disordered_trace(rng, packets=6000, group_rows=317)
    path = tmp_path / "packets.parquet"
    write_packets(path, rng, trace, group_rows=317, write_statistics=statistics)
    assert pq.ParquetFile(path).num_row_groups == 19
    summary_path, distributions_path = tmp_path / "summary.json", tmp_path / "dist.parquet"

    summary = trace_features(trace="t", packets_path=path, summary_path=summary_path,
                             distributions_path=distributions_path,
                             settings=vars(SETTINGS))
    assert pq.read_table(distributions_path).column("trace").unique().to_pylist() == ["t"]

    expected_summary, expected_distributions = expected_features(trace, SETTINGS)
    assert expected_summary["out_of_order"] > 18      # steps back inside and across row groups
    assert 0 < expected_summary["iat_zero_share"] < 1
    assert summary.pop("trace") == "t"
    assert_same_summary(summary, expected_summary)
    distributions = DISTRIBUTIONS.read(distributions_path).drop_columns(["trace"])
    assert_same_distributions(distributions.cast(DISTRIBUTION_SCHEMA), expected_distributions)
    protocol_rows = distributions.filter(pc.equal(distributions["kind"], "protocol_count"))
    assert protocol_rows["key"].to_pylist() == list(expected_summary["protocol_counts"])


def test_in_memory_table_with_plain_strings_matches_the_file(tmp_path):
    rng = np.random.default_rng(7)
    trace = disordered_trace(rng, packets=3000, group_rows=250)
    chunks = [pa.table({"ts": trace["ts"][i:i + 250], "length": trace["length"][i:i + 250],
                        "src": trace["src"][i:i + 250], "dst": trace["dst"][i:i + 250],
                        "protocol": trace["protocol"][i:i + 250]})
              for i in range(0, 3000, 250)]
    summary, distributions = compute_features(pa.concat_tables(chunks), SETTINGS)
    expected_summary, expected_distributions = expected_features(trace, SETTINGS)
    assert_same_summary(summary, expected_summary)
    assert_same_distributions(distributions, expected_distributions)


def test_empty_and_one_packet_traces():
    schema = pa.schema([("ts", pa.int64()), ("length", pa.int64()), ("src", pa.string()),
                        ("dst", pa.string()), ("protocol", pa.string())])
    summary, distributions = compute_features(schema.empty_table(), SETTINGS)
    assert summary["packets"] == summary["bytes"] == summary["out_of_order"] == 0
    assert summary["unique_pairs"] == summary["unique_destinations"] == 0
    assert summary["first_ts"] is summary["mean_pps"] is summary["iat_zero_share"] is None
    assert set(summary["iat_ms_quantiles"].values()) == {None}
    assert summary["protocol_counts"] == {} and distributions.num_rows == 0

    one = pa.table({"ts": [START_NS], "length": [60], "src": ["a"], "dst": ["b"],
                    "protocol": ["DNS"]}, schema=schema)
    summary, distributions = compute_features(one, SETTINGS)
    assert summary["packets"] == 1 and summary["duration_s"] == 0.0
    assert summary["mean_pps"] is None and summary["iat_zero_share"] is None
    assert set(summary["length_quantiles"].values()) == {60.0}
    rows = distributions.to_pydict()
    assert rows["kind"] == ["length_ecdf", "protocol_count", "pps", "bps", "destinations",
                            "destinations"]
    assert rows["x"] == [60.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert rows["y"] == [0.0, 1.0, 2.0, 960.0, 1.0, 1.0]


@pytest.mark.parametrize("seed", range(30))
def test_order_statistics_from_counts_equal_numpy_bit_for_bit(monkeypatch, seed):
    """The quantile and ECDF index arithmetic copies numpy's; any rounding slip shows here
    (the interpolation's two branches differ in the last bit for about 1 in 700 quantiles)."""
    monkeypatch.setattr(features, "MERGE_ROWS", 300)
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 5000))
    values = rng.integers(0, int(rng.choice([3, 100, 10**7, 10**12])), n)
    counts = ValueCounts()
    for part in np.array_split(values, 7):
        counts.add(part)
    assert counts.total == n and counts.values.tolist() == np.unique(values).tolist()

    qs = np.append(rng.random(1000), [0.0, 0.05, 0.5, 0.95, 1.0])
    assert counts.quantiles(qs).tolist() == np.quantile(values, qs).tolist()
    assert (counts.quantiles(qs, lambda ns: ns / 1e6).tolist()
            == np.quantile(values / 1e6, qs).tolist())
    for points in (2, 7, 400, n):
        shares = np.linspace(0.0, 1.0, min(points, n))
        assert (counts.inverted_cdf(shares).tolist()
                == np.quantile(values, shares, method="inverted_cdf").tolist())


def test_a_long_span_widens_the_rate_bins_along_the_ladder():
    """The series stay within max_series_points whatever the span: here 20 points for a
    span of ~260 s at rate_bin_s 0.5 s (520 bins) takes 20 s bins (0.5 x 2, 5, 10, 20, 50)."""
    rng = np.random.default_rng(11)
    trace = disordered_trace(rng, packets=4000, group_rows=400)
    settings = feature_settings({**vars(SETTINGS), "max_series_points": 20})
    span_s = (trace["ts"].max() - trace["ts"].min()) / 1e9
    ladder = [0.5 * m for m in (1, 2, 5, 10, 20, 50, 100, 200, 500)]
    bin_s = next(width for width in ladder if np.floor(span_s / width) + 1 <= 20)
    assert bin_s > 0.5 and rate_bin_width(trace["ts"].max() - trace["ts"].min(), settings) == bin_s

    table = pa.table({name: values for name, values in trace.items()})
    summary, distributions = compute_features(table, settings)
    expected_summary, expected_distributions = expected_features(trace, settings, bin_s)
    assert_same_summary(summary, expected_summary)
    assert_same_distributions(distributions, expected_distributions)
    kinds = Counter(distributions.column("kind").to_pylist())
    assert kinds["pps"] <= 20 and kinds["bps"] <= 20 and kinds["destinations"] == 20


@pytest.mark.parametrize("span_s, expected", [(0, 1.0), (1999, 1.0), (2000, 2.0), (3999, 2.0),
                                               (4000, 5.0), (9999, 5.0), (10_000, 10.0),
                                               (99 * 86400, 5000.0)])
def test_rate_bin_width_ladder(span_s, expected):
    settings = feature_settings({"rate_bin_s": 1.0, "max_series_points": 2000})
    assert rate_bin_width(span_s * 10**9, settings) == expected

#!/usr/bin/env python
"""Per-flow reductions of one connection partition: the connection stage's numpy reductions
(`tracelab.security.flow_arrays.PerFlow`) against compiled group-by engines (DuckDB, polars,
Arrow's Acero through `pyarrow.Table.group_by`), on the same rows, with the share of the
partition's whole assembly they stand for.

    pip install duckdb polars      # not project dependencies: an engine missing is skipped
    python benchmarks/bench_engines.py --packets 10000000 --work /tmp/bench
    python benchmarks/bench_engines.py --packets-table results/packets/x.parquet

The packet table is made as bench_connections.py makes it (`tracelab.synth`, seed 7, kept in
--work) and split as the stage splits it; the first partition's connections are assembled
(`assemble_connections`), and its rows in connections, sorted by connection and time, are
reduced by each way: rows and originator's packets a connection, rows without ports, min,
max, mean and population standard deviation of the inter-arrival times and frame lengths.
Each is timed best of `--runs` (CPU seconds of this process, every thread), and its values
are compared with the stage's: counts, sums, minima and maxima must be equal; means and
deviations are reported by their largest difference (the stage's tables are compared byte
for byte, so an engine whose floating-point sums are ordered differently changes them). A
script, not a test: figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))

REDUCED = ("rows", "orig", "portless", "iat_min", "iat_max", "iat_mean", "iat_std", "len_min",
           "len_max", "len_mean", "len_std")
EXACT = {"rows", "orig", "portless", "iat_min", "iat_max", "len_min", "len_max"}


def partition_rows(packets_path: Path, partition_packets: int) -> tuple[pa.Table, float]:
    """The first partition's rows in flows, sorted by flow and time, as an Arrow table (flow,
    iat with null for a flow's first row, length, orig, ported), and the CPU seconds of
    assembling the partition's connections whole (`assemble_connections`, for the share)."""
    import pyarrow.parquet as pq

    from tracelab.core.config import check_config
    from tracelab.security import connections
    from tracelab.security.flow_arrays import PacketArrays, run_starts, stable_order
    from tracelab.security.partitions import partition_count, split_packets

    config = check_config(__import__("bench_pipeline").load_config(), source="benchmark")
    settings = connections.flow_settings(config["security"]["flows"])
    count = partition_count(pq.ParquetFile(packets_path).metadata.num_rows, partition_packets)
    with tempfile.TemporaryDirectory() as scratch:
        parts = split_packets(packets_path, connections.PACKET_COLUMNS, count, Path(scratch))
        packets = next(iter(parts.tables()))
    assembly = float("inf")
    for _ in range(2):  # the first call also pays for cold pages
        start = time.process_time()
        made = connections.assemble_connections(packets, settings, "bench")
        assembly = min(assembly, time.process_time() - start)
    arrays = PacketArrays.of(packets.select(connections.PACKET_COLUMNS))
    inside = np.flatnonzero(made.packet_flow >= 0)
    rows = inside[stable_order(made.packet_flow[inside], arrays.chrono[inside])]
    flow, t = made.packet_flow[rows], arrays.t[rows]
    iat = np.where(run_starts(flow), np.nan, np.diff(t, prepend=t[:1]) / 1e9)
    return pa.table({"flow": flow, "iat": pa.array(iat, from_pandas=True),
                     "length": arrays.length[rows].astype(np.float64),
                     "orig": made.packet_is_orig[rows], "ported": arrays.ported[rows]}), assembly


def stage_way(rows: pa.Table) -> dict:
    from tracelab.security.flow_arrays import PerFlow

    flow = rows.column("flow").to_numpy()
    iat = rows.column("iat").to_numpy(zero_copy_only=False)
    length = rows.column("length").to_numpy()
    per = PerFlow(flow)
    reduced = {"rows": per.sizes(),
               "orig": per.sum(rows.column("orig").to_numpy(zero_copy_only=False), np.int64),
               "portless": per.sum(~rows.column("ported").to_numpy(zero_copy_only=False),
                                   np.int64),
               "iat_min": per.min(iat), "iat_max": per.max(iat),
               "len_min": per.min(length), "len_max": per.max(length)}
    reduced["iat_mean"], reduced["iat_std"] = per.mean_std(iat)
    reduced["len_mean"], reduced["len_std"] = per.mean_std(length)
    return reduced


def duckdb_way(threads: int):
    import duckdb

    connection = duckdb.connect(config={"threads": threads})

    def reduce(rows: pa.Table) -> dict:
        connection.register("flow_rows", rows)
        result = connection.sql(
            "select flow, count(*) rows, sum(orig::bigint) orig,"
            " sum((not ported)::bigint) portless, min(iat) iat_min, max(iat) iat_max,"
            " avg(iat) iat_mean, stddev_pop(iat) iat_std, min(length) len_min,"
            " max(length) len_max, avg(length) len_mean, stddev_pop(length) len_std"
            " from flow_rows group by flow order by flow").arrow().read_all()
        return {name: result.column(name) for name in REDUCED}

    return reduce


def polars_way(rows: pa.Table) -> dict:
    import polars as pl

    iat, length = pl.col("iat"), pl.col("length")
    result = pl.from_arrow(rows).group_by("flow", maintain_order=True).agg(
        rows=pl.len(), orig=pl.col("orig").sum(), portless=(~pl.col("ported")).sum(),
        iat_min=iat.min(), iat_max=iat.max(), iat_mean=iat.mean(), iat_std=iat.std(ddof=0),
        len_min=length.min(), len_max=length.max(), len_mean=length.mean(),
        len_std=length.std(ddof=0)).to_arrow()
    return {name: result.column(name) for name in REDUCED}


def acero_way(rows: pa.Table) -> dict:
    import pyarrow.compute as pc

    rows = rows.append_column("portless", pc.invert(rows.column("ported")))
    result = rows.group_by("flow", use_threads=False).aggregate([
        ("flow", "count"), ("orig", "sum"), ("portless", "sum"), ("iat", "min"),
        ("iat", "max"), ("iat", "mean"), ("iat", "stddev"), ("length", "min"),
        ("length", "max"), ("length", "mean"), ("length", "stddev")])
    order = pc.sort_indices(result.column("flow"))
    reduced = [name for name in result.column_names if name != "flow"]  # the key's place varies
    return {name: result.column(column).take(order) for name, column in zip(REDUCED, reduced)}


def timed(reduce, rows: pa.Table, runs: int) -> tuple[float, float, dict]:
    """Best wall and CPU seconds of `runs` calls, and the last call's values."""
    best = (float("inf"), float("inf"))
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        values = reduce(rows)
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return (*best, values)


def largest_difference(values: dict, reference: dict) -> tuple[bool, float]:
    """Whether the exact reductions are equal, and the largest difference of the others
    (null and NaN count as the same)."""
    exact, largest = True, 0.0
    for name in REDUCED:
        ours = np.asarray(reference[name], np.float64)
        theirs = pa.array(values[name]).cast(pa.float64()).fill_null(np.nan).to_numpy()
        same_missing = np.array_equal(np.isnan(ours), np.isnan(theirs))
        difference = np.nanmax(np.abs(ours - theirs), initial=0.0) if len(ours) else 0.0
        if name in EXACT:
            exact &= same_missing and difference == 0
        else:
            largest = max(largest, difference if same_missing else np.inf)
    return exact, largest


def main() -> None:
    import bench_connections

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=10_000_000)
    parser.add_argument("--partition-packets", type=int, default=1_000_000)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "tracelab-bench"))
    parser.add_argument("--packets-table", help="a packet table already made (instead)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    table = Path(args.packets_table) if args.packets_table else \
        bench_connections.packet_table(args.packets, Path(args.work))
    rows, assembly = partition_rows(table, args.partition_packets)
    flows = len(np.unique(rows.column("flow").to_numpy()))
    print(f"one partition of {table}: {rows.num_rows:,} rows in flows, {flows:,} flows; "
          f"its assembly (assemble_connections): {assembly:.2f} CPU s")
    ways = {"numpy reductions (the stage's)": stage_way}
    if importlib.util.find_spec("duckdb"):
        ways.update({"DuckDB, 1 thread": duckdb_way(1), "DuckDB, 2 threads": duckdb_way(2)})
    if importlib.util.find_spec("polars"):
        ways["polars"] = polars_way
    ways["Acero (pyarrow group_by)"] = acero_way
    reference = stage_way(rows)
    print(f"{'':32s} {'wall ms':>8s} {'CPU ms':>8s} {'of assembly':>12s}  exact  mean/std diff")
    for name, reduce in ways.items():
        wall, cpu, values = timed(reduce, rows, args.runs)
        exact, largest = largest_difference(values, reference)
        print(f"{name:32s} {wall * 1e3:8.1f} {cpu * 1e3:8.1f} {cpu / assembly:11.1%}  "
              f"{'yes' if exact else 'NO':5s}  {largest:.3g}")
    missing = [name for name in ("duckdb", "polars") if not importlib.util.find_spec(name)]
    if missing:
        print(f"not installed, skipped: {', '.join(missing)}")


if __name__ == "__main__":
    main()

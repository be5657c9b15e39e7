"""The connection stage in shards (one job a shard, then a merge): the same tables whatever the
shard count, and a plan that shows the shard jobs and reruns exactly. The sharded pipeline run
is tests/test_slurm.py's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import (
    assert_same_connections,
    bundled_results,
    connection_outputs,
    edited,
    packets_per_shard,
    security_jobs,
)

from tracelab.ingest.sheet import read_sheet
from tracelab.security.connections import write_connections
from tracelab.security.partitions import partition_of
from tracelab.security.shards import (
    ShardOutputs,
    connections_stage,
    shard_count,
    shard_of,
    split_shards,
    write_shard_connections,
)


def test_shard_of_routes_both_directions_together_independently_of_the_partitions():
    src = pa.array([f"10.0.{i // 250}.{i % 250}" for i in range(2000)])
    dst = pa.array(["192.0.2.1"] * 2000)
    shard = shard_of(src, dst, 4)
    assert np.array_equal(shard, shard_of(dst, src, 4))
    assert np.array_equal(shard, shard_of(src.dictionary_encode(), dst, 4))
    # The packets of one shard still spread over the partitions (a different hash).
    partitions = partition_of(src, dst, 2)[shard == 0]
    assert 0.3 < partitions.mean() < 0.7
    assert np.bincount(shard, minlength=4).min() > 350


def stage_outputs(directory: Path) -> dict:
    """The connection stage's outputs in `directory`, its placements of rows without ports
    too."""
    return {**connection_outputs(directory), "placements_path": directory / "placements.parquet"}


@pytest.mark.parametrize("trace", ["log4j_scan", "web_browsing"])
def test_merged_shards_equal_the_whole_trace(trace, tmp_path):
    packets = bundled_results() / f"packets/{trace}.parquet"
    settings = {"partition_packets": 1_000_000}
    whole = stage_outputs(tmp_path / "whole")
    write_connections(trace=trace, packets_path=packets, settings=settings, **whole)
    shards = shard_count(pq.ParquetFile(packets).metadata.num_rows, 300)
    assert shards > 4
    split_shards(packets_path=packets, directory=tmp_path / "split", shards=shards)
    parts = [stage_outputs(tmp_path / f"shard{shard}") for shard in range(shards)]
    for shard, part in enumerate(parts):
        del part["conn_log_path"]  # the merge writes conn.log
        write_shard_connections(trace=trace, directory=tmp_path / "split", shard=shard,
                                settings=settings, **part)
    sharded = stage_outputs(tmp_path / "merged")
    connections_stage(trace=trace, packets_path=packets, settings=settings, shards=ShardOutputs(
        *([str(part[key]) for part in parts]
          for key in ("flows_path", "http_path", "placements_path"))), **sharded)
    assert_same_connections(whole, sharded)
    # Placements in frame order whatever the shards; every row without ports the export
    # has is in a shard's.
    placed = [pq.read_table(paths["placements_path"]) for paths in (whole, sharded)]
    assert placed[1].equals(placed[0]) and placed[0].num_rows > 0
    frames = placed[0].column("frame").to_numpy()
    assert np.all(np.diff(frames) > 0)
    assert sum(pq.ParquetFile(part["placements_path"]).metadata.num_rows
               for part in parts) == len(frames)
    for paths in (whole, sharded):  # flows in the order of their first packet, as conn.log
        first_ts = pq.read_table(paths["flows_path"], columns=["first_ts"]).column("first_ts")
        assert np.all(np.diff(first_ts.cast(pa.int64()).to_numpy()) >= 0)
        records = [line.split("\t")[0] for line in Path(paths["conn_log_path"]).read_text(
            ).splitlines() if not line.startswith("#")]
        assert records == sorted(records, key=float)


def trace_packets(workdir: Path, trace: str) -> int:
    return json.loads((workdir / f"results/validation/{trace}.json").read_text())["rows_valid"]


@pytest.mark.slow
def test_a_shard_size_plans_one_job_a_shard_and_only_the_connection_stage_on(bundled):
    """After the unsharded run, a shard size below every trace's packet count. The sharded run
    itself (its tables equal the unsharded run's, then nothing to do, then back to whole
    traces) runs on SLURM: tests/test_slurm.py."""
    packets = 1000
    traces = read_sheet(bundled / "config/traces.tsv")["trace"].tolist()
    shards = {trace: math.ceil(trace_packets(bundled, trace) / packets) for trace in traces}
    assert min(shards.values()) > 1
    with edited(bundled / "config/config.yaml", packets_per_shard(packets)):
        jobs = security_jobs(bundled)
    # Only the connection jobs and what follows; one job a shard.
    n = len(traces)
    # trace_features reads the connections' placements of rows without ports.
    assert jobs == {
        "all": 1, "security_split_shards": n, "security_connections_shard": sum(shards.values()),
        "security_connections": n, "security_hosts": n, "security_windows": n,
        "trace_features": n, "compare_traces": 1}

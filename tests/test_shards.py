"""The connection stage in shards (one job a shard, then a merge): the same tables whatever the
shard count, and a plan that shows the shard jobs and reruns exactly."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import (
    assert_same_connections,
    bundled_results,
    connection_outputs,
    copy_workflow,
    planned_jobs,
    run_snakemake,
    set_packets_per_shard,
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


def sheet_traces(workdir: Path) -> list[str]:
    return read_sheet(workdir / "config/traces.tsv")["trace"].tolist()


def security_jobs(workdir: Path) -> dict[str, int]:
    """The planned jobs but the robustness experiment's, which read the windows files (and
    flows) the connection jobs' rerun rewrites: theirs is checked in the robustness tests."""
    return {rule: count for rule, count in planned_jobs(workdir).items()
            if not rule.startswith("robustness_")}


@pytest.mark.slow
def test_sharded_run_plans_shard_jobs_and_equals_the_unsharded_run(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    run_snakemake(workdir, "--cores", "2")
    unsharded = tmp_path / "unsharded"
    shutil.copytree(workdir / "results", unsharded)

    packets_per_shard = 1000
    set_packets_per_shard(workdir, packets_per_shard)
    traces = sheet_traces(workdir)
    shards = {trace: math.ceil(trace_packets(workdir, trace) / packets_per_shard)
              for trace in traces}
    assert min(shards.values()) > 1
    # Only the connection jobs and what follows; one job a shard.
    n = len(traces)
    # trace_features reads the connections' placements of rows without ports.
    assert security_jobs(workdir) == {
        "all": 1, "security_split_shards": n, "security_connections_shard": sum(shards.values()),
        "security_connections": n, "security_hosts": n, "security_windows": n,
        "trace_features": n, "compare_traces": 1}
    run_snakemake(workdir, "--cores", "2")
    assert planned_jobs(workdir) == {}

    for trace in traces:
        ran = workdir / f"results/benchmarks/security/shards/{trace}/{shards[trace]}"
        assert len(list(ran.glob("[0-9]*.tsv"))) == shards[trace]
        assert_same_connections(connection_outputs(unsharded / f"features/{trace}"),
                                connection_outputs(workdir / f"results/features/{trace}"))
        for name in ("hosts.parquet", "windows.parquet", "placements.parquet",
                     "endpoints.parquet", "conversations.parquet", "protocol_hierarchy.parquet"):
            assert pq.read_table(workdir / f"results/features/{trace}/{name}").equals(
                pq.read_table(unsharded / f"features/{trace}/{name}")), (trace, name)
    for path in (unsharded / "compare").iterdir():
        assert path.read_bytes() == (workdir / "results/compare" / path.name).read_bytes(), path
    assert not (workdir / "results/shards").exists() or not any(
        (workdir / "results/shards").rglob("*.parquet"))

    # A shard size that leaves every trace whole: the connection jobs again, no shard job.
    set_packets_per_shard(workdir, 10_000_000)
    assert security_jobs(workdir) == {
        "all": 1, "security_connections": n, "security_hosts": n, "security_windows": n,
        "trace_features": n, "compare_traces": 1}

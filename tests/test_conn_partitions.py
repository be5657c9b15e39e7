"""The connection stage in partitions: the same tables whatever the partition size."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import assert_same_connections, bundled_results, connection_outputs

from tracelab.core.streaming import compacted
from tracelab.security.connections import FLOWS, PACKET_COLUMNS, write_connections
from tracelab.security.http import HTTP
from tracelab.security.partitions import partition_count, partition_of, split_packets


def test_partition_of_is_symmetric_in_range_and_independent_of_the_dictionary():
    src = pa.array(["10.0.0.1", "10.0.0.2", "fe80::1", "10.0.0.1"])
    dst = pa.array(["10.0.0.2", "10.0.0.1", "10.0.0.1", "10.0.0.3"])
    forward = partition_of(src, dst, 7)
    assert np.array_equal(forward, partition_of(dst, src, 7))
    assert forward[0] == forward[1] and ((forward >= 0) & (forward < 7)).all()
    encoded = partition_of(src.dictionary_encode(), pa.chunked_array([dst[:2], dst[2:]]), 7)
    assert np.array_equal(forward, encoded)
    assert partition_of(src, dst, 1).tolist() == [0, 0, 0, 0]


def test_partition_count_follows_the_partition_size():
    assert [partition_count(n, 1000) for n in (0, 1, 1000, 1001, 10_000)] == [1, 1, 1, 2, 10]


def run(packets, out, partition_packets: int, threads: int = 1) -> dict:
    paths = connection_outputs(out)
    write_connections(trace="t", packets_path=packets, settings={
        "partition_packets": partition_packets}, threads=threads, **paths)
    return paths


@pytest.mark.parametrize("trace", ["log4j_scan", "web_browsing"])
def test_bundled_tables_are_the_same_in_tiny_partitions(trace, tmp_path):
    packets = bundled_results() / f"packets/{trace}.parquet"
    whole = run(packets, tmp_path / "whole", 10_000_000)
    parted = run(packets, tmp_path / "parted", 100)
    assert FLOWS.read(whole["flows_path"]).num_rows > 0
    assert_same_connections(whole, parted)
    assert not list((tmp_path / "parted").glob(".partitions-*"))


def test_partitions_on_two_threads_make_the_same_files(tmp_path):
    """Partitions assembled two at a time are written in partition order: the files are the
    same, byte for byte in their data, as with one thread."""
    packets = bundled_results() / "packets/web_browsing.parquet"
    one = run(packets, tmp_path / "one", 300)
    two = run(packets, tmp_path / "two", 300, threads=2)
    for table, name in ((FLOWS, "flows_path"), (HTTP, "http_path")):
        assert table.read(one[name]).equals(table.read(two[name]))
    assert one["conn_log_path"].read_bytes() == two["conn_log_path"].read_bytes()


def test_each_row_group_of_the_flows_holds_only_its_own_dictionary_values(tmp_path):
    """Merged from many partitions, a batch of flows would hold the union of their address
    dictionaries in every row group (118,850 addresses a row group at 10M packets): each is
    encoded anew, with only the values its rows use."""
    packets = bundled_results() / "packets/web_browsing.parquet"
    parted = run(packets, tmp_path / "parted", 100)
    flows = pq.ParquetFile(parted["flows_path"])
    dictionary_columns = [field.name for field in flows.schema_arrow
                          if pa.types.is_dictionary(field.type)]
    assert {"orig", "resp"} <= set(dictionary_columns)
    for group in range(flows.num_row_groups):
        rows = flows.read_row_group(group, columns=dictionary_columns)
        for name in dictionary_columns:
            column = rows.column(name).combine_chunks()
            assert len(column.dictionary) == len(column.unique()), (group, name)


def test_each_slice_of_a_partition_file_holds_only_its_own_dictionary_values(tmp_path):
    """A routed slice of a row group kept the row group's whole address dictionaries, written
    again with every slice into every partition (6-7k addresses a row group at 10M packets,
    ten times over): each slice's dictionaries hold the values its rows use, and the rows are
    those of the table."""
    packets = bundled_results() / "packets/web_browsing.parquet"
    table = pq.read_table(packets, columns=PACKET_COLUMNS)
    parts = split_packets(packets, PACKET_COLUMNS, 4, tmp_path)
    tables = list(parts.tables())
    for part in tables:
        for name in ("src", "dst", "protocol"):
            for chunk in part.column(name).chunks:
                assert len(chunk.dictionary) == len(chunk.unique()), name
    # Values compared, not buffers: dictionary arrays are equal only with equal dictionaries.
    assert pa.concat_tables(tables).sort_by("frame").to_pydict() == \
        table.sort_by("frame").to_pydict()


def test_compacted_keeps_values_nulls_order_and_schema():
    names = pa.array(["a", "b", "c", "d"])
    column = pa.DictionaryArray.from_arrays(pa.array([3, None, 1, 3], pa.int32()), names)
    rows = pa.table({"name": pa.chunked_array([column.slice(1), column.slice(0, 1)]),
                     "n": [1, 2, 3, 4]})
    compact = compacted(rows)
    assert compact.schema == rows.schema
    assert compact.column("name").to_pylist() == [None, "b", "d", "d"]
    assert [chunk.dictionary.to_pylist() for chunk in compact.column("name").chunks] == [
        ["b", "d"], ["d"]]
    assert compact.column("n").equals(rows.column("n"))


def test_empty_row_groups_are_skipped_when_the_table_is_split(tmp_path):
    """A perturbed copy that cut the trace (first_half) has empty row groups; a table above the
    partition size is split row group by row group, and they must change nothing (a 10M-packet
    run failed on them: "Must pass at least one table")."""
    packets = bundled_results() / "packets/log4j_scan.parquet"
    table = pq.read_table(packets)
    holed = tmp_path / "holed.parquet"
    with pq.ParquetWriter(holed, table.schema) as writer:
        for part in (table.slice(0, 700), table.slice(0, 0), table.slice(700), table.slice(0, 0)):
            writer.write_table(part)
    assert [pq.ParquetFile(holed).metadata.row_group(i).num_rows for i in range(4)][1::2] == [0, 0]
    assert_same_connections(run(packets, tmp_path / "whole", 10_000_000),
                            run(holed, tmp_path / "parted", 300))

"""Windows and hosts streamed row group by row group (packets out of order across row groups,
connections in tiny batches and any order) equal the same computation on whole tables, and the
streaming helpers keep exact distinct rows and ids."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from packet_factory import handshake, packet_table, tcp, udp

from tracelab.core import streaming
from tracelab.core.config import defaults
from tracelab.core.streaming import DistinctRows, NameIds, time_ordered
from tracelab.security import hosts as hosts_module
from tracelab.security import window_totals
from tracelab.security.connections import write_connections
from tracelab.security.hosts import file_hosts, hosts_table, scan_settings
from tracelab.security.window_totals import merge_parts
from tracelab.security.windows import (
    FEATURES,
    table_totals,
    window_matrix,
    window_settings,
    write_windows,
)

SCANNER = "10.9.9.9"


def disordered_rows(seed: int = 5) -> list[dict]:
    """Browsing, a sweep and a port scan over ~75 s, in a file order whose times step back
    (within and across row groups)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(40):
        rows += handshake(1.7 * i, "10.0.0.1", 40000 + i, f"web{i % 7}.example", 443)
        rows.append(tcp(1.7 * i + 0.2, "10.0.0.1", 40000 + i, f"web{i % 7}.example", 443, "PA",
                        seq=1, payload=int(rng.integers(1, 1400))))
        rows.append(tcp(0.9 * i, SCANNER, 30000 + i, f"10.1.0.{i + 1}", 9200, "S"))
        rows.append(tcp(0.9 * i + 0.01, SCANNER, 31000 + i, "10.1.0.1", 1 + i, "S"))
        rows.append(tcp(0.9 * i + 0.02, "10.1.0.1", 1 + i, SCANNER, 31000 + i, "RA", ack=1))
        rows.append(udp(1.3 * i, "10.0.0.2", 5353, "224.0.0.251", 5353,
                        payload=int(rng.integers(10, 300))))
    order = np.argsort([row["t"] + rng.normal(0, 0.8) for row in rows], kind="stable")
    return [rows[i] for i in order]


@pytest.fixture
def trace_files(tmp_path):
    paths = {name: tmp_path / name for name in ("packets.parquet", "flows.parquet",
                                                 "http.parquet")}
    table = packet_table(disordered_rows())
    pq.write_table(table, paths["packets.parquet"], row_group_size=7)
    write_connections(trace="t", packets_path=paths["packets.parquet"],
                      flows_path=paths["flows.parquet"], http_path=paths["http.parquet"],
                      conn_log_path=tmp_path / "conn.log", settings=defaults("security.flows"))
    flows = pq.read_table(paths["flows.parquet"])
    shuffled = flows.take(np.random.default_rng(1).permutation(flows.num_rows))
    pq.write_table(shuffled, paths["flows.parquet"], row_group_size=5)
    return table, paths


def test_time_ordered_row_groups_equal_one_sort(trace_files):
    table, paths = trace_files
    file = pq.ParquetFile(paths["packets.parquet"])
    assert file.num_row_groups > 30
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    assert (np.diff(ts) < 0).sum() > 20          # the file order steps back in time
    pieces = list(time_ordered(file, ["ts", "frame", "length"]))
    streamed = pa.concat_tables(pieces)
    whole = table.select(["ts", "frame", "length"]).sort_by([("ts", "ascending"),
                                                            ("frame", "ascending")])
    assert streamed.equals(whole)


def test_time_ordered_reads_an_empty_table(tmp_path):
    pq.write_table(pa.table({"ts": pa.array([], pa.int64()), "frame": pa.array([], pa.int64())}),
                   tmp_path / "empty.parquet")
    assert list(time_ordered(pq.ParquetFile(tmp_path / "empty.parquet"), ["ts", "frame"])) == []


def test_streamed_windows_equal_the_whole_tables(trace_files, tmp_path, monkeypatch):
    table, paths = trace_files
    monkeypatch.setattr(streaming, "BATCH_ROWS", 4)
    monkeypatch.setattr(streaming, "COMPACT_ROWS", 3)
    monkeypatch.setattr(window_totals, "MERGE_PARTS", 3)
    settings = window_settings({"window_s": 5})
    write_windows(trace="t", packets_path=paths["packets.parquet"],
                  flows_path=paths["flows.parquet"], http_path=paths["http.parquet"],
                  windows_path=tmp_path / "windows.parquet", settings={"window_s": 5})
    streamed = pd.read_parquet(tmp_path / "windows.parquet").drop(columns="trace")

    monkeypatch.undo()  # the whole tables in one batch each
    totals, _ = table_totals([table], pq.read_table(paths["flows.parquet"]),
                             pq.read_table(paths["http.parquet"]), settings)
    whole = window_matrix(totals, settings)
    assert len(streamed) == len(whole) > 10
    assert streamed["window"].tolist() == whole["window"].tolist()
    for name in ["duration_s", *FEATURES]:
        np.testing.assert_allclose(streamed[name], whole[name], rtol=1e-12, atol=0,
                                   equal_nan=True, err_msg=name)
    assert streamed["max_fanout_per_source"].max() >= 5
    assert (streamed["failed_connection_ratio"] > 0).any()


@pytest.mark.parametrize("interval_s", [300, 7])
def test_streamed_hosts_equal_the_whole_table(trace_files, monkeypatch, interval_s):
    _, paths = trace_files
    settings = scan_settings({"address_scan_hosts": 5, "port_scan_ports": 5,
                              "interval_s": interval_s})
    whole = hosts_table(pq.read_table(paths["flows.parquet"]).to_pandas(), settings)
    monkeypatch.setattr(streaming, "BATCH_ROWS", 3)
    monkeypatch.setattr(streaming, "COMPACT_ROWS", 2)
    monkeypatch.setattr(hosts_module, "MERGE_PARTS", 2)
    streamed = file_hosts(paths["flows.parquet"], settings)
    pd.testing.assert_frame_equal(streamed, whole)
    if interval_s == 7:     # counted per 7 s: the sweep's ~8 hosts, the scan's ~8 ports
        return
    scanner = streamed.set_index("source").loc[SCANNER]
    assert scanner["flagged_by"] == "address_scan,port_scan,trw"
    # 40 hosts on port 9200; 40 ports on 10.1.0.1, and the sweep's probe to its 9200
    assert (scanner["address_scan_hosts"], scanner["port_scan_ports"]) == (40, 41)


def test_merged_moments_equal_numpy_on_the_whole_column():
    rng = np.random.default_rng(3)
    values = rng.exponential(2.0, 1000)
    windows = np.sort(rng.integers(0, 9, 1000))
    parts = []
    for chunk in np.array_split(np.arange(1000), 13):
        frame = pd.DataFrame({"v": values[chunk]}).groupby(windows[chunk])["v"]
        parts.append(pd.DataFrame({"packets": frame.size(), "length_mean": frame.mean(),
                                   "length_var": frame.var()}).rename_axis("window"))
    merged = merge_parts(parts)
    for window, row in merged.iterrows():
        mine = values[windows == window]
        assert row["packets"] == mine.size
        assert row["length_mean"] == pytest.approx(mine.mean(), rel=1e-12)
        assert row["length_var"] == pytest.approx(mine.var(ddof=1), rel=1e-12)


def test_distinct_rows_and_name_ids(monkeypatch):
    monkeypatch.setattr(streaming, "COMPACT_ROWS", 2)
    rows = DistinctRows(["a", "b"])
    rng = np.random.default_rng(9)
    everything = []
    for _ in range(20):
        part = pd.DataFrame({"a": rng.integers(0, 5, 30), "b": rng.integers(0, 3, 30)})
        rows.add(part)
        everything.append(part)
    expected = pd.concat(everything).drop_duplicates()
    assert sorted(map(tuple, rows.rows().to_numpy())) == sorted(map(tuple, expected.to_numpy()))

    names = NameIds()
    first = names.of(pa.array(["b", "a", "b"]).dictionary_encode())
    second = names.of(pa.chunked_array([pa.array(["c", "a"]), pa.array(["b"])]))
    assert first.tolist() == [0, 1, 0] and second.tolist() == [2, 1, 0]
    assert names.name([2, 0]).tolist() == ["c", "b"]


@pytest.mark.parametrize("keys", [("k",), ("k", "j")])
def test_merge_sorted_equals_a_stable_sort_of_the_files(keys, tmp_path, monkeypatch):
    """Files each sorted by `keys`, merged a few rows at a time, in any row groups, empty
    files and long runs of one key included: a stable sort of their concatenation, in tables
    of BATCH_ROWS rows but the last."""
    rng = np.random.default_rng(5)
    for trial in range(60):
        monkeypatch.setattr(streaming, "BATCH_ROWS", int(rng.integers(1, 120)))
        tables, paths = [], []
        for number in range(int(rng.integers(1, 6))):
            rows = int(rng.integers(0, 200))
            table = pa.table({"k": rng.integers(0, int(rng.integers(1, 30)), rows),
                              "j": rng.integers(-3, 3, rows), "file": np.full(rows, number),
                              "row": np.arange(rows)})
            table = table.take(np.lexsort([table.column(k).to_numpy() for k in keys][::-1]))
            paths.append(tmp_path / f"{trial}-{number}.parquet")
            pq.write_table(table, paths[-1], row_group_size=int(rng.integers(1, 80)))
            tables.append(table)
        whole = pa.concat_tables(tables)
        expected = whole.take(np.lexsort([whole.column(k).to_numpy() for k in keys][::-1]))
        merged = list(streaming.merge_sorted(paths, keys, batch_rows=int(rng.integers(1, 30))))
        got = pa.concat_tables(merged) if merged else whole.slice(0, 0)
        assert got.equals(expected)
        assert [len(table) for table in merged[:-1]] == [streaming.BATCH_ROWS] * (len(merged) - 1)
        assert all(0 < len(table) <= streaming.BATCH_ROWS for table in merged[-1:])


def test_merge_row_groups_equals_a_stable_sort_of_the_file(tmp_path, monkeypatch):
    """Sorted runs written one after another into one file (in row groups of any size, each
    within one run), merged: the file's rows as a stable sort gives them, in BATCH_ROWS
    batches, only the columns asked for."""
    rng = np.random.default_rng(11)
    keys = ("k", "j")
    for trial in range(40):
        monkeypatch.setattr(streaming, "BATCH_ROWS", int(rng.integers(1, 120)))
        path, runs = tmp_path / f"{trial}.parquet", []
        schema = pa.schema([("k", pa.int64()), ("j", pa.int64()), ("run", pa.int64()),
                            ("row", pa.int64())])
        with pq.ParquetWriter(path, schema) as writer:
            for number in range(int(rng.integers(1, 7))):
                rows = int(rng.integers(0, 150))
                run = pa.table({"k": rng.integers(0, 20, rows), "j": rng.integers(-3, 3, rows),
                                "run": np.full(rows, number), "row": np.arange(rows)}, schema)
                run = run.take(np.lexsort([run.column(k).to_numpy() for k in keys][::-1]))
                writer.write_table(run, row_group_size=int(rng.integers(1, 60)))
                runs.append(run)
        whole = pa.concat_tables(runs)
        expected = whole.take(np.lexsort([whole.column(k).to_numpy() for k in keys][::-1]))
        columns = ["k", "j", "run", "row"][:4 - trial % 2]
        merged = list(streaming.merge_row_groups(path, keys, columns,
                                                 batch_rows=int(rng.integers(1, 30))))
        expected = expected.select(columns)
        got = pa.concat_tables(merged) if merged else expected.slice(0, 0)
        assert got.equals(expected)
        assert all(0 < len(table) <= streaming.BATCH_ROWS for table in merged)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_ordered_map_keeps_the_order_and_at_most_threads_items_taken_ahead(threads):
    """Results come in the items' order whatever finishes first, and the items are taken
    from their iterator at most `threads` ahead of the results the caller has been given."""
    import threading
    import time

    taken, given = [], []
    running, most = [0], [0]
    lock = threading.Lock()

    def items():
        for item in range(12):
            taken.append(item)
            yield item

    def work(item: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.002 * (item % 3))  # later items often finish first
        with lock:
            running[0] -= 1
        return item * item

    for result in streaming.ordered_map(work, items(), threads):
        assert len(taken) - len(given) <= threads
        given.append(result)
    assert given == [item * item for item in range(12)]
    assert most[0] <= threads


def test_ordered_map_and_read_ahead_raise_the_error_of_an_item():
    def work(item: int) -> int:
        if item == 3:
            raise ValueError("item 3")
        return item

    with pytest.raises(ValueError, match="item 3"):
        list(streaming.ordered_map(work, range(6), 2))
    with pytest.raises(ValueError, match="item 3"):
        list(streaming.read_ahead(work(item) for item in range(6)))


def test_read_ahead_gives_every_item_in_order_making_at_most_one_ahead():
    made = []

    def items():
        for item in range(5):
            made.append(item)
            yield item

    given = []
    for item in streaming.read_ahead(items()):
        given.append(item)
        assert len(made) - len(given) <= 1
    assert given == list(range(5)) and list(streaming.read_ahead(iter([]))) == []

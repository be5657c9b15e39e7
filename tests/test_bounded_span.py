"""A trace whose last packet comes 99 days after the others (a wrong date, a clock jump): every
output stays as small as its packets make it, not its time span, and the figures are drawn."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow.parquet as pq
import pytest
from packet_factory import handshake, packet_table, tcp, udp

from tracelab.compare.traces import compare_traces
from tracelab.core.config import defaults
from tracelab.features.summary import trace_features
from tracelab.security.connections import write_connections
from tracelab.security.hosts import write_hosts
from tracelab.security.windows import write_windows

DAY_S = 86400
JUMP_S = 99 * DAY_S + 7.0     # the last window then covers 7 s: kept


def rows(jump: bool) -> list[dict]:
    """A minute of browsing and probing, and (if `jump`) one more packet 99 days later."""
    trace = []
    for i in range(20):
        trace += handshake(3.0 * i, "10.0.0.1", 40000 + i, f"10.0.1.{i + 1}", 80)
        trace.append(tcp(3.0 * i + 0.5, "10.9.9.9", 30000 + i, "10.0.0.1", 1000 + i, "S"))
        trace.append(udp(3.0 * i + 1.0, "10.0.0.1", 5353, "224.0.0.251", 5353))
    if jump:
        trace.append(udp(JUMP_S, "10.0.0.1", 5353, "224.0.0.251", 5353))
    return trace


def run_trace(folder, trace: str, jump: bool) -> dict:
    paths = {name: folder / f"{trace}_{name}" for name in (
        "packets.parquet", "flows.parquet", "http.parquet", "windows.parquet",
        "hosts.parquet", "summary.json", "distributions.parquet")}
    pq.write_table(packet_table(rows(jump)), paths["packets.parquet"], row_group_size=16)
    write_connections(trace=trace, packets_path=paths["packets.parquet"],
                      flows_path=paths["flows.parquet"], http_path=paths["http.parquet"],
                      conn_log_path=folder / f"{trace}_conn.log",
                      settings=defaults("security.flows"))
    write_windows(trace=trace, packets_path=paths["packets.parquet"],
                  flows_path=paths["flows.parquet"], http_path=paths["http.parquet"],
                  windows_path=paths["windows.parquet"], settings={})
    write_hosts(trace=trace, flows_path=paths["flows.parquet"], hosts_path=paths["hosts.parquet"],
                settings={})
    trace_features(trace=trace, packets_path=paths["packets.parquet"],
                   summary_path=paths["summary.json"],
                   distributions_path=paths["distributions.parquet"], settings={})
    return paths


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    folder = tmp_path_factory.mktemp("span")
    return {"minute": run_trace(folder, "minute", jump=False),
            "jump": run_trace(folder, "jump", jump=True)}


def test_series_have_a_bounded_number_of_points(traces):
    distributions = pq.read_table(traces["jump"]["distributions.parquet"])
    assert distributions.num_rows < 10_000     # one rate bin a second: 17 million rows
    settings = defaults("features")
    bound = settings["max_series_points"]
    summary = json.loads(traces["jump"]["summary.json"].read_text())
    assert summary["duration_s"] == pytest.approx(JUMP_S)
    # 99 days in at most 2,000 bins: 1 s x 5,000 (2,000 s bins would make 4,277).
    assert summary["rate_bin_s"] == 5000.0
    assert pq.read_schema(traces["jump"]["distributions.parquet"]).metadata[
        b"tracelab.rate_bin_s"] == b"5000.0"
    kinds = Counter(distributions.column("kind").to_pylist())
    assert kinds["pps"] == kinds["bps"] == int(JUMP_S // 5000) + 1 <= bound
    assert kinds["destinations"] <= bound
    assert kinds["iat_ecdf"] <= settings["ecdf_points"]
    assert distributions.num_rows < 3 * bound + 2 * settings["ecdf_points"] + 10
    # Every packet is counted once, in the bin of its time.
    pps = distributions.filter(distributions.column("kind").to_numpy(zero_copy_only=False)
                               == "pps").to_pydict()
    assert sum(pps["y"]) * 5000 == len(rows(jump=True))
    assert pps["y"][-1] * 5000 == 1


def test_window_matrix_grows_with_the_packets_not_the_span(traces):
    minute = pq.read_table(traces["minute"]["windows.parquet"]).to_pandas()
    jump = pq.read_table(traces["jump"]["windows.parquet"])
    metadata = jump.schema.metadata
    jump = jump.to_pandas()
    # The minute's windows, then the jump's own window; the empty windows between are left out.
    assert jump["window"].tolist() == [*minute["window"], int(JUMP_S // 10)]
    assert jump["duration_s"].iloc[-1] == pytest.approx(7.0)
    assert jump["packets_per_s"].iloc[-1] == pytest.approx(1 / 7.0)
    left_out = int(JUMP_S // 10) - len(minute)
    assert int(metadata[b"tracelab.empty_windows_left_out"]) == left_out
    hosts = pq.read_table(traces["jump"]["hosts.parquet"]).to_pandas()
    assert hosts["connections"].sum() == pq.read_metadata(traces["jump"]["flows.parquet"]).num_rows


def test_the_comparison_figures_are_drawn(traces, tmp_path):
    names = list(traces)
    figures = {name: tmp_path / f"{name}.png" for name in (
        "iat_cdf_path", "length_cdf_path", "protocols_path", "rate_path", "destinations_path")}
    compare_traces(traces=names, labels={name: "lab" for name in names},
                   summary_paths=[str(traces[n]["summary.json"]) for n in names],
                   distribution_paths=[str(traces[n]["distributions.parquet"]) for n in names],
                   table_path=tmp_path / "table.csv", markdown_path=tmp_path / "table.md",
                   html_path=tmp_path / "table.html", **figures)
    assert all(path.stat().st_size > 0 for path in figures.values())

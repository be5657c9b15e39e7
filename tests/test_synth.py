"""The trace generator: deterministic, well-formed Wireshark CSV exports, as the readers expect."""

from __future__ import annotations

import csv
import gzip
import hashlib
import ipaddress
import re

import numpy as np
import pandas as pd
import pytest

from tracelab.synth.wireshark_export import COLUMNS, TraceOptions, generate_trace

# Small chunks, so that even these small traces cross several chunk boundaries.
SMALL = dict(packets=5000, chunk_rows=1024)


def _generate(tmp_path, name="trace.csv", **options):
    path = tmp_path / name
    summary = generate_trace(path, TraceOptions(**{**SMALL, **options}))
    return path, summary


def _lines(path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as handle:
        return handle.read().splitlines()


def _frame(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_bytes_different_seed_different_bytes(tmp_path):
    first, _ = _generate(tmp_path, "a.csv.gz", seed=7)
    again, _ = _generate(tmp_path, "b.csv.gz", seed=7)
    other, _ = _generate(tmp_path, "c.csv.gz", seed=8)
    assert _digest(first) == _digest(again)
    assert _digest(first) != _digest(other)
    assert _lines(first)[1:] != _lines(other)[1:]


def test_header_first_and_every_field_quoted(tmp_path):
    path, _ = _generate(tmp_path)
    lines = _lines(path)
    assert lines[0] == ",".join(f'"{c}"' for c in COLUMNS)
    rows = list(csv.reader(lines[1:]))
    assert all(len(row) == 7 for row in rows)
    # quoted fields: every line starts and ends with a quote, fields are joined by '","'
    assert all(line.startswith('"') and line.endswith('"') for line in lines)
    assert all(line.count('","') >= 6 for line in lines)


@pytest.mark.parametrize("packets", [1, 999, 5000])
def test_row_count_and_frame_numbers(tmp_path, packets):
    path, summary = _generate(tmp_path, packets=packets)
    frame = _frame(path)
    assert list(frame.columns) == COLUMNS
    assert len(frame) == packets == summary.packets
    assert frame["No."].astype(int).tolist() == list(range(1, packets + 1))


@pytest.mark.parametrize("time_format", ["us", "ns", "epoch"])
def test_time_non_decreasing_in_each_format(tmp_path, time_format):
    path, summary = _generate(tmp_path, time_format=time_format)
    text = _frame(path)["Time"]
    if time_format == "epoch":
        assert text.str.fullmatch(r"\d{10}\.\d{6}").all()
        seconds, fraction = text.str.split(".", expand=True).T.values
        ns = seconds.astype(np.int64) * 10**9 + fraction.astype(np.int64) * 1000
    else:
        digits = 9 if time_format == "ns" else 6
        assert text.str.fullmatch(rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{{{digits}}}").all()
        stamps = pd.to_datetime(text, format="%Y-%m-%d %H:%M:%S.%f").dt.as_unit("ns")
        ns = stamps.astype("int64").to_numpy()
    assert (np.diff(ns) >= 0).all()
    assert summary.duration_s == pytest.approx((ns[-1] - ns[0]) / 1e9, abs=1e-5)


@pytest.mark.parametrize(("arrow", "separator"), [("gui", "  >  "), ("tshark", " \u2192 ")])
def test_arrow_styles(tmp_path, arrow, separator):
    path, _ = _generate(tmp_path, arrow=arrow)
    info = _frame(path)["Info"]
    ported = info[info.str.contains(r"^(?:\[[^\]]+\] )?\d+\D+\d+ (?:\[|Len=)")]
    assert len(ported) > len(info) // 2
    pattern = r"^(?:\[[^\]]+\] )?\d+" + re.escape(separator) + r"\d+ (?:\[|Len=)"
    assert ported.str.contains(pattern).all()
    other_separator = " \u2192 " if arrow == "gui" else "  >  "
    assert not info.str.contains(re.escape(other_separator)).any()


def test_info_formats_as_wireshark_writes_them(tmp_path):
    path, _ = _generate(tmp_path, packets=20000, chunk_rows=4096, scan_share=0.5)
    frame = _frame(path)
    info = frame["Info"]
    tcp = r"\d+  >  \d+ "
    shapes = {
        "syn": tcp + r"\[SYN\] Seq=0 Win=64240 Len=0 MSS=1460 SACK_PERM TSval=\d+ TSecr=0 WS=1024",
        "retransmission": r"\[TCP Retransmission\] " + tcp + r"\[SYN\] Seq=0 .*",
        "syn_ack": tcp + r"\[SYN, ACK\] Seq=0 Ack=1 Win=65160 Len=0 MSS=1460 SACK_PERM "
                         r"TSval=\d+ TSecr=\d+ WS=1024",
        "ack": tcp + r"\[ACK\] Seq=\d+ Ack=\d+ Win=\d+ Len=0 TSval=\d+ TSecr=\d+",
        "segment": tcp + r"\[(PSH, )?ACK\] Seq=\d+ Ack=\d+ Win=\d+ Len=1448 TSval=\d+ "
                         r"TSecr=\d+ \[TCP segment of a reassembled PDU\]",
        "fin": tcp + r"\[FIN, ACK\] Seq=\d+ Ack=\d+ .*",
        "rst_ack": tcp + r"\[RST, ACK\] Seq=1 Ack=1 Win=0 Len=0",
        "get": r"GET /\S* HTTP/1\.1 ",
        "response": r"HTTP/1\.1 \d{3} [A-Za-z ]+  \([a-z]+/[a-z]+\)",
        "log4shell": r"GET /\?x=\$\{.*\} HTTP/1\.1 ",
        "client_hello": r"Client Hello",
        "application_data": r"Application Data",
        "dns_query": r"Standard query 0x[0-9a-f]{4} A [a-z0-9.]+",
        "dns_response": r"Standard query response 0x[0-9a-f]{4} A [a-z0-9.]+ "
                        r"A 198\.1[89]\.\d+\.\d+",
        "udp": r"\d+  >  \d+ Len=\d+",
    }
    for name, shape in shapes.items():
        assert info.str.fullmatch(shape).any(), name
    # a SYN frame is 74 bytes, a bare ACK 66, a full segment 1514
    lengths = frame["Length"].astype(int)
    assert (lengths[info.str.fullmatch(shapes["syn"])] == 74).all()
    assert (lengths[info.str.fullmatch(shapes["ack"])] == 66).all()
    assert (lengths[info.str.fullmatch(shapes["segment"])] == 1514).all()
    # rows whose Info carries no ports are exactly the application-protocol rows
    assert set(frame.loc[info.str.fullmatch(shapes["get"]), "Protocol"]) == {"HTTP"}
    assert set(frame.loc[info == "Client Hello", "Protocol"]) == {"TLSv1"}


def test_every_fin_is_acknowledged_by_the_other_side(tmp_path):
    path, _ = _generate(tmp_path, packets=20000, chunk_rows=4096)
    frame = _frame(path)
    tcp = frame["Info"].str.extract(
        r"^(?:\[[^\]]+\] )?(?P<sport>\d+)  >  (?P<dport>\d+) \[(?P<flags>[A-Z, ]+)\] "
        r"Seq=(?P<seq>\d+)(?: Ack=(?P<ack>\d+))?")
    tcp[["src", "dst"]] = frame[["Source", "Destination"]]
    tcp = tcp.dropna(subset=["flags"])
    fins = tcp[tcp["flags"] == "FIN, ACK"]
    assert len(fins) > 100
    # an answer to a FIN comes from the other end and acknowledges the FIN's Seq + 1
    answers = tcp.dropna(subset=["ack"]).rename(columns={
        "src": "dst", "dst": "src", "sport": "dport", "dport": "sport", "ack": "expected"})
    answers["expected"] = answers["expected"].astype(int)
    fins = fins.assign(expected=fins["seq"].astype(int) + 1)
    matched = fins.merge(answers[["src", "dst", "sport", "dport", "expected"]].drop_duplicates(),
                         how="left", indicator=True)
    # only the last flows of the trace may be cut short by its end
    assert (matched["_merge"] == "left_only").sum() <= 10


def test_addresses_only_in_test_ranges(tmp_path):
    path, _ = _generate(tmp_path)
    frame = _frame(path)
    allowed = [ipaddress.ip_network(n) for n in ("198.18.0.0/15", "fe80::/10", "ff02::/16")]
    for address in pd.unique(frame[["Source", "Destination"]].to_numpy().ravel()):
        ip = ipaddress.ip_address(address)
        assert any(ip in net for net in allowed if net.version == ip.version), address


def test_summary_counts_match_the_file(tmp_path):
    path, summary = _generate(tmp_path, "trace.csv.gz", packets=8000)
    frame = _frame(path)
    assert summary.protocol_counts == frame["Protocol"].value_counts().to_dict()
    assert summary.bytes == frame["Length"].astype(int).sum()
    assert summary.file_bytes == path.stat().st_size
    scans_seen = frame["Info"].str.contains(r"\$\{|\[RST|Win=1024 ").sum()
    assert 0 < scans_seen <= summary.scan_packets < summary.packets


def test_scan_share_zero_has_no_scan_traffic(tmp_path):
    path, summary = _generate(tmp_path, scan_share=0.0)
    info = _frame(path)["Info"]
    assert summary.scan_packets == 0
    assert not info.str.contains(r"jndi|\[RST|Retransmission|Win=1024 ").any()


def test_rejects_bad_options():
    with pytest.raises(ValueError, match="arrow"):
        TraceOptions(packets=10, arrow="ascii")
    with pytest.raises(ValueError, match="time_format"):
        TraceOptions(packets=10, time_format="ms")
    with pytest.raises(ValueError, match="packets"):
        TraceOptions(packets=0)


def test_command_line_writes_trace_and_prints_summary(tmp_path, capsys):
    from tracelab.synth.wireshark_export import main

    out = tmp_path / "cli.csv.gz"
    assert main(["--packets", "300", "--seed", "3", "--out", str(out), "--arrow", "tshark",
                 "--time-format", "ns"]) == 0
    printed = capsys.readouterr().out
    assert '"packets": 300' in printed
    assert len(_frame(out)) == 300


@pytest.mark.parametrize(("arrow", "time_format"),
                         [("gui", "us"), ("tshark", "ns"), ("gui", "epoch")])
def test_generated_trace_validates_with_zero_invalid_rows(tmp_path, arrow, time_format):
    from tracelab.ingest.validate import validate_trace

    path, summary = _generate(tmp_path, "trace.csv.gz", arrow=arrow, time_format=time_format)
    report = validate_trace(
        trace="synthetic", source=path, source_format="wireshark_csv",
        staged_path=tmp_path / "staged.arrow", report_path=tmp_path / "report.json",
        invalid_path=tmp_path / "invalid.csv")
    assert report["status"] == "passed"
    assert report["rows_read"] == report["rows_valid"] == summary.packets
    assert report["rows_invalid"] == 0

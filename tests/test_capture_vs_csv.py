"""The same traffic as a capture and as Wireshark's CSV export must give the same packets.

data/log4j_scan.pcapng is the dumpcap capture whose GUI export is data/log4j_scan.csv.gz (and
likewise web_browsing). The capture goes through tracelab.ingest.capture.reader; the export is
parsed here independently with pandas and regular expressions.

Documented differences (each asserted as its mechanism, not as a count):

1. Names. The export has resolved names such as `47.1.18.198.host.example-hosting.net` for
   198.18.1.47 (Wireshark's reverse lookups when it was exported); the capture has addresses.
   `address()` maps the names back.
2. Clock. The export prints microseconds, the capture has nanoseconds: times agree to 1 µs.
3. Columns of HTTP/TLS rows. The export's Info of an HTTP or TLS row is the application
   summary, with no ports, flags or sequence numbers; the capture has them all. TCP fields
   are compared on the rows the export gives them for; the capture's HTTP/TLS rows are TCP.
4. Snap length. The capture keeps 128 bytes of each packet. A request line that does not fit
   gives a prefix of the URI and no version; the export shows the whole line.
5. Reassembly (web_browsing). Wireshark labels HTTP/TLS on the segment that completes a
   message and marks the others "[TCP segment of a reassembled PDU]"; the capture reader
   labels the segment where a message starts. Per TCP connection and direction the number of
   HTTP messages is the same; TLS labels move between the segments of TLS connections.
6. TLS message lists. Only records whose headers lie in the captured bytes are listed, so the
   capture's list is a prefix of the export's ("Server Hello" vs "Server Hello, Certificate,
   Server Key Exchange, Server Hello Done").
7. A TLS row whose Info starts with a TCP analysis note ("[TCP Window Full] , Application
   Data") has no ports in the export, so tracelab.ingest.normalize cannot read the note
   from it; the capture has it.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import REPO, bundled_results

from tracelab.core.packets import PACKET_SCHEMA, PACKETS, TCP_FLAG_BITS, read_staged
from tracelab.ingest.validate import validate_trace

RESOLVED = re.compile(r"^(\d+)\.(\d+)\.(\d+)\.(\d+)\.host\.example-hosting\.net$")
TCP_INFO = re.compile(r"^(?:\[[^\]]*\]\s*)*(\d+)\s+>\s+(\d+)\s+\[([A-Z, ]+)\]"
                      r"(?:.*?\bSeq=(\d+))?(?:.*?\bAck=(\d+))?(?:.*?\bWin=(\d+))?"
                      r"(?:.*?\bLen=(\d+))?")
ANALYSIS = re.compile(r"\[(TCP (?!segment of a reassembled PDU)[^\]]*)\]")
REQUEST = re.compile(r"^(GET|POST|HEAD|PUT|DELETE|OPTIONS) (\S+) (HTTP/\d\.\d)")
RESPONSE = re.compile(r"^(HTTP/\d\.\d) (\d{3})")


def address(name: str) -> str:
    """An address as the capture has it: resolved lab names mapped back to 198.18.x.y."""
    match = RESOLVED.match(name)
    return ".".join(reversed(match.groups())) if match else name


@pytest.fixture(scope="module", params=["log4j_scan", "web_browsing"])
def both(request, tmp_path_factory):
    """(trace name, capture read by tracelab.ingest.capture.reader, export parsed independently)."""
    name = request.param
    out = tmp_path_factory.mktemp(name)
    validate_trace(trace=name, source=REPO / "data" / f"{name}.pcapng", source_format="pcapng",
                   staged_path=out / "staged.arrow", report_path=out / "report.json",
                   invalid_path=out / "invalid.csv")
    capture = read_staged(out / "staged.arrow").to_pandas()
    for column in ("http_method", "http_version"):
        capture[column] = capture[column].astype(object)
    export = pd.read_csv(REPO / "data" / f"{name}.csv.gz", dtype=str, keep_default_na=False)
    export["src"] = export["Source"].map(address)
    export["dst"] = export["Destination"].map(address)
    export["ts"] = pd.to_datetime(export["Time"]).dt.tz_localize("UTC")
    tcp = export["Info"].str.extract(TCP_INFO)
    tcp.columns = ["src_port", "dst_port", "flags", "seq", "ack", "win", "len"]
    export = pd.concat([export, tcp], axis=1)
    return name, capture, export


def test_packet_count_duration_and_clock_agree(both):
    _, capture, export = both
    assert len(capture) == len(export)
    assert (capture["frame"].to_numpy() == export["No."].astype(int).to_numpy()).all()
    offset = (capture["ts"] - export["ts"]).dt.total_seconds().abs()
    assert offset.max() < 1e-6
    duration = capture["ts"].max() - capture["ts"].min()
    assert abs((duration - (export["ts"].max() - export["ts"].min())).total_seconds()) < 1e-6
    assert (capture["length"].to_numpy() == export["Length"].astype(int).to_numpy()).all()


def test_sources_and_destinations_agree_once_names_are_mapped_back(both):
    _, capture, export = both
    resolved = export["Source"].str.contains("example-hosting", regex=False)
    assert resolved.any()                      # the export really has resolved names
    assert set(capture["src"]) == set(export["src"])
    assert set(capture["dst"]) == set(export["dst"])
    assert (capture["src"].to_numpy() == export["src"].to_numpy()).all()
    assert (capture["dst"].to_numpy() == export["dst"].to_numpy()).all()


def test_tcp_flags_and_numbers_agree_where_the_export_has_them(both):
    _, capture, export = both
    shown = export["flags"].notna().to_numpy()
    assert (export.loc[shown, "Protocol"] == "TCP").all()
    for flag, bit in TCP_FLAG_BITS.items():
        in_export = export.loc[shown, "flags"].str.contains(rf"\b{flag}\b").sum()
        in_capture = ((capture.loc[shown, "tcp_flags"].astype(int) & bit) != 0).sum()
        assert in_capture == in_export, flag
    for column, capture_column in (("src_port", "src_port"), ("dst_port", "dst_port"),
                                   ("seq", "tcp_seq"), ("ack", "tcp_ack"), ("win", "tcp_win"),
                                   ("len", "tcp_len")):
        expected = export.loc[shown, column]
        present = expected.notna()
        got = capture.loc[shown, capture_column][present.to_numpy()]
        assert (got.astype("int64").to_numpy() == expected[present].astype("int64").to_numpy()
                ).all(), column
        # Ack= is absent exactly where the ACK flag is (Wireshark prints it only then).
        if column == "ack":
            assert (capture.loc[shown, "tcp_ack"].notna().to_numpy() == present.to_numpy()).all()
    # Difference 3: the export's HTTP/TLS rows are TCP segments in the capture.
    application = ~shown & export["Protocol"].isin(["HTTP", "TLSv1", "TLSv1.2"]).to_numpy()
    assert capture.loc[application, "tcp_flags"].notna().all()


def test_tcp_analysis_notes_agree(both):
    _, capture, export = both
    in_export = Counter(note for notes in export["Info"].map(ANALYSIS.findall) for note in notes)
    in_capture = Counter(note for notes in capture["tcp_analysis"].dropna().str.split("; ")
                         for note in notes)
    assert in_export == in_capture
    assert sum(in_export.values()) > 0


def test_protocol_counts(both):
    name, capture, export = both
    if name == "log4j_scan":
        assert Counter(capture["protocol"]) == Counter(export["Protocol"])
        assert (capture["protocol"].to_numpy() == export["Protocol"].to_numpy()).all()
        return
    # Difference 5: the same HTTP messages, labelled on their first segment instead of last.
    assert (capture["protocol"] == "HTTP").sum() == (export["Protocol"] == "HTTP").sum()
    connection = list(zip(capture["src"], capture["src_port"], capture["dst"],
                          capture["dst_port"]))
    capture["connection"] = connection
    per_connection = {
        form: capture[labels == "HTTP"].groupby("connection").size().sort_index()
        for form, labels in (("capture", capture["protocol"]),
                             ("export", export["Protocol"].to_numpy()))}
    pd.testing.assert_series_equal(per_connection["capture"], per_connection["export"])
    moved = capture["protocol"].to_numpy() != export["Protocol"].to_numpy()
    pairs = set(zip(capture["protocol"][moved], export["Protocol"][moved]))
    assert pairs <= {("HTTP", "TCP"), ("TCP", "HTTP"), ("TLSv1.2", "TCP"), ("TCP", "TLSv1.2")}
    tls = capture["protocol"].str.startswith("TLS") | export["Protocol"].str.startswith(
        "TLS").to_numpy()
    assert (capture.loc[tls, "src_port"].eq(443) | capture.loc[tls, "dst_port"].eq(443)).all()
    everything_else = ~moved
    assert (capture["protocol"][everything_else].to_numpy()
            == export["Protocol"][everything_else].to_numpy()).all()


def test_http_and_tls_fields(both):
    name, capture, export = both
    info = export["Info"].str.strip()
    request = info.str.extract(REQUEST)
    requests = export["Protocol"].eq("HTTP") & request[0].notna()
    # A request line is read where its packet starts it; compare on the export's HTTP rows.
    assert (capture.loc[requests, "http_method"] == request.loc[requests, 0]).all()
    uri_pairs = list(zip(capture.loc[requests, "http_uri"], request.loc[requests, 1]))
    assert all(full.startswith(got) for got, full in uri_pairs)      # difference 4
    whole = capture.loc[requests, "http_version"].notna()
    assert (capture.loc[requests, "http_uri"][whole] == request.loc[requests, 1][whole]).all()
    if name == "log4j_scan":
        assert whole.sum() < len(uri_pairs)                 # some lines are cut by the snap
        response = info.str.extract(RESPONSE)
        responses = export["Protocol"].eq("HTTP") & response[1].notna()
        assert (capture.loc[responses, "http_status"].astype(int)
                == response.loc[responses, 1].astype(int)).all()
        assert capture["tls_message"].isna().all()
        return
    both_tls = capture["protocol"].str.startswith("TLS") & export["Protocol"].str.startswith(
        "TLS").to_numpy()
    assert both_tls.sum() > 100
    for got, full in zip(capture.loc[both_tls, "tls_message"], info[both_tls]):
        items = got.split(", ")
        assert full.split(", ")[:len(items)] == items        # difference 6


def test_through_the_pipeline():
    """snakemake validates and normalizes both forms of the scan (the session's bundled run);
    the packet tables agree."""
    tables = {form: pq.read_table(bundled_results() / "packets" / f"{form}.parquet")
              for form in ("log4j_scan", "log4j_scan_pcap")}
    for table in tables.values():
        assert table.schema.remove_metadata() == PACKET_SCHEMA
        PACKETS.check(table)
    export, capture = (tables[f].to_pandas() for f in ("log4j_scan", "log4j_scan_pcap"))
    assert len(export) == len(capture)
    assert Counter(export["protocol"].astype(str)) == Counter(capture["protocol"].astype(str))
    assert np.allclose(export["t_rel_s"], capture["t_rel_s"], atol=1e-6)
    tcp_rows = export["tcp_flags"].notna()
    for column in ("tcp_flags", "tcp_seq", "tcp_win", "tcp_len", "src_port", "dst_port"):
        assert (export.loc[tcp_rows, column].astype("int64")
                == capture.loc[tcp_rows, column].astype("int64")).all(), column
    assert (export["tcp_analysis"].fillna("") == capture["tcp_analysis"].fillna("")).all()
    assert capture["src"].astype(str).str.match(r"^(198\.18\.|fe80::)").all()

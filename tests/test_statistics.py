"""Wireshark's Statistics menus as tables (tracelab.features.statistics).

Checked against tshark on the bundled browsing capture and on a synthetic capture with UDP,
ICMP, ARP and ICMPv6 (endpoints and conversations exactly; the protocol hierarchy up to the
transport layer), and against pandas on a packet table that is read in many small batches, so
that the running totals are merged many times.
"""

import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, connection_outputs

from tracelab.core.html import SCRIPT_ELEMENT
from tracelab.core.packets import PACKETS
from tracelab.features import statistics, statistics_codes, statistics_page, statistics_totals
from tracelab.features.protocol_hierarchy import layer_path
from tracelab.features.statistics import file_statistics, trace_statistics
from tracelab.ingest.normalize import normalize_trace
from tracelab.ingest.validate import validate_trace
from tracelab.security.connections import write_connections
from tracelab.synth.capture import write_capture

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark not installed (apt: tshark)")


def tshark(capture: Path, *args: str) -> str:
    return subprocess.run([TSHARK, "-r", str(capture), *args], capture_output=True, text=True,
                          check=True).stdout


def placements_of(packets: Path) -> Path:
    """The connection stage's placements of the packet table's rows without ports (beside it),
    which the statistics read."""
    folder = packets.parent / f"{packets.stem}-connections"
    folder.mkdir(exist_ok=True)
    write_connections(trace="t", packets_path=packets, settings={},
                      placements_path=folder / "placements.parquet", **connection_outputs(folder))
    return folder / "placements.parquet"


def sections(output: str) -> dict[str, list[str]]:
    """tshark -z tables by title ('IPv4 Endpoints', 'TCP Conversations', ...): their rows."""
    found, title = {}, None
    for line in output.splitlines():
        if line.startswith("="):
            title = None
        elif title is None and line.strip() and not line.startswith(("Filter", " ", "|")):
            title = line.strip()
            found[title] = []
        elif title and line.strip() and not line.startswith(("Filter", " ", "|")):
            found[title].append(line)
    return found


@pytest.fixture(scope="module", params=["web_browsing.pcapng", "synthetic.pcap"])
def capture(request, tmp_path_factory):
    """(capture file, its endpoints, conversations, protocol hierarchy as pandas): the bundled
    browsing capture, and a synthetic mix with UDP (DNS), ICMP, ARP and ICMPv6."""
    out = tmp_path_factory.mktemp("capture")
    if request.param == "synthetic.pcap":
        source, source_format = out / request.param, "pcap"
        write_capture(source, 3000, seed=5, flows_per_second=200.0)
    else:
        source, source_format = REPO / "data" / request.param, "pcapng"
    validate_trace(trace="c", source=source, source_format=source_format,
                   staged_path=out / "staged.arrow", report_path=out / "report.json",
                   invalid_path=out / "invalid.csv")
    normalize_trace(trace="c", staged_path=out / "staged.arrow", source=source,
                    source_format=source_format, packets_path=out / "packets.parquet")
    packets = out / "packets.parquet"
    tables = file_statistics(packets, "c", placements_of(packets))
    return (source, *(table.to_pandas() for table in tables))


@needs_tshark
def test_endpoints_equal_tsharks(capture):
    source, endpoints = capture[0], capture[1]
    tables = sections(tshark(source, "-q", "-z", "endpoints,ip", "-z", "endpoints,ipv6",
                             "-z", "endpoints,tcp", "-z", "endpoints,udp"))
    counted = ["packets", "bytes", "tx_packets", "tx_bytes", "rx_packets", "rx_bytes"]
    for kind in ("IPv4", "IPv6", "TCP", "UDP"):
        port = kind in ("TCP", "UDP")
        expected = {}
        for line in tables.get(f"{kind} Endpoints", []):
            fields = line.split()
            key = (fields[0], int(fields[1])) if port else fields[0]
            expected[key] = [int(v) for v in fields[2 if port else 1:]]
        ours = endpoints[endpoints["type"] == kind]
        got = {((a, int(p)) if port else a): [int(row[c]) for c in counted]
               for a, p, (_, row) in zip(ours["address"], ours["port"], ours.iterrows())}
        assert got == expected, kind
    assert len(endpoints) > 4  # something was compared


@needs_tshark
def test_conversations_equal_tsharks(capture):
    source, conversations = capture[0], capture[2]
    tables = sections(tshark(source, "-q", "-z", "conv,ip", "-z", "conv,ipv6", "-z", "conv,tcp",
                             "-z", "conv,udp"))
    # tshark prints large byte counts rounded (kB); exact bytes come from its per-frame fields.
    frames = pd.read_csv(io.StringIO(tshark(
        source, "-T", "fields", "-E", "separator=\t", "-E", "occurrence=f", "-E", "header=y",
        "-e", "frame.len", "-e", "ip.src", "-e", "ip.dst", "-e", "ipv6.src", "-e", "ipv6.dst",
        "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "udp.srcport", "-e", "udp.dstport")),
        sep="\t", dtype=str)
    frames["src"] = frames["ip.src"].fillna(frames["ipv6.src"])
    frames["dst"] = frames["ip.dst"].fillna(frames["ipv6.dst"])
    for transport in ("tcp", "udp"):
        frames[f"src_{transport}"] = frames["src"] + ":" + frames[f"{transport}.srcport"]
        frames[f"dst_{transport}"] = frames["dst"] + ":" + frames[f"{transport}.dstport"]
    frames["len"] = frames["frame.len"].astype(int)
    for kind, columns in (("IPv4", ("src", "dst")), ("IPv6", ("src", "dst")),
                          ("TCP", ("src_tcp", "dst_tcp")), ("UDP", ("src_udp", "dst_udp"))):
        directed = frames.groupby(list(columns))["len"].agg(["size", "sum"])
        ours = conversations[conversations["type"] == kind]
        port = kind in ("TCP", "UDP")
        mine = {(f"{r.address_a}:{int(r.port_a)}" if port else r.address_a,
                 f"{r.address_b}:{int(r.port_b)}" if port else r.address_b): r
                for r in ours.itertuples()}
        rows = tables.get(f"{kind} Conversations", [])
        assert len(mine) == len(rows), kind
        for line in rows:
            fields = line.split()
            a, b, rest = fields[0], fields[2], fields[3:]
            row = mine[(a, b)]  # the same A: the sender of the first frame
            assert (row.packets_b_to_a, row.packets_a_to_b, row.packets) == (
                int(rest[0]), int(rest[3]), int(rest[6]))
            assert row.rel_start_s == pytest.approx(float(rest[9]), abs=1e-6)
            assert row.duration_s == pytest.approx(float(rest[10]), abs=1e-4)
            a_to_b = directed.loc[(a, b)] if (a, b) in directed.index else (0, 0)
            b_to_a = directed.loc[(b, a)] if (b, a) in directed.index else (0, 0)
            assert (row.packets_a_to_b, row.bytes_a_to_b) == tuple(a_to_b)
            assert (row.packets_b_to_a, row.bytes_b_to_a) == tuple(b_to_a)
    assert len(conversations) > 2


@needs_tshark
def test_protocol_hierarchy_equals_tsharks_up_to_the_transport(capture):
    source, hierarchy = capture[0], capture[3].set_index("path")
    expected, stack = {}, []
    for line in tshark(source, "-q", "-z", "io,phs").splitlines():
        match = re.match(r"^( *)(\S+)\s+frames:(\d+) bytes:(\d+)$", line)
        if match:
            depth = len(match.group(1)) // 2
            stack[depth:] = [match.group(2)]
            expected[":".join(["frame", *stack[1:]])] = (int(match.group(3)),
                                                        int(match.group(4)))
    # eth (every frame here) is our root, `frame`; Wireshark's layers above the transport
    # count reassembled segments (see the module docstring), so they are not compared.
    compared = {path: counts for path, counts in expected.items()
                if path.count(":") <= 2 and not path.endswith("_ws.short")}
    ours = {path: tuple(row) for path, row in
            hierarchy.loc[hierarchy["depth"] <= 2, ["frames", "bytes"]].iterrows()}
    assert ours == compared
    assert {"frame:ip:tcp", "frame:ipv6:icmpv6"} <= ours.keys()


def test_layer_paths():
    assert layer_path("IPv4", "tcp", "HTTP") == "frame:ip:tcp:http"
    assert layer_path("IPv4", None, "HTTP") == "frame:ip:tcp:http"  # an export's HTTP row
    assert layer_path("IPv4", "tcp", "TLSv1.3") == "frame:ip:tcp:tls"
    assert layer_path("IPv4", "tcp", "TCP") == "frame:ip:tcp"
    # An export's "[TCP segment of a reassembled PDU]" row shows neither ports nor flags.
    assert layer_path("IPv4", None, "TCP") == "frame:ip:tcp"
    assert layer_path("IPv6", None, "UDP") == "frame:ipv6:udp"
    assert layer_path("IPv4", "udp", "DNS") == "frame:ip:udp:dns"
    assert layer_path("IPv4", None, "ICMP") == "frame:ip:icmp"
    assert layer_path("IPv6", None, "ICMPv6") == "frame:ipv6:icmpv6"
    assert layer_path("Ethernet", None, "ARP") == "frame:arp"
    assert layer_path("name", "tcp", "HTTP") == "frame:ip:tcp:http"


ADDRESSES = ["10.0.0.1", "10.0.0.2", "192.168.1.7", "2001:db8::1", "fe80::2",
             "aa:bb:cc:dd:ee:01", "host.example.net", "<script>alert(1)</script>"]


def packet_table(rows: int, seed: int = 3) -> pd.DataFrame:
    """Random packets of every kind the statistics tell apart: TCP (flags and ports), UDP
    (ports only), an export's HTTP row (no ports; between two hosts with no connection, so
    that none is placed in one: tests/test_statistics_exports.py places them), ICMP, ARP
    between MAC addresses, names."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(["TCP", "UDP", "HTTP", "ICMP"], rows, p=[0.55, 0.2, 0.15, 0.1])
    src = rng.choice(ADDRESSES[:5] + ADDRESSES[6:], rows)
    dst = rng.choice(ADDRESSES[:5] + ADDRESSES[6:], rows)
    web = rng.random(rows) < 0.5
    src = np.where(kind == "HTTP", np.where(web, "10.0.0.8", "10.0.0.9"), src)
    dst = np.where(kind == "HTTP", np.where(web, "10.0.0.9", "10.0.0.8"), dst)
    ported = np.isin(kind, ["TCP", "UDP"])
    frame = pd.DataFrame({
        "frame": np.arange(1, rows + 1),
        "ts": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(np.arange(rows), "ms"),
        "src": src, "dst": dst, "protocol": kind,
        "length": rng.integers(60, 1500, rows),
        "src_port": pd.array(np.where(ported, rng.choice([80, 443, 5000, 5001], rows), 0),
                             "Int32"),
        "dst_port": pd.array(np.where(ported, rng.choice([80, 443, 5000, 5001], rows), 0),
                             "Int32"),
        "tcp_flags": pd.array(np.where(kind == "TCP", 0x10, 0), "Int16"),
    })
    frame.loc[~ported, ["src_port", "dst_port"]] = pd.NA
    frame.loc[kind != "TCP", "tcp_flags"] = pd.NA
    arp = rng.random(rows) < 0.05
    frame.loc[arp, ["src", "dst", "protocol"]] = ["aa:bb:cc:dd:ee:01", "aa:bb:cc:dd:ee:02", "ARP"]
    frame.loc[arp, ["src_port", "dst_port", "tcp_flags"]] = pd.NA
    frame["t_rel_s"] = (frame["ts"] - frame["ts"].min()).dt.total_seconds()
    frame["trace"] = "t"
    return frame


def write_packets(frame: pd.DataFrame, path: Path, row_group_rows: int) -> Path:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for field in PACKETS.schema:
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(len(frame), field.type))
    pq.write_table(PACKETS.conform(table), path, row_group_size=row_group_rows)
    return path


def expected_conversations(frame: pd.DataFrame, ports: bool) -> pd.DataFrame:
    """pandas on the whole table: per unordered pair (and transport), A the first frame's
    sender."""
    if ports:
        frame = frame.dropna(subset=["src_port", "dst_port"])
        frame = frame.assign(src=frame["src"] + ":" + frame["src_port"].astype(str),
                             dst=frame["dst"] + ":" + frame["dst_port"].astype(str))
    transport = np.where(frame["tcp_flags"].notna(), "TCP", "UDP") if ports else ""
    pair = [tuple(sorted(p)) for p in zip(frame["src"], frame["dst"])]
    frame = frame.assign(pair=pair, transport=transport)
    rows = {}
    for (_, kind), part in frame.groupby(["pair", "transport"], sort=False):
        a = part["src"].iloc[0]
        b = part["dst"].iloc[0]
        forward = part["src"] == a
        rows[(kind, a, b)] = (int(forward.sum()), int(part.loc[forward, "length"].sum()),
                        int((~forward).sum()), int(part.loc[~forward, "length"].sum()),
                        part["t_rel_s"].min(), part["t_rel_s"].max() - part["t_rel_s"].min())
    return rows


def test_streamed_in_small_batches_equals_pandas_on_the_whole_table(tmp_path, monkeypatch):
    monkeypatch.setattr(statistics, "BATCH_ROWS", 37)
    monkeypatch.setattr(statistics_totals, "MERGE_ROWS", 50)
    frame = packet_table(2000)
    packets = write_packets(frame, tmp_path / "p.parquet", row_group_rows=300)
    endpoints, conversations, hierarchy = (t.to_pandas() for t in file_statistics(
        packets, "t", placements_of(packets)))

    sent = frame.groupby("src")["length"].agg(["size", "sum"])
    received = frame.groupby("dst")["length"].agg(["size", "sum"])
    addresses = endpoints[~endpoints["type"].isin(["TCP", "UDP"])].set_index("address")
    assert set(addresses.index) == set(frame["src"]) | set(frame["dst"])
    for address, row in addresses.iterrows():
        tx = sent.loc[address] if address in sent.index else (0, 0)
        rx = received.loc[address] if address in received.index else (0, 0)
        assert (row.tx_packets, row.tx_bytes, row.rx_packets, row.rx_bytes) == (*tx, *rx)
    assert addresses.loc["10.0.0.1", "type"] == "IPv4"
    assert addresses.loc["2001:db8::1", "type"] == "IPv6"
    assert addresses.loc["aa:bb:cc:dd:ee:02", "type"] == "Ethernet"
    assert addresses.loc["host.example.net", "type"] == "name"

    for ports in (False, True):
        mine = conversations[conversations["type"].isin(["TCP", "UDP"]) == ports]
        got = {}
        for r in mine.itertuples():
            a = f"{r.address_a}:{int(r.port_a)}" if ports else r.address_a
            b = f"{r.address_b}:{int(r.port_b)}" if ports else r.address_b
            got[(r.type if ports else "", a, b)] = (
                r.packets_a_to_b, r.bytes_a_to_b, r.packets_b_to_a, r.bytes_b_to_a,
                r.rel_start_s, r.duration_s)
        assert got == expected_conversations(frame, ports)

    assert hierarchy.set_index("path").loc["frame", "frames"] == len(frame)
    assert hierarchy.set_index("path").loc["frame:arp", "frames"] == (frame["protocol"] ==
                                                                      "ARP").sum()
    assert hierarchy["frames_share"].max() == 1.0


def test_statistics_page_shows_text_of_the_trace_as_text(tmp_path):
    frame = packet_table(300)
    frame.loc[0, "src"] = ADDRESSES[-1]
    packets = write_packets(frame, tmp_path / "p.parquet", row_group_rows=100)
    (tmp_path / "summary.json").write_text(json.dumps({"trace": "t", "packets": 300}))
    (tmp_path / "validation.json").write_text(json.dumps({"status": "passed", "checks": {}}))
    trace_statistics(trace="t", packets_path=packets, placements_path=placements_of(packets),
                     summary_path=tmp_path / "summary.json",
                     validation_path=tmp_path / "validation.json",
                     endpoints_path=tmp_path / "e.parquet",
                     conversations_path=tmp_path / "c.parquet",
                     hierarchy_path=tmp_path / "h.parquet", html_path=tmp_path / "s.html")
    page = (tmp_path / "s.html").read_text()
    assert "<script" not in page.replace(SCRIPT_ELEMENT, "")  # no script but the page's own
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    for path in ("e.parquet", "c.parquet", "h.parquet"):
        assert set(pq.read_table(tmp_path / path).column("trace").to_pylist()) == {"t"}


def test_ports_show_as_written_on_the_page(tmp_path):
    frame = packet_table(50)
    frame["src_port"] = frame["src_port"].where(frame["src_port"].isna(), 55514)
    packets = write_packets(frame, tmp_path / "p.parquet", row_group_rows=50)
    (tmp_path / "summary.json").write_text(json.dumps({"trace": "t", "packets": 50}))
    (tmp_path / "validation.json").write_text(json.dumps({"status": "passed", "checks": {}}))
    trace_statistics(trace="t", packets_path=packets, placements_path=placements_of(packets),
                     summary_path=tmp_path / "summary.json",
                     validation_path=tmp_path / "validation.json",
                     endpoints_path=tmp_path / "e.parquet",
                     conversations_path=tmp_path / "c.parquet",
                     hierarchy_path=tmp_path / "h.parquet", html_path=tmp_path / "s.html")
    page = (tmp_path / "s.html").read_text()
    assert '<td data-sort="55514">55514</td>' in page and "55,514" not in page


def run_stage(packets: Path, out: Path, threads: int = 1) -> dict[str, pa.Table]:
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"trace": "t", "packets": 1}))
    (out / "validation.json").write_text(json.dumps({"status": "passed", "checks": {}}))
    trace_statistics(trace="t", packets_path=packets, placements_path=placements_of(packets),
                     summary_path=out / "summary.json",
                     validation_path=out / "validation.json", endpoints_path=out / "e.parquet",
                     conversations_path=out / "c.parquet", hierarchy_path=out / "h.parquet",
                     html_path=out / "s.html", threads=threads)
    return {name: pq.read_table(out / f"{name}.parquet") for name in "ech"}


@pytest.mark.parametrize(("partition_packets", "threads"), [(40, 1), (300, 1), (40, 2), (300, 3)])
def test_partitioned_tables_and_page_equal_those_held_in_memory(partition_packets, threads,
                                                                tmp_path, monkeypatch):
    """The stage totals endpoints (by address) and conversations (by address pair) partition
    by partition (`threads` at once) and merges them in the tables' order: the same rows in the
    same order, and the same page, as the totals of the whole trace held at once."""
    frame = packet_table(2000)
    packets = write_packets(frame, tmp_path / "p.parquet", row_group_rows=300)
    whole = run_stage(packets, tmp_path / "whole")
    monkeypatch.setattr(statistics, "PARTITION_PACKETS", partition_packets)
    monkeypatch.setattr(statistics, "BATCH_ROWS", 97)
    parted = run_stage(packets, tmp_path / "parted", threads)
    assert len(list((tmp_path / "parted").glob(".statistics-*"))) == 0
    for name in "ech":
        assert parted[name].num_rows == whole[name].num_rows > 0
        assert parted[name].to_pylist() == whole[name].to_pylist(), name
    assert (tmp_path / "parted" / "s.html").read_text() == \
        (tmp_path / "whole" / "s.html").read_text()


def test_text_ranks_order_texts_as_python_sorts_them():
    texts = ["b", "B", "10.0.0.2", "10.0.0.10", "é.example", "z", "::1", "name"]
    ranks = statistics_codes.text_ranks(texts)
    assert [texts[i] for i in np.argsort(ranks)] == sorted(texts)


def test_codebook_codes_batches_sharing_a_dictionary_and_not_alike():
    book = statistics_codes.Codebook()
    shared = pa.array(["10.0.0.2", "10.0.0.1", "10.0.0.2"]).dictionary_encode()
    other = pa.array(["fe80::1", "10.0.0.1"]).dictionary_encode()
    codes = [book.encode(shared), book.encode(shared.slice(1)), book.encode(other)]
    assert [c.tolist() for c in codes] == [[0, 1, 0], [1, 0], [2, 1]]
    assert book.decode(np.array([2, 0])).to_pylist() == ["fe80::1", "10.0.0.2"]
    assert book.kinds.tolist() == [0, 0, 1]  # IPv4, IPv4, IPv6


def test_page_shows_the_rows_with_most_bytes_of_each_type_ties_in_table_order(monkeypatch):
    monkeypatch.setattr(statistics_page, "SHOWN_ROWS", 3)
    rng = np.random.default_rng(1)
    rows = pa.table({"type": pa.array(rng.choice(["IPv4", "TCP"], 40)).dictionary_encode(),
                     "row": np.arange(40), "bytes": rng.integers(0, 5, 40)})
    largest = statistics_page.Largest()
    for start in (0, 25):
        largest.add(rows.slice(start, 25))
    whole = rows.to_pandas()
    for type_, part in whole.groupby(whole["type"].astype(str)):
        assert largest.counts[type_] == len(part)
        expected = part.sort_values("bytes", ascending=False, kind="stable").head(3)
        assert largest.shown[type_]["row"].tolist() == expected["row"].tolist()

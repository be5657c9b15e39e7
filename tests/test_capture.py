"""Captures (pcap, pcapng): the vectorised reader against an independent, sequential decode
(struct for the records, dpkt for the headers, plain Python for Wireshark's TCP rules), every
link type and file variant, protocol naming, and each validation failure with its record
index and byte offset."""

from __future__ import annotations

import gzip
import socket
import struct

import dpkt
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO
from trace_files import (
    NS,
    T0,
    A,
    P,
    S,
    ether,
    invalid_rows,
    ipv4,
    stage,
    tcp,
    udp,
    wireshark_count,
)

from tracelab.core.packets import INFO_FIELDS, STAGED_BASE
from tracelab.ingest.capture import reader as capture
from tracelab.ingest.capture.columns import distinct, scatter
from tracelab.ingest.capture.pcap import PCAP_MAGIC
from tracelab.ingest.normalize import normalize_trace
from tracelab.synth.capture import Interface, write_capture

# --- An independent reference ------------------------------------------------------------------

def reference_records(path) -> list[dict]:
    """Every packet record, read one by one with struct (offsets in the uncompressed file)."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    out = []
    if raw[:4] in PCAP_MAGIC:
        order, fraction_ns, header = PCAP_MAGIC[raw[:4]]
        linktype = struct.unpack_from(order + "I", raw, 20)[0] & 0xFFFF
        pos = 24
        while pos + header <= len(raw):
            sec, frac, cap, orig = struct.unpack_from(order + "IIII", raw, pos)
            out.append({"offset": pos, "linktype": linktype, "ts_ns": sec * NS + frac * fraction_ns,
                        "data": raw[pos + header:pos + header + cap], "original": orig})
            pos += header + cap
        return out
    interfaces, pos, order = [], 0, "<"
    while pos + 12 <= len(raw):
        kind = struct.unpack_from("<I", raw, pos)[0]
        if kind == 0x0A0D0D0A:
            order = "<" if struct.unpack_from("<I", raw, pos + 8)[0] == 0x1A2B3C4D else ">"
            base = len(interfaces)
        length = struct.unpack_from(order + "I", raw, pos + 4)[0]
        if kind == 1:
            linktype, _, _snaplen = struct.unpack_from(order + "HHI", raw, pos + 8)
            resolution, offset_s, opt = 6, 0, pos + 16
            while opt < pos + length - 4:
                code, size = struct.unpack_from(order + "HH", raw, opt)
                if code == 0:
                    break
                if code == 9:
                    resolution = raw[opt + 4]
                if code == 14:
                    offset_s = struct.unpack_from(order + "q", raw, opt + 4)[0]
                opt += 4 + (size + 3) // 4 * 4
            interfaces.append((linktype, resolution, offset_s))
        elif kind == 6:
            iface, high, low, cap, orig = struct.unpack_from(order + "IIIII", raw, pos + 8)
            linktype, resolution, offset_s = interfaces[base + iface]
            units = high << 32 | low
            if resolution & 0x80:
                bits = resolution & 0x7F
                ts = (units >> bits) * NS + ((units & ((1 << bits) - 1)) * NS >> bits)
            else:
                ts = units * NS // 10**resolution
            out.append({"offset": pos, "linktype": linktype, "ts_ns": ts + offset_s * NS,
                        "data": raw[pos + 28:pos + 28 + cap], "original": orig})
        pos += length
    return out


def reference_decode(record: dict) -> dict:
    """One packet's fields, decoded with dpkt."""
    data, linktype = record["data"], record["linktype"]
    link_src = link_dst = ""     # the cooked headers carry only the sender's address
    if linktype == 1:
        frame = dpkt.ethernet.Ethernet(data)
        network, link_src, link_dst = frame.data, _mac(frame.src), _mac(frame.dst)
    elif linktype in (113, 276):
        frame = dpkt.sll.SLL(data) if linktype == 113 else dpkt.sll2.SLL2(data)
        network, link_src = frame.data, _mac(frame.hdr[:6])
    elif linktype in (0, 108):
        network = dpkt.loopback.Loopback(data).data
    else:
        network = dpkt.ip.IP(data) if data[0] >> 4 == 4 else dpkt.ip6.IP6(data)
    row = {"frame_ts": record["ts_ns"], "length": record["original"]}
    if isinstance(network, dpkt.arp.ARP):
        row.update(protocol="ARP", src=link_src, dst=link_dst)
        return row
    family = socket.AF_INET if isinstance(network, dpkt.ip.IP) else socket.AF_INET6
    row.update(src=socket.inet_ntop(family, network.src), dst=socket.inet_ntop(family, network.dst))
    transport = network.data
    proto = network.p if family == socket.AF_INET else network.nxt
    row["protocol"] = {1: "ICMP", 58: "ICMPv6", 6: "TCP", 17: "UDP"}[proto]
    if proto in (6, 17):
        row.update(src_port=transport.sport, dst_port=transport.dport)
    if proto == 17 and 53 in (transport.sport, transport.dport):
        row["protocol"] = "DNS"
        message = dpkt.dns.DNS(transport.data)
        row.update(dns_query=message.qd[0].name, dns_id=message.id, dns_qtype=message.qd[0].type)
    if proto == 6:
        header = bytes(transport)[:transport.off * 4]
        payload = transport.data
        length = (network.len - network.hl * 4 if family == socket.AF_INET else network.plen)
        row.update(seq_raw=transport.seq, ack_raw=transport.ack, window_raw=transport.win,
                   tcp_flags=struct.unpack(">H", header[12:14])[0] & 0x1FF,
                   tcp_len=length - transport.off * 4,
                   window_shift=_window_shift(header) if transport.flags & dpkt.tcp.TH_SYN
                   else None)
        if payload[:4] in (b"GET ", b"HTTP"):
            row["protocol"] = "HTTP"
        elif len(payload) >= 5 and 20 <= payload[0] <= 24 and payload[1] == 3:
            row["protocol"] = "TLS"
    return row


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _window_shift(header: bytes) -> int:
    pos = 20
    while pos < len(header):
        kind = header[pos]
        if kind == 0:
            break
        if kind == 1:
            pos += 1
            continue
        if kind == 3:
            return header[pos + 2]
        pos += header[pos + 1]
    return -1


def wireshark_tcp(rows: list[dict]) -> None:
    """Relative seq/ack, scaled windows and SYN retransmissions, packet by packet, following
    Wireshark's tcp_analyze_sequence_number() for the cases the synthetic traffic has."""
    conversations: dict = {}
    for row in rows:
        if "seq_raw" not in row:
            continue
        a, b = (row["src"], row["src_port"]), (row["dst"], row["dst_port"])
        key, side = (min(a, b), max(a, b)), 0 if a <= b else 1
        flags = row["tcp_flags"]
        syn, ack = flags & 0x02, flags & 0x10
        state = conversations.get(key)
        if state is None or (syn and not ack and state["base"][side] is not None
                             and row["seq_raw"] != state["base"][side]):
            state = conversations[key] = {"base": [None, None], "shift": [None, None],
                                          "rows": [], "syn_seqs": [set(), set()]}
        if state["base"][side] is None:
            state["base"][side] = row["seq_raw"] if syn else row["seq_raw"] - 1
        if ack and state["base"][1 - side] is None:
            state["base"][1 - side] = row["ack_raw"] - 1
        row["tcp_seq"] = (row["seq_raw"] - state["base"][side]) % 2**32
        row["tcp_ack"] = (row["ack_raw"] - state["base"][1 - side]) % 2**32 if ack else None
        row["retransmission"] = bool(syn and not ack and row["seq_raw"] in state["syn_seqs"][side])
        if syn and not ack:
            state["syn_seqs"][side].add(row["seq_raw"])
        if syn:
            state["shift"][side] = row["window_shift"]
        row["side"], row["state"] = side, state
        state["rows"].append(row)
    for row in rows:
        if "seq_raw" in row:
            shifts = row["state"]["shift"]
            own = shifts[row["side"]]
            scaled = own is not None and own >= 0 and -1 not in shifts
            row["tcp_win"] = row["window_raw"] if row["tcp_flags"] & 0x02 or not scaled \
                else row["window_raw"] << own


def reference(path) -> pd.DataFrame:
    rows = [reference_decode(record) for record in reference_records(path)]
    wireshark_tcp(rows)
    return pd.DataFrame(rows).drop(columns=["state", "side"], errors="ignore")


def assert_matches_reference(table: pd.DataFrame, path) -> None:
    expected = reference(path)
    assert len(table) == len(expected)
    assert (table["frame"].to_numpy() == np.arange(1, len(table) + 1)).all()
    ts = table["ts"].astype("int64").to_numpy()
    assert (ts == expected["frame_ts"].to_numpy()).all()
    protocol = table["protocol"].where(~table["protocol"].str.startswith("TLS"), "TLS")
    assert (protocol.to_numpy() == expected["protocol"].to_numpy()).all()
    for column in ("src", "dst", "length"):
        assert (table[column].to_numpy() == expected[column].to_numpy()).all(), column
    for column in ("src_port", "dst_port", "tcp_flags", "tcp_len", "tcp_seq", "tcp_ack",
                   "tcp_win", "dns_id", "dns_query", "dns_qtype"):
        got = table[column].astype(object).where(table[column].notna(), None)
        want = expected[column].astype(object).where(expected[column].notna(), None)
        mismatched = [i for i, (g, w) in enumerate(zip(got, want)) if g != w and not (
            g is not None and w is not None and float(g) == float(w))]
        assert not mismatched, (column, mismatched[:5], got[mismatched[:5]].tolist(),
                                want[mismatched[:5]].tolist())
    retransmission = table["tcp_analysis"].fillna("").str.contains("TCP Retransmission")
    assert (retransmission.to_numpy() == expected["retransmission"].fillna(False).to_numpy()).all()


# --- The reader against the reference ----------------------------------------------------------

def test_synthetic_pcap_matches_the_reference(tmp_path):
    path = tmp_path / "mixed.pcap"
    summary = write_capture(path, 4000, seed=11)
    table, report, error = stage(path, tmp_path)
    assert error is None and report["status"] == "passed"
    assert report["rows_read"] == report["rows_valid"] == summary["packets"] == len(table)
    assert list(table.columns) == capture.staged_schema().names
    assert list(table.columns[:len(STAGED_BASE)]) == STAGED_BASE.names
    assert set(table.columns[len(STAGED_BASE):]) <= set(INFO_FIELDS.names)
    assert (table["info"] == "").all()
    assert {"TCP", "HTTP", "TLSv1", "TLSv1.3", "DNS", "ICMP", "ARP", "ICMPv6"} <= set(
        table["protocol"])
    assert_matches_reference(table, path)


@pytest.mark.parametrize("linktype", [1, 113, 276, 101, 0, 108])
def test_every_link_type_matches_the_reference(tmp_path, linktype):
    path = tmp_path / "link.pcap"
    write_capture(path, 1500, seed=linktype, interfaces=[Interface(linktype, 9)])
    table, report, error = stage(path, tmp_path)
    assert error is None and report["rows_invalid"] == 0
    assert_matches_reference(table, path)


def test_pcapng_interfaces_with_their_own_link_types_and_clocks(tmp_path):
    # Six interfaces: ns, µs, ms, 2^-10 s and 2^-20 s clocks; dpkt's pcapng reader would use
    # the first interface's link type and resolution for all of them.
    interfaces = [Interface(1, 9), Interface(276, 6), Interface(101, 3), Interface(113, 0x8A),
                  Interface(0, 0x94), Interface(108, 9)]
    path = tmp_path / "multi.pcapng"
    write_capture(path, 3000, seed=5, fmt="pcapng", interfaces=interfaces)
    table, report, error = stage(path, tmp_path)
    assert error is None and report["rows_invalid"] == 0
    described = report["capture"]["interfaces"]
    assert [i["linktype"] for i in described] == [1, 276, 101, 113, 0, 108]
    assert [i["timestamp_resolution_ns"] for i in described] == \
        [1.0, 1000.0, 1e6, NS / 1024, NS / 2**20, 1.0]
    assert set(report["capture"]["link_types"]) == {"EN10MB", "LINUX_SLL2", "RAW",
                                                    "LINUX_SLL", "NULL", "LOOP"}
    assert_matches_reference(table, path)


def test_timestamp_resolution_and_offset_are_applied_exactly(tmp_path):
    """Hand-built pcapng: one packet per interface, units chosen so each conversion shows."""
    packet = bytes(dpkt.ip.IP(src=b"\xc6\x12\0\1", dst=b"\xc6\x12\0\2", p=1,
                              data=dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo())))
    blocks = [_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))]
    cases = [(9, 0, T0 * NS + 123_456_789, T0 * NS + 123_456_789),
             (6, 0, T0 * 10**6 + 654_321, T0 * NS + 654_321_000),
             (0x8A, 0, (T0 << 10) + 513, T0 * NS + 513 * NS // 1024),    # 2^-10 s, truncated
             # ps: 64 bits of ps reach 213 days, so a real capture needs if_tsoffset too
             (12, T0, 1000 * 10**12 + 1_234_567_891_234, (T0 + 1000) * NS + 1_234_567_891),
             (6, 3600, T0 * 10**6, (T0 + 3600) * NS)]                     # if_tsoffset
    for resolution, offset, _, _ in cases:
        options = struct.pack("<HHB3x", 9, 1, resolution)
        if offset:
            options += struct.pack("<HHq", 14, 8, offset)
        blocks.append(_block(1, struct.pack("<HHI", 101, 0, 0) + options + bytes(4)))
    for number, (_, _, units, _) in enumerate(cases):
        blocks.append(_epb(number, units, packet))
    path = tmp_path / "clocks.pcapng"
    path.write_bytes(b"".join(blocks))
    table, _report, error = stage(path, tmp_path)
    assert error is None
    assert table["ts"].astype("int64").tolist() == [expected for *_, expected in cases]


def _block(kind: int, body: bytes, order: str = "<") -> bytes:
    body += bytes(-len(body) % 4)
    length = len(body) + 12
    return struct.pack(order + "II", kind, length) + body + struct.pack(order + "I", length)


def _epb(interface: int, units: int, packet: bytes, captured: int | None = None,
         original: int | None = None, order: str = "<") -> bytes:
    captured = len(packet) if captured is None else captured
    original = len(packet) if original is None else original
    return _block(6, struct.pack(order + "IIIII", interface, units >> 32, units & 0xFFFFFFFF,
                                 captured, original) + packet, order)


def test_simple_and_obsolete_packet_blocks(tmp_path):
    """SPB (no timestamp: keeps the previous one; length from the snap length) and the
    obsolete PB (16-bit interface id) are packets too."""
    packet = bytes(dpkt.ethernet.Ethernet(src=b"\2" * 6, dst=b"\4" * 6, data=dpkt.ip.IP(
        src=b"\xc6\x12\0\1", dst=b"\xc6\x12\0\2", p=17, data=dpkt.udp.UDP(
            sport=5000, dport=6000, ulen=8 + 40, data=bytes(40)))))
    shb = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb = _block(1, struct.pack("<HHI", 1, 0, 64) + struct.pack("<HHB3x", 9, 1, 9) + bytes(4))
    spb = _block(3, struct.pack("<I", len(packet)) + packet[:64])
    pb = _block(2, struct.pack("<HHIIII", 0, 0, 0, T0 * NS & 0xFFFFFFFF, 64, len(packet))
                + packet[:64])
    pb = pb[:12] + struct.pack("<I", (T0 * NS) >> 32) + pb[16:]
    path = tmp_path / "blocks.pcapng"
    path.write_bytes(shb + idb + _epb(0, T0 * NS + 5, packet[:64], 64, len(packet)) + spb + pb)
    table, report, error = stage(path, tmp_path)
    assert error is None and report["rows_valid"] == 3
    assert table["ts"].astype("int64").tolist() == [T0 * NS + 5, T0 * NS + 5, T0 * NS]
    assert table["length"].tolist() == [len(packet)] * 3
    assert table["protocol"].tolist() == ["UDP"] * 3
    assert table["dst_port"].tolist() == [6000] * 3


def test_snap_length_cuts_are_normal_and_keep_the_header_fields(tmp_path):
    whole, cut = tmp_path / "whole.pcap", tmp_path / "cut.pcap"
    write_capture(whole, 3000, seed=3)
    write_capture(cut, 3000, seed=3, snaplen=80)
    full, _, _ = stage(whole, tmp_path, "whole")
    table, report, error = stage(cut, tmp_path, "cut")
    assert error is None and report["status"] == "passed" and report["rows_invalid"] == 0
    longer = sum(len(record["data"]) > 80 for record in reference_records(whole))
    assert report["capture"]["snap_truncated_packets"] == longer > 500
    for column in ("ts", "src", "dst", "length", "src_port", "dst_port", "tcp_flags",
                   "tcp_seq", "tcp_ack", "tcp_win", "tcp_len", "tcp_analysis"):
        pd.testing.assert_series_equal(table[column], full[column], check_names=False)
    # Request lines that fit in 80 bytes are still read; longer ones give a prefix.
    requests = full["http_method"].notna()
    assert (table.loc[requests, "http_method"] == full.loc[requests, "http_method"]).all()
    uris = table.loc[requests, "http_uri"].fillna("")
    assert all(full_uri.startswith(uri)
               for uri, full_uri in zip(uris, full.loc[requests, "http_uri"]))


def test_batches_do_not_change_the_result(tmp_path):
    """Conversations, retransmissions and TLS sessions span batch boundaries (64 KiB here)."""
    path = tmp_path / "long.pcapng"
    write_capture(path, 20000, seed=2, fmt="pcapng")
    one, report_one, _ = stage(path, tmp_path, "one")
    many, report_many, _ = stage(path, tmp_path, "many", batch_bytes=1 << 16)
    assert path.stat().st_size > 20 * (1 << 16)
    pd.testing.assert_frame_equal(one, many)
    assert report_one["capture"]["tcp_conversations"] == \
        report_many["capture"]["tcp_conversations"]


def test_a_real_capture_in_small_batches_stages_and_normalizes_the_same(tmp_path):
    """web_browsing's HTTP columns get a new dictionary in each 64 KiB batch: the staged stream
    takes them, and normalization reads them back as one table."""
    path = REPO / "data" / "web_browsing.pcapng"
    one, _, _ = stage(path, tmp_path, "one")
    many, _, _ = stage(path, tmp_path, "many", batch_bytes=1 << 16)
    assert path.stat().st_size > 4 * (1 << 16)
    pd.testing.assert_frame_equal(one, many)
    packets = {}
    for name in ("one", "many"):
        out = tmp_path / f"out_{name}"
        normalize_trace(trace=name, staged_path=out / "staged.arrow", source=path,
                        source_format="pcapng", packets_path=out / "packets.parquet",
                        row_group_rows=4096, threads=2)
        # Each table names its own trace; every other column must match.
        packets[name] = pq.read_table(out / "packets.parquet").to_pandas().drop(columns="trace")
    assert len(packets["one"]) == len(one)
    pd.testing.assert_frame_equal(packets["one"].astype(str), packets["many"].astype(str))


def test_gzip_big_endian_and_microsecond_files_read_the_same(tmp_path):
    path = tmp_path / "base.pcap"
    write_capture(path, 2000, seed=4, interfaces=[Interface(1, 6)])
    base, _, _ = stage(path, tmp_path, "base")
    raw = path.read_bytes()
    variants = {
        "gz.pcap.gz": gzip.compress(raw),
        "big.pcap": _pcap_big_endian(raw),
        "modified.pcap": _pcap_modified(raw),
        "big.pcapng": _pcapng_from_pcap(raw, ">"),
        "two_sections.pcapng": _pcapng_from_pcap(raw, "<", split=True),
    }
    for name, content in variants.items():
        variant = tmp_path / name
        variant.write_bytes(content)
        table, report, error = stage(variant, tmp_path, name)
        assert error is None and report["rows_invalid"] == 0, name
        pd.testing.assert_frame_equal(table, base, obj=name)
    assert report["capture"]["sections"] == 2


def _pcap_records(raw: bytes):
    pos = 24
    while pos < len(raw):
        header = struct.unpack_from("<IIII", raw, pos)
        yield header, raw[pos + 16:pos + 16 + header[2]]
        pos += 16 + header[2]


def _pcap_big_endian(raw: bytes) -> bytes:
    magic, major, minor, zone, figs, snap, link = struct.unpack_from("<IHHiIII", raw)
    out = [struct.pack(">IHHiIII", magic, major, minor, zone, figs, snap, link)]
    out += [struct.pack(">IIII", *header) + data for header, data in _pcap_records(raw)]
    return b"".join(out)


def _pcap_modified(raw: bytes) -> bytes:
    """Kuznetzov's pcap: 8 more bytes (ifindex, protocol, type) in each record header."""
    out = [struct.pack("<I", 0xA1B2CD34) + raw[4:24]]
    out += [struct.pack("<IIIIIHBx", *header, 2, 0x0800, 0) + data
            for header, data in _pcap_records(raw)]
    return b"".join(out)


def _pcapng_from_pcap(raw: bytes, order: str, split: bool = False) -> bytes:
    """The same packets as pcapng (µs clock); `split` starts a second section halfway."""
    link = struct.unpack_from("<I", raw, 20)[0]
    records = list(_pcap_records(raw))

    def section():
        return (_block(0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1), order)
                + _block(1, struct.pack(order + "HHI", link, 0, 0), order))

    out = [section()]
    for number, ((sec, usec, cap, orig), data) in enumerate(records):
        if split and number == len(records) // 2:
            out.append(section())
        out.append(_epb(0, sec * 10**6 + usec, data, cap, orig, order))
    return b"".join(out)


# --- Wireshark's names, fields and TCP rules ---------------------------------------------------

def write_frames(path, frames, linktype=1):
    """Ethernet (or other) frames as a ns pcap, one ms apart."""
    with open(path, "wb") as handle:
        handle.write(bytes(dpkt.pcap.LEFileHdr(magic=dpkt.pcap.TCPDUMP_MAGIC_NANO,
                                                snaplen=262144, linktype=linktype)))
        for number, frame in enumerate(frames):
            frame = bytes(frame)
            handle.write(struct.pack("<IIII", T0, number * 1_000_000, len(frame), len(frame)))
            handle.write(frame)
    return path


def test_relative_numbers_port_reuse_and_mid_stream_start(tmp_path):
    client, server = ("198.18.0.1", "198.18.0.2"), ("198.18.0.2", "198.18.0.1")
    frames = [
        # A conversation seen from its middle: first seq shows as 1, first ack as 1.
        ipv4(tcp(5555, 80, A | P, seq=50_000, ack=90_000, data=b"x" * 10), 6, *client),
        ipv4(tcp(80, 5555, A, seq=90_000, ack=50_010), 6, *server),
        # A handshake, then the same ports again with a new ISN.
        ipv4(tcp(40000, 80, S, seq=4_294_967_000), 6, *client),
        ipv4(tcp(80, 40000, S | A, seq=7, ack=4_294_967_001), 6, *server),
        ipv4(tcp(40000, 80, A, seq=4_294_967_001, ack=8, data=b"y" * 400), 6, *client),
        ipv4(tcp(40000, 80, S, seq=123), 6, *client),
        ipv4(tcp(80, 40000, S | A, seq=999, ack=124), 6, *server),
    ]
    table, _, _ = stage(write_frames(tmp_path / "seq.pcap", map(ether, frames)), tmp_path)
    assert table["tcp_seq"].tolist() == [1, 1, 0, 0, 1, 0, 0]
    assert table["tcp_ack"].astype(object).where(table["tcp_ack"].notna(), None).tolist() == \
        [1, 11, None, 1, 1, None, 1]
    assert table["tcp_analysis"].iloc[5] == "TCP Port numbers reused"
    assert table["tcp_len"].tolist() == [10, 0, 0, 0, 400, 0, 0]


def test_window_scaling_needs_both_sides(tmp_path):
    def scale(shift):
        return b"\x01\x03\x03" + bytes([shift])   # NOP, window scale

    frames = [
        ipv4(tcp(40000, 80, S, seq=1, opts=scale(7)), 6),
        ipv4(tcp(80, 40000, S | A, seq=1, ack=2, opts=scale(2)), 6, "198.18.0.2", "198.18.0.1"),
        ipv4(tcp(40000, 80, A, seq=2, ack=2, win=100), 6),
        ipv4(tcp(80, 40000, A, seq=2, ack=2, win=100), 6, "198.18.0.2", "198.18.0.1"),
        # The server does not scale: neither side does.
        ipv4(tcp(40001, 80, S, seq=1, opts=scale(7)), 6),
        ipv4(tcp(80, 40001, S | A, seq=1, ack=2), 6, "198.18.0.2", "198.18.0.1"),
        ipv4(tcp(40001, 80, A, seq=2, ack=2, win=100), 6),
    ]
    table, _, _ = stage(write_frames(tmp_path / "ws.pcap", map(ether, frames)), tmp_path)
    assert table["tcp_win"].tolist() == [1000, 1000, 100 << 7, 100 << 2, 1000, 1000, 100]


def test_protocol_names_and_fields(tmp_path):
    hop_by_hop = b"\x2c\x00" + bytes(6)                      # next: fragment header
    first_fragment = b"\x11\x00\x00\x01" + bytes(4)         # next: UDP, offset 0, more
    dns_query = bytes(dpkt.dns.DNS(id=7, qd=[dpkt.dns.DNS.Q(name="a.example.test")]))
    server_hello = (b"\x16\x03\x03\x00\x3a\x02\x00\x00\x36\x03\x03" + bytes(32) + b"\x00"
                    + b"\x13\x01\x00\x00\x0e" + b"\x00\x2b\x00\x02\x03\x04"
                    + b"\x00\x33\x00\x04\x00\x1d\x00\x00")
    alert = b"\x15\x03\x03\x00\x02\x02\x28"
    frames = [
        ether(ipv4(udp(5353, 5353, dns_query), 17)),
        ether(ipv4(udp(40000, 53, dns_query), 17)),
        ether(ipv4(tcp(40000, 53, A | P, data=struct.pack(">H", len(dns_query)) + dns_query), 6)),
        ether(ipv4(tcp(40000, 80, A | P, data=b"POST /login HTTP/1.0\r\n\r\n"), 6)),
        ether(ipv4(tcp(80, 40000, A | P, data=b"HTTP/1.1 404 Not Found\r\n\r\n"), 6,
                   "198.18.0.2", "198.18.0.1")),
        ether(ipv4(tcp(40002, 443, A | P, data=b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x03"), 6)),
        ether(ipv4(tcp(443, 40002, A | P, data=server_hello), 6, "198.18.0.2", "198.18.0.1")),
        ether(ipv4(tcp(443, 40002, A | P, data=b"\x17\x03\x03\x00\x02hi"), 6,
                   "198.18.0.2", "198.18.0.1")),
        ether(ipv4(tcp(40003, 443, A | P, data=alert), 6)),
        ether(ipv4(b"\x00" * 24, 17, id=9, mf=1)),                    # first of two fragments
        ether(ipv4(b"\x00" * 8, 17, id=9, offset=3)),                 # the last one
        ether(dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, "fe80::1"),
                           dst=socket.inet_pton(socket.AF_INET6, "ff02::1:3"), nxt=0, hlim=1,
                           plen=8 + 8 + 8 + 5, data=hop_by_hop + first_fragment
                           + bytes(udp(5355, 5355, b"hello"))), 0x86DD),
        ether(dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, "fe80::1"),
                           dst=socket.inet_pton(socket.AF_INET6, "::ffff:198.18.0.9"), nxt=0,
                           hlim=1, plen=8 + 8 + 12, data=b"\x11\x00" + bytes(6)
                           + bytes(udp(5355, 5355, b"\x00\x01" + bytes(10)))), 0x86DD),
        ether(b"\x00\x07\x08\x06" + bytes(dpkt.arp.ARP(sha=b"\2" * 6)), 0x8100,  # VLAN 7
              dst=b"\xff" * 6),
        ether(b"\x02\x07\x04\x00" + bytes(40), 0x88CC),
        ether(bytes(40), 0x88B5),
        ether(b"\x42\x42\x03" + bytes(35), 38),                       # 802.3 length, STP
        ether(ipv4(b"\x22\x00" + bytes(14), 2)),                       # IGMPv3 report
    ]
    path = write_frames(tmp_path / "names.pcap", frames)
    table, report, error = stage(path, tmp_path)
    assert error is None
    assert table["protocol"].tolist() == [
        "MDNS", "DNS", "DNS", "HTTP", "HTTP", "TLSv1", "TLSv1.3", "TLSv1.3", "TLSv1.2", "IPv4",
        "UDP", "IPv6", "LLMNR", "ARP", "LLDP", "0x88b5", "STP", "IGMPv3"]
    assert table["dns_query"].tolist()[:3] == ["a.example.test"] * 3
    # id 7 and type A (1) over mDNS, UDP and TCP (after its 2-byte length); tshark: dns.id,
    # dns.qry.type
    assert table["dns_id"].tolist()[:3] == [7] * 3 and table["dns_qtype"].tolist()[:3] == [1] * 3
    assert table["http_method"].tolist()[3] == "POST"
    assert table["http_uri"].tolist()[3] == "/login"
    assert table["http_version"].tolist()[3:5] == ["HTTP/1.0", "HTTP/1.1"]
    assert table["http_status"].tolist()[4] == 404
    assert table["tls_message"].tolist()[5:9] == [
        "Client Hello", "Server Hello", "Application Data",
        "Alert (Level: Fatal, Description: Handshake Failure)"]
    assert table["src"].tolist()[11:14] == ["fe80::1", "fe80::1", "02:02:02:02:02:02"]
    assert table["dst"].tolist()[12:14] == ["::ffff:198.18.0.9", "ff:ff:ff:ff:ff:ff"]
    assert table["src_port"].isna().tolist()[9:12] == [True, True, True]
    assert report["capture"]["ip_fragments"] == 3
    assert report["capture"]["non_ip_frames"] == 4


# --- Validation ---------------------------------------------------------------------------------

def test_bad_magic_empty_file_and_cut_headers_are_structural(tmp_path):
    cases = {"text.pcap": (b"No.,Time,Source\n1,2,3\n", "magic"),
             "empty.pcap": (b"", "magic"),
             "short.pcap": (struct.pack("<IHH", 0xA1B2C3D4, 2, 4), "file header"),
             "short.pcapng": (struct.pack("<II", 0x0A0D0D0A, 28), "file header"),
             "bad_gzip.pcap.gz": (b"\x1f\x8b\x08\x00" + bytes(6) + b"\xff" * 40, "readable")}
    for name, (content, check) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        table, report, error = stage(path, tmp_path, name)
        assert error is not None and error.check == check, name
        assert table is None and report["status"] == "failed"
        assert report["structural_errors"][0]["check"] == check
        assert report["structural_errors"][0]["offset"] == 0
        assert str(path) in str(error) and "\n" not in str(error)


def test_truncated_last_record_is_reported_with_its_index_and_offset(tmp_path):
    """As capinfos: the whole records are read, the cut one is not a record (nor an invalid
    row); it is reported, with its offset, in structural_notes."""
    for name in ("cut.pcap", "cut.pcapng", "cut.pcap.gz"):
        path = tmp_path / name
        write_capture(path, 500, seed=8, fmt="pcapng" if "pcapng" in name else "pcap")
        raw = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
        last = reference_records(path)[-1]
        cut = raw[:-7]
        path.write_bytes(gzip.compress(cut) if name.endswith(".gz") else cut)
        table, report, error = stage(path, tmp_path, name)
        assert error is None and report["status"] == "passed"
        assert (report["rows_read"], report["rows_valid"], report["rows_invalid"]) == (499, 499, 0)
        (note,) = report["structural_notes"]
        assert (note["check"], note["record"], note["offset"]) == \
            ("record complete", 500, last["offset"])
        assert f"record 500 at byte offset {last['offset']}" in note["detail"]
        assert len(table) == 499 and table["frame"].iloc[-1] == 499
        assert invalid_rows(tmp_path, name).empty


def test_impossible_lengths_are_rejected_per_record(tmp_path):
    """Captured above original, original out of range: rejected. Captured above the header's
    snap length: kept and noted, as Wireshark shows such packets (tshark, when installed,
    reads every one)."""
    path = tmp_path / "lengths.pcap"
    write_capture(path, 1000, seed=9)
    raw = bytearray(path.read_bytes())
    records = reference_records(path)
    struct.pack_into("<I", raw, 16, 500)                         # the file's snap length
    big = {i for i, r in enumerate(records) if len(r["data"]) > 500}
    small = [i for i, r in enumerate(records) if i not in big]
    bigger = records[small[100]]                                  # captured > original
    struct.pack_into("<I", raw, bigger["offset"] + 12, len(bigger["data"]) - 1)
    huge = records[small[200]]                                    # original length absurd
    struct.pack_into("<I", raw, huge["offset"] + 12, 10**7)
    path.write_bytes(raw)
    table, report, error = stage(path, tmp_path, max_invalid_fraction=0.5)
    checks = report["checks"]
    first, second = small[100] + 1, small[200] + 1                # record numbers
    assert big and error is None
    assert checks["captured <= original"]["failures"] == 1
    assert checks["captured <= original"]["examples"][0]["record"] == first
    assert checks["captured <= original"]["examples"][0]["offset"] == bigger["offset"]
    assert checks["length in range"]["examples"][0] == {
        "record": second, "offset": huge["offset"], "captured_len": len(huge["data"]),
        "orig_len": 10**7, "snaplen": 500, "interface": 0, "linktype": 1}
    above = report["capture"]["above_snap_length"]
    assert above["count"] == len(big) and "captured <= snap length" not in checks
    assert above["examples"][0]["record"] == min(big) + 1
    assert {min(big) + 1, max(big) + 1} <= set(table["frame"])
    assert report["rows_invalid"] == 2
    assert wireshark_count(path) in (None, 1000)
    assert first not in table["frame"].tolist() and second not in table["frame"].tolist()
    assert len(table) == 1000 - report["rows_invalid"]
    locations = set(invalid_rows(tmp_path)["location"])
    assert f"record {first} at byte offset {bigger['offset']}" in locations


def test_absurd_captured_length_keeps_the_records_before_it(tmp_path):
    """As tshark: the records before it are read, none after it can be found."""
    path = tmp_path / "absurd.pcap"
    write_capture(path, 300, seed=10)
    raw = bytearray(path.read_bytes())
    record = reference_records(path)[150]
    struct.pack_into("<I", raw, record["offset"] + 8, 0x7FFFFFF0)
    path.write_bytes(raw)
    table, report, error = stage(path, tmp_path)
    assert error is None and report["structural_errors"] == []
    problem = report["structural_notes"][0]
    assert problem["check"] == "record header"
    assert (problem["record"], problem["offset"]) == (151, record["offset"])
    assert f"record 151 at byte offset {record['offset']}" in problem["detail"]
    assert table["frame"].tolist() == list(range(1, 151))
    assert wireshark_count(path) in (None, 150)

    head = tmp_path / "absurd_first.pcap"      # nothing before the damage: the trace stops
    first = reference_records(path)[0]
    head.write_bytes(raw[:first["offset"] + 8] + struct.pack("<I", 0x7FFFFFF0)
                     + raw[first["offset"] + 12:])
    table, report, error = stage(head, tmp_path, "first")
    assert error is not None and error.check == "record header" and table is None


def test_pcapng_block_damage_interfaces_and_block_room(tmp_path):
    path = tmp_path / "blocks.pcapng"
    write_capture(path, 400, seed=12, fmt="pcapng")
    records = reference_records(path)
    raw = bytearray(path.read_bytes())
    unknown, overrun = records[10], records[20]
    struct.pack_into("<I", raw, unknown["offset"] + 8, 5)               # interface 5
    struct.pack_into("<I", raw, overrun["offset"] + 20, len(overrun["data"]) + 64)
    struct.pack_into("<I", raw, overrun["offset"] + 24, len(overrun["data"]) + 64)
    path.write_bytes(raw)
    _table, report, error = stage(path, tmp_path)
    assert report["checks"]["known interface"]["examples"][0]["record"] == 11
    assert report["checks"]["packet within block"]["examples"][0]["offset"] == overrun["offset"]
    assert report["rows_invalid"] == 2 and error is None

    damaged = tmp_path / "damaged.pcapng"
    raw = bytearray(path.read_bytes())
    block = records[300]
    length = struct.unpack_from("<I", raw, block["offset"] + 4)[0]
    struct.pack_into("<I", raw, block["offset"] + length - 4, length + 4)   # trailer differs
    damaged.write_bytes(raw)
    table, report, error = stage(damaged, tmp_path, "damaged")
    assert error is None and report["rows_read"] == 300 and len(table) == 298
    note = report["structural_notes"][0]
    assert (note["check"], note["offset"], note["record"]) == \
        ("block structure", block["offset"], 301)


def test_timestamps_going_backwards_are_reported_not_sorted(tmp_path):
    path = tmp_path / "clock.pcap"
    write_capture(path, 200, seed=13)
    raw = bytearray(path.read_bytes())
    records = reference_records(path)
    early = records[49]
    struct.pack_into("<I", raw, early["offset"], T0 - 60)                # a minute early
    path.write_bytes(raw)
    table, report, error = stage(path, tmp_path)
    assert error is None and report["rows_invalid"] == 0
    backwards = report["time_backwards"]
    assert backwards["count"] == 1
    assert backwards["examples"][0]["record"] == 50
    assert backwards["examples"][0]["offset"] == early["offset"]
    assert backwards["examples"][0]["by_s"] > 59
    assert table["frame"].tolist() == list(range(1, 201))


def test_too_many_rejected_records_fail_the_trace(tmp_path):
    path = tmp_path / "many.pcap"
    write_capture(path, 300, seed=14)
    raw = bytearray(path.read_bytes())
    for record in reference_records(path)[::10]:                        # 30 of 300
        struct.pack_into("<I", raw, record["offset"] + 12, 10**7)
    path.write_bytes(raw)
    _table, report, error = stage(path, tmp_path)
    assert error is not None and error.check == "max_invalid_fraction"
    assert report["checks"]["length in range"]["failures"] == report["rows_invalid"] == 30


# --- Vectorised helpers -------------------------------------------------------------------------

def test_scatter_and_distinct_agree_with_arrow_take_and_np_unique():
    """The buffer-level string scatter and the counting unique are shortcuts: same results."""
    values = pa.array(["a", None, "", "dd", "eee"]).slice(1)    # an offset, a null, an empty
    rows = np.array([0, 3, 4, 8])
    index = np.full(10, -1)
    index[rows] = np.arange(len(rows))
    expected = values.take(pa.array(index, mask=index < 0))
    assert scatter(10, rows, values, pa.string()).equals(expected)
    for ints in (np.array([5, -1, 5, 65535, -3]), np.array([7]), np.zeros(0, dtype=np.int64),
                 np.array([0, 1 << 40, 0])):
        got, want = distinct(ints), np.unique(ints, return_counts=True)
        assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(got, want))


def test_packets_of_a_link_type_not_decoded_are_rejected_and_named(tmp_path):
    """An 802.11 (105) or USER0 (147) interface: its packets would have no addresses."""
    frame = bytes(ether(ipv4(udp(5000, 6000, bytes(20)), 17)))
    wifi = write_frames(tmp_path / "wifi.pcap", [frame] * 4, linktype=105)
    table, report, error = stage(wifi, tmp_path, "wifi")
    assert error is not None and error.check == "zero valid rows"
    assert "supported link type=4" in str(error)
    assert report["checks"]["supported link type"]["examples"][0]["linktype"] == 105
    assert report["unsupported_link_types"] == {"105": 4}

    shb = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    idbs = [_block(1, struct.pack("<HHI", linktype, 0, 0)) for linktype in (1, 147)]
    packets = [_epb(k % 2, T0 * 10**6 + k, frame) for k in range(10)]  # µs: no if_tsresol
    mixed = tmp_path / "mixed.pcapng"
    mixed.write_bytes(shb + b"".join(idbs) + b"".join(packets))
    table, report, error = stage(mixed, tmp_path, "mixed", max_invalid_fraction=0.5)
    assert error is None and report["status"] == "passed_with_invalid_rows"
    assert table["frame"].tolist() == [1, 3, 5, 7, 9]
    assert table["src"].tolist() == ["198.18.0.1"] * 5
    assert report["checks"]["supported link type"]["failures"] == 5
    assert report["unsupported_link_types"] == {"147": 5}
    rejected = invalid_rows(tmp_path, "mixed")
    assert rejected["reason"].unique().tolist() == ["supported link type"]
    assert rejected["linktype"].unique().tolist() == ["147"]


def test_clocks_at_the_epoch_are_noted_and_jumps_counted(tmp_path):
    """Clocks that start at 1970-01-01 (relative-time captures, ns-3) are kept and noted
    (`clock_at_epoch`), as Wireshark reads them; a jump from the epoch to real time, or a year
    on (2100), is counted as a forward jump, never by the day the test runs."""
    frame = bytes(dpkt.ethernet.Ethernet(
        src=b"\x02" * 6, dst=b"\x04" * 6, type=dpkt.ethernet.ETH_TYPE_ARP, data=b"\x00" * 28))
    for name, seconds, epoch_rows, jumps_at in (
            ("relative", [30 * i for i in range(20)], 20, []),
            ("mixed", [0, 1, 2] + [1_600_000_000 + i for i in range(20)] + [4_102_444_800],
             3, [4, 24])):
        records = [struct.pack("<IIII", s, 0, len(frame), len(frame)) + frame for s in seconds]
        path = tmp_path / f"{name}.pcap"
        path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
                         + b"".join(records))
        table, report, error = stage(path, tmp_path, name)
        assert error is None and report["status"] == "passed", name
        assert len(table) == len(seconds) == (wireshark_count(path) or len(seconds)), name
        assert report["clock_at_epoch"]["rows"] == epoch_rows, name
        assert report["clock_at_epoch"]["first"]["record"] == 1, name
        assert sorted(j["record"] for j in report["time_jumps"]["examples"]) == jumps_at, name


def test_times_int64_ns_cannot_hold_are_rejected(tmp_path):
    """pcapng timestamps before the epoch (a negative if_tsoffset) or beyond 2262 (µs units
    past 2**63 ns) are rejected under `time in range`; the others are kept."""
    frame = bytes(ether(ipv4(udp(5000, 6000, bytes(20)), 17)))
    shb = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    behind = struct.pack("<HH", 14, 8) + struct.pack("<q", -100) + bytes(4)   # if_tsoffset
    idbs = _block(1, struct.pack("<HHI", 1, 0, 0)) + _block(1, struct.pack("<HHI", 1, 0, 0)
                                                            + behind)
    units = [T0 * 10**6, (1 << 64) - 1, T0 * 10**6 + 1]
    packets = [_epb(0, u, frame) for u in units] + [_epb(1, 50 * 10**6, frame),
                                                    _epb(1, 200 * 10**6, frame)]
    path = tmp_path / "times.pcapng"
    path.write_bytes(shb + idbs + b"".join(packets))
    table, report, error = stage(path, tmp_path, max_invalid_fraction=0.5)
    assert error is None
    assert report["checks"]["time in range"]["failures"] == 2
    assert set(invalid_rows(tmp_path)["record"]) == {"2", "4"}
    assert table["frame"].tolist() == [1, 3, 5]

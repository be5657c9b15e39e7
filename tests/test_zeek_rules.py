"""conn.log rules as Zeek applies them, on captures crafted with scapy and read as the pipeline
reads them (validate, normalize, connections). Each test names the Zeek source it follows:
src/packet_analysis/protocol/tcp/TCPSessionAdapter.cc, src/session/Session.cc and the
defaults of scripts/base/init-bare.zeek (tcp_attempt_delay, tcp_close_delay, tcp_reset_delay
5 s; tcp_inactivity_timeout 5 min; udp_inactivity_timeout 1 min)."""

from __future__ import annotations

import pandas as pd
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, CookedLinux, Dot1Q, Ether, Loopback
from scapy.packet import Padding, Raw
from scapy.utils import wrpcap
from trace_files import T0, stage

from tracelab.ingest.normalize import normalize_trace
from tracelab.security.connections import assemble_connections, flow_settings, load_packets

C, S = "198.18.0.1", "198.18.0.2"


def ether() -> Ether:
    """An Ethernet header with both addresses set: scapy otherwise looks the destination up
    when the packet is built (for IPv6, neighbour solicitations waited out for ~16 s)."""
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def seg(t, client: bool, flags, seq=0, ack=0, data=0, ports=(40000, 80)):
    """A TCP segment at `t` seconds, from the client (C, ports[0]) or the server."""
    src, dst, sport, dport = (C, S, *ports) if client else (S, C, ports[1], ports[0])
    packet = ether() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags,
                                                  seq=seq, ack=ack)
    if data:
        packet = packet / Raw(b"x" * data)
    packet.time = T0 + t
    return packet


def dgram(t, client: bool, ports=(40000, 53), data=20):
    src, dst, sport, dport = (C, S, *ports) if client else (S, C, ports[1], ports[0])
    packet = ether() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(b"q" * data)
    packet.time = T0 + t
    return packet


def connections(tmp_path, packets, **settings) -> pd.DataFrame:
    """The capture's connections, in the order of their first packet."""
    path = tmp_path / "crafted.pcap"
    wrpcap(str(path), packets)
    stage(path, tmp_path)
    out = tmp_path / "out_trace"
    normalize_trace(trace="trace", staged_path=out / "staged.arrow", source=path,
                    source_format="pcap", packets_path=out / "packets.parquet")
    return assemble_connections(load_packets(out / "packets.parquet"), flow_settings(settings),
                                "t").flows


def handshake(t=0.0):
    return [seg(t, True, "S", seq=100), seg(t + 0.01, False, "SA", seq=500, ack=101),
            seg(t + 0.02, True, "A", seq=101, ack=501)]


def test_an_unanswered_attempt_ends_after_tcp_attempt_delay(tmp_path):
    """AttemptTimer (scheduled in UpdateInactiveState at SYN time + tcp_attempt_delay = 5 s)
    removes a connection whose responder is still silent; the SYN retried at 3 s belongs to
    the attempt, the one at 9 s starts a new connection, as in Zeek's conn.log."""
    flows = connections(tmp_path, [seg(0, True, "S", seq=100), seg(3, True, "S", seq=100),
                                   seg(9, True, "S", seq=100)])
    assert flows["orig_pkts"].tolist() == [2, 1]
    assert flows["conn_state"].tolist() == ["S0", "S0"]
    assert flows["history"].tolist() == ["S", "S"]


def test_an_attempt_answered_in_time_stays_one_connection(tmp_path):
    flows = connections(tmp_path, [seg(0, True, "S", seq=100), seg(3, True, "S", seq=100),
                                   seg(4.9, False, "SA", seq=500, ack=101),
                                   seg(9, True, "A", seq=101, ack=501)])
    assert len(flows) == 1 and flows["history"].iloc[0] == "ShA"


def test_packets_5_s_after_a_reset_start_a_new_connection(tmp_path):
    """A RST from an established side resets and closes it (UpdateEstablishedState, then
    ConnectionClosed schedules ConnDeleteTimer at tcp_close_delay = 5 s; tcp_reset_delay's
    ResetTimer needs a connection_reset handler, which the base scripts lack): the server's
    packet at 3 s still belongs to the reset connection, the one at 7 s is a new (mid-stream,
    role-flipped) connection."""
    flows = connections(tmp_path, [*handshake(), seg(1, True, "R", seq=101),
                                   seg(3, False, "A", seq=501, ack=101),
                                   seg(7, False, "A", seq=501, ack=101)])
    assert flows["orig_pkts"].tolist() == [3, 0]
    assert flows["resp_pkts"].tolist() == [2, 1]
    assert flows["conn_state"].iloc[0] == "RSTO"
    assert flows["history"].tolist() == ["ShARa", "^a"]


def test_duration_ends_when_both_sides_have_closed(tmp_path):
    """TCPSessionAdapter::Process calls SetLastTime only while one side has not did_close: the
    final ACK (0.5 s) and a stray ACK at 3 s are packets of the connection but do not lengthen
    it; a packet 5 s (tcp_close_delay) after the second FIN starts a new connection."""
    flows = connections(tmp_path, [
        *handshake(), seg(0.1, True, "PA", seq=101, ack=501, data=100),
        seg(0.2, False, "PA", seq=501, ack=201, data=200),
        seg(0.3, True, "FA", seq=201, ack=701), seg(0.4, False, "FA", seq=701, ack=202),
        seg(0.5, True, "A", seq=202, ack=702), seg(3, True, "A", seq=202, ack=702),
        seg(5.5, True, "A", seq=202, ack=702)])
    first = flows.iloc[0]
    assert (first["orig_pkts"], first["resp_pkts"]) == (6, 3)
    assert first["duration_s"] == pytest.approx(0.4)
    assert (first["conn_state"], first["history"]) == ("SF", "ShADdFf")
    assert flows["orig_pkts"].tolist() == [6, 1]


@pytest.mark.parametrize(("gap", "count"), [(299, 1), (301, 2)])
def test_tcp_inactivity_timeout_is_five_minutes(tmp_path, gap, count):
    """Session::InactivityTimer with tcp_inactivity_timeout = 5 min (nfstream's 120 s would
    split both)."""
    flows = connections(tmp_path, [*handshake(), seg(gap, True, "PA", seq=101, ack=501,
                                                     data=10)])
    assert len(flows) == count


@pytest.mark.parametrize(("gap", "count"), [(59, 1), (61, 2)])
def test_udp_inactivity_timeout_is_one_minute(tmp_path, gap, count):
    flows = connections(tmp_path, [dgram(0, True), dgram(0.1, False), dgram(gap, True)])
    assert len(flows) == count


def test_the_nfstream_idle_timeout_is_a_setting(tmp_path):
    flows = connections(tmp_path, [*handshake(), seg(200, True, "PA", seq=101, ack=501,
                                                     data=10)], tcp_idle_timeout_s=120)
    assert len(flows) == 2


def test_missed_bytes_leave_out_a_gap_a_retransmission_filled(tmp_path):
    """Zeek's missed_bytes are the bytes its reassembler skipped: 100 bytes (seq 201-300) first
    missing, then retransmitted, are not missed; the 100 at 401-500, never seen, are."""
    flows = connections(tmp_path, [
        *handshake(), seg(0.1, True, "PA", seq=101, ack=501, data=100),
        seg(0.2, True, "PA", seq=301, ack=501, data=100),
        seg(0.4, True, "PA", seq=201, ack=501, data=100),
        seg(0.5, True, "PA", seq=501, ack=501, data=100),
        seg(0.6, False, "A", seq=501, ack=601)])
    assert (flows["orig_bytes"].iloc[0], flows["missed_bytes"].iloc[0]) == (500, 100)


def test_a_dhcp_reply_seen_first_is_flipped_to_the_client(tmp_path):
    """UDPAnalyzer::WantConnection flips when the source port is in likely_server_ports and
    the destination port is not: dhcp/main.zeek registers 67/udp as a server port and 68/udp
    as a client port, so a reply 67 -> 68 makes the client the originator (history ^d)."""
    flows = connections(tmp_path, [dgram(0, False, ports=(68, 67))])
    flow = flows.iloc[0]
    assert (flow["orig"], flow["orig_port"], flow["resp_port"]) == (C, 68, 67)
    assert (flow["history"], flow["conn_state"]) == ("^d", "SHR")


def test_a_port_no_zeek_analyzer_registers_does_not_flip(tmp_path):
    """TCPAnalyzer::WantConnection: a mid-stream packet from 8443 (not among the base scripts'
    server ports, unlike 443) keeps its sender as the originator."""
    flows = connections(tmp_path, [
        seg(0, False, "PA", seq=501, ack=101, data=10, ports=(40000, 8443)),
        seg(1, False, "PA", seq=501, ack=101, data=10, ports=(40001, 443))])
    assert flows["orig_port"].tolist() == [8443, 40001]
    assert flows["history"].tolist() == ["D", "^d"]


def test_services_carry_zeek_analyzer_names(tmp_path):
    """conn.log's service is the lowercased analyzer name (base/protocols/conn/main.zeek):
    ssl for TLS, dns for DNS and mDNS; a UDP protocol with no Zeek analyzer (SSDP) none."""
    hello = bytes.fromhex("16030100050100000100")  # a TLS handshake record (ClientHello)
    flows = connections(tmp_path, [
        *handshake(), seg(0.1, True, "PA", seq=101, ack=501, data=0) / Raw(hello),
        dgram(1, True, ports=(40001, 53)), dgram(2, True, ports=(5353, 5353)),
        dgram(3, True, ports=(40002, 1900))])
    assert flows["service"].iloc[:3].tolist() == ["ssl", "dns", "dns"]
    assert pd.isna(flows["service"].iloc[3])


def test_a_reset_after_a_fin_lingers_until_the_expire_timer(tmp_path):
    """The client's FIN (1 s) and then RST (1.1 s) leave the server open: no close completes
    (UpdateClosedState only marks the client RESET), so the connection lives on until
    ExpireTimer (first at tcp_SYN_timeout = 5 s, then every tcp_session_timer = 6 s) finds it
    idle for more than tcp_connection_linger = 5 s: at 11 s the last packet (3 s) is 8 s old,
    so the server's packet at 12 s is a new connection; its packet at 3 s is not."""
    flows = connections(tmp_path, [
        *handshake(), seg(1, True, "FA", seq=101, ack=501), seg(1.1, True, "R", seq=102),
        seg(3, False, "PA", seq=501, ack=102, data=10),
        seg(12, False, "PA", seq=511, ack=102, data=10)])
    assert flows["resp_pkts"].tolist() == [2, 1]
    assert flows["orig_pkts"].tolist() == [4, 0]


def test_a_reset_after_a_fin_with_the_peer_still_busy_is_one_connection(tmp_path):
    """Without a pause of more than 5 s at a firing of ExpireTimer, nothing removes it."""
    flows = connections(tmp_path, [
        *handshake(), seg(1, True, "FA", seq=101, ack=501), seg(1.1, True, "R", seq=102),
        *(seg(t, False, "PA", seq=501 + 10 * i, ack=102, data=10)
          for i, t in enumerate((4, 8, 12, 16)))])
    assert len(flows) == 1


@pytest.mark.parametrize(("port", "gap", "count"), [(22, 1200, 1), (22, 3700, 2), (80, 1200, 2)])
def test_ssh_and_telnet_ports_get_an_hour_once_established(tmp_path, port, gap, count):
    """base/protocols/conn/inactivity.zeek: on connection_established (the responder's SYN-ACK)
    a responder port in Conn::port_inactivity_timeouts (21, 22, 23, 513/tcp) sets the
    inactivity timeout to 1 h; other ports keep tcp_inactivity_timeout (5 min)."""
    ports = (40000, port)
    flows = connections(tmp_path, [
        seg(0, True, "S", seq=100, ports=ports), seg(0.01, False, "SA", seq=500, ack=101,
                                                     ports=ports),
        seg(0.02, True, "A", seq=101, ack=501, ports=ports),
        seg(gap, True, "PA", seq=101, ack=501, data=10, ports=ports)])
    assert len(flows) == count


def test_an_ssh_connection_seen_mid_stream_keeps_five_minutes(tmp_path):
    """Without the SYN-ACK, connection_established is never raised: 5 min applies."""
    ports = (40000, 22)
    flows = connections(tmp_path, [
        seg(0, True, "PA", seq=101, ack=501, data=10, ports=ports),
        seg(1200, True, "PA", seq=111, ack=501, data=10, ports=ports)])
    assert len(flows) == 2


# --- *_ip_bytes and UDP payload from the IP and UDP headers -----------------------------------
# Zeek's ConnSize analyzer (src/analyzer/protocol/conn-size/ConnSize.cc, DeliverPacket) adds
# ip->TotalLen() to orig/resp_ip_bytes (IPv4 total length; IPv6 40 + payload length) and
# src/packet_analysis/protocol/udp/UDP.cc (DeliverPacket) counts a UDP side's payload as the
# UDP length field less 8 (UpdateLength(is_orig, ulen)); TCPSessionAdapter.cc's payload comes
# from sequence numbers. None of them sees the link header, VLAN tags or Ethernet padding.

def _exchange(link, ip=IP):
    """A handshake, 100 bytes each way and the close, under the link header `link()`."""
    packets = []
    for t, client, flags, seq, ack, data in [
            (0.0, True, "S", 100, 0, 0), (0.01, False, "SA", 500, 101, 0),
            (0.02, True, "A", 101, 501, 0), (0.03, True, "PA", 101, 501, 100),
            (0.04, False, "PA", 501, 201, 100), (0.05, True, "FA", 201, 601, 0),
            (0.06, False, "FA", 601, 202, 0), (0.07, True, "A", 202, 602, 0)]:
        src, dst, sport, dport = (C, S, 40000, 80) if client else (S, C, 80, 40000)
        if ip is IPv6:
            src, dst = ("2001:db8::1", "2001:db8::2") if client else ("2001:db8::2", "2001:db8::1")
        packet = link() / ip(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags,
                                                     seq=seq, ack=ack)
        if data:
            packet = packet / Raw(b"x" * data)
        packet.time = T0 + t
        packets.append(packet)
    return packets


def _ip_lengths(packets, client: bool) -> int:
    """What Zeek's ConnSize adds up for one side: IP total lengths as the headers give them."""
    total = 0
    for packet in packets:
        ip = packet[IP] if IP in packet else packet[IPv6]
        if (ip.src in (C, "2001:db8::1")) == client:
            total += ip.len if IP in packet else 40 + ip.plen
    return total


@pytest.mark.parametrize(("link", "ip", "header"), [
    (lambda: CookedLinux(proto=0x0800), IP, 16),          # Linux cooked (SLL)
    (lambda: Loopback(type=2), IP, 4),                    # BSD loopback (DLT_NULL)
    (lambda: ether() / Dot1Q(vlan=7), IP, 18),            # one VLAN tag
    (lambda: ether() / Dot1Q(vlan=7) / Dot1Q(vlan=9), IPv6, 22),   # QinQ, IPv6
], ids=["linux-sll", "bsd-loopback", "vlan", "qinq-ipv6"])
def test_ip_bytes_are_ip_total_lengths_on_every_link_type(tmp_path, link, ip, header):
    """A 14-byte Ethernet header taken off the frame length is wrong for all of these."""
    packets = _exchange(link, ip)
    built = [p.__class__(bytes(p)) for p in packets]   # lengths filled in, as written
    flows = connections(tmp_path, packets)
    assert len(flows) == 1
    row = flows.iloc[0]
    assert (row["orig_ip_bytes"], row["resp_ip_bytes"]) == (
        _ip_lengths(built, True), _ip_lengths(built, False))
    # The frames are the IP packets plus the link header, so the old rule was off by this much.
    assert row["orig_frame_bytes"] - row["orig_ip_bytes"] == 5 * header
    assert (row["orig_bytes"], row["resp_bytes"]) == (100, 100)


def test_a_padded_ethernet_syn_counts_its_ip_total_length(tmp_path):
    """A bare SYN is 54 bytes of Ethernet, padded to the 60-byte minimum on the wire; Zeek
    counts the IP total length (40), not 60 - 14 = 46."""
    syn = ether() / IP(src=C, dst=S) / TCP(sport=40000, dport=80, flags="S", seq=100) \
        / Padding(b"\x00" * 6)
    syn.time = T0
    flows = connections(tmp_path, [syn])
    row = flows.iloc[0]
    assert row["orig_frame_bytes"] == 60
    assert (row["orig_ip_bytes"], row["orig_bytes"], row["conn_state"]) == (40, 0, "S0")


def test_udp_payload_is_the_udp_length_less_8_not_the_padded_frame(tmp_path):
    """Two bytes of DNS-port payload in a frame padded to 60 bytes: the UDP length field says
    10, so Zeek's orig_bytes is 2 and orig_ip_bytes 30 (the frame rule gave 18 and 46)."""
    query = ether() / IP(src=C, dst=S) / UDP(sport=40000, dport=53) / Raw(b"qq") \
        / Padding(b"\x00" * 16)
    reply = ether() / IP(src=S, dst=C) / UDP(sport=53, dport=40000) / Raw(b"r" * 30)
    query.time, reply.time = T0, T0 + 0.01
    flows = connections(tmp_path, [query, reply])
    row = flows.iloc[0]
    assert row["orig_frame_bytes"] == 60
    assert (row["orig_bytes"], row["orig_ip_bytes"]) == (2, 30)
    assert (row["resp_bytes"], row["resp_ip_bytes"]) == (30, 58)


def test_packet_table_carries_the_header_lengths_and_nulls_for_non_ip(tmp_path):
    """ip_len and udp_len in the packet table: the headers' lengths for IP and UDP packets,
    null for an ARP frame (and for TCP's udp_len)."""
    arp = ether() / ARP(psrc=C, pdst=S)
    arp.time = T0
    udp = ether() / IP(src=C, dst=S) / UDP(sport=40000, dport=53) / Raw(b"qq") \
        / Padding(b"\x00" * 16)
    udp.time = T0 + 0.01
    tcp = seg(0.02, True, "S", seq=100)
    connections(tmp_path, [arp, udp, tcp])
    packets = load_packets(tmp_path / "out_trace" / "packets.parquet")
    assert packets.column("ip_len").to_pylist() == [None, 30, 40]
    assert packets.column("udp_len").to_pylist() == [None, 2, None]


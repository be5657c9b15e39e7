"""conn.log's history letters by Zeek's rules, each case read off Zeek's source (zeek/zeek
a13de64): TCPSessionAdapter.cc `update_history` (which letters, S/H/F/R again on a new
sequence number), TCP_Endpoint.cc `CheckHistory` (the flip of a connection whose history is
"H" when an ACK or data comes), Session::ScaledHistoryEntry (T and W at 1, 10, 100...)."""

from __future__ import annotations

import subprocess

import pyarrow.parquet as pq
import pytest
from packet_factory import handshake, packet_table, tcp

import tracelab
from tracelab.security.connections import assemble_connections, flow_settings

C, S = "10.0.0.1", "10.0.0.2"
# Neither is one of Zeek's likely server ports: the first packet's sender stays the originator.
CP, SP = 40000, 9200


def only_flow(rows):
    flows = assemble_connections(packet_table(rows), flow_settings(), "t").flows
    assert len(flows) == 1, flows
    return flows.iloc[0]


def to_s(t, flags, **fields):
    return tcp(t, C, CP, S, SP, flags, **fields)


def to_c(t, flags, **fields):
    return tcp(t, S, SP, C, CP, flags, **fields)


REPEATS = {
    # update_history: a SYN whose sequence number equals the side's previous SYN's adds nothing
    "same_syn": ([to_s(0, "S"), to_s(1, "S"), to_s(3, "S")], "S"),
    # ... a different one adds S again (a new attempt on the same ports, no close between)
    "new_syn": ([to_s(0, "S"), to_s(1, "S"), to_s(2, "S", seq=500)], "SS"),
    # S and H share one hist_seen bit: a SYN-ACK after the side's own SYN needs a new number
    "syn_then_synack": ([to_s(0, "S"), to_c(0.1, "S"), to_s(0.2, "SA", ack=1)], "Ss"),
    "syn_then_new_synack": ([to_s(0, "S"), to_c(0.1, "S"), to_s(0.2, "SA", seq=7, ack=1)],
                            "SsH"),
    # a FIN's number is its sequence number after its payload
    "fin_retransmitted": ([*handshake(0, C, CP, S, SP), to_s(0.1, "FA", seq=1, ack=1),
                           to_s(0.3, "FA", seq=1, ack=1)], "ShAF"),
    "fin_with_new_data": ([*handshake(0, C, CP, S, SP), to_s(0.1, "FA", seq=1, ack=1),
                           to_s(0.3, "FPA", seq=1, ack=1, payload=5)], "ShAFF"),
    "resets": ([to_s(0, "S"), to_c(0.1, "RA", seq=0, ack=1), to_c(0.2, "RA", seq=0, ack=1),
                to_c(0.3, "RA", seq=9, ack=1)], "Srr"),
    # A and D come once a side however many there are
    "acks_and_data": ([*handshake(0, C, CP, S, SP),
                       *(to_s(0.1 + i / 100, "PA", seq=1 + 5 * i, ack=1, payload=5)
                         for i in range(3)), to_c(0.2, "A", seq=1, ack=16)], "ShADa"),
}


@pytest.mark.parametrize("case", sorted(REPEATS))
def test_syn_fin_rst_repeat_on_a_new_sequence_number_and_others_come_once(case):
    rows, history = REPEATS[case]
    assert only_flow(rows)["history"] == history


FLIPS = {
    # a SYN-ACK first (its SYN not captured), then the other side's ACK: "^h" then "A"
    "ack": ([to_c(0, "SA", ack=1), to_s(0.1, "A", seq=1, ack=1)], "^hA"),
    # then data from the SYN-ACK's sender: its letters are now the responder's
    "data": ([to_c(0, "SA", ack=1), to_c(0.1, "PA", seq=1, ack=1, payload=10),
              to_s(0.2, "A", seq=1, ack=11)], "^hdA"),
}


@pytest.mark.parametrize("case", sorted(FLIPS))
def test_a_synack_first_connection_is_flipped_when_an_ack_or_data_comes(case):
    rows, history = FLIPS[case]
    flow = only_flow(rows)
    assert flow["history"] == history
    # the side that sent the SYN-ACK is the responder from then on, in every field
    assert (flow["orig"], flow["orig_port"], flow["resp"], flow["resp_port"]) == (C, CP, S, SP)
    sent_by_c = sum(row["src"] == C for row in rows)
    assert (flow["orig_pkts"], flow["resp_pkts"]) == (sent_by_c, len(rows) - sent_by_c)


def test_no_flip_when_the_synack_is_answered_by_a_reset_or_repeated_first():
    # a RST (the stealth-scan answer) is no A or D; a second H (new number) makes "HH", not "H"
    reset = only_flow([to_c(0, "SA", ack=1), to_s(0.1, "R", seq=1)])
    again = only_flow([to_c(0, "SA", ack=1), to_c(0.1, "SA", seq=50, ack=1),
                       to_s(0.2, "A", seq=1, ack=1)])
    assert (reset["orig"], reset["history"], reset["conn_state"]) == (S, "Hr", "REJ")
    assert (again["orig"], again["history"]) == (S, "HHa")


def test_a_connection_flipped_at_its_first_packet_is_not_flipped_again():
    # from likely server port 80 to one that is not: flipped at once (WantConnection)
    flow = only_flow([tcp(0, S, 80, C, CP, "SA", ack=1), tcp(0.1, C, CP, S, 80, "A", seq=1)])
    assert (flow["orig"], flow["history"]) == (C, "^hA")


def test_retransmissions_are_logarithmic_per_side():
    rows = [*handshake(0, C, CP, S, SP), to_s(0.05, "PA", seq=1, ack=1, payload=10)]
    rows += [to_s(0.1 + i / 1000, "PA", seq=1, ack=1, payload=10,
                  analysis="TCP Retransmission") for i in range(100)]
    assert only_flow(rows)["history"] == "ShADTTT"


def test_gaps_count_only_between_established_endpoints():
    """TCP_Reassembler::Gap counts a gap in the history only while both endpoints are
    established (or closed from there): not in a connection seen mid-stream, nor on the ACK
    of a RST (its sender is then RESET)."""
    # Wireshark marks the segment after the hole (tcp.analysis.lost_segment)
    hole = [to_s(0.1, "PA", seq=1, ack=1, payload=100),
            to_s(0.2, "PA", seq=201, ack=1, payload=100,
                 analysis="TCP Previous segment not captured")]
    acked = only_flow([*handshake(0, C, CP, S, SP), *hole, to_c(0.3, "A", seq=1, ack=301)])
    midstream = only_flow([*hole, to_c(0.3, "A", seq=1, ack=301)])
    reset = only_flow([*handshake(0, C, CP, S, SP), *hole, to_c(0.3, "RA", seq=1, ack=301)])
    assert (acked["history"], midstream["history"], reset["history"]) == (
        "ShADaG", "Da", "ShADr")


def test_no_gap_where_wireshark_saw_no_missing_segment():
    """An export can hide the numbers of data it shows (an HTTP row left in no connection):
    an ACK past the data tracelab placed is a gap only where Wireshark's analysis says a
    segment is missing, as it does on the capture (bundled web_browsing, client port 34460)."""
    data = [to_s(0.1, "PA", seq=1, ack=1, payload=100), to_s(0.2, "PA", seq=201, ack=1,
                                                              payload=100)]
    flow = only_flow([*handshake(0, C, CP, S, SP), *data, to_c(0.3, "A", seq=1, ack=301)])
    assert flow["history"] == "ShADa"


def test_history_of_a_capture_made_here(tmp_path):
    """The same rules through the capture decoder: a pcap written with dpkt."""
    dpkt = pytest.importorskip("dpkt")
    path = tmp_path / "flip.pcap"
    client, server = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    segments = [  # (t, from client, flags, seq, ack, payload)
        (0.0, False, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK, 5000, 1001, b""),
        (0.1, True, dpkt.tcp.TH_ACK, 1001, 5001, b""),
        (0.2, True, dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, 1001, 5001, b"hello"),
        (0.3, True, dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK, 1006, 5001, b""),
        (0.5, True, dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK, 1006, 5001, b""),
        (0.6, False, dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK, 5001, 1007, b""),
        (0.7, True, dpkt.tcp.TH_ACK, 1007, 5002, b""),
    ]
    with path.open("wb") as handle:
        writer = dpkt.pcap.Writer(handle)
        for t, from_client, flags, seq, ack, payload in segments:
            sport, dport = (CP, SP) if from_client else (SP, CP)
            segment = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags,
                                   win=1000, data=payload)
            ip = dpkt.ip.IP(src=client if from_client else server,
                            dst=server if from_client else client, p=dpkt.ip.IP_PROTO_TCP,
                            data=segment)
            ip.len = len(ip)
            writer.writepkt(bytes(dpkt.ethernet.Ethernet(src=b"\2" * 6, dst=b"\4" * 6,
                                                         data=ip)), ts=1_767_268_800 + t)
    pq.write_table(tracelab.read(path), tmp_path / "packets.parquet")
    packets = pq.read_table(tmp_path / "packets.parquet")
    flows = assemble_connections(packets, flow_settings(), "flip").flows
    assert len(flows) == 1
    flow = flows.iloc[0]
    # flipped at the client's ACK; the FIN retransmitted with its number adds no second F
    assert (flow["history"], flow["orig"], flow["conn_state"]) == ("^hADFf", C, "SF")


def write_pcap(path, segments) -> None:
    """segments: (t, src, sport, dst, dport, flags, seq, ack, payload bytes), Ethernet/IPv4."""
    dpkt = pytest.importorskip("dpkt")
    with path.open("wb") as handle:
        writer = dpkt.pcap.Writer(handle)
        for t, src, sport, dst, dport, flags, seq, ack, payload in segments:
            segment = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags,
                                   win=1000, data=payload)
            ip = dpkt.ip.IP(src=bytes(map(int, src.split("."))),
                            dst=bytes(map(int, dst.split("."))), p=6, data=segment)
            ip.len = len(ip)
            writer.writepkt(bytes(dpkt.ethernet.Ethernet(src=b"\2" * 6, dst=b"\4" * 6,
                                                         data=ip)), ts=1_767_268_800 + t)


def transfer(t0, client_port, *, dropped_from_client=(), dropped_from_server=(), segments=14):
    """A connection exchanging `segments` 100-byte segments each way, each ACKed at once; the
    segments numbered in `dropped_*` are missing from the capture (their ACKs are not)."""
    syn, ack, push = 0x02, 0x10, 0x08
    client, server = (C, client_port), (S, SP)
    out = [(t0, *client, *server, syn, 1000, 0, b""),
           (t0 + 0.001, *server, *client, syn | ack, 9000, 1001, b""),
           (t0 + 0.002, *client, *server, ack, 1001, 9001, b"")]
    for k in range(segments):
        t = t0 + 0.01 + 0.02 * k
        c_seq, s_seq = 1001 + 100 * k, 9001 + 100 * k  # before this round's segments
        if k not in dropped_from_client:
            out.append((t, *client, *server, ack | push, c_seq, s_seq, b"x" * 100))
        out.append((t + 0.001, *server, *client, ack, s_seq, c_seq + 100, b""))
        if k not in dropped_from_server:
            out.append((t + 0.01, *server, *client, ack | push, s_seq, c_seq + 100, b"y" * 100))
        out.append((t + 0.011, *client, *server, ack, c_seq + 100, s_seq + 100, b""))
    return out


def test_content_gaps_are_the_acks_of_segments_the_capture_missed(tmp_path):
    """tshark flags each ACK of data the capture never saw (`tcp.analysis.ack_lost_segment`);
    Zeek's reassembler reports each as a content gap (TCP_Reassembler::Undelivered -> Gap),
    counted logarithmically per side (Session::ScaledHistoryEntry): G at the 1st, 10th..."""
    path = tmp_path / "gaps.pcap"
    write_pcap(path, [*transfer(0, 40001, dropped_from_client=range(1, 13)),
                      *transfer(10, 40002, dropped_from_server=(3,)),
                      *transfer(20, 40003)])
    lost = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "tcp.analysis.ack_lost_segment", "-T", "fields",
         "-e", "tcp.srcport", "-e", "tcp.dstport"], capture_output=True, text=True,
        check=True).stdout.splitlines()
    # a gap of the client's data is acked by the server, and the reverse
    expected = {port: ("G" * _powers_of_ten(lost.count(f"{SP}\t{port}"))
                       + "g" * _powers_of_ten(lost.count(f"{port}\t{SP}")))
                for port in (40001, 40002, 40003)}
    assert expected == {40001: "GG", 40002: "g", 40003: ""}
    pq.write_table(tracelab.read(path), tmp_path / "packets.parquet")
    flows = assemble_connections(pq.read_table(tmp_path / "packets.parquet"), flow_settings(),
                                 "gaps").flows.set_index("orig_port")
    got = {port: "".join(c for c in flows.loc[port, "history"] if c in "Gg")
           for port in expected}
    assert got == expected
    assert flows.loc[40003, "missed_bytes"] == 0 and flows.loc[40001, "missed_bytes"] == 1200


def _powers_of_ten(count: int) -> int:
    """How many of 1, 10, 100... are at most `count`."""
    return sum(10 ** k <= count for k in range(19))


def test_a_synack_first_connection_is_established_by_the_originators_ack(tmp_path):
    """Zeek's krb-service-name baseline (optional-service-name.pcap: SYN-ACK from port 88, the
    client's ACK, a request and a reply) is S1 with history "^hADd": flipped at the SYN-ACK
    (88 is a likely server port), the responder's SYN-ACK makes it ESTABLISHED and the
    originator's first packet, an ACK, then establishes it too (TCPSessionAdapter.cc
    UpdateInactiveState). Without a server port the flip comes at the ACK (CheckHistory), the
    SYN-ACK having been taken as the originator's: the originator stays PARTIAL, OTH."""
    syn, ack, push = 0x02, 0x10, 0x08

    def krb_exchange(t0, server_port):
        client, server = (C, CP), (S, server_port)
        return [(t0, *server, *client, syn | ack, 5000, 1001, b""),
                (t0 + 0.001, *client, *server, ack, 1001, 5001, b""),
                (t0 + 0.002, *client, *server, ack | push, 1001, 5001, b"q" * 110),
                (t0 + 0.010, *server, *client, ack | push, 5001, 1111, b"r" * 90)]

    path = tmp_path / "krb.pcap"
    write_pcap(path, [*krb_exchange(0, 88), *krb_exchange(10, SP)])
    pq.write_table(tracelab.read(path), tmp_path / "packets.parquet")
    flows = assemble_connections(pq.read_table(tmp_path / "packets.parquet"), flow_settings(),
                                 "krb").flows.set_index("resp_port")
    got = {port: (flows.loc[port, "orig"], flows.loc[port, "history"],
                  flows.loc[port, "conn_state"], flows.loc[port, "orig_bytes"],
                  flows.loc[port, "resp_bytes"]) for port in (88, SP)}
    assert got == {88: (C, "^hADd", "S1", 110, 90), SP: (C, "^hADd", "OTH", 110, 90)}

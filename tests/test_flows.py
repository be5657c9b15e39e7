"""Connections: Zeek's conn_state and history on hand-made packet sequences, flow splitting,
attachment of rows without ports, and the bundled traces against independent evidence."""

from __future__ import annotations

import re

import dpkt
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, bundled_results
from packet_factory import handshake, packet_frame, portless, tcp, udp

from tracelab.security.connections import (
    FLOWS,
    assemble_connections,
    flow_settings,
    load_packets,
)

C, S = "10.0.0.1", "10.0.0.2"


def connections(rows, **settings):
    return assemble_connections(packet_frame(rows), flow_settings(settings), "test")


def only_flow(rows, **settings) -> pd.Series:
    flows = connections(rows, **settings).flows
    assert len(flows) == 1, flows
    return flows.iloc[0]


def closed_both_ways(t=0.0):
    """Handshake, a request and a response, FIN from each side, final ACK."""
    return [*handshake(t, C, 40000, S, 80),
            tcp(t + 0.01, C, 40000, S, 80, "PA", seq=1, ack=1, payload=100),
            tcp(t + 0.02, S, 80, C, 40000, "A", seq=1, ack=101),
            tcp(t + 0.03, S, 80, C, 40000, "PA", seq=1, ack=101, payload=200),
            tcp(t + 0.04, C, 40000, S, 80, "FA", seq=101, ack=201),
            tcp(t + 0.05, S, 80, C, 40000, "FA", seq=201, ack=102),
            tcp(t + 0.06, C, 40000, S, 80, "A", seq=102, ack=202)]


CONN_STATE_CASES = {
    "S0": ([tcp(0, C, 40000, S, 80, "S")], "S"),
    "REJ": ([tcp(0, C, 40000, S, 80, "S"), tcp(0.01, S, 80, C, 40000, "RA", ack=1)], "Sr"),
    "SF": (closed_both_ways(), "ShADadFf"),
    "S1": (handshake(0, C, 40000, S, 80), "ShA"),
    "S2": ([*handshake(0, C, 40000, S, 80), tcp(0.01, C, 40000, S, 80, "FA", seq=1)], "ShAF"),
    "S3": ([*handshake(0, C, 40000, S, 80), tcp(0.01, S, 80, C, 40000, "FA", seq=1)], "ShAf"),
    "RSTO": ([*handshake(0, C, 40000, S, 80), tcp(0.01, C, 40000, S, 80, "R", seq=1)], "ShAR"),
    "RSTR": ([*handshake(0, C, 40000, S, 80),
              tcp(0.01, C, 40000, S, 80, "PA", seq=1, payload=50),
              tcp(0.02, S, 80, C, 40000, "RA", seq=1, ack=51)], "ShADr"),
    "RSTOS0": ([tcp(0, C, 40000, S, 80, "S"), tcp(0.01, C, 40000, S, 80, "R", seq=1)], "SR"),
    "RSTRH": ([tcp(0, C, 40000, S, 80, "A", seq=5, ack=9),
               tcp(0.01, S, 80, C, 40000, "R", seq=9)], "Ar"),
    "SH": ([tcp(0, C, 40000, S, 80, "S"), tcp(0.01, C, 40000, S, 80, "F", seq=1)], "SF"),
    "SHR": ([tcp(0, C, 40000, S, 80, "PA", seq=5, payload=10),
             tcp(0.01, S, 80, C, 40000, "FA", seq=9, ack=15)], "Df"),
    "OTH": ([tcp(0, C, 40000, S, 80, "A", seq=5, ack=9),
             tcp(0.01, S, 80, C, 40000, "A", seq=9, ack=5)], "Aa"),
}


@pytest.mark.parametrize("state", sorted(CONN_STATE_CASES))
def test_every_zeek_conn_state(state):
    rows, history = CONN_STATE_CASES[state]
    flow = only_flow(rows)
    assert (flow["conn_state"], flow["history"]) == (state, history)


def test_udp_states_depend_on_a_reply():
    answered = only_flow([udp(0, C, 5353, S, 53), udp(0.01, S, 53, C, 5353)])
    unanswered = only_flow([udp(0, C, 5354, S, 53)])
    assert (answered["proto"], answered["conn_state"], answered["history"]) == ("udp", "SF", "Dd")
    assert (unanswered["conn_state"], unanswered["history"]) == ("S0", "D")


HISTORY_CASES = {
    # originator sent the SYN-ACK (its SYN was not captured) between two ports that are not
    # likely server ports, so Zeek keeps the roles: H, then the responder's RST (an ACK would
    # flip them: test_conn_history.py)
    "H": ([tcp(0, S, 40001, C, 40000, "SA", ack=1), tcp(0.01, C, 40000, S, 40001, "R", seq=1)],
          "Hr"),
    # simultaneous open: the responder's SYN without ACK is a lowercase s
    "s": ([tcp(0, C, 40000, S, 80, "S"), tcp(0.01, S, 80, C, 40000, "S")], "Ss"),
    "I": ([*handshake(0, C, 40000, S, 80), tcp(0.01, C, 40000, S, 80, "FR", seq=1)], "ShAI"),
    "i": ([*handshake(0, C, 40000, S, 80), tcp(0.01, S, 80, C, 40000, "FR", seq=1)], "ShAi"),
    "Q": ([tcp(0, C, 40000, S, 80, "SF")], "Q"),
    "q": ([tcp(0, C, 40000, S, 80, "S"), tcp(0.01, S, 80, C, 40000, "SR")], "Sq"),
    "T": ([*handshake(0, C, 40000, S, 80),
           tcp(0.01, C, 40000, S, 80, "PA", seq=1, payload=10),
           tcp(0.30, C, 40000, S, 80, "PA", seq=1, payload=10,
               analysis="TCP Retransmission")], "ShADT"),
    "t": ([*handshake(0, C, 40000, S, 80),
           tcp(0.01, S, 80, C, 40000, "PA", seq=1, payload=10),
           tcp(0.30, S, 80, C, 40000, "PA", seq=1, payload=10,
               analysis="TCP Fast Retransmission")], "ShAdt"),
    "W": ([*handshake(0, C, 40000, S, 80), tcp(0.01, C, 40000, S, 80, "A", seq=1, win=0)],
          "ShAW"),
    "w": ([*handshake(0, C, 40000, S, 80), tcp(0.01, S, 80, C, 40000, "A", seq=1, win=0)],
          "ShAaw"),
}


@pytest.mark.parametrize("letter", sorted(HISTORY_CASES))
def test_every_history_letter(letter):
    rows, history = HISTORY_CASES[letter]
    assert only_flow(rows)["history"] == history


def test_history_letters_appear_once_in_first_occurrence_order():
    rows = [*closed_both_ways(), tcp(0.07, C, 40000, S, 80, "A", seq=102, ack=202)]
    rows.insert(5, tcp(0.025, C, 40000, S, 80, "PA", seq=101, ack=1, payload=5))
    assert only_flow(rows)["history"] == "ShADadFf"


def test_retransmissions_and_zero_windows_repeat_at_powers_of_ten():
    retransmit = [tcp(0.1 + i / 100, C, 40000, S, 80, "PA", seq=1, payload=10,
                      analysis="TCP Retransmission") for i in range(10)]
    nine = only_flow([*handshake(0, C, 40000, S, 80), *retransmit[:9]])
    ten = only_flow([*handshake(0, C, 40000, S, 80), *retransmit])
    assert (nine["history"], ten["history"]) == ("ShADT", "ShADTT")


def test_zero_window_on_a_reset_or_after_the_peers_fin_is_not_w():
    on_reset = only_flow([*handshake(0, C, 40000, S, 80),
                          tcp(0.01, C, 40000, S, 80, "R", seq=1, win=0)])
    after_fin = only_flow([*handshake(0, C, 40000, S, 80),
                           tcp(0.01, S, 80, C, 40000, "FA", seq=1),
                           tcp(0.02, C, 40000, S, 80, "A", seq=1, ack=2, win=0)])
    assert (on_reset["history"], after_fin["history"]) == ("ShAR", "ShAf")


def test_fin_exchange_then_reset_stays_a_normal_close():
    flow = only_flow([*closed_both_ways(), tcp(0.07, C, 40000, S, 80, "R", seq=102)])
    assert flow["conn_state"] == "SF"


def test_counts_bytes_payload_and_timing():
    flow = only_flow(closed_both_ways())
    assert (flow["orig_pkts"], flow["resp_pkts"]) == (5, 4)
    assert (flow["orig_bytes"], flow["resp_bytes"], flow["missed_bytes"]) == (100, 200, 0)
    assert flow["orig_frame_bytes"] == 5 * 66 + 100 and flow["resp_frame_bytes"] == 4 * 66 + 200
    assert (flow["orig_ip_bytes"], flow["resp_ip_bytes"]) == (5 * 52 + 100, 4 * 52 + 200)
    # Zeek's duration ends at the second FIN (TCPSessionAdapter.cc: no SetLastTime once both
    # sides did_close); the last ACK at 0.06 s still counts as a packet.
    assert flow["duration_s"] == pytest.approx(0.05)
    assert (flow["iat_min_s"], flow["iat_max_s"]) == pytest.approx((0.001, 0.01))
    assert flow["iat_mean_s"] == pytest.approx(0.06 / 8)
    assert (flow["len_min"], flow["len_max"]) == (66, 266)
    assert (flow["orig"], flow["orig_port"], flow["resp"], flow["resp_port"]) == (C, 40000, S, 80)


def test_idle_gap_splits_a_connection():
    rows = [udp(0, C, 5353, S, 53), udp(200, C, 5353, S, 53)]
    assert len(connections(rows, udp_idle_timeout_s=120).flows) == 2
    assert len(connections(rows, udp_idle_timeout_s=300).flows) == 1


def test_active_timeout_cuts_a_long_connection_from_its_own_start():
    rows = [udp(float(t), C, 5353, S, 53) for t in range(0, 401, 50)]
    flows = connections(rows, udp_idle_timeout_s=120, active_timeout_s=120).flows
    # starts at 0 s, 150 s (first packet >= 120 s later) and 300 s
    assert flows["first_ts"].dt.second.tolist() == [0, 30, 0]
    assert flows["orig_pkts"].tolist() == [3, 3, 3]


def test_new_syn_after_a_close_is_a_new_connection_but_a_retransmitted_syn_is_not():
    reused = connections([*closed_both_ways(0), *closed_both_ways(1.0)]).flows
    retried = connections([tcp(0, C, 40000, S, 80, "S"),
                           tcp(1, C, 40000, S, 80, "S", analysis="TCP Retransmission")]).flows
    assert reused["conn_state"].tolist() == ["SF", "SF"]
    assert retried["orig_pkts"].tolist() == [2]


def test_rows_without_ports_join_the_connection_whose_sequence_gap_they_fill():
    # Two parallel connections to the same server; the GET belongs to B (its server ACKs 100
    # new bytes), though the nearest earlier client packet is A's.
    rows = [*handshake(0.000, C, 41000, S, 80), *handshake(0.010, C, 41001, S, 80),
            tcp(0.013, C, 41000, S, 80, "A", seq=1, ack=1),
            portless(0.014, C, S, "HTTP", payload=100, http_method="GET", http_uri="/b"),
            tcp(0.015, S, 80, C, 41001, "A", seq=1, ack=101),
            tcp(0.020, C, 41000, S, 80, "FA", seq=1, ack=1),
            tcp(0.021, C, 41001, S, 80, "FA", seq=101, ack=1)]
    result = connections(rows)
    flows = result.flows.set_index("orig_port")
    get_row = 7
    assert result.packet_uid[get_row] == flows.loc[41001, "uid"]
    assert (flows.loc[41001, "orig_bytes"], flows.loc[41000, "orig_bytes"]) == (100, 0)
    assert flows.loc[41001, "history"] == "ShADaF"
    assert flows.loc[41001, "service"] == "http" and pd.isna(flows.loc[41000, "service"])
    assert flows["attached_pkts"].to_dict() == {41000: 0, 41001: 1}


def test_rows_without_ports_and_without_a_gap_join_the_nearest_connection_of_their_pair():
    rows = [udp(0, C, 5000, S, 443, protocol="QUIC"),
            portless(0.5, C, S, "QUIC", payload=30),
            udp(0.6, S, 443, C, 5000)]
    result = connections(rows)
    assert result.packet_flow.tolist() == [0, 0, 0]
    assert result.flows.loc[0, "orig_pkts"] == 2


def test_rows_outside_any_connection_are_counted_not_attached():
    rows = [*handshake(0, C, 40000, S, 80),
            portless(0.01, S, C, "ICMP", payload=28),
            portless(0.02, "10.0.0.7", "10.0.0.8", "HTTP", payload=50)]
    result = connections(rows)
    assert result.packet_flow.tolist() == [0, 0, 0, -1, -1]
    assert result.left_out == {"ICMP": 1, "HTTP": 1}


@pytest.mark.parametrize("rows", [[], [portless(0, C, S, "ICMP")],
                                  [portless(0, C, S, "HTTP", http_method="GET")]])
def test_a_trace_without_connections_gives_an_empty_valid_table(rows):
    result = connections(rows)
    assert FLOWS.check(FLOWS.conform(result.flows)).num_rows == 0
    assert result.packet_flow.tolist() == [-1] * len(rows)


def test_uids_follow_the_first_packet():
    rows = [tcp(0, C, 40002, S, 80, "S"), tcp(0.1, C, 40001, S, 80, "S"),
            tcp(0.2, C, 40002, S, 80, "S", analysis="TCP Retransmission")]
    flows = connections(rows).flows
    assert flows[["orig_port", "orig_pkts"]].values.tolist() == [[40002, 2], [40001, 1]]
    assert flows["uid"].nunique() == 2


# ---- the bundled traces ------------------------------------------------------------------

def csv_export(trace: str) -> pd.DataFrame:
    return pd.read_csv(REPO / "data" / f"{trace}.csv.gz")


def test_bundled_scan_connections_match_the_export():
    """Independently from the Info text: one connection per scanner SYN 5-tuple; a SYN-ACK
    back makes it answered, a RST back rejected, nothing back S0."""
    export = csv_export("log4j_scan")
    ports = export["Info"].str.extract(r"(\d+)\s+>\s+(\d+) \[([A-Z, ]+)\]")
    export = export.assign(sport=ports[0], dport=ports[1], flags=ports[2])
    syn = export[export["flags"] == "SYN"]
    tuples = set(zip(syn["Source"], syn["sport"], syn["Destination"], syn["dport"]))
    back = export[export["flags"].isin(["SYN, ACK", "RST, ACK"])]
    replies = dict(zip(zip(back["Destination"], back["dport"], back["Source"], back["sport"]),
                       back["flags"]))
    answered = sum(replies.get(t) == "SYN, ACK" for t in tuples)
    rejected = sum(replies.get(t) == "RST, ACK" for t in tuples)

    flows = FLOWS.read_pandas(bundled_results() / "features/log4j_scan/flows.parquet")
    states = flows["conn_state"].astype(str).value_counts().to_dict()
    assert len(flows) == len(tuples)
    assert states.get("REJ", 0) == rejected
    assert states.get("S0", 0) == len(tuples) - answered - rejected
    assert sum(states.get(s, 0) for s in ("SF", "S1", "S2", "S3", "RSTO", "RSTR")) == answered


def pcapng_ports(trace: str) -> pd.DataFrame:
    """Frame number -> TCP/UDP ports, from the capture the export was made from."""
    rows = []
    with open(REPO / "data" / f"{trace}.pcapng", "rb") as handle:
        for frame, (_, buffer) in enumerate(dpkt.pcapng.Reader(handle), start=1):
            ip = dpkt.ethernet.Ethernet(buffer).data
            transport = getattr(ip, "data", None)
            if isinstance(transport, (dpkt.tcp.TCP, dpkt.udp.UDP)):
                rows.append((frame, transport.sport, transport.dport))
    return pd.DataFrame(rows, columns=["frame", "sport", "dport"]).set_index("frame")


@pytest.mark.parametrize("trace", ["log4j_scan", "web_browsing"])
def test_bundled_rows_without_ports_land_in_their_true_connection(trace):
    """The pcapng holds the ports the export hides; at least 90% of the export's portless rows
    (HTTP, TLS, reassembled segments) must be attached to the connection with those ports, and
    none to another (ambiguous rows are left out: tests/test_attach.py)."""
    packets = load_packets(bundled_results() / f"packets/{trace}.parquet")
    result = assemble_connections(packets, flow_settings(), trace)
    flows = result.flows.set_index("uid")
    truth = pcapng_ports(trace)
    rows = packets.to_pandas().assign(uid=result.packet_uid, is_orig=result.packet_is_orig)
    rows = rows[rows["src_port"].isna() & rows["frame"].isin(truth.index)]
    attached = rows[rows["uid"].notna()]
    flow = flows.loc[attached["uid"]]
    sport = np.where(attached["is_orig"], flow["orig_port"], flow["resp_port"])
    dport = np.where(attached["is_orig"], flow["resp_port"], flow["orig_port"])
    right = (truth.loc[attached["frame"], "sport"].to_numpy() == sport) & \
        (truth.loc[attached["frame"], "dport"].to_numpy() == dport)
    assert len(attached) >= 0.9 * len(rows) > 0
    assert right.all(), f"{right.sum()} of {len(right)} right"


def test_bundled_browsing_connections_all_close_normally():
    export = csv_export("web_browsing")
    syns = export["Info"].str.contains(r"\[SYN\] Seq=0", regex=True) & \
        ~export["Info"].str.startswith("[TCP Retransmission]")
    flows = FLOWS.read_pandas(bundled_results() / "features/web_browsing/flows.parquet")
    assert len(flows) == syns.sum()
    assert set(flows["conn_state"].astype(str)) == {"SF"}
    assert flows["history"].map(lambda h: re.fullmatch(r"ShA[ADadWFf]*", h) is not None).all()

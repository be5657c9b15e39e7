"""Connections in Zeek's terms: role flips, payload bytes from sequence numbers, uids, the
`trace` column, and conn.log read back by a reader written here from Zeek's documented ASCII
format and by zat's ZeekLogReader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from packet_factory import BASE, handshake, packet_table, portless, tcp, udp

from tracelab.security.connections import (
    FLOWS,
    assemble_connections,
    flow_settings,
    write_connections,
)
from tracelab.security.http import HTTP
from tracelab.security.uid import UID_KEYS, UidIndex, connection_uids, uid_sort_keys
from tracelab.security.zeek_log import string_text, time_text

C, S = "10.0.0.1", "10.0.0.2"


def only_flow(rows, trace="t") -> pd.Series:
    flows = assemble_connections(packet_table(rows), flow_settings(), trace).flows
    assert len(flows) == 1, flows
    return flows.iloc[0]


# ---- originator: Zeek's WantConnection flip ----------------------------------------------

FLIP_CASES = {
    # a SYN-ACK from a server port first, then the server's RST: the client is the originator
    "synack_rst": ([tcp(0, S, 80, C, 40000, "SA", ack=1), tcp(0.01, S, 80, C, 40000, "R", seq=1)],
                   "RSTRH", "^hr"),
    "synack_fin": ([tcp(0, S, 80, C, 40000, "SA", ack=1),
                    tcp(0.01, S, 80, C, 40000, "FA", seq=1, ack=1)], "SHR", "^hf"),
    # mid-stream: the server's data first, then the client's ACK
    "midstream": ([tcp(0, S, 443, C, 40000, "PA", seq=1, ack=1, payload=50),
                   tcp(0.01, C, 40000, S, 443, "A", seq=1, ack=51)], "OTH", "^dA"),
}


@pytest.mark.parametrize("case", sorted(FLIP_CASES))
def test_a_first_packet_from_a_server_port_makes_the_client_the_originator(case):
    rows, state, history = FLIP_CASES[case]
    flow = only_flow(rows)
    assert (flow["orig"], flow["resp"]) == (C, S)
    assert flow["orig_port"] == 40000 and flow["resp_port"] in (80, 443)
    assert (flow["conn_state"], flow["history"]) == (state, history)


def test_roles_stay_when_both_or_neither_port_is_a_server_port():
    # Zeek: both likely servers and a SYN-ACK -> no flip (stealth scans); neither -> no flip
    both = only_flow([tcp(0, S, 80, C, 443, "SA", ack=1)])
    neither = only_flow([tcp(0, S, 40001, C, 40000, "A", seq=1, ack=1)])
    assert (both["orig"], both["orig_port"], both["history"]) == (S, 80, "H")
    assert (neither["orig"], neither["orig_port"], neither["history"]) == (S, 40001, "A")


def test_both_server_ports_flip_a_plain_packet_towards_the_higher_port():
    flow = only_flow([tcp(0, S, 80, C, 443, "A", seq=1, ack=1)])
    assert (flow["orig"], flow["orig_port"], flow["history"]) == (C, 443, "^a")


def test_a_udp_reply_seen_first_is_flipped():
    answered = only_flow([udp(0, S, 53, C, 40000), udp(0.01, C, 40000, S, 53)])
    reply_only = only_flow([udp(0, S, 53, C, 40001)])
    assert (answered["orig"], answered["orig_port"]) == (C, 40000)
    assert (answered["history"], answered["conn_state"]) == ("^dD", "SF")
    assert (reply_only["history"], reply_only["conn_state"]) == ("^d", "SHR")


# ---- bytes as Zeek counts them -----------------------------------------------------------

def test_payload_bytes_come_from_sequence_numbers_and_missed_bytes_from_holes():
    """300 bytes sent (seq 1..300), 100 of them never captured, one segment retransmitted:
    Zeek's orig_bytes 300 (not the captured payload, 300 with the copy), missed_bytes 100."""
    rows = [*handshake(0, C, 40000, S, 80),
            tcp(0.01, C, 40000, S, 80, "PA", seq=1, ack=1, payload=100),
            tcp(0.03, C, 40000, S, 80, "PA", seq=201, ack=1, payload=100),
            tcp(0.04, C, 40000, S, 80, "PA", seq=201, ack=1, payload=100,
                analysis="TCP Retransmission"),
            tcp(0.05, S, 80, C, 40000, "A", seq=1, ack=301)]
    flow = only_flow(rows)
    assert (flow["orig_bytes"], flow["resp_bytes"], flow["missed_bytes"]) == (300, 0, 100)
    assert flow["orig_frame_bytes"] == 2 * 66 + 3 * 166
    assert flow["orig_ip_bytes"] == flow["orig_frame_bytes"] - 14 * 5


def test_without_sequence_numbers_bytes_are_the_payload_sent():
    udp_flow = only_flow([udp(0, C, 40000, S, 53, payload=30), udp(0.01, S, 53, C, 40000,
                                                                   payload=70)])
    ipv6 = only_flow([udp(0, "fe80::1", 40000, "fe80::2", 53, payload=30)])
    assert (udp_flow["orig_bytes"], udp_flow["resp_bytes"]) == (30, 70)
    assert ipv6["orig_bytes"] == 30 - 20  # the factory's frame assumes a 20-byte IP header


# ---- uid and trace -------------------------------------------------------------------------

def test_uids_are_zeek_style_unique_across_traces_and_stable():
    rows = [*handshake(0, C, 40000, S, 80), *handshake(0.5, C, 40001, S, 80),
            udp(0.2, C, 5353, S, 53)]
    first = assemble_connections(packet_table(rows), flow_settings(), "a").flows
    again = assemble_connections(packet_table(rows), flow_settings(), "a").flows
    other = assemble_connections(packet_table(rows), flow_settings(), "b").flows
    assert first["uid"].str.fullmatch(r"C[0-9A-Za-z]{17}").all()
    assert first["uid"].tolist() == again["uid"].tolist()
    assert not set(first["uid"]) & set(other["uid"])
    assert first["uid"].nunique() == 3
    assert set(first["trace"]) == {"a"} and set(other["trace"]) == {"b"}


def test_uid_digits_are_the_hash_in_base62_as_python_integers_give_them():
    """The vectorised long division (limbs of 32 bits, five digits a pass) against Python's
    arbitrary-precision arithmetic on the same two SipHashes."""
    keys = ["", "a", "lab|tcp|198.18.0.1|40000|198.18.0.2|80|1", "é" * 300,
            *(f"k{n}" for n in range(2000))]
    text = np.array(keys, dtype=object)
    high, low = (pd.util.hash_array(text, hash_key=key, categorize=False)
                 for key in UID_KEYS)
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    expected = []
    for hi, lo in zip(high.tolist(), low.tolist()):
        number, digits = (hi << 64) | lo, ""
        for _ in range(17):
            number, digit = divmod(number, 62)
            digits = alphabet[digit] + digits
        expected.append("C" + digits)
    assert connection_uids(pa.array(keys)).to_pylist() == expected


def test_uid_index_finds_each_uid_exactly_even_where_prefixes_are_shared():
    """Distinct uids found at their place in text order; absent and null ones not; uids that
    share their first ten digits (the searched block) told apart by the rest."""
    shared = ["C" + "a" * 10 + tail for tail in ("0000000", "zzzzzzz", "ZZZZZZZ", "9abcdef")]
    made = connection_uids(pa.array([str(key) for key in range(3000)])).to_pylist()
    index = UidIndex(pa.chunked_array([pa.array(made[:1000] + shared),
                                       pa.array(made[1000:] + [None, shared[0]])]))
    known = sorted(set(made + shared))
    assert len(index) == len(known)
    asked = pa.array([*known[::-1], "C" + "a" * 10 + "1111111", "C" + "b" * 17, None])
    assert index.find(asked).tolist() == [*range(len(known))][::-1] + [-1, -1, -1]
    assert UidIndex(pa.array([], pa.string())).find(pa.array(known[:3])).tolist() == [-1] * 3


def test_uid_sort_keys_order_uids_as_their_text():
    """The two integers that stand for a uid where hosts hold one a pair: sorted by them, uids
    come in Python's string order, the alphabet's ends included, in chunked and sliced arrays."""
    uids = [*connection_uids(pa.array([str(key) for key in range(20000)])).to_pylist(),
            "C" + "0" * 17, "C" + "z" * 17, "C" + "Z" * 17, "C" + "9" * 17, "Ca" + "0" * 16]
    column = pa.chunked_array([pa.array(uids[:777]), pa.array(uids[777:])]).slice(3)
    high, low = uid_sort_keys(column)
    order = sorted(range(len(column)), key=column.to_pylist().__getitem__)
    assert np.lexsort((low, high)).tolist() == order


# ---- the stage: flows.parquet, http.parquet, conn.log ---------------------------------------

def stage(tmp_path: Path, rows, trace="lab", **settings) -> dict[str, Path]:
    packets = tmp_path / "packets.parquet"
    pq.write_table(packet_table(rows), packets, row_group_size=4)
    out = tmp_path / trace
    paths = {"flows_path": out / "flows.parquet", "http_path": out / "http.parquet",
             "conn_log_path": out / "conn.log"}
    write_connections(trace=trace, packets_path=packets, settings=settings, **paths)
    return paths


def read_zeek_log(path: Path) -> tuple[dict[str, str], pd.DataFrame]:
    """Zeek's ASCII log format as documented (Zeek manual, "Zeek Logs" / LogAscii): `#` header
    lines, `#separator` given as a \\x escape, `#fields` and `#types` split by the separator,
    data lines split by it; `#unset_field` and `#empty_field` markers kept as text."""
    lines = path.read_text(encoding="utf-8").splitlines()
    separator_line = lines[0]
    assert separator_line.startswith("#separator ")
    separator = bytes(separator_line.split(" ", 1)[1], "ascii").decode("unicode_escape")
    header, records = {}, []
    for line in lines[1:]:
        if line.startswith("#"):
            key, _, value = line[1:].partition(separator)
            header[key] = value
        else:
            records.append(line.split(separator))
    columns = header["fields"].split(separator)
    assert all(len(record) == len(columns) for record in records)
    return header, pd.DataFrame(records, columns=columns)


BROWSING = [*handshake(0, C, 40000, S, 80),
            tcp(0.01, C, 40000, S, 80, "PA", seq=1, ack=1, payload=100, protocol="HTTP",
                http_method="GET", http_uri="/index.html"),
            tcp(0.02, S, 80, C, 40000, "PA", seq=1, ack=101, payload=200, protocol="HTTP",
                http_status=200),
            tcp(0.03, C, 40000, S, 80, "FA", seq=101, ack=201),
            tcp(0.04, S, 80, C, 40000, "FA", seq=201, ack=102),
            tcp(0.05, C, 40000, S, 80, "A", seq=102, ack=202),
            tcp(1.0, "10.0.0.9", 41000, S, 443, "S"),
            udp(2.0, C, 5353, S, 53, protocol="DNS"), udp(2.1, S, 53, C, 5353, protocol="DNS"),
            portless(3.0, C, S, "ICMP")]


def test_conn_log_is_zeek_ascii_and_matches_the_flows(tmp_path):
    paths = stage(tmp_path, BROWSING)
    flows = FLOWS.read_pandas(paths["flows_path"]).set_index("uid")
    header, log = read_zeek_log(paths["conn_log_path"])
    assert header["path"] == "conn" and header["unset_field"] == "-"
    assert header["set_separator"] == "," and header["empty_field"] == "(empty)"
    assert header["open"] == "2026-01-01-12-00-00" and header["close"] == "2026-01-01-12-00-03"
    assert header["fields"].split("\t")[:7] == ["ts", "uid", "id.orig_h", "id.orig_p",
                                                "id.resp_h", "id.resp_p", "proto"]
    assert dict(zip(header["fields"].split("\t"), header["types"].split("\t")))["ts"] == "time"
    assert sorted(log["uid"]) == sorted(flows.index)
    log = log.set_index("uid")
    web = flows[flows["resp_port"] == 80].index[0]
    expected_ts = (BASE + pd.Timedelta(0)).timestamp()
    assert log.loc[web, "ts"] == f"{expected_ts:.6f}"
    assert (log.loc[web, "id.orig_h"], log.loc[web, "id.orig_p"]) == (C, "40000")
    # Zeek stops the clock at the second FIN (0.04 s); the last ACK still counts (orig_pkts 5)
    assert (log.loc[web, "proto"], log.loc[web, "service"], log.loc[web, "duration"]) == (
        "tcp", "http", "0.040000")
    assert (log.loc[web, "orig_bytes"], log.loc[web, "resp_bytes"]) == ("100", "200")
    assert (log.loc[web, "conn_state"], log.loc[web, "history"]) == ("SF", "ShADdFf")
    assert (log.loc[web, "orig_pkts"], log.loc[web, "orig_ip_bytes"]) == ("5", str(5 * 52 + 100))
    # A lone SYN has no duration: Zeek leaves duration and byte counts unset.
    syn = flows[flows["resp_port"] == 443].index[0]
    assert log.loc[syn, ["duration", "orig_bytes", "resp_bytes"]].tolist() == ["-"] * 3
    assert log.loc[syn, ["service", "local_orig", "tunnel_parents"]].tolist() == ["-"] * 3
    assert (log.loc[syn, "conn_state"], log.loc[syn, "missed_bytes"]) == ("S0", "0")


def test_conn_log_opens_with_zat(tmp_path):
    zeek_log_reader = pytest.importorskip("zat.zeek_log_reader")
    paths = stage(tmp_path, BROWSING)
    records = list(zeek_log_reader.ZeekLogReader(str(paths["conn_log_path"])).readrows())
    flows = FLOWS.read_pandas(paths["flows_path"]).set_index("uid")
    assert sorted(r["uid"] for r in records) == sorted(flows.index)
    web = next(r for r in records if r["id.resp_p"] == 80)
    assert (web["orig_bytes"], web["resp_bytes"], web["conn_state"]) == (100, 200, "SF")
    assert web["ts"] == BASE.tz_convert(None).to_pydatetime()


def test_every_table_has_the_trace_column(tmp_path):
    paths = stage(tmp_path, BROWSING, trace="lab")
    flows = FLOWS.read(paths["flows_path"])
    http = HTTP.read(paths["http_path"])
    assert set(flows.column("trace").to_pylist()) == {"lab"}
    assert http.column("trace").to_pylist() == ["lab"]
    assert http.column("uid").to_pylist()[0] in set(flows.column("uid").to_pylist())
    assert flows.schema.equals(FLOWS.schema, check_metadata=False)
    assert http.schema.equals(HTTP.schema, check_metadata=False)


def test_zeek_text_escapes_separators_and_markers_as_zeek_does():
    values = pa.array(["a\tb", "-", "", None, "x\\y", "(empty)", "ok"])
    assert string_text(values).to_pylist() == [
        "a\\x09b", "\\x2d", "(empty)", "-", "x\\x5cy", "\\x28empty)", "ok"]
    assert time_text(pa.array([1_767_268_800_123_456_789, None])).to_pylist() == [
        "1767268800.123457", "-"]

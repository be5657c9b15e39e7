"""Property-based tests of the two parsers that read attacker-chosen text: Info and Time.

Arbitrary strings never raise (and what they yield passes the packet model, so normalization
cannot fail on them); well-formed lines of every family, generated from their fields, parse
back to those fields.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracelab.core.packets import INFO_FIELDS, PACKETS, TCP_FLAG_BITS
from tracelab.ingest.export.times import parse_time
from tracelab.ingest.normalize import normalize_table, parse_info

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])
NULLS = {field.name: None for field in INFO_FIELDS}

# Text near the parsers' patterns, so the arbitrary cases reach deep into the regexes ([0-9]:
# from_regex's \d draws any Unicode digit).
NEAR_INFO = st.one_of(
    st.text(),
    st.text(alphabet="0123456789 >→[],=SYNACKFINRSTPSHURGECWRSeqAckWinLen"),
    st.from_regex(r"\A(\[[^\]]{0,12}\] ?){0,2}[0-9]{1,7} {0,3}(>|→) {0,3}[0-9]{1,7}"
                  r"( \[[A-Z, ]{0,12}\])?( Seq=[0-9]{1,25})?( Ack=[0-9]{1,25})?( Win=[0-9]{1,25})?"
                  r"( Len=[0-9]{1,25})?.{0,5}\Z"),
    st.from_regex(r"\AHTTP/[0-9](\.[0-9])? [0-9]{1,4}.{0,8}\Z"),
    st.from_regex(r"\A[A-Z][A-Z_-]{0,22} \S{0,10} HTTP/[0-9](\.[0-9])?.{0,3}\Z"),
    st.from_regex(r"\AStandard query (response )?0x[0-9a-f]{0,5} [A-Z]{0,5} .{0,10}\Z"),
)
NEAR_TIME = st.one_of(
    st.text(),
    st.from_regex(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,10})?\Z"),
    st.from_regex(r"\A-?[0-9]{1,13}(\.[0-9]{0,10})?\Z"),
)
TIMEZONES = st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata",
                             "Pacific/Kiritimati", "Australia/Lord_Howe"])


def parsed_rows(infos: list[str], protocols: list[str]) -> list[dict]:
    parsed = parse_info(pa.array(infos, pa.string()), pa.array(protocols, pa.string()))
    columns = {name: array.to_pylist() for name, array in parsed.items()}
    return [{name: values[i] for name, values in columns.items()} for i in range(len(infos))]


# --- Info: arbitrary text ---------------------------------------------------------------------

@PROPERTY_SETTINGS
@given(st.lists(st.tuples(NEAR_INFO, st.sampled_from(["TCP", "UDP", "HTTP", "DNS", "TLSv1.2",
                                                     "SSL", ""])), min_size=1, max_size=12))
def test_info_parser_never_raises_and_its_values_pass_the_packet_model(rows):
    infos, protocols = [r[0] for r in rows], [r[1] for r in rows]
    parsed = parse_info(pa.array(infos, pa.string()), pa.array(protocols, pa.string()))
    assert set(parsed) == set(NULLS)
    assert all(len(array) == len(rows) for array in parsed.values())
    # The whole normalization of such rows: typed, cast and checked as the stage does it.
    staged = pa.table({
        "frame": pa.array(range(1, len(rows) + 1), pa.int64()),
        "ts": pa.array([10**18 + i for i in range(len(rows))], pa.timestamp("ns", tz="UTC")),
        "src": ["198.18.0.2"] * len(rows), "dst": ["198.18.1.10"] * len(rows),
        "protocol": protocols, "length": pa.array([60] * len(rows), pa.int64()),
        "info": infos,
    })
    table = normalize_table(staged, 10**18, "t")
    PACKETS.check(table)
    assert table.column("info").to_pylist() == infos  # kept as text, never evaluated


@pytest.mark.parametrize("info", [
    "1  >  2 [SYN] Seq=99999999999999999999 Win=1 Len=0",
    "1  >  2 [ACK] Seq=1 Ack=99999999999999999999 Win=1 Len=0",
    "99999  >  80 [SYN] Seq=0 Win=1 Len=0",
    "HTTP/1.1 000 Zero",
    "HTTP/1.1 099 Low",
])
def test_out_of_range_numbers_give_nulls_not_errors(info):
    row = parsed_rows([info], ["TCP"])[0]
    assert row["tcp_seq"] is None or row["tcp_seq"] < 2**63
    assert row["tcp_ack"] is None or row["tcp_ack"] < 2**63
    assert row["src_port"] is None or row["src_port"] <= 65535
    assert row["http_status"] is None


# --- Info: well-formed lines parse back to their fields ---------------------------------------

ARROWS = st.sampled_from(["  >  ", " → "])
PORTS = st.integers(0, 65535)
U32 = st.integers(0, 2**32 - 1)
ANALYSES = st.lists(st.sampled_from([
    "TCP Retransmission", "TCP Port numbers reused", "TCP Dup ACK 12#1", "TCP Keep-Alive",
    "TCP Previous segment not captured", "TCP Out-Of-Order", "TCP Window Update",
    "TCP ZeroWindow", "TCP Spurious Retransmission", "TCP ACKed unseen segment",
]), max_size=3, unique=True)
FLAG_ORDER = list(TCP_FLAG_BITS)  # Wireshark lists them in bit order
OPTIONS = st.sampled_from(["", " MSS=1460 SACK_PERM TSval=2294377345 TSecr=0 WS=1024",
                           " TSval=1 TSecr=2", " [TCP segment of a reassembled PDU]"])


@st.composite
def tcp_lines(draw):
    analyses, flags = draw(ANALYSES), draw(st.sets(st.sampled_from(FLAG_ORDER), min_size=1))
    src, dst, seq, win, length = draw(PORTS), draw(PORTS), draw(U32), draw(U32), draw(PORTS)
    ack = draw(st.one_of(st.none(), U32))
    urgent = draw(st.one_of(st.none(), PORTS))
    flag_text = ", ".join(name for name in FLAG_ORDER if name in flags)
    info = "".join(f"[{a}] " for a in analyses) + f"{src}{draw(ARROWS)}{dst} [{flag_text}]"
    info += f" Seq={seq}" + (f" Ack={ack}" if ack is not None else "") + f" Win={win}"
    info += (f" Urg={urgent}" if urgent is not None else "") + f" Len={length}" + draw(OPTIONS)
    return info, "TCP", {
        "src_port": src, "dst_port": dst, "tcp_seq": seq, "tcp_ack": ack, "tcp_win": win,
        "tcp_len": length, "tcp_flags": sum(TCP_FLAG_BITS[name] for name in flags),
        "tcp_analysis": "; ".join(analyses) or None,
    }


@st.composite
def udp_lines(draw):
    src, dst, length = draw(PORTS), draw(PORTS), draw(PORTS)
    return f"{src}{draw(ARROWS)}{dst} Len={length}", "UDP", {"src_port": src, "dst_port": dst}


URI = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1,
              max_size=60).map(lambda path: "/" + path)
# As on the wire: a raw space would end the request target (the arbitrary-text test has those).
ATTACK_URIS = st.sampled_from([
    "/<script>alert(1)</script>", "/?x=${jndi:ldap://x/<img%20src=x%20onerror=alert(1)>}",
    "/=HYPERLINK(\"http://x\",\"y\")", "/a|b|c", "/$math$", "/%00%0d%0a", "/${${lower:j}ndi:x}",
    "/{{7*7}}", "/__import__('os').system('id')", "/%(x)s%s%n",
])
VERSIONS = st.sampled_from(["HTTP/1.0", "HTTP/1.1", "HTTP/2"])


@st.composite
def http_request_lines(draw):
    method = draw(st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS",
                                   "PROPFIND", "M-SEARCH", "CONNECT"]))
    uri, version = draw(st.one_of(URI, ATTACK_URIS)), draw(VERSIONS)
    suffix = draw(st.sampled_from([" ", "", "  (application/x-www-form-urlencoded)",
                                   " Continuation"]))
    return f"{method} {uri} {version}{suffix}", "HTTP", {
        "http_method": method, "http_uri": uri, "http_version": version}


@st.composite
def http_response_lines(draw):
    version, status = draw(VERSIONS), draw(st.integers(100, 999))
    reason = draw(st.sampled_from(["OK", "Not Found", "Moved Permanently", "OK  (text/html)",
                                   "Internal Server Error  (text/plain)", ""]))
    return f"{version} {status} {reason}", "HTTP", {"http_version": version,
                                                   "http_status": status}


DOMAIN = st.from_regex(r"\A[a-z0-9][a-z0-9-]{0,15}(\.[a-z0-9][a-z0-9-]{0,15}){0,3}\Z")


@st.composite
def dns_lines(draw):
    name, kind = draw(DOMAIN), draw(st.sampled_from(["A", "AAAA", "PTR", "TXT", "MX", "SRV",
                                                     "HTTPS", "CNAME", "ANY", "SOA"]))
    query_id = draw(st.integers(0, 0xFFFF))
    if draw(st.booleans()):
        rcode = draw(st.sampled_from(["", "No such name ", "Server failure ", "Refused "]))
        answer = draw(st.sampled_from(["", f" {kind} 198.18.0.1", " CNAME x.example.org"]))
        info = f"Standard query response 0x{query_id:04x} {rcode}{kind} {name}{answer}"
    else:
        info = f"Standard query 0x{query_id:04x} {kind} {name}"
    return info, "DNS", {"dns_query": name}


@st.composite
def tls_lines(draw):
    protocol = draw(st.sampled_from(["TLSv1.2", "TLSv1.3", "TLSv1", "SSLv3", "SSL"]))
    info = draw(st.sampled_from([
        "Client Hello (SNI=shop.example.org)", "Server Hello, Change Cipher Spec, Finished",
        "Application Data", "Encrypted Alert", "Client Hello (SNI=<script>alert(1)</script>)",
        "Certificate, Server Key Exchange, Server Hello Done",
    ]))
    return info, protocol, {"tls_message": info}


WELL_FORMED = st.one_of(tcp_lines(), udp_lines(), http_request_lines(), http_response_lines(),
                        dns_lines(), tls_lines())


@PROPERTY_SETTINGS
@given(st.lists(WELL_FORMED, min_size=1, max_size=16))
def test_well_formed_info_lines_parse_back_to_their_fields(lines):
    rows = parsed_rows([line[0] for line in lines], [line[1] for line in lines])
    for (info, _, fields), row in zip(lines, rows):
        assert row == {**NULLS, **fields}, info


# --- Time -------------------------------------------------------------------------------------

@PROPERTY_SETTINGS
@given(st.lists(NEAR_TIME, min_size=1, max_size=12), TIMEZONES)
def test_time_parser_never_raises_and_each_value_stands_alone(values, timezone):
    times = parse_time(pa.array(values, pa.string()), timezone)
    ts, formats = times.ts, times.formats
    assert len(ts) == len(values)
    assert ts.type == pa.timestamp("ns", tz="UTC")
    assert formats["absolute"] + formats["epoch_seconds"] == len(values) - ts.null_count
    # A bad value elsewhere in the batch changes nothing about a row's own result.
    alone = [parse_time(pa.array([value], pa.string()), timezone).ts[0].as_py()
             for value in values]
    assert ts.to_pylist() == alone


NS_DATETIMES = st.datetimes(min_value=dt.datetime(1678, 1, 2), max_value=dt.datetime(2261, 12, 30))


@PROPERTY_SETTINGS
@given(NS_DATETIMES, st.integers(0, 999), st.sampled_from([" ", "T"]), st.booleans())
def test_absolute_utc_times_parse_back(moment, extra_ns, separator, nanoseconds):
    text = moment.strftime(f"%Y-%m-%d{separator}%H:%M:%S.%f")
    expected = (moment - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1) * 1000
    if nanoseconds:
        text += f"{extra_ns:03d}"
        expected += extra_ns
    times = parse_time(pa.array([text]), "UTC")
    ts, formats = times.ts, times.formats
    assert ts.cast(pa.int64()).to_pylist() == [expected]
    assert formats == {"absolute": 1, "epoch_seconds": 0}


@PROPERTY_SETTINGS
@given(st.datetimes(min_value=dt.datetime(1971, 1, 1), max_value=dt.datetime(2200, 1, 1)),
       st.sampled_from(["Asia/Kolkata", "Asia/Tokyo", "Africa/Nairobi"]))
def test_local_times_in_zones_without_daylight_saving_parse_back(moment, timezone):
    text = moment.strftime("%Y-%m-%d %H:%M:%S.%f")
    local = moment.replace(tzinfo=ZoneInfo(timezone))
    expected = (local - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) \
        // dt.timedelta(microseconds=1) * 1000
    ts = parse_time(pa.array([text]), timezone).ts
    assert ts.cast(pa.int64()).to_pylist() == [expected]


@PROPERTY_SETTINGS
@given(st.integers(0, 9_223_372_035), st.text(alphabet="0123456789", max_size=9))
def test_epoch_seconds_parse_back(seconds, fraction):
    text = f"{seconds}.{fraction}" if fraction else str(seconds)
    times = parse_time(pa.array([text]), "UTC")
    ts, formats = times.ts, times.formats
    assert ts.cast(pa.int64()).to_pylist() == [seconds * 10**9 + int(fraction.ljust(9, "0"))]
    assert formats == {"absolute": 0, "epoch_seconds": 1}

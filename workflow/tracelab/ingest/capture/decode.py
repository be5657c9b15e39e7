"""Packet headers to the packet table's columns, vectorised over a batch of captured packets.

Every field is gathered with numpy from the batch's bytes at per-packet offsets, layer by
layer (link, network, transport, application), under masks saying which packets have the
layer and whether its bytes were captured. Loops run over header *depth* (VLAN tags, IPv6
extension headers, TCP options, TLS records, DNS labels), never over packets.

Names follow Wireshark's Protocol column for the common cases, so a capture and its CSV
export look alike. Where a capture cannot show what Wireshark shows (it reassembles TCP
streams and resolves names), the difference is documented in tests/test_capture_vs_csv.py.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tracelab.core.packets import DICT_STRING, TCP_FLAG_BITS, null_if_empty
from tracelab.ingest.capture.tcp_analysis import Segments, TcpConversations

# INFO_FIELDS this module supplies (the normalization stage leaves them as they are).
HEADER_FIELDS = ("src_port", "dst_port", "tcp_flags", "tcp_seq", "tcp_ack", "tcp_win",
                 "tcp_len", "tcp_analysis", "http_method", "http_uri", "http_version",
                 "http_status", "dns_query", "tls_message")

# The link types decoded (tcpdump's LINKTYPE_ names); frames of any other are not decoded.
LINKTYPE_NAMES = {0: "NULL", 1: "EN10MB", 12: "RAW", 14: "RAW", 101: "RAW", 108: "LOOP",
                  113: "LINUX_SLL", 228: "IPV4", 229: "IPV6", 276: "LINUX_SLL2"}
ETHERNET, NULL, LOOP, SLL, SLL2 = 1, 0, 108, 113, 276
RAW_IP = (12, 14, 101)

IPV4, IPV6, ARP, RARP = 0x0800, 0x86DD, 0x0806, 0x8035
VLAN_TAGS = (0x8100, 0x88A8, 0x9100)
# Pseudo ethertypes for frames that carry none.
LLC, STP, UNKNOWN = -2, -3, -1
ETHERTYPE_NAMES = {ARP: "ARP", RARP: "RARP", 0x88CC: "LLDP", 0x888E: "EAPOL", 0x8863: "PPPoED",
                   0x9000: "LOOP", 0x0842: "WOL", LLC: "LLC", STP: "STP"}
# BSD/Linux address families in the loopback header.
AF_INET = (2,)
AF_INET6 = (10, 24, 28, 30)

IP_PROTO_NAMES = {1: "ICMP", 6: "TCP", 17: "UDP", 47: "GRE", 50: "ESP", 51: "AH", 58: "ICMPv6",
                  89: "OSPF", 103: "PIMv2", 112: "VRRP", 132: "SCTP"}
IPV6_EXTENSIONS = (0, 43, 44, 51, 60)
# Wireshark tries the lower port first.
UDP_PORT_NAMES = {53: "DNS", 67: "DHCP", 68: "DHCP", 69: "TFTP", 123: "NTP", 137: "NBNS",
                  161: "SNMP", 162: "SNMP", 443: "QUIC", 514: "Syslog", 546: "DHCPv6",
                  547: "DHCPv6", 1900: "SSDP", 5353: "MDNS", 5355: "LLMNR"}
DNS_LIKE = ("DNS", "MDNS", "LLMNR")

TH_SYN = TCP_FLAG_BITS["SYN"]

HTTP_METHODS = ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "CONNECT", "TRACE", "PATCH")
HTTP_PREFIXES = np.array([int.from_bytes(m[:4].ljust(4).encode(), "big")
                          for m in HTTP_METHODS] + [int.from_bytes(b"HTTP", "big")])
HTTP_REQUEST = (rb"^(?P<method>" + "|".join(HTTP_METHODS).encode()
                + rb") (?P<uri>[^ \r\n]*)(?: (?P<version>HTTP/\d\.\d))?")
HTTP_RESPONSE = rb"^(?P<version>HTTP/\d\.\d) (?P<status>[1-9]\d{2})(?:[ \r\n]|$)"
HTTP_LINE_MAX = 8192

TLS_VERSION_NAMES = {0x0300: "SSLv3", 0x0301: "TLSv1", 0x0302: "TLSv1.1", 0x0303: "TLSv1.2",
                     0x0304: "TLSv1.3"}
TLS_RECORD_MAX = (1 << 14) + 2048
TLS_HANDSHAKE_NAMES = {0: "Hello Request", 1: "Client Hello", 2: "Server Hello",
                       3: "Hello Verify Request", 4: "New Session Ticket", 5: "End of Early Data",
                       6: "Hello Retry Request", 8: "Encrypted Extensions", 11: "Certificate",
                       12: "Server Key Exchange", 13: "Certificate Request",
                       14: "Server Hello Done", 15: "Certificate Verify",
                       16: "Client Key Exchange", 20: "Finished", 21: "Certificate URL",
                       22: "Certificate Status", 24: "Key Update", 254: "Message Hash"}
TLS_ALERT_LEVELS = {1: "Warning", 2: "Fatal"}
TLS_ALERTS = {0: "Close Notify", 10: "Unexpected Message", 20: "Bad Record MAC",
              21: "Decryption Failed", 22: "Record Overflow", 30: "Decompression Failure",
              40: "Handshake Failure", 41: "No Certificate", 42: "Bad Certificate",
              43: "Unsupported Certificate", 44: "Certificate Revoked",
              45: "Certificate Expired", 46: "Certificate Unknown", 47: "Illegal Parameter",
              48: "Unknown CA", 49: "Access Denied", 50: "Decode Error", 51: "Decrypt Error",
              70: "Protocol Version", 71: "Insufficient Security", 80: "Internal Error",
              86: "Inappropriate Fallback", 90: "User Canceled", 100: "No Renegotiation",
              109: "Missing Extension", 110: "Unsupported Extension", 112: "Unrecognized Name",
              113: "Bad Certificate Status Response", 115: "Unknown PSK Identity",
              116: "Certificate Required", 120: "No Application Protocol"}
# tls_message item codes: handshake types as they are, then these.
TLS_CCS, TLS_APPDATA, TLS_HEARTBEAT, TLS_ENCRYPTED_HS, TLS_ENCRYPTED_ALERT = 300, 301, 302, 303, 304
TLS_ALERT_BASE = 1000
# The random of a ServerHello that is a HelloRetryRequest (RFC 8446), first 8 bytes.
HRR_RANDOM_PREFIX = bytes.fromhex("cf21ad74e59a6111")

# Wireshark's expert-info wording, as the Info column shows it in brackets.


# Bytes of zeros after a batch's data, so header reads past the last packet stay in bounds.
PADDING = 512


def padded(buffer: bytes) -> np.ndarray:
    """A batch's bytes as the uint8 array Bytes reads from."""
    return np.frombuffer(buffer + bytes(PADDING), dtype=np.uint8)


class Bytes:
    """Packet bytes of a batch, read big-endian at per-packet offsets.

    `data` ends in PADDING zero bytes: offsets up to a packet's captured length plus a few
    hundred bytes may be read without bounds checks (the `has` masks say what is real);
    loops that walk further (TLS records, DNS labels, TCP options) clip with `within`.
    Multi-byte fields come from strided views of the same memory: one gather per field.
    """

    def __init__(self, data: np.ndarray, start: np.ndarray, captured: np.ndarray,
                 views: tuple | None = None):
        self.data = data
        self.start = start
        self.captured = captured
        self.views = views or tuple(
            np.ndarray(shape=(len(data) - width + 1,), dtype=f">u{width}", buffer=data,
                       strides=(1,)) for width in (2, 4, 8)) + (
            np.ndarray(shape=(len(data) - 3,), dtype="<u4", buffer=data, strides=(1,)),)

    def subset(self, rows: np.ndarray) -> Bytes:
        return Bytes(self.data, self.start[rows], self.captured[rows], self.views)

    def has(self, at, width: int) -> np.ndarray:
        """Whether bytes at..at+width of each packet were captured."""
        return (at >= 0) & (at + width <= self.captured)

    def within(self, at: np.ndarray) -> np.ndarray:
        """`at`, kept inside each packet's captured bytes (for reads that walk far)."""
        return np.clip(at, 0, self.captured)

    def u8(self, at) -> np.ndarray:
        return self.data[self.start + at].astype(np.int64)

    def u16(self, at) -> np.ndarray:
        return self.views[0][self.start + at].astype(np.int64)

    def u24(self, at) -> np.ndarray:
        return self.views[1][self.start + at].astype(np.int64) >> 8

    def u32(self, at) -> np.ndarray:
        return self.views[1][self.start + at].astype(np.int64)

    def u32le(self, at) -> np.ndarray:
        return self.views[3][self.start + at].astype(np.int64)

    def u48(self, at) -> np.ndarray:
        return (self.views[2][self.start + at] >> np.uint64(16)).astype(np.int64)

    def u64(self, at) -> np.ndarray:
        return self.views[2][self.start + at]

    def slices(self, at: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The bytes at..at+length of each packet, concatenated, and their int32 offsets."""
        length = np.maximum(length, 0)
        offsets = np.zeros(len(length) + 1, dtype=np.int64)
        np.cumsum(length, out=offsets[1:])
        first = self.start + at
        positions = np.repeat(first - offsets[:-1], length) + np.arange(offsets[-1])
        return self.data[positions], offsets.astype(np.int32)


class Names:
    """A growing dictionary of names; rows carry codes into it."""

    def __init__(self):
        self.names: list[str] = []
        self.codes: dict[str, int] = {}

    def code(self, name: str) -> int:
        if name not in self.codes:
            self.codes[name] = len(self.names)
            self.names.append(name)
        return self.codes[name]

    def column(self, codes: np.ndarray) -> pa.Array:
        # (A copy of the list: the thread decoding the next batch may add names meanwhile.)
        return pa.DictionaryArray.from_arrays(
            pa.array(codes, pa.int32()), pa.array(list(self.names), pa.string())
        ).cast(pa.string())


def _strings(flat: np.ndarray, offsets: np.ndarray, rows: int) -> pa.Array:
    """Binary slices as strings; invalid UTF-8 is shown with backslash escapes (rare path)."""
    strings = pa.StringArray.from_buffers(rows, pa.py_buffer(offsets), pa.py_buffer(flat))
    try:
        strings.validate(full=True)
        return strings
    except pa.ArrowInvalid:
        raw = pa.BinaryArray.from_buffers(pa.binary(), rows, [None, pa.py_buffer(offsets),
                                                              pa.py_buffer(flat)])
        return pa.array([value.decode("utf-8", errors="backslashreplace")
                         for value in raw.to_pylist()], pa.string())


def _binary(flat: np.ndarray, offsets: np.ndarray, rows: int) -> pa.Array:
    return pa.BinaryArray.from_buffers(pa.binary(), rows, [None, pa.py_buffer(offsets),
                                                           pa.py_buffer(flat)])


def _as_string(array: pa.Array) -> pa.Array:
    """A regex group (binary) as strings, escaping invalid UTF-8."""
    try:
        return array.cast(pa.string())
    except pa.ArrowInvalid:
        return pa.array([None if v is None else v.decode("utf-8", errors="backslashreplace")
                         for v in array.to_pylist()], pa.string())


def _distinct(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(values, return_counts=True) for small-ranged integers (link types, ethertypes,
    IP protocols), by counting rather than sorting."""
    if not len(values):
        return values[:0], np.zeros(0, dtype=np.int64)
    low = int(values.min())
    if int(values.max()) - low >= 1 << 17:
        return np.unique(values, return_counts=True)
    counts = np.bincount(values - low)
    present = np.flatnonzero(counts)
    return (present + low).astype(values.dtype), counts[present]


def _column(values: np.ndarray, valid: np.ndarray, type_: pa.DataType) -> pa.Array:
    return pa.array(values, mask=~valid, type=type_)


def _scatter(n: int, rows: np.ndarray, values: pa.Array, type_: pa.DataType) -> pa.Array:
    """A length-n column holding `values` at `rows` (ascending), null elsewhere."""
    values = values.cast(type_)
    if len(rows) == n:
        return values
    if not len(rows):
        return pa.nulls(n, type_)
    if type_ == pa.string():
        return _scatter_strings(n, rows, values)
    index = np.full(n, -1, dtype=np.int64)
    index[rows] = np.arange(len(rows))
    return values.take(pa.array(index, mask=index < 0))


def _scatter_strings(n: int, rows: np.ndarray, values: pa.Array) -> pa.Array:
    """_scatter for strings, from the buffers: the values' bytes stay where they are, rows
    between them get empty slices (several times faster than a take with null indices)."""
    value_offsets = np.frombuffer(values.buffers()[1], dtype=np.int32, count=len(values) + 1,
                                  offset=4 * values.offset)
    lengths = np.zeros(n + 1, dtype=np.int32)
    lengths[rows + 1] = np.diff(value_offsets)
    offsets = np.cumsum(lengths, dtype=np.int32) + value_offsets[0]
    valid = np.zeros(n, dtype=bool)
    valid[rows] = values.is_valid().to_numpy(zero_copy_only=False)
    data = values.buffers()[2] or pa.py_buffer(b"")
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), data,
                                       pa.py_buffer(np.packbits(valid, bitorder="little")))


def _spread(n: int, rows: np.ndarray, values: np.ndarray, type_: pa.DataType,
            valid: np.ndarray | None = None) -> pa.Array:
    """A length-n numeric column holding `values` (where `valid`) at `rows`, null elsewhere."""
    full = np.zeros(n, dtype=values.dtype)
    full[rows] = values
    present = np.zeros(n, dtype=bool)
    present[rows] = True if valid is None else valid
    return pa.array(full, mask=~present, type=type_)


@dataclass
class Headers:
    """A batch decoded but for its TCP conversations, which need the batches in order."""

    n: int
    columns: dict
    protocol: np.ndarray        # protocol codes (-1: none)
    tcp_rows: np.ndarray
    segments: Segments
    tls: dict                   # _tls_records of the rows starting with a TLS record


class Decoder:
    """Decodes batch after batch of one capture, in two steps: `headers` of any batch (it may
    run for one batch while `conversations` runs for the one before, on another thread), then
    `conversations`, in batch order (TCP conversations carry over between batches)."""

    def __init__(self):
        self.protocols = Names()
        self.tcp = TcpConversations()
        self.counts = {"link_types": {}, "non_ip_frames": 0, "ip_fragments": 0,
                       "http_request_lines_incomplete": 0}
        # UDP port -> protocol code (-1: none).
        self.udp_ports = np.full(1 << 16, -1, dtype=np.int64)
        for port, name in UDP_PORT_NAMES.items():
            self.udp_ports[port] = self.protocols.code(name)
        # TLS version names, registered here: `conversations` uses them and only `headers`
        # adds names.
        self.tls_codes = {version: self.protocols.code(name)
                          for version, name in TLS_VERSION_NAMES.items()}
        self.tls_unknown = self.protocols.code("TLS")

    def notes(self) -> dict:
        return {**self.counts, "tcp_conversations": self.tcp.conversations,
                "tcp_port_reuses": self.tcp.reuses}

    def headers(self, data, start, captured, original, linktype, ts_ns, frame) -> Headers:
        """Every column but the TCP analysis's and the TLS version's of one batch."""
        n = len(start)
        packet = Bytes(data, start, captured)
        for value, count in zip(*_distinct(linktype)):
            name = LINKTYPE_NAMES.get(int(value), f"linktype {int(value)}")
            self.counts["link_types"][name] = self.counts["link_types"].get(name, 0) + int(count)
        link = _link_layer(packet, linktype)
        net = _network_layer(packet, link, original)
        protocol = np.full(n, -1, dtype=np.int64)

        # Names from the lower layers first; upper layers overwrite them.
        for value in _distinct(link["ethertype"][~net["ip"]])[0]:
            for linktype_value in _distinct(
                    linktype[~net["ip"] & (link["ethertype"] == value)])[0]:
                rows = ~net["ip"] & (link["ethertype"] == value) & (linktype == linktype_value)
                protocol[rows] = self.protocols.code(_frame_name(int(value),
                                                                 int(linktype_value)))
        self.counts["non_ip_frames"] += int((~net["ip"]).sum())
        self.counts["ip_fragments"] += int(net["fragment"].sum())
        for family, name in ((4, "IPv4"), (6, "IPv6")):
            protocol[net["family"] == family] = self.protocols.code(name)
        named = net["ip"] & ~net["fragment_not_last"]
        for number in _distinct(net["proto"][named])[0]:
            if int(number) in IP_PROTO_NAMES:
                protocol[named & (net["proto"] == number)] = \
                    self.protocols.code(IP_PROTO_NAMES[int(number)])
        igmp = net["transport"] & (net["proto"] == 2)
        if igmp.any():
            igmp_type = packet.u8(packet.within(net["l4"]))
            v3 = (igmp_type == 0x22) | ((igmp_type == 0x11) & (net["l4_len"] >= 12))
            protocol[igmp & v3] = self.protocols.code("IGMPv3")
            protocol[igmp & ~v3 & (igmp_type == 0x12)] = self.protocols.code("IGMPv1")
            protocol[igmp & ~v3 & (igmp_type != 0x12)] = self.protocols.code("IGMPv2")

        columns = dict(zip(("src", "dst"), _addresses(link, net)))

        tcp = net["transport"] & (net["proto"] == 6) & packet.has(net["l4"], 20)
        udp = net["transport"] & (net["proto"] == 17) & packet.has(net["l4"], 8)
        l4 = packet.within(net["l4"])
        ports = tcp | udp
        port_pair = packet.u32(l4)   # both ports in one read
        src_port = np.where(ports, port_pair >> 16, 0)
        dst_port = np.where(ports, port_pair & 0xFFFF, 0)
        columns["src_port"] = _column(src_port, ports, pa.int32())
        columns["dst_port"] = _column(dst_port, ports, pa.int32())

        # TCP header fields.
        offset_flags = packet.u16(l4 + 12)   # data offset (4 bits), reserved, flags (9 bits)
        header_len = np.where(tcp, (offset_flags >> 12) * 4, 0)
        flags = np.where(tcp, offset_flags & 0x1FF, 0)
        tcp_len = net["l4_len"] - header_len
        sane = tcp & (header_len >= 20) & (tcp_len >= 0)
        payload = np.where(tcp, l4 + header_len, l4 + 8)
        wire_payload = np.where(tcp, np.where(sane, tcp_len, 0),
                                np.where(udp, packet.u16(l4 + 4) - 8, 0))
        visible = np.clip(np.minimum(captured - payload, wire_payload), 0, None)
        visible = np.where(ports, visible, 0)

        app = np.full(n, -1, dtype=np.int64)   # protocol code from the payload, -1 if none
        http = self._http(packet, tcp & sane, payload, visible, app, columns)
        tls = _tls_records(packet, tcp & sane & (app < 0), payload, visible)
        tls_rows = tls["rows"]

        # UDP by port (lower port first), DNS over TCP on port 53.
        low = np.minimum(src_port, dst_port)
        high = np.maximum(src_port, dst_port)
        by_port = np.where(self.udp_ports[low] >= 0, self.udp_ports[low], self.udp_ports[high])
        app = np.where(udp & (by_port >= 0), by_port, app)
        tcp_dns = tcp & sane & (app < 0) & (low == 53) & (visible > 0)
        tcp_dns[tls_rows] = False
        app = np.where(tcp_dns, self.protocols.code("DNS"), app)
        dns_codes = [self.protocols.code(name) for name in DNS_LIKE]
        dns = np.isin(app, dns_codes) & (visible > 0)
        dns_start = np.where(tcp_dns, payload + 2, payload)
        columns["dns_query"] = _dns_query(packet, dns, dns_start, payload + visible)

        # TCP conversations: relative numbers, window scaling, analysis, the TLS session.
        tcp_rows = np.flatnonzero(tcp)
        tcp_packet, tcp_l4 = packet.subset(tcp_rows), l4[tcp_rows]
        window_shift = _window_scale_option(tcp_packet, tcp_l4, header_len[tcp_rows],
                                            flags[tcp_rows])
        server_version = np.zeros(n, dtype=np.int64)
        server_version[tls_rows] = tls["server_version"]
        segments = Segments(
            key=net["key"][tcp_rows], family=net["family"][tcp_rows],
            src_port=src_port[tcp_rows], dst_port=dst_port[tcp_rows],
            seq=tcp_packet.u32(tcp_l4 + 4), ack=tcp_packet.u32(tcp_l4 + 8),
            flags=flags[tcp_rows], window=tcp_packet.u16(tcp_l4 + 14),
            seglen=np.where(sane, tcp_len, 0)[tcp_rows], window_shift=window_shift,
            ts_ns=ts_ns[tcp_rows], frame=frame[tcp_rows],
            server_version=server_version[tcp_rows])
        columns["tcp_flags"] = _column(flags, tcp, pa.int16())
        columns["tcp_len"] = _column(np.where(sane, tcp_len, 0), sane, pa.int64())
        columns["tls_message"] = _scatter(n, tls_rows, tls["message"], pa.string())
        if not http:
            for name, type_ in (("http_method", DICT_STRING), ("http_uri", pa.string()),
                                ("http_version", DICT_STRING), ("http_status", pa.int16())):
                columns[name] = pa.nulls(n, type_)
        return Headers(n=n, columns=columns, protocol=np.where(app >= 0, app, protocol),
                       tcp_rows=tcp_rows, segments=segments, tls=tls)

    def conversations(self, headers: Headers) -> dict:
        """The batch's columns, with the TCP analysis's and the TLS version's."""
        n, tcp_rows, tls, columns = headers.n, headers.tcp_rows, headers.tls, headers.columns
        conv = self.tcp.update(headers.segments)
        columns["tcp_seq"] = _spread(n, tcp_rows, conv.seq, pa.int64())
        columns["tcp_ack"] = _spread(n, tcp_rows, conv.ack, pa.int64(), conv.has_ack)
        columns["tcp_win"] = _spread(n, tcp_rows, conv.window, pa.int64())
        columns["tcp_analysis"] = _scatter(n, tcp_rows[conv.analysis_rows], conv.analysis,
                                           pa.string())
        protocol = headers.protocol
        tls_rows = tls["rows"]
        if len(tls_rows):
            # The version the TLS session settled on, else the record's own.
            session = np.zeros(n, dtype=np.int64)
            session[tcp_rows] = conv.tls_version
            version = np.where(session[tls_rows] > 0, session[tls_rows],
                               tls["record_version"])
            versions, which = np.unique(version, return_inverse=True)
            codes = np.array([self.tls_codes.get(int(v), self.tls_unknown) for v in versions])
            protocol = protocol.copy()
            protocol[tls_rows] = codes[which.ravel()]
        columns["protocol"] = self.protocols.column(protocol)
        return columns

    def _http(self, packet: Bytes, candidates, payload, visible, app, columns) -> bool:
        """Request or status lines at the start of TCP payloads (any port, as the heuristic)."""
        candidates = candidates & (visible >= 4)
        candidates &= np.isin(packet.u32(payload), HTTP_PREFIXES)
        rows = np.flatnonzero(candidates)
        if not len(rows):
            return False
        n = len(app)
        sub = packet.subset(rows)
        flat, offsets = sub.slices(payload[rows], np.minimum(visible[rows], HTTP_LINE_MAX))
        lines = _binary(flat, offsets, len(rows))
        request = pc.extract_regex(lines, HTTP_REQUEST)
        response = pc.extract_regex(lines, HTTP_RESPONSE)
        is_request = np.asarray(request.is_valid())
        is_response = np.asarray(response.is_valid()) & ~is_request
        matched = is_request | is_response
        app[rows[matched]] = self.protocols.code("HTTP")
        method = pc.if_else(request.is_valid(), pc.struct_field(request, "method"), None)
        uri = pc.if_else(request.is_valid(), pc.struct_field(request, "uri"), None)
        request_version = null_if_empty(pc.struct_field(request, "version"))
        version = pc.coalesce(
            pc.if_else(request.is_valid(), request_version, None),
            pc.if_else(pa.array(is_response), pc.struct_field(response, "version"), None))
        status = pc.if_else(pa.array(is_response), pc.struct_field(response, "status"), None)
        self.counts["http_request_lines_incomplete"] += int(
            (is_request & ~np.asarray(pc.is_valid(request_version))).sum())
        columns["http_method"] = _scatter(n, rows, _as_string(method), DICT_STRING)
        columns["http_uri"] = _scatter(n, rows, _as_string(uri), pa.string())
        columns["http_version"] = _scatter(n, rows, _as_string(version), DICT_STRING)
        columns["http_status"] = _scatter(
            n, rows, pc.cast(_as_string(status), pa.int16()), pa.int16())
        return True


def _frame_name(ethertype: int, linktype: int) -> str:
    """The Protocol column of a frame that carries no IP packet."""
    if ethertype == UNKNOWN:
        return {ETHERNET: "Ethernet", SLL: "SLL", SLL2: "SLL"}.get(
            linktype, LINKTYPE_NAMES.get(linktype, f"linktype {linktype}"))
    return ETHERTYPE_NAMES.get(ethertype, f"0x{ethertype:04x}")


def _link_layer(packet: Bytes, linktype: np.ndarray) -> dict:
    """Where the network header starts, the ethertype, and the link-layer addresses."""
    n = len(linktype)
    ethertype = np.full(n, UNKNOWN, dtype=np.int64)
    net = np.zeros(n, dtype=np.int64)
    mac_src = np.zeros(n, dtype=np.int64)
    mac_dst = np.zeros(n, dtype=np.int64)
    has_src = np.zeros(n, dtype=bool)
    has_dst = np.zeros(n, dtype=bool)
    for value in _distinct(linktype)[0]:
        rows = np.flatnonzero(linktype == value)
        count = len(rows)
        if count == n:   # one link type, the usual case: no rows to pick out and put back
            rows = slice(None)
        p = packet.subset(rows)
        value = int(value)
        if value == ETHERNET:
            et = np.where(p.has(0, 14), p.u16(12), UNKNOWN)
            at = np.full(count, 14, dtype=np.int64)
            for _ in range(2):
                tagged = np.isin(et, VLAN_TAGS) & p.has(at, 4)
                if not tagged.any():
                    break
                et = np.where(tagged, p.u16(at + 2), et)
                at = np.where(tagged, at + 4, at)
            et, at = _llc(p, et, at, et < 0x0600)
            mac_dst[rows], mac_src[rows] = p.u48(0), p.u48(6)
            has_src[rows] = has_dst[rows] = p.has(0, 12)
        elif value in (SLL, SLL2):
            if value == SLL:
                et, at = p.u16(14), np.full(count, 16, dtype=np.int64)
                address_len, address_at, whole = p.u16(4), 6, p.has(0, 16)
            else:
                et, at = p.u16(0), np.full(count, 20, dtype=np.int64)
                address_len, address_at, whole = p.u8(11), 12, p.has(0, 20)
            et = np.where(whole, et, UNKNOWN)
            et, at = _llc(p, et, at, et == 0x0004)
            et = np.where((et >= 0) & (et < 0x0600), UNKNOWN, et)
            mac_src[rows] = p.u48(address_at)
            has_src[rows] = whole & (address_len == 6)
        elif value in RAW_IP or value in (228, 229):
            version = p.u8(0) >> 4
            et = np.where(version == 4, IPV4, np.where(version == 6, IPV6, UNKNOWN))
            if value == 228:
                et = np.full(count, IPV4)
            elif value == 229:
                et = np.full(count, IPV6)
            et = np.where(p.has(0, 1), et, UNKNOWN)
            at = np.zeros(count, dtype=np.int64)
        elif value in (NULL, LOOP):
            family = p.u32(0)
            if value == NULL:
                # Host byte order of the capturing machine: a small number either way.
                little = p.u32le(0)
                family = np.where(little <= 0xFFFF, little, family)
            et = np.where(np.isin(family, AF_INET), IPV4,
                          np.where(np.isin(family, AF_INET6), IPV6, UNKNOWN))
            et = np.where(p.has(0, 4), et, UNKNOWN)
            at = np.full(count, 4, dtype=np.int64)
        else:
            et, at = np.full(count, UNKNOWN), np.zeros(count, dtype=np.int64)
        ethertype[rows], net[rows] = et, at
    return {"linktype": linktype, "ethertype": ethertype, "net": net, "mac_src": mac_src,
            "mac_dst": mac_dst, "has_mac_src": has_src, "has_mac_dst": has_dst}


def _llc(p: Bytes, et: np.ndarray, at: np.ndarray, is_llc: np.ndarray):
    """802.2 LLC: SNAP carries an ethertype; DSAP 0x42 is spanning tree; the rest is LLC."""
    if not is_llc.any():
        return et, at
    snap = is_llc & p.has(at, 8) & (p.u16(at) == 0xAAAA) & (p.u8(at + 2) == 0x03)
    et = np.where(snap, p.u16(at + 6), et)
    at = np.where(snap, at + 8, at)
    stp = is_llc & ~snap & (p.u8(at) == 0x42)
    et = np.where(stp, STP, np.where(is_llc & ~snap, LLC, et))
    return et, at


def _network_layer(packet: Bytes, link: dict, original: np.ndarray) -> dict:
    """IPv4/IPv6 headers (and IPv6 extension headers): addresses, protocol, where the
    transport header starts and how long its datagram is on the wire, fragments."""
    et, at = link["ethertype"], link["net"]
    first = packet.u8(at)   # version, and IPv4's header length
    version = first >> 4
    v4 = (et == IPV4) & packet.has(at, 20) & (version == 4)
    ihl = (first & 0x0F) * 4
    v4 &= ihl >= 20
    v6 = (et == IPV6) & packet.has(at, 40) & (version == 6)
    family = np.where(v4, 4, np.where(v6, 6, 0))
    ip = v4 | v6

    # IPv4: total length 0 means a TSO capture: the frame tells the length.
    total = packet.u16(at + 2)
    ip_len = np.where(total >= ihl, total, original - at)
    fragment_field = packet.u16(at + 6)
    more = (fragment_field & 0x2000) != 0
    offset = fragment_field & 0x1FFF
    proto = np.where(v4, packet.u8(at + 9), -1)
    l4 = np.where(v4, at + ihl, at + 40)
    l4_len = np.where(v4, ip_len - ihl, 0)
    fragment = v4 & (more | (offset > 0))
    not_last = v4 & more

    if v6.any():
        rows = np.flatnonzero(v6)
        p = packet.subset(rows)
        payload_len = p.u16(at[rows] + 4)
        nh = p.u8(at[rows] + 6)
        pos = at[rows] + 40
        remaining = np.where(payload_len > 0, payload_len, original[rows] - pos)
        frag6 = np.zeros(len(rows), dtype=bool)
        more6 = np.zeros(len(rows), dtype=bool)
        for _ in range(8):
            ext = np.isin(nh, IPV6_EXTENSIONS) & ~frag6
            if not ext.any():
                break
            seen = ext & p.has(pos, 8)
            here = p.within(pos)
            length = np.where(nh == 44, 8, np.where(nh == 51, (p.u8(here + 1) + 2) * 4,
                                                   (p.u8(here + 1) + 1) * 8))
            is_frag = seen & (nh == 44)
            frag_word = p.u16(here + 2)
            frag6 |= is_frag & (((frag_word >> 3) > 0) | ((frag_word & 1) == 1))
            more6 |= is_frag & ((frag_word & 1) == 1)
            nh = np.where(seen, p.u8(here), np.where(ext, -1, nh))
            pos = np.where(seen, pos + length, pos)
            remaining = np.where(seen, remaining - length, remaining)
        nh = np.where(np.isin(nh, IPV6_EXTENSIONS), -1, nh)
        proto[rows] = nh
        l4[rows] = pos
        l4_len[rows] = remaining
        fragment[rows] = frag6
        not_last[rows] = more6
    transport = ip & ~fragment
    key = _endpoint_keys(packet, v4, v6, at)
    return {"family": family, "ip": ip, "proto": proto, "l4": l4, "l4_len": l4_len,
            "fragment": fragment, "fragment_not_last": not_last, "transport": transport,
            "key": key, "v4": v4, "v6": v6, "at": at}


def _endpoint_keys(packet: Bytes, v4, v6, at) -> np.ndarray:
    """Addresses as 4 uint64 per packet (src hi, src lo, dst hi, dst lo); IPv4 in the low word."""
    n = len(at)
    key = np.zeros((n, 4), dtype=np.uint64)
    if v4.any():
        rows = np.flatnonzero(v4)
        p = packet.subset(rows)
        key[:, 1][rows] = p.u32(at[rows] + 12)
        key[:, 3][rows] = p.u32(at[rows] + 16)
    if v6.any():
        rows = np.flatnonzero(v6)
        p = packet.subset(rows)
        for column, offset in enumerate((8, 16, 24, 32)):
            key[:, column][rows] = p.u64(at[rows] + offset)
    return key


def _addresses(link: dict, net: dict) -> tuple[pa.Array, pa.Array]:
    """src and dst as Wireshark writes them: IPv4/IPv6 text, else the MAC addresses.

    The distinct IP addresses of both sides are formatted once; each column is then a single
    take from that text (and the few MAC addresses)."""
    key = net["key"]
    n = len(key)
    v4, v6 = np.flatnonzero(net["v4"]), np.flatnonzero(net["v6"])
    v4_codes, v4_text = _ipv4_strings(np.concatenate([key[v4, 1], key[v4, 3]]))
    v6_codes, v6_text = _ipv6_strings(np.concatenate([key[v6, 0], key[v6, 2]]),
                                      np.concatenate([key[v6, 1], key[v6, 3]]))
    v6_codes += len(v4_text)
    known = len(v4_text) + len(v6_text)
    columns = []
    for side in (0, 1):
        mac = link["mac_src"] if side == 0 else link["mac_dst"]
        has_mac = (link["has_mac_src"] if side == 0 else link["has_mac_dst"]) & ~net["ip"]
        macs = np.flatnonzero(has_mac)
        text = pa.concat_arrays([v4_text, v6_text, _mac_strings(mac[macs]), pa.array([""])])
        index = np.full(n, known + len(macs), dtype=np.int64)
        index[v4] = v4_codes[side * len(v4):(side + 1) * len(v4)]
        index[v6] = v6_codes[side * len(v6):(side + 1) * len(v6)]
        index[macs] = known + np.arange(len(macs))
        columns.append(text.take(pa.array(index)))
    return columns[0], columns[1]


# Decimal text of each byte value (left-aligned in 3 characters), its length, and hex text.
_DECIMAL = np.array([list(f"{v:<3}".encode()) for v in range(256)], dtype=np.uint8)
_DECIMAL_LEN = np.array([len(str(v)) for v in range(256)], dtype=np.int64)
_HEX = np.array([list(f"{v:02x}".encode()) for v in range(256)], dtype=np.uint8)


def _ipv4_strings(values: np.ndarray) -> tuple[np.ndarray, pa.Array]:
    """Dotted-quad text of the distinct uint32 addresses, and each value's index into it."""
    codes, unique = pd.factorize(values.astype(np.int64))
    octets = [(unique >> s) & 0xFF for s in (24, 16, 8, 0)]
    lengths = [_DECIMAL_LEN[o] for o in octets]
    offsets = np.zeros(len(unique) + 1, dtype=np.int64)
    np.cumsum(sum(lengths) + 3, out=offsets[1:])
    out = np.full(int(offsets[-1]) + 3, ord("."), dtype=np.uint8)
    position = offsets[:-1].copy()
    for octet, length in zip(octets, lengths):
        digits = _DECIMAL[octet]
        out[position] = digits[:, 0]
        for k in (1, 2):
            more = length > k
            out[position[more] + k] = digits[more, k]
        position += length + 1
    text = pa.StringArray.from_buffers(len(unique), pa.py_buffer(offsets.astype(np.int32)),
                                       pa.py_buffer(out[:offsets[-1]]))
    return codes, text


def _mac_strings(values: np.ndarray) -> pa.Array:
    """aa:bb:cc:dd:ee:ff text of 48-bit addresses."""
    octets = np.stack([(values >> s) & 0xFF for s in (40, 32, 24, 16, 8, 0)], axis=1)
    chars = np.full((len(values), 6, 3), ord(":"), dtype=np.uint8)
    chars[:, :, :2] = _HEX[octets]
    flat = chars.reshape(len(values), 18)[:, :17].ravel()
    offsets = (np.arange(len(values) + 1) * 17).astype(np.int32)
    return pa.StringArray.from_buffers(len(values), pa.py_buffer(offsets), pa.py_buffer(flat))


def _ipv6_strings(high: np.ndarray, low: np.ndarray) -> tuple[np.ndarray, pa.Array]:
    """RFC 5952 text (as Wireshark shows it) of the distinct addresses (uint64 halves), and
    each address's index into it."""
    high_codes, high_unique = pd.factorize(high)
    low_codes, low_unique = pd.factorize(low)
    codes, pairs = pd.factorize(high_codes.astype(np.int64) * len(low_unique) + low_codes)
    highs = high_unique[pairs // max(len(low_unique), 1)].tolist()
    lows = low_unique[pairs % max(len(low_unique), 1)].tolist()
    text = pa.array([_ipv6_text((hi << 64) | lo) for hi, lo in zip(highs, lows)], pa.string())
    return codes.astype(np.int64), text


@functools.lru_cache(maxsize=1 << 16)   # the same hosts come back batch after batch
def _ipv6_text(value: int) -> str:
    address = ipaddress.IPv6Address(value)
    if address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return address.compressed


def _window_scale_option(p: Bytes, l4: np.ndarray, header_len: np.ndarray,
                         flags: np.ndarray) -> np.ndarray:
    """The window scale shift of each SYN (-2: a SYN without the option; -1: not a SYN)."""
    shift = np.full(len(flags), -1, dtype=np.int64)
    # Only SYNs carry the option: walk their options alone.
    syn = np.flatnonzero((flags & TH_SYN) != 0)
    shift[syn] = _syn_window_shift(p.subset(syn), l4[syn], header_len[syn])
    return shift


def _syn_window_shift(p: Bytes, l4: np.ndarray, header_len: np.ndarray) -> np.ndarray:
    """The window scale shift in each SYN's options (-2: none)."""
    shift = np.full(len(l4), -2, dtype=np.int64)
    pos = l4 + 20
    end = l4 + header_len
    active = np.ones(len(l4), dtype=bool)
    for _ in range(40):
        active &= (pos < end) & p.has(pos, 1)
        if not active.any():
            break
        here = p.within(pos)
        kind = p.u8(here)
        length = p.u8(here + 1)
        found = active & (kind == 3) & (length == 3) & p.has(pos, 3)
        shift = np.where(found, np.minimum(p.u8(here + 2), 14), shift)
        active &= (kind != 0) & ((kind == 1) | (length >= 2))
        pos = np.where(kind == 1, pos + 1, pos + np.maximum(length, 2))
    return shift


def _tls_records(packet: Bytes, candidates, payload, visible) -> dict:
    """TLS records starting a TCP payload: record version, ServerHello version, message list."""
    first = candidates & (visible >= 5)
    content = packet.u8(payload)
    first &= (content >= 20) & (content <= 24) & (packet.u8(payload + 1) == 3)
    first &= (packet.u8(payload + 2) <= 4) & (packet.u16(payload + 3) <= TLS_RECORD_MAX)
    rows = np.flatnonzero(first)
    m = len(rows)
    result = {"rows": rows, "record_version": np.zeros(m, dtype=np.int64),
              "server_version": np.zeros(m, dtype=np.int64), "message": pa.nulls(m, pa.string())}
    if not m:
        return result
    p = packet.subset(rows)
    start = payload[rows]
    end = start + visible[rows]
    result["record_version"] = p.u16(start + 1)

    # ServerHello: the version it chose (supported_versions, if visible, says TLS 1.3).
    hello = (p.u8(start) == 22) & (p.u8(start + 5) == 2) & p.has(start, 11)
    server_version = np.where(hello, p.u16(start + 9), 0)
    hellos = np.flatnonzero(hello)
    chosen = _supported_version(p.subset(hellos), start[hellos], end[hellos])
    server_version[hellos] = np.where(chosen > 0, chosen, server_version[hellos])
    result["server_version"] = server_version

    # Walk the visible records (and the handshake messages inside them), a step per item;
    # each step reads only the rows still walking (most stop after their first record).
    items_row, items_code = [], []
    pos = start.copy()
    record_end = np.full(m, -1, dtype=np.int64)
    cipher_changed = np.zeros(m, dtype=bool)
    active = np.ones(m, dtype=bool)
    for _ in range(16):
        live = np.flatnonzero(active)
        q, at, stop, in_record, changed = (p.subset(live), pos[live], end[live],
                                            record_end[live], cipher_changed[live])
        inside = at < in_record
        message = inside & (at + 4 <= stop)
        here = q.within(at)
        hs_type = q.u8(here)
        hs_len = q.u24(here + 1)
        known = np.isin(hs_type, list(TLS_HANDSHAKE_NAMES))
        encrypted = message & (changed | ~known | (at + 4 + hs_len > in_record))
        retry = message & (hs_type == 2) & q.has(at, 14) & \
            (q.u64(here + 6) == np.uint64(int.from_bytes(HRR_RANDOM_PREFIX, "big")))
        code = np.where(encrypted, TLS_ENCRYPTED_HS, np.where(retry, 6, hs_type))
        items_row.append(live[message])
        items_code.append(code[message])
        after_message = np.where(encrypted, in_record, at + 4 + hs_len)

        header = ~inside & (at + 5 <= stop)
        content = q.u8(here)
        length = q.u16(here + 3)
        record = header & (content >= 20) & (content <= 24) & (q.u8(here + 1) == 3) & \
            (q.u8(here + 2) <= 4)
        plain_alert = record & (content == 21) & (length == 2) & ~changed & q.has(at, 7)
        alert_code = TLS_ALERT_BASE + q.u8(here + 5) * 256 + q.u8(here + 6)
        code = np.select(
            [content == 20, plain_alert, content == 21, content == 23, content == 24],
            [TLS_CCS, alert_code, TLS_ENCRYPTED_ALERT, TLS_APPDATA, TLS_HEARTBEAT], -1)
        shown = record & (content != 22)
        encrypted_hs = record & (content == 22) & changed
        code = np.where(encrypted_hs, TLS_ENCRYPTED_HS, code)
        shown |= encrypted_hs
        items_row.append(live[shown])
        items_code.append(code[shown])
        cipher_changed[live] = changed | (record & (content == 20))
        enter = record & (content == 22) & ~encrypted_hs
        record_end[live] = np.where(enter, at + 5 + length, in_record)
        after_record = np.where(enter, at + 5, at + 5 + length)

        at = np.where(message, after_message, np.where(record, after_record, at))
        pos[live] = at
        active[live] = (message | record) & (at < stop)
        if not active.any():
            break
    order = np.concatenate(items_row)
    codes = np.concatenate(items_code)
    # Items of a row in the order they were found (steps alternate message/record lists).
    step = np.concatenate([np.full(len(r), k) for k, r in enumerate(items_row)])
    sort = np.lexsort((step, order))
    order, codes = order[sort], codes[sort]
    unique_codes, code_index = np.unique(codes, return_inverse=True)
    names = pa.array([_tls_item_name(int(c)) for c in unique_codes], pa.string())
    offsets = np.zeros(m + 1, dtype=np.int32)
    np.cumsum(np.bincount(order, minlength=m), out=offsets[1:])
    lists = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()),
                                     names.take(pa.array(code_index.ravel())))
    joined = pc.binary_join(lists, ", ")
    result["message"] = pc.if_else(pc.equal(pc.list_value_length(lists), 0), None, joined)
    return result


def _tls_item_name(code: int) -> str:
    if code >= TLS_ALERT_BASE:
        level, description = divmod(code - TLS_ALERT_BASE, 256)
        return (f"Alert (Level: {TLS_ALERT_LEVELS.get(level, f'Unknown ({level})')}, "
                f"Description: {TLS_ALERTS.get(description, f'Unknown ({description})')})")
    return {TLS_CCS: "Change Cipher Spec", TLS_APPDATA: "Application Data",
            TLS_HEARTBEAT: "Heartbeat", TLS_ENCRYPTED_HS: "Encrypted Handshake Message",
            TLS_ENCRYPTED_ALERT: "Encrypted Alert"}.get(
                code, TLS_HANDSHAKE_NAMES.get(code, f"Unknown Handshake Message ({code})"))


def _supported_version(p: Bytes, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """The supported_versions extension of ServerHello records at start..end of each packet,
    if it was captured (0 if not); a step per extension."""
    length = end - start
    pos = np.full(len(start), 5 + 4 + 2 + 32)  # record and handshake headers, version, random
    whole = length >= pos + 1
    pos = pos + 1 + p.u8(p.within(start + pos)) + 2 + 1   # session id, cipher suite, compression
    whole &= length >= pos + 2
    ext_end = np.minimum(length, pos + 2 + p.u16(p.within(start + pos)))
    pos += 2
    chosen = np.zeros(len(start), dtype=np.int64)
    active = whole & (pos + 4 <= ext_end)
    while active.any():
        here = p.within(start + pos)
        size = p.u16(here + 2)
        found = active & (p.u16(here) == 43) & (size == 2) & (pos + 6 <= ext_end)
        chosen = np.where(found, p.u16(here + 4), chosen)
        pos += 4 + size
        active &= ~found & (pos + 4 <= ext_end)
    return chosen


def _dns_query(packet: Bytes, rows_mask, message, end) -> pa.Array:
    """The first question's name, from length-prefixed labels ("<Root>" for the root)."""
    n = len(rows_mask)
    rows = np.flatnonzero(rows_mask & packet.has(message, 12))
    if not len(rows):
        return pa.nulls(n, pa.string())
    p = packet.subset(rows)
    message, end = message[rows], np.minimum(end[rows], p.captured)
    asks = p.u16(message + 4) >= 1
    name = message + 12
    pos = name.copy()
    active = asks & (pos < end)
    dots_row, dots_at = [], []
    complete = np.zeros(len(rows), dtype=bool)
    for _ in range(128):
        if not active.any():
            break
        label = p.u8(pos)
        done = active & ((label == 0) | (label >= 0xC0))
        complete |= done
        step = active & (label >= 1) & (label <= 63) & (pos + 1 + label <= end)
        inner = step & (pos > name)
        dots_row.append(np.flatnonzero(inner))
        dots_at.append(pos[inner])
        pos = np.where(step, pos + 1 + label, pos)
        active = step & (pos < end)
    shown = asks
    length = np.where(shown, np.maximum(pos - name - 1, 0), 0)
    flat, offsets = p.slices(name + 1, length)
    flat = flat.copy()
    if dots_row:
        which = np.concatenate(dots_row)
        at = np.concatenate(dots_at)
        flat[offsets[which] + (at - name[which] - 1)] = ord(".")
    names = _strings(flat, offsets, len(rows))
    names = pc.if_else(pc.equal(pc.utf8_length(names), 0), "<Root>", names)
    names = pc.if_else(pa.array(shown), names, None)
    return _scatter(n, rows, names, pa.string())

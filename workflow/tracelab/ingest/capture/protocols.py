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

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tracelab.core.packets import DICT_STRING, null_if_empty

# INFO_FIELDS this module supplies (the normalization stage leaves them as they are).
HEADER_FIELDS = ("src_port", "dst_port", "tcp_flags", "tcp_seq", "tcp_ack", "tcp_win",
                 "tcp_len", "tcp_analysis", "http_method", "http_uri", "http_version",
                 "http_status", "dns_query", "tls_message")

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

TH_FIN, TH_SYN, TH_RST, TH_PSH, TH_ACK = 0x01, 0x02, 0x04, 0x08, 0x10

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
REUSED = "TCP Port numbers reused"
ANALYSIS_ORDER = ("reused", "lost", "ack_lost", "keepalive", "keepalive_ack", "dup_ack",
                  "zwp", "zero_window", "zwp_ack", "window_update", "window_full",
                  "fast_retransmission", "spurious_retransmission", "out_of_order",
                  "retransmission")
ANALYSIS_TEXT = {"reused": REUSED, "lost": "TCP Previous segment not captured",
                 "ack_lost": "TCP ACKed unseen segment", "keepalive": "TCP Keep-Alive",
                 "keepalive_ack": "TCP Keep-Alive ACK", "zwp": "TCP ZeroWindowProbe",
                 "zero_window": "TCP ZeroWindow", "zwp_ack": "TCP ZeroWindowProbeAck",
                 "window_update": "TCP Window Update", "window_full": "TCP Window Full",
                 "fast_retransmission": "TCP Fast Retransmission",
                 "spurious_retransmission": "TCP Spurious Retransmission",
                 "out_of_order": "TCP Out-Of-Order", "retransmission": "TCP Retransmission"}
OOO_THRESHOLD_NS = 3_000_000
FAST_RETRANSMISSION_NS = 20_000_000
# Sequence arithmetic modulo 2**32: for int64, x & LOW32 == x % 2**32, without a division.
LOW32 = (1 << 32) - 1


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
        return pa.DictionaryArray.from_arrays(
            pa.array(codes, pa.int32()), pa.array(self.names, pa.string())).cast(pa.string())


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


class Decoder:
    """Decodes batch after batch of one capture; TCP conversations carry over between them."""

    def __init__(self):
        self.protocols = Names()
        self.tcp = TcpConversations()
        self.counts = {"link_types": {}, "non_ip_frames": 0, "ip_fragments": 0,
                       "http_request_lines_incomplete": 0}
        # UDP port -> protocol code (-1: none).
        self.udp_ports = np.full(1 << 16, -1, dtype=np.int64)
        for port, name in UDP_PORT_NAMES.items():
            self.udp_ports[port] = self.protocols.code(name)

    def notes(self) -> dict:
        return {**self.counts, "tcp_conversations": self.tcp.conversations,
                "tcp_port_reuses": self.tcp.reuses}

    def decode(self, data, start, captured, original, linktype, ts_ns, frame) -> dict:
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
        conv = self.tcp.update(
            key=np.take(net["key"], tcp_rows, axis=0), family=net["family"][tcp_rows],
            src_port=src_port[tcp_rows], dst_port=dst_port[tcp_rows],
            seq=tcp_packet.u32(tcp_l4 + 4), ack=tcp_packet.u32(tcp_l4 + 8),
            flags=flags[tcp_rows], window=tcp_packet.u16(tcp_l4 + 14),
            seglen=np.where(sane, tcp_len, 0)[tcp_rows], window_shift=window_shift,
            ts_ns=ts_ns[tcp_rows], frame=frame[tcp_rows],
            server_version=server_version[tcp_rows])
        columns["tcp_flags"] = _column(flags, tcp, pa.int16())
        columns["tcp_seq"] = _spread(n, tcp_rows, conv["seq"], pa.int64())
        columns["tcp_ack"] = _spread(n, tcp_rows, conv["ack"], pa.int64(), conv["has_ack"])
        columns["tcp_win"] = _spread(n, tcp_rows, conv["window"], pa.int64())
        columns["tcp_len"] = _column(np.where(sane, tcp_len, 0), sane, pa.int64())
        columns["tcp_analysis"] = _scatter(n, tcp_rows[conv["analysis_rows"]], conv["analysis"],
                                           pa.string())

        if len(tls_rows):
            session = np.zeros(n, dtype=np.int64)
            session[tcp_rows] = conv["tls_version"]
            version = np.where(session[tls_rows] > 0, session[tls_rows],
                               tls["record_version"])
            codes = np.array([self.protocols.code(TLS_VERSION_NAMES.get(int(v), "TLS"))
                              for v in np.unique(version)])
            app[tls_rows] = codes[np.searchsorted(np.unique(version), version)]
        columns["tls_message"] = _scatter(n, tls_rows, tls["message"], pa.string())

        protocol = np.where(app >= 0, app, protocol)
        columns["protocol"] = self.protocols.column(protocol)
        if not http:
            for name, type_ in (("http_method", DICT_STRING), ("http_uri", pa.string()),
                                ("http_version", DICT_STRING), ("http_status", pa.int16())):
                columns[name] = pa.nulls(n, type_)
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


class TcpConversations:
    """TCP state per conversation, carried from batch to batch.

    Follows Wireshark's tcp_analyze_sequence_number(): the base of each direction is its SYN's
    sequence number, or seq-1 of its first segment, or ack-1 of the first ACK from the other
    side, whichever comes first; a SYN with a new sequence number on a known 4-tuple starts a
    new conversation ("TCP Port numbers reused"). Window scale from the handshake's options.

    Rows are processed sorted by conversation instance, then capture order; "the previous row
    on this side" and "the other side's latest row" are found with running maxima of row
    indices, and an instance's values from earlier batches fill in where a batch has none.
    """

    STATE = {  # name: (initial value, one per direction)
        "base": (-1, True), "ws": (-1, True), "nextseq": (-1, True), "nextseq_ts": (0, True),
        "lastack": (-1, True), "lastack_ts": (0, True), "window": (-1, True),
        "dupacks": (0, True), "nondup_frame": (0, True), "keepalive": (0, True),
        "zwp": (0, True), "tls": (0, False), "syn_ts": (-1, False), "rtt": (-1, False),
    }

    def __init__(self):
        self.index: dict[bytes, int] = {}   # conversation key -> its current instance
        self.instances = 0
        self.state = {name: np.full((1024, 2) if pair else 1024, value, dtype=np.int64)
                      for name, (value, pair) in self.STATE.items()}
        self.conversations = 0
        self.reuses = 0

    def _grow(self, count: int) -> None:
        size = len(self.state["base"])
        if self.instances + count <= size:
            return
        new = max(self.instances + count, 2 * size, 1024)
        for name, (value, pair) in self.STATE.items():
            grown = np.full((new, 2) if pair else new, value, dtype=np.int64)
            grown[:size] = self.state[name]
            self.state[name] = grown

    def _conversations(self, key: np.ndarray, family, src_port, dst_port):
        """Each row's conversation (batch-local), its direction (0: from the lower endpoint,
        address then port), each conversation's key and known instance (-1: new)."""
        # The IP version rides with the port, so 198.18.0.1 is not ::c612:1.
        src = (key[:, 0], key[:, 1], (src_port | family << 16).astype(np.uint64))
        dst = (key[:, 2], key[:, 3], (dst_port | family << 16).astype(np.uint64))
        lower = (src[0] < dst[0]) | (src[0] == dst[0]) & (
            (src[1] < dst[1]) | (src[1] == dst[1]) & (src[2] <= dst[2]))
        columns = [np.where(lower, a, b) for a, b in zip(src, dst)] + \
            [np.where(lower, b, a) for a, b in zip(src, dst)]
        conversation = _factorize_rows(columns)
        # Codes come in order of first appearance: a conversation's first row is where the
        # running maximum rises.
        first = np.flatnonzero(np.r_[True, conversation[1:] >
                                     np.maximum.accumulate(conversation)[:-1]])
        # Only distinct conversations meet Python: one dict lookup each, keyed by the
        # conversation's 48 key bytes.
        table = np.column_stack([column[first] for column in columns]).astype(np.uint64)
        keys = table.view(np.dtype((np.void, table.shape[1] * 8))).ravel().tolist()
        known = np.array([self.index.get(k, -1) for k in keys], dtype=np.int64)
        return keys, conversation, np.where(lower, 0, 1), known

    def update(self, *, key, family, src_port, dst_port, seq, ack, flags, window, seglen,
               window_shift, ts_ns, frame, server_version) -> dict:
        """Per TCP row (in capture order): relative seq and ack, the scaled window, the TLS
        version its connection settled on (0 if none yet); and the analysis notes of the rows
        that have any ("analysis_rows", ascending)."""
        m = len(seq)
        if not m:
            empty = np.zeros(0, dtype=np.int64)
            return {"seq": empty, "ack": empty, "has_ack": np.zeros(0, dtype=bool),
                    "window": empty, "tls_version": empty, "analysis_rows": empty,
                    "analysis": pa.array([], pa.string())}
        keys, conv, direction, known = self._conversations(key, family, src_port, dst_port)
        # A stable sort of 16-bit codes is a radix sort, several times faster.
        order = np.argsort(conv.astype(np.uint16) if len(keys) <= 1 << 16 else conv,
                           kind="stable")
        conv, d = conv[order], direction[order]
        seq, ack, flags, window, seglen, shift_option, ts, frame, server_version = (
            a[order] for a in (seq, ack, flags, window, seglen, window_shift, ts_ns, frame,
                               server_version))
        rows = np.arange(m)
        at_d, at_o = 2 * rows + d, 2 * rows + 1 - d   # this side, the other side: _pick
        cstart = _group_starts(conv)
        is_ack = (flags & TH_ACK) != 0
        is_syn = (flags & TH_SYN) != 0
        pure_syn = is_syn & ~is_ack

        # Instances: a pure SYN whose seq is not its side's base starts a new one.
        current = known[conv]
        carried_base = _pick(np.take(self.state["base"], np.maximum(current, 0), axis=0),
                             at_d)
        carried_base = np.where(current >= 0, carried_base, -1)
        own = _rule_base(cstart, d, seq, ack, is_syn, is_ack)
        sides = d[:, None] == np.array([0, 1])
        previous_syn = _pick(_last_before(pure_syn[:, None] & sides, cstart), at_d)
        base_now = np.where(
            previous_syn >= 0, seq[np.maximum(previous_syn, 0)],
            np.where(carried_base >= 0, carried_base,
                     np.where(_pick(own["pos"], at_d) < rows, _pick(own["value"], at_d), -1)))
        reused = pure_syn & (base_now >= 0) & (seq != base_now)
        first_seen = (current < 0) & (rows == cstart)
        new_instance = reused | first_seen
        count = int(new_instance.sum())
        self._grow(count)
        ids = np.full(m, -1, dtype=np.int64)
        ids[new_instance] = np.arange(self.instances, self.instances + count)
        self.instances += count
        self.conversations += int(first_seen.sum())
        self.reuses += int(reused.sum())
        latest = _last_before(new_instance[:, None], cstart, inclusive=True)[:, 0]
        inst = np.where(latest >= 0, ids[np.maximum(latest, 0)], current)
        conv_ends = _group_ends(cstart)
        self.index.update(zip((keys[c] for c in conv[conv_ends].tolist()),
                              inst[conv_ends].tolist()))

        istart = _group_starts(inst)
        # Each instance's state from earlier batches, read once per instance (the state
        # tables are large: fewer scattered reads), then spread over the instance's rows.
        ends = _group_ends(istart)
        sizes = np.diff(np.r_[-1, ends])
        st = {name: np.repeat(np.take(self.state[name], inst[ends], axis=0), sizes, axis=0)
              for name in self.STATE}
        # Instances are the conversations unless a port reuse split one in this batch.
        rule = own if np.array_equal(istart, cstart) else _rule_base(istart, d, seq, ack,
                                                                      is_syn, is_ack)
        base = np.where(st["base"] >= 0, st["base"], rule["value"])
        base_fwd, base_rev = _pick(base, at_d), _pick(base, at_o)
        rel_seq = (seq - base_fwd) & LOW32
        rel_ack = (ack - base_rev) & LOW32

        # Window scale: each side's shift from its SYN (-2: SYN without the option; -1: no
        # SYN seen); if either side went without, neither scales.
        ws = st["ws"].copy()
        for side in (0, 1):
            last = _group_last_row(is_syn & (d == side), istart)
            ws[:, side] = np.where(last >= 0, shift_option[np.maximum(last, 0)], ws[:, side])
        ws_effective = np.where((ws == -2).any(axis=1)[:, None], -2, ws)
        shift = np.maximum(ws_effective, 0)
        scaled_window = np.where(is_syn, window, window << _pick(shift, at_d))

        # The TLS session's version, from its ServerHello on.
        hello = _last_before((server_version > 0)[:, None], istart, inclusive=True)[:, 0]
        tls = np.where(hello >= 0, server_version[np.maximum(hello, 0)], st["tls"])

        analysis = _analysis(istart, d, rel_seq, ack, base_fwd, rel_ack, flags, window,
                             seglen, ts, frame, ws_effective, st, reused, ends)

        target = inst[ends]
        self.state["base"][target] = base[ends]
        self.state["ws"][target] = ws[ends]
        self.state["tls"][target] = tls[ends]
        for name, value in analysis["state"].items():
            self.state[name][target] = value

        restore = np.empty(m, dtype=np.int64)
        restore[order] = rows
        # Only the (few) rows with notes are put back in capture order.
        noted, text = analysis["text"]
        noted = order[noted]
        back = np.argsort(noted)
        return {"seq": rel_seq[restore], "ack": rel_ack[restore], "has_ack": is_ack[restore],
                "window": scaled_window[restore], "tls_version": tls[restore],
                "analysis_rows": noted[back], "analysis": text.take(pa.array(back))}


def _pick(pairs: np.ndarray, at: np.ndarray) -> np.ndarray:
    """pairs[row, side] for flat positions at = 2 * row + side of an (m, 2) array: one 1-D
    take (indexing with a row and a side array is several times slower)."""
    return pairs.ravel().take(at)


def _factorize_rows(columns: list[np.ndarray]) -> np.ndarray:
    """Dense codes, in order of first appearance, of the distinct rows of several non-negative
    integer columns (exact: columns are folded in pairwise, each pair's codes fitting in one
    int64). A column of one value changes nothing and is skipped; one of small values (ports)
    is folded in as it is, without factorizing it first."""
    codes = np.zeros(len(columns[0]), dtype=np.int64)
    for column in columns:
        low, high = int(column.min()), int(column.max())
        if low == high:
            continue
        if high < 1 << 20:
            more, size = column.astype(np.int64), high + 1
        else:
            more, uniques = pd.factorize(column)
            size = len(uniques)
        codes, _ = pd.factorize(codes * size + more)
    return codes


def _group_starts(group: np.ndarray) -> np.ndarray:
    """For rows sorted by group: each row's group's first row."""
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    return np.repeat(starts, np.diff(np.r_[starts, len(group)]))


def _group_ends(group_start: np.ndarray) -> np.ndarray:
    """The last row of each group."""
    starts = np.flatnonzero(np.r_[True, group_start[1:] != group_start[:-1]])
    return np.r_[starts[1:], len(group_start)] - 1


def _group_last_row(mask: np.ndarray, group_start: np.ndarray) -> np.ndarray:
    """Each row gets its group's last row with `mask` (-1 if none)."""
    m = len(mask)
    starts = np.flatnonzero(np.r_[True, group_start[1:] != group_start[:-1]])
    last = np.maximum.reduceat(np.where(mask, np.arange(m), -1), starts)
    return np.repeat(last, np.diff(np.r_[starts, m]))


def _last_before(mask: np.ndarray, group_start: np.ndarray, inclusive: bool = False):
    """Per column of `mask`: the last row with it set before (or at) each row, within the
    row's group (-1 if none)."""
    m = len(mask)
    # In place where possible: fresh batch-sized arrays cost page faults.
    run = np.where(mask, np.arange(m)[:, None], -1)
    np.maximum.accumulate(run, axis=0, out=run)
    if not inclusive:
        run[1:] = run[:-1].copy()
        run[0] = -1
    np.putmask(run, run < group_start[:, None], -1)
    return run


def _group_first(mask: np.ndarray, group_start: np.ndarray) -> np.ndarray:
    """Each row gets its group's first row with `mask` (m if none)."""
    m = len(mask)
    starts = np.flatnonzero(np.r_[True, group_start[1:] != group_start[:-1]])
    first = np.minimum.reduceat(np.where(mask, np.arange(m), m), starts)
    return np.repeat(first, np.diff(np.r_[starts, m]))


def _grouped_cummax(values: np.ndarray, group_start: np.ndarray) -> np.ndarray:
    """Running maximum within each group; values >= -1 and below 2**40."""
    group = np.cumsum(np.r_[True, group_start[1:] != group_start[:-1]])
    lifted = group * (1 << 41) + (values + 1)
    return np.maximum.accumulate(lifted) - group * (1 << 41) - 1


def _rule_base(group_start, d, seq, ack, is_syn, is_ack) -> dict:
    """Per row and side: the base Wireshark sets from the group's own rows (seq of the side's
    first SYN, seq-1 of its first segment, or ack-1 of the other side's first ACK, whichever
    comes first) and the row that sets it (m if none)."""
    m = len(d)
    rows = np.arange(m)
    starts = np.flatnonzero(np.r_[True, group_start[1:] != group_start[:-1]])
    # Worked out per group, then repeated over the group's rows.
    value = np.empty((len(starts), 2), dtype=np.int64)
    position = np.empty((len(starts), 2), dtype=np.int64)
    fwd_value = np.where(is_syn, seq, seq - 1) & LOW32
    rev_value = (ack - 1) & LOW32
    for side in (0, 1):
        first_fwd = np.minimum.reduceat(np.where(d == side, rows, m), starts)
        first_rev = np.minimum.reduceat(np.where((d != side) & is_ack, rows, m), starts)
        use_fwd = first_fwd <= first_rev
        chosen = np.where(use_fwd, first_fwd, first_rev)
        picked = np.where(use_fwd, fwd_value[np.minimum(first_fwd, m - 1)],
                          rev_value[np.minimum(first_rev, m - 1)])
        value[:, side] = np.where(chosen < m, picked, -1)
        position[:, side] = chosen
    sizes = np.diff(np.r_[starts, m])
    return {"value": np.repeat(value, sizes, axis=0), "pos": np.repeat(position, sizes, axis=0)}


def _analysis(istart, d, seq, ack, base_fwd, rel_ack, flags, window, seglen, ts, frame,
              ws, st, reused, ends) -> dict:
    """Wireshark's TCP sequence analysis, vectorised over rows sorted by instance.

    `seq` is relative; ack numbers and windows are compared raw, as Wireshark does; the
    state's per-side values stand in for rows before this batch. The state returned is each
    instance's after its last row (`ends`), all the next batch needs.
    """
    m = len(d)
    rows = np.arange(m)
    at_d, at_o = 2 * rows + d, 2 * rows + 1 - d               # this side, the other: _pick
    syn, fin, rst, has_ack = ((flags & bit) != 0 for bit in (TH_SYN, TH_FIN, TH_RST, TH_ACK))
    synfin = (syn | fin).astype(np.int64)
    sfr = syn | fin | rst
    sides = d[:, None] == np.array([0, 1])
    last_on = _last_before(sides, istart, inclusive=True)     # latest row of each side so far
    # This side's previous row: its latest as of the row before (if in the same instance).
    same = np.where(rows > istart, _pick(last_on, np.maximum(at_d - 2, 0)), -1)
    other = _pick(last_on, at_o)                              # the other side's latest row
    same_at = 2 * np.maximum(same, 0) + d

    def earlier(values, name, index, at):
        return np.where(index >= 0, values[np.maximum(index, 0)], _pick(st[name], at))

    def nextseq_running(excluded):
        """Per row and side: highest seq+len(+SYN/FIN) sent so far, and when it last rose
        (Wireshark's nextseq and nextseqtime, after the row)."""
        value = np.empty((m, 2), dtype=np.int64)
        when = np.empty((m, 2), dtype=np.int64)
        for side in (0, 1):
            reach = np.where((d == side) & ~excluded, seq + seglen + synfin, -1)
            running = _grouped_cummax(reach, istart)
            before = np.where(rows > istart, np.r_[-1, running[:-1]], -1)
            carried = st["nextseq"][:, side]
            rose = (reach > before) & (reach > carried)
            last_rise = _last_before(rose[:, None], istart, inclusive=True)[:, 0]
            value[:, side] = np.maximum(running, carried)
            when[:, side] = np.where(last_rise >= 0, ts[np.maximum(last_rise, 0)],
                                     st["nextseq_ts"][:, side])
        return value, when

    def before_row(per_side, name):
        """This side's value as of just before each row."""
        return np.where(same >= 0, _pick(per_side, same_at), _pick(st[name], at_d))

    rev_window = earlier(window, "window", other, at_o)
    candidate_zwp = (seglen == 1) & (rev_window == 0)
    running, running_ts = nextseq_running(candidate_zwp)
    zwp = candidate_zwp & (before_row(running, "nextseq") >= 0) & \
        (seq == before_row(running, "nextseq"))
    if not np.array_equal(zwp, candidate_zwp):   # (usually there is no candidate at all)
        running, running_ts = nextseq_running(zwp)
    nextseq = before_row(running, "nextseq")
    nextseq_ts = before_row(running_ts, "nextseq_ts")
    known = nextseq >= 0

    fwd_window = earlier(window, "window", same, at_d)
    fwd_lastack = earlier(ack, "lastack", same, at_d)
    rev_lastack = earlier(ack, "lastack", other, at_o)
    rev_lastack_ts = earlier(ts, "lastack_ts", other, at_o)
    rev_ws = _pick(ws, at_o)
    rev_lastack_rel = (rev_lastack - base_fwd) & LOW32

    zero_window = (window == 0) & ~sfr
    lost = ~zwp & known & (seq > nextseq) & ~rst
    keepalive = ~zwp & (seglen <= 1) & (seq == nextseq - 1) & ~sfr
    window_update = ~zwp & (seglen == 0) & (window != 0) & (window != fwd_window) & \
        (seq == nextseq) & (ack == fwd_lastack) & ~sfr
    window_full = ~zwp & (seglen > 0) & (rev_ws != -1) & (rev_lastack >= 0) & \
        (rev_window >= 0) & ~sfr & ((seq + seglen) & LOW32 == (
            rev_lastack_rel + (rev_window << np.maximum(rev_ws, 0))) & LOW32)
    repeat = ~zwp & (seglen == 0) & (window == fwd_window) & (seq == nextseq) & \
        (ack == fwd_lastack) & ~sfr
    rev_keepalive = earlier(keepalive.astype(np.int64), "keepalive", other, at_o) == 1
    rev_zwp = earlier(zwp.astype(np.int64), "zwp", other, at_o) == 1
    keepalive_ack = repeat & (window != 0) & rev_keepalive
    zwp_ack = repeat & (window == 0) & rev_zwp
    dup_ack = repeat & (window != 0) & ~keepalive_ack

    # Dup-ACK counter: counts on since the side's ack number last changed.
    changed = ack != fwd_lastack
    run_start = _pick(_last_before(changed[:, None] & sides, istart, inclusive=True), at_d)
    dup_count = np.zeros((m, 2), dtype=np.int64)
    for side in (0, 1):
        dup_count[:, side] = np.cumsum(dup_ack & (d == side))
    counted = _pick(dup_count, at_d)
    before_group = np.where(istart > 0, _pick(dup_count, 2 * np.maximum(istart - 1, 0) + d), 0)
    dupacks = np.where(run_start >= 0,
                       counted - _pick(dup_count, 2 * np.maximum(run_start, 0) + d),
                       _pick(st["dupacks"], at_d) + counted - before_group)
    nondup_frame = np.where(run_start >= 0, frame[np.maximum(run_start, 0)],
                            _pick(st["nondup_frame"], at_d))
    rev_dupacks = earlier(dupacks, "dupacks", other, at_o)

    # ACKs beyond anything the other side was seen sending.
    rev_nextseq = np.where(other >= 0, _pick(running, 2 * np.maximum(other, 0) + 1 - d),
                           _pick(st["nextseq"], at_o))
    ack_lost = has_ack & (rev_nextseq >= 0) & (rel_ack > rev_nextseq) & \
        (rel_ack - rev_nextseq < 1 << 31)

    threshold = np.where(st["rtt"] >= 0, st["rtt"], OOO_THRESHOLD_NS)
    data_like = ((seglen > 0) | (synfin > 0)) & ~keepalive
    not_advanced = known & (seq < nextseq) & ~((seglen > 1) & (nextseq - 1 == seq))
    fast = data_like & not_advanced & (rev_dupacks >= 2) & (rev_lastack >= 0) & \
        (rev_lastack_rel == seq) & (ts - rev_lastack_ts < FAST_RETRANSMISSION_NS)
    out_of_order = data_like & ~fast & not_advanced & (ts - nextseq_ts < threshold) & \
        (nextseq != seq + seglen)
    spurious = data_like & ~fast & ~out_of_order & (seglen > 0) & (rev_lastack > 0) & \
        ((seq + seglen) <= rev_lastack_rel)
    retransmission = data_like & ~fast & ~out_of_order & ~spurious & not_advanced

    found = {"reused": reused, "lost": lost, "ack_lost": ack_lost, "keepalive": keepalive,
             "keepalive_ack": keepalive_ack, "dup_ack": dup_ack, "zwp": zwp,
             "zero_window": zero_window, "zwp_ack": zwp_ack, "window_update": window_update,
             "window_full": window_full, "fast_retransmission": fast,
             "spurious_retransmission": spurious, "out_of_order": out_of_order,
             "retransmission": retransmission}

    # State after each instance's last row.
    state = {"nextseq": running[ends], "nextseq_ts": running_ts[ends]}
    last_at_end = last_on[ends]
    for name, values in (("lastack", ack), ("lastack_ts", ts), ("window", window),
                         ("dupacks", dupacks), ("nondup_frame", nondup_frame),
                         ("keepalive", keepalive), ("zwp", zwp)):
        state[name] = np.where(last_at_end >= 0, values[np.maximum(last_at_end, 0)],
                               st[name][ends])
    last_syn = _last_before((syn & ~has_ack)[:, None], istart, inclusive=True)[:, 0]
    syn_ts = np.where(last_syn >= 0, ts[np.maximum(last_syn, 0)], st["syn_ts"])
    synack = syn & has_ack & (syn_ts >= 0)
    first_synack = np.where(st["rtt"] >= 0, m, _group_first(synack, istart))[ends]
    state["syn_ts"] = syn_ts[ends]
    state["rtt"] = np.where(first_synack < m, ts[np.minimum(first_synack, m - 1)]
                            - syn_ts[np.minimum(first_synack, m - 1)], st["rtt"][ends])
    return {"text": _analysis_text(found, dupacks, nondup_frame, m), "state": state}


def _analysis_text(found: dict, dupacks, nondup_frame, m: int) -> tuple[np.ndarray, pa.Array]:
    """The rows with flags, and their flags as Wireshark's bracketed Info notes, joined by
    "; "."""
    bits = np.zeros(m, dtype=np.int64)
    for k, name in enumerate(ANALYSIS_ORDER):
        bits |= found[name].astype(np.int64) << k
    rows = np.flatnonzero(bits)
    if not len(rows):
        return rows, pa.array([], pa.string())
    unique, inverse = np.unique(bits[rows], return_inverse=True)
    dup = ANALYSIS_ORDER.index("dup_ack")

    def names(value: int, ks) -> str:
        return "; ".join(ANALYSIS_TEXT[ANALYSIS_ORDER[k]] for k in ks if value >> k & 1)

    head = pa.array([names(int(u), range(dup)) for u in unique]).take(pa.array(inverse))
    tail = pa.array([names(int(u), range(dup + 1, len(ANALYSIS_ORDER)))
                     for u in unique]).take(pa.array(inverse))
    dup_text = pc.if_else(pa.array(found["dup_ack"][rows]), pc.binary_join_element_wise(
        "TCP Dup ACK ", pa.array(nondup_frame[rows]).cast(pa.string()), "#",
        pa.array(dupacks[rows]).cast(pa.string()), ""), "")
    # All three parts are non-null strings (binary_join_element_wise drops rows whose
    # parts are all null); empty parts leave separators to tidy away.
    joined = pc.binary_join_element_wise(head, dup_text, tail, "; ")
    joined = pc.replace_substring_regex(joined, r"^(?:; )+|(?:; )+$", "")
    joined = pc.replace_substring_regex(joined, r"(?:; ){2,}", "; ")
    return rows, joined

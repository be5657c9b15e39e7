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

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tracelab.core.packets import DICT_STRING, TCP_FLAG_BITS, null_if_empty
from tracelab.ingest.capture.columns import (
    Bytes,
    Names,
    as_string,
    binary_array,
    bits,
    distinct,
    masked_column,
    scatter,
    spread,
)
from tracelab.ingest.capture.link import (
    IP_PROTO_NAMES,
    LINKTYPE_NAMES,
    addresses,
    frame_name,
    link_layer,
    network_layer,
)
from tracelab.ingest.capture.payload import TLS_VERSION_NAMES, dns_question, tls_records
from tracelab.ingest.capture.tcp_analysis import TcpConversations
from tracelab.ingest.capture.tcp_batch import Segments

# INFO_FIELDS this module supplies (the normalization stage leaves them as they are).
HEADER_FIELDS = ("ip_len", "udp_len", "src_port", "dst_port", "tcp_flags", "tcp_seq",
                 "tcp_ack", "tcp_win", "tcp_len", "tcp_analysis", "http_method", "http_uri",
                 "http_version", "http_status", "dns_id", "dns_query", "dns_qtype",
                 "tls_message")

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
# Bytes of each payload read first: most hold their first line break (see _first_lines).
HTTP_LINE_PEEK = 512


@dataclass
class Headers:
    """A batch decoded but for its TCP conversations, which need the batches in order."""

    n: int
    columns: dict
    protocol: np.ndarray        # protocol codes (-1: none)
    tcp_rows: np.ndarray
    segments: Segments
    tls: dict                   # tls_records of the rows starting with a TLS record


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
        for value, count in zip(*distinct(linktype)):
            name = LINKTYPE_NAMES.get(int(value), f"linktype {int(value)}")
            self.counts["link_types"][name] = self.counts["link_types"].get(name, 0) + int(count)
        link = link_layer(packet, linktype)
        net = network_layer(packet, link, original)
        protocol = np.full(n, -1, dtype=np.int64)

        # Names from the lower layers first; upper layers overwrite them.
        for value in distinct(link["ethertype"][~net["ip"]])[0]:
            for linktype_value in distinct(
                    linktype[~net["ip"] & (link["ethertype"] == value)])[0]:
                rows = ~net["ip"] & (link["ethertype"] == value) & (linktype == linktype_value)
                protocol[rows] = self.protocols.code(frame_name(int(value),
                                                                 int(linktype_value)))
        self.counts["non_ip_frames"] += int((~net["ip"]).sum())
        self.counts["ip_fragments"] += int(net["fragment"].sum())
        for family, name in ((4, "IPv4"), (6, "IPv6")):
            protocol[net["family"] == family] = self.protocols.code(name)
        named = net["ip"] & ~net["fragment_not_last"]
        for number in distinct(net["proto"][named])[0]:
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

        columns = dict(zip(("src", "dst"), addresses(packet, link, net)))

        tcp = net["transport"] & (net["proto"] == 6) & packet.has(net["l4"], 20)
        udp = net["transport"] & (net["proto"] == 17) & packet.has(net["l4"], 8)
        l4 = packet.within(net["l4"])
        ports = tcp | udp
        # The transport header's first 16 bytes in two reads: ports, then TCP's seq, ack, data
        # offset and flags, window (UDP's length).
        words = packet.u64(l4), packet.u64(l4 + 8)
        src_port = np.where(ports, bits(words[0], 48, 16), 0)
        dst_port = np.where(ports, bits(words[0], 32, 16), 0)
        columns["src_port"] = masked_column(src_port, ports, pa.int32())
        columns["dst_port"] = masked_column(dst_port, ports, pa.int32())

        # TCP header fields.
        offset_flags = bits(words[1], 16, 16)   # data offset (4 bits), reserved, flags (9)
        header_len = np.where(tcp, (offset_flags >> 12) * 4, 0)
        flags = np.where(tcp, offset_flags & 0x1FF, 0)
        tcp_len = net["l4_len"] - header_len
        sane = tcp & (header_len >= 20) & (tcp_len >= 0)
        payload = np.where(tcp, l4 + header_len, l4 + 8)
        udp_len = bits(words[0], 16, 16) - 8   # UDP's length field, less its header
        wire_payload = np.where(tcp, np.where(sane, tcp_len, 0), np.where(udp, udp_len, 0))
        # The lengths conn.log counts (Zeek's ConnSize analyzer adds IP_Hdr::TotalLen, its
        # UDP analyzer the UDP length field less 8), not the frame's: the link header, VLAN
        # tags and Ethernet padding are no part of them.
        columns["ip_len"] = masked_column(net["ip_len"], net["ip"], pa.int32())
        columns["udp_len"] = masked_column(udp_len, udp & (udp_len >= 0), pa.int32())
        visible = np.clip(np.minimum(captured - payload, wire_payload), 0, None)
        visible = np.where(ports, visible, 0)

        app = np.full(n, -1, dtype=np.int64)   # protocol code from the payload, -1 if none
        http = self._http(packet, tcp & sane, payload, visible, app, columns)
        tls = tls_records(packet, tcp & sane & (app < 0), payload, visible)
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
        columns.update(dns_question(packet, dns, dns_start, payload + visible))

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
            seq=bits(words[0][tcp_rows], 0, 32), ack=bits(words[1][tcp_rows], 32, 32),
            flags=flags[tcp_rows], window=bits(words[1][tcp_rows], 0, 16),
            seglen=np.where(sane, tcp_len, 0)[tcp_rows], window_shift=window_shift,
            ts_ns=ts_ns[tcp_rows], frame=frame[tcp_rows],
            server_version=server_version[tcp_rows])
        columns["tcp_flags"] = masked_column(flags, tcp, pa.int16())
        columns["tcp_len"] = masked_column(np.where(sane, tcp_len, 0), sane, pa.int64())
        columns["tls_message"] = scatter(n, tls_rows, tls["message"], pa.string())
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
        columns["tcp_seq"] = spread(n, tcp_rows, conv.seq, pa.int64())
        columns["tcp_ack"] = spread(n, tcp_rows, conv.ack, pa.int64(), conv.has_ack)
        columns["tcp_win"] = spread(n, tcp_rows, conv.window, pa.int64())
        columns["tcp_analysis"] = scatter(n, tcp_rows[conv.analysis_rows], conv.analysis,
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
        rows = np.flatnonzero(candidates & (visible >= 4))
        rows = rows[np.isin(packet.subset(rows).u32(payload[rows]), HTTP_PREFIXES)]
        if not len(rows):
            return False
        n = len(app)
        lines = _first_lines(packet.subset(rows), payload[rows],
                             np.minimum(visible[rows], HTTP_LINE_MAX))
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
        columns["http_method"] = scatter(n, rows, as_string(method), DICT_STRING)
        columns["http_uri"] = scatter(n, rows, as_string(uri), pa.string())
        columns["http_version"] = scatter(n, rows, as_string(version), DICT_STRING)
        columns["http_status"] = scatter(
            n, rows, pc.cast(as_string(status), pa.int16()), pa.int16())
        return True


def _first_lines(p: Bytes, start: np.ndarray, length: np.ndarray) -> pa.Array:
    """The payloads' first `length` bytes, as the HTTP regexes read them, copying as little:
    neither regex reads past a line's first CR or LF (nor 14 bytes into a status line), so a
    payload cut at HTTP_LINE_PEEK bytes matches as the whole does once a CR or LF shows in the
    cut; when one does not, all are copied whole."""
    peek = np.minimum(length, HTTP_LINE_PEEK)
    flat, offsets = p.slices(start, peek)
    breaks = np.logical_or.reduceat((flat == 13) | (flat == 10), offsets[:-1])
    if ((peek < length) & ~breaks).any():
        flat, offsets = p.slices(start, length)
    return binary_array(flat, offsets, len(start))


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

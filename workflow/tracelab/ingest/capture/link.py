"""The link and network layers of captured frames: where the IP header starts under Ethernet
(VLAN tags, LLC), Linux cooked, loopback and raw-IP link types; the IPv4/IPv6 header fields
and extension headers; src and dst as Wireshark writes them.
"""

from __future__ import annotations

import functools
import ipaddress

import numpy as np
import pandas as pd
import pyarrow as pa

from tracelab.ingest.capture.columns import Bytes, distinct

# The link types decoded (tcpdump's LINKTYPE_ names); frames of any other are not decoded.
LINKTYPE_NAMES = {0: "NULL", 1: "EN10MB", 12: "RAW", 14: "RAW", 101: "RAW", 108: "LOOP",
                  113: "LINUX_SLL", 228: "IPV4", 229: "IPV6", 276: "LINUX_SLL2"}
ETHERNET, NULL, LOOP, SLL, SLL2 = 1, 0, 108, 113, 276
# Wireshark's encapsulation of each (its short name, as capinfos -M and editcap -T write it).
WIRESHARK_ENCAPSULATIONS = {0: "null", 1: "ether", 12: "rawip", 14: "rawip", 101: "rawip",
                            108: "loop", 113: "linux-sll", 228: "rawip4", 229: "rawip6",
                            276: "linux-sll2"}
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


def frame_name(ethertype: int, linktype: int) -> str:
    """The Protocol column of a frame that carries no IP packet."""
    if ethertype == UNKNOWN:
        return {ETHERNET: "Ethernet", SLL: "SLL", SLL2: "SLL"}.get(
            linktype, LINKTYPE_NAMES.get(linktype, f"linktype {linktype}"))
    return ETHERTYPE_NAMES.get(ethertype, f"0x{ethertype:04x}")


def link_layer(packet: Bytes, linktype: np.ndarray) -> dict:
    """Where the network header starts, the ethertype, and the link-layer addresses."""
    n = len(linktype)
    ethertype = np.full(n, UNKNOWN, dtype=np.int64)
    net = np.zeros(n, dtype=np.int64)
    # Where each frame's link-layer addresses are (-1: none); read only for frames shown by
    # them (`addresses`), not for every frame.
    mac_src = np.full(n, -1, dtype=np.int64)
    mac_dst = np.full(n, -1, dtype=np.int64)
    for value in distinct(linktype)[0]:
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
            whole = p.has(0, 12)
            mac_dst[rows], mac_src[rows] = np.where(whole, 0, -1), np.where(whole, 6, -1)
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
            mac_src[rows] = np.where(whole & (address_len == 6), address_at, -1)
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
    return {"linktype": linktype, "ethertype": ethertype, "net": net, "mac_src_at": mac_src,
            "mac_dst_at": mac_dst}


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


def network_layer(packet: Bytes, link: dict, original: np.ndarray) -> dict:
    """IPv4/IPv6 headers (and IPv6 extension headers): addresses, protocol, the packet's
    length (`ip_len`: IPv4's total length, IPv6's 40 + payload length; where the header says
    0, a TSO capture, the frame's bytes from the IP header on), where the transport header
    starts and how long its datagram is on the wire, fragments."""
    et, at = link["ethertype"], link["net"]
    # IPv4's first 8 bytes in one read: version and header length, total length, fragment.
    head = packet.u64(at)
    first = (head >> np.uint64(56)).astype(np.int64)
    version = first >> 4
    v4 = (et == IPV4) & packet.has(at, 20) & (version == 4)
    ihl = (first & 0x0F) * 4
    v4 &= ihl >= 20
    v6 = (et == IPV6) & packet.has(at, 40) & (version == 6)
    family = np.where(v4, 4, np.where(v6, 6, 0))
    ip = v4 | v6

    # IPv4: total length 0 means a TSO capture: the frame tells the length.
    total = ((head >> np.uint64(32)) & np.uint64(0xFFFF)).astype(np.int64)
    ip_len = np.where(total >= ihl, total, original - at)
    # The packet's length as its IP header says (IPv6 below): neither link header, VLAN tags
    # nor Ethernet padding count, as in Zeek's IP_Hdr::TotalLen.
    packet_len = np.where(v4, ip_len, 0)
    fragment_field = (head & np.uint64(0xFFFF)).astype(np.int64)
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
        packet_len[rows] = np.where(payload_len > 0, 40 + payload_len, original[rows] - at[rows])
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
    return {"family": family, "ip": ip, "ip_len": packet_len, "proto": proto, "l4": l4,
            "l4_len": l4_len,
            "fragment": fragment, "fragment_not_last": not_last, "transport": transport,
            "key": key, "v4": v4, "v6": v6, "at": at}


def _endpoint_keys(packet: Bytes, v4, v6, at) -> np.ndarray:
    """Addresses as 4 uint64 per packet (src hi, src lo, dst hi, dst lo); IPv4 in the low word."""
    n = len(at)
    key = np.zeros((n, 4), dtype=np.uint64)
    if v4.any():
        rows = np.flatnonzero(v4)
        p = packet.subset(rows)
        both = p.u64(at[rows] + 12)   # source and destination in one read
        key[:, 1][rows] = both >> np.uint64(32)
        key[:, 3][rows] = both & np.uint64(0xFFFFFFFF)
    if v6.any():
        rows = np.flatnonzero(v6)
        p = packet.subset(rows)
        for column, offset in enumerate((8, 16, 24, 32)):
            key[:, column][rows] = p.u64(at[rows] + offset)
    return key


def addresses(packet: Bytes, link: dict, net: dict) -> tuple[pa.Array, pa.Array]:
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
        mac_at = link["mac_src_at"] if side == 0 else link["mac_dst_at"]
        macs = np.flatnonzero((mac_at >= 0) & ~net["ip"])
        mac = packet.subset(macs).u48(mac_at[macs])
        text = pa.concat_arrays([v4_text, v6_text, _mac_strings(mac), pa.array([""])])
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

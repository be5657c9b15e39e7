"""Each direction's byte counts per connection, as Zeek counts them: payload (sequence space or
UDP lengths), missed bytes, IP-level and frame bytes. The definitions are in
`tracelab.security.connections`' docstring; `side_bytes` computes them, vectorised."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tracelab.security.conn_state import FlowRows
from tracelab.security.flow_arrays import PacketArrays, union_length

# Bytes of the link-layer header assumed where a packet has no IP length (an export: Ethernet
# II), and of IPv4/IPv6 and UDP headers.
LINK_HEADER, IPV4_HEADER, IPV6_HEADER, UDP_HEADER = 14, 20, 40, 8


@dataclass
class SideBytes:
    """One direction's byte counts per flow (Zeek's, see `tracelab.security.connections`)."""

    payload: np.ndarray
    missed: np.ndarray
    frame: np.ndarray
    ip: np.ndarray


def side_bytes(packets: PacketArrays, rows: np.ndarray,
                flow_rows: FlowRows) -> list[SideBytes]:
    """The originator's and the responder's byte counts per flow."""
    fr, per, seq = flow_rows, flow_rows.per, flow_rows.seq
    # IP and UDP bytes as Zeek counts them: the ConnSize analyzer (analyzer/protocol/conn-size/
    # ConnSize.cc, DeliverPacket) adds each packet's ip->TotalLen() to *_ip_bytes, and
    # packet_analysis/protocol/udp/UDP.cc (DeliverPacket: UpdateLength(is_orig, ulen), ulen
    # the UDP length field less 8) counts UDP payload from the UDP header, so neither the link
    # header (BSD loopback 4, Linux cooked 16/20, raw IP 0), VLAN tags nor Ethernet padding
    # is in them. A capture gives both lengths (ip_len, udp_len); an export only frame lengths,
    # taken as Ethernet II (14 bytes) with a 20-byte IPv4 or 40-byte IPv6 header.
    length = packets.length[rows]
    ip_len, udp_len = packets.ip_len[rows], packets.udp_len[rows]
    ip_len = np.where(np.isnan(ip_len), np.maximum(length - LINK_HEADER, 0), ip_len)
    ip_header = np.where(np.char.find(packets.addresses.astype(str), ":") >= 0, IPV6_HEADER,
                         IPV4_HEADER)[packets.src[rows]]
    udp_payload = np.where(np.isnan(udp_len), np.maximum(ip_len - ip_header - UDP_HEADER, 0),
                           udp_len)
    payload = np.where(fr.tcp, fr.payload, udp_payload)
    sides = []
    for mine in (fr.orig, ~fr.orig):  # the two sides share the rows' sizes above
        own = mine & fr.tcp & ~fr.rst & ~np.isnan(seq)
        start = per.min(np.where(own, seq, np.nan))
        own_end = per.max(np.where(own, seq + fr.payload + fr.syn + fr.fin, np.nan))
        peer_ack = per.max(np.where(~mine & fr.tcp & ~fr.rst & fr.ack, fr.ack_number, np.nan))
        size = np.fmax(own_end, peer_ack) - start - per.any(fr.syn & own)
        size = np.maximum(np.where((size > 0) & per.any(fr.fin & own), size - 1, size), 0)
        summed = per.sum(np.where(mine, payload, 0.0))
        # Zeek's missed_bytes: gaps its reassembler skipped, so a gap a retransmission later
        # filled is not missed: the sequence space no captured segment covers, counting the
        # payload of rows without a sequence number (attached export rows) as covering.
        data = np.flatnonzero(own & (fr.payload > 0))
        seen = union_length(fr.flow[data], seq[data], seq[data] + fr.payload[data],
                            len(per.starts))
        seen = seen + per.sum(np.where(mine & fr.tcp & ~fr.rst & np.isnan(seq)
                                       & ~fr.retransmitted, fr.payload, 0.0))
        numbered = ~np.isnan(start)
        sides.append(SideBytes(
            payload=np.rint(np.where(numbered, size, summed)).astype(np.int64),
            missed=np.rint(np.where(numbered, np.maximum(size - seen, 0), 0)).astype(np.int64),
            frame=per.sum(np.where(mine, length, 0)),
            ip=np.rint(per.sum(np.where(mine, ip_len, 0.0))).astype(np.int64)))
    return sides

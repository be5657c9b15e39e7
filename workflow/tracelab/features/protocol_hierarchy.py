"""Layer paths of Wireshark's Statistics › Protocol Hierarchy, approximated from a packet
table's columns (see `tracelab.features.statistics`, which totals them per trace)."""

from __future__ import annotations

import pandas as pd

NETWORK_LAYER = {"IPv4": "ip", "IPv6": "ipv6", "Ethernet": None, "name": "ip"}
# Transport implied by the protocol when a row has neither TCP flags nor ports (an export's
# HTTP and TLS rows show no ports in Info, nor do its TCP rows "[TCP segment of a reassembled
# PDU]" that start a message).
IMPLIED_TRANSPORT = {"tcp": "tcp", "udp": "udp", "http": "tcp", "tls": "tcp", "dns": "udp",
                     "mdns": "udp", "llmnr": "udp", "nbns": "udp", "ssdp": "udp", "quic": "udp",
                     "dhcp": "udp", "ntp": "udp", "snmp": "udp"}


def layer_path(address_type: str, transport: str | None, protocol: str) -> str:
    """The approximate protocol layer path of a frame (see tracelab.features.statistics)."""
    name = protocol.lower()
    if name.startswith(("tls", "ssl")):
        name = "tls"
    transport = transport or IMPLIED_TRANSPORT.get(name)
    layers = ["frame", NETWORK_LAYER[address_type], transport,
              None if name in ("tcp", "udp") else name]
    return ":".join(layer for layer in layers if layer)


def prefix_totals(frame: pd.DataFrame) -> pd.DataFrame:
    """Frames and bytes per path counted at the path and every prefix of it, with shares."""
    prefixes = frame.assign(path=frame["path"].str.split(":").map(
        lambda layers: [":".join(layers[:n]) for n in range(1, len(layers) + 1)])).explode("path")
    nodes = prefixes.groupby("path", sort=True)[["frames", "bytes"]].sum().reset_index()
    nodes["protocol"] = nodes["path"].str.rsplit(":", n=1).str[-1]
    nodes["depth"] = nodes["path"].str.count(":")
    total = nodes.loc[nodes["depth"] == 0, ["frames", "bytes"]].sum()
    nodes["frames_share"] = nodes["frames"] / total["frames"]
    nodes["bytes_share"] = nodes["bytes"] / total["bytes"]
    return nodes

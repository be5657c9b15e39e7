"""A connection's `service` as Zeek's conn.log names it: the lowercased names of the analyzers
that confirmed a protocol (base/protocols/conn/main.zeek `set_conn` joins `c$service`), here
from the protocols Wireshark (an export's Protocol column) or the capture reader named in the
connection's packets.

Zeek names a protocol only when its analyzer parsed it; tracelab names it from Wireshark's
dissection (or, in captures, from the request line, TLS record or UDP port). Names Wireshark
gives that no Zeek base analyzer has (SSDP, TFTP, DHCPv6, ...) are not services; Zeek names
tracelab cannot give are listed in docs/security.md.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tracelab.security.flow_arrays import PacketArrays, concat_per_flow

# Wireshark's protocol names -> the Zeek analyzer (lowercased) of the same protocol.
ZEEK_SERVICES = {
    "HTTP": "http", "HTTP/JSON": "http", "HTTP/XML": "http", "OCSP": "http",
    "DNS": "dns", "MDNS": "dns", "LLMNR": "dns", "NBNS": "dns",
    "DHCP": "dhcp", "NTP": "ntp", "SNMP": "snmp", "QUIC": "quic", "Syslog": "syslog",
    "SSH": "ssh", "SSHv2": "ssh", "FTP": "ftp", "SMTP": "smtp", "IMAP": "imap", "POP": "pop3",
    "SIP": "sip", "RADIUS": "radius", "MySQL": "mysql", "PGSQL": "postgresql", "RDP": "rdp",
    "IRC": "irc", "XMPP/XML": "xmpp", "MQTT": "mqtt", "Modbus/TCP": "modbus",
    "DNP 3.0": "dnp3", "DCERPC": "dce_rpc", "Socks": "socks", "SMB": "smb", "SMB2": "smb",
    "LDAP": "ldap_tcp", "CLDAP": "ldap_udp", "KRB5": "krb",
}
# Every TLS/SSL version is Zeek's SSL analyzer, every DTLS version its DTLS analyzer.
VERSIONED = (("^(?:TLS|SSL)", "ssl"), ("^DTLS", "dtls"))
# Zeek's Kerberos analyzer over TCP is KRB_TCP.
TCP_NAMES = {"krb": "krb_tcp"}


def zeek_names(protocols: np.ndarray) -> pd.Series:
    """Zeek's service name of each Wireshark protocol name (missing: none)."""
    names = pd.Series(protocols, dtype="string")
    zeek = names.map(ZEEK_SERVICES).astype("string")
    for pattern, name in VERSIONED:
        zeek = zeek.where(~names.str.match(pattern, na=False), name)
    return zeek


def zeek_services(packets: PacketArrays, rows: np.ndarray, flow: np.ndarray,
                  flow_is_tcp: np.ndarray) -> np.ndarray:
    """Each flow's Zeek services (rows sorted by flow), sorted, comma-joined; null if none."""
    n_flows = len(flow_is_tcp)
    codes, catalogue = pd.factorize(zeek_names(packets.protocols), sort=True)  # -1: none
    service = codes[packets.protocol[rows]]
    keyed = np.unique(flow[service >= 0] * (len(catalogue) + 1) + service[service >= 0])
    present_flow, present = keyed // (len(catalogue) + 1), keyed % (len(catalogue) + 1)
    # Code points 1.. stand for the names (0 is the grid's padding).
    combination = concat_per_flow(present_flow, (present + 1).astype(np.uint32).view("U1"),
                                  n_flows)
    names = np.array([""] + [str(name) for name in catalogue], dtype=object)
    tcp_names = np.array([TCP_NAMES.get(name, name) for name in names], dtype=object)
    # One join per distinct (combination, transport), mapped onto the flows.
    keys = pd.Series(combination).str.cat(pd.Series(np.where(flow_is_tcp, "t", "u")))
    joined = {key: ",".join(sorted((tcp_names if key[-1] == "t" else names)[ord(c)]
                                   for c in key[:-1]))
              for key in keys.unique() if len(key) > 1}
    return keys.map(joined).to_numpy(object)

"""The scan report lists every host a port scan hit, with its port count."""

from __future__ import annotations

import functools

import pandas as pd
from packet_factory import packet_frame, tcp

from tracelab.compare.security import scan_report
from tracelab.security.connections import assemble_connections, flow_settings
from tracelab.security.hosts import hosts_table, scan_settings

SCANNER = "10.9.9.9"
TARGETS = [f"10.1.0.{i}" for i in range(1, 11)]


def sweep(ports: int = 50) -> list[dict]:
    """Every target probed on `ports` ports, each probe refused (SYN, RST-ACK)."""
    rows, t = [], 0.0
    for target in TARGETS:
        for port in range(1, ports + 1):
            source_port = 20000 + len(rows)
            rows += [tcp(t, SCANNER, source_port, target, port, "S"),
                     tcp(t + 0.0005, target, port, SCANNER, source_port, "RA", ack=1)]
            t += 0.001
    return rows


@functools.cache
def sweep_hosts() -> pd.DataFrame:
    flows = assemble_connections(packet_frame(sweep()), flow_settings(), "t").flows
    return hosts_table(flows, scan_settings())


def test_every_port_scanned_host_is_in_the_hosts_table():
    scanner = sweep_hosts().set_index("source").loc[SCANNER]
    listed = dict(entry.rsplit(":", 1) for entry in scanner["port_scan_hosts"].split(";"))
    assert listed == {target: "50" for target in TARGETS}
    assert scanner["port_scan_ports"] == 50 and scanner["port_scan_host"] in TARGETS


def test_the_scan_report_names_every_host_with_its_port_count():
    hosts = sweep_hosts().assign(trace="sweep", label="scan")
    http = pd.DataFrame({"trace": pd.Series(dtype=str), "jndi": pd.Series(dtype=bool)})
    report = scan_report(hosts, http, scan_settings().describe(), ["sweep"], {"sweep": "scan"})
    assert "port scan of 10 hosts" in report
    assert all(f"{target} (50 ports)" in report for target in TARGETS)

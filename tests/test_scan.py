"""Scan detection: TRW's decision boundaries, Zeek-style address and port scans, and the
bundled traces with the shipped (literature-default) thresholds."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import yaml
from conftest import REPO, bundled_results
from packet_factory import handshake, packet_frame, tcp

from tracelab.security.connections import assemble_connections, flow_settings
from tracelab.security.hosts import (
    ScanSettings,
    hosts_table,
    scan_settings,
    threshold_random_walk,
)

SCANNER = "10.9.9.9"
PAPER = scan_settings()  # theta0 0.8, theta1 0.2, P_D 0.99, P_F 0.01


def walk(outcomes: str, settings: ScanSettings = PAPER) -> pd.Series:
    """TRW over first contacts given as letters: s = answered, f = failed."""
    trials = pd.DataFrame({"orig": "x", "t": range(len(outcomes)),
                           "success": [c == "s" for c in outcomes]})
    return threshold_random_walk(trials, settings).loc["x"]


def expected_llr(outcomes: str, settings: ScanSettings = PAPER) -> float:
    return (outcomes.count("s") * math.log(settings.theta1 / settings.theta0)
            + outcomes.count("f") * math.log((1 - settings.theta1) / (1 - settings.theta0)))


def test_trw_thresholds_come_from_the_detection_and_false_positive_probabilities():
    assert PAPER.eta1 == pytest.approx(0.99 / 0.01)
    assert PAPER.eta0 == pytest.approx(0.01 / 0.99)


@pytest.mark.parametrize("outcomes, verdict, observed", [
    ("fff", "pending", 3),      # log 64 = 4.16 < log 99 = 4.60
    ("ffff", "scanner", 4),     # log 256 = 5.55 >= log 99
    ("sss", "pending", 3),
    ("ssss", "benign", 4),
    ("sfffff", "scanner", 6),
    ("fsfsfs", "pending", 6),
    ("ffffsssssss", "scanner", 4),   # the walk stops at its first decision
    ("ssssffffffff", "benign", 4),
])
def test_trw_decision_boundaries(outcomes, verdict, observed):
    result = walk(outcomes)
    assert result["trw_verdict"] == verdict
    assert result["trw_observed"] == observed
    assert result["trw_first_contacts"] == len(outcomes)
    assert result["trw_llr"] == pytest.approx(expected_llr(outcomes[:observed]))
    assert result["trw_failures"] == outcomes[:observed].count("f")


def test_trw_boundary_moves_with_the_parameters():
    # P_D / P_F = 0.9 / 0.2 = 4.5 <= (0.8 / 0.2)^2: two failures suffice, one does not
    loose = scan_settings({"trw": {"detection_probability": 0.9,
                                   "false_positive_probability": 0.2}})
    assert walk("f", loose)["trw_verdict"] == "pending"
    assert walk("ff", loose)["trw_verdict"] == "scanner"


def test_trw_rejects_parameters_without_meaning():
    with pytest.raises(ValueError, match="theta1 < theta0"):
        scan_settings({"trw": {"theta0": 0.2, "theta1": 0.8}})
    with pytest.raises(ValueError, match="false_positive_probability < detection"):
        scan_settings({"trw": {"detection_probability": 0.01,
                                "false_positive_probability": 0.5}})


def hosts_from(rows, settings: ScanSettings = PAPER) -> pd.DataFrame:
    flows = assemble_connections(packet_frame(rows), flow_settings(), "t").flows
    return hosts_table(flows, settings).set_index("source")


def probes(hosts: int, *, port: int = 9200, start: float = 0.0, step: float = 0.01,
           first_host: int = 0) -> list[dict]:
    """One unanswered SYN from the scanner to each of `hosts` hosts."""
    rows = []
    for i in range(first_host, first_host + hosts):
        target = f"10.1.{i // 250}.{i % 250 + 1}"
        t = start + (i - first_host) * step
        rows.append(tcp(t, SCANNER, 30000 + i, target, port, "S"))
    return rows


@pytest.mark.parametrize("hosts, flagged", [(24, False), (25, True)])
def test_address_scan_needs_the_threshold_of_hosts_on_one_port(hosts, flagged):
    result = hosts_from(probes(hosts)).loc[SCANNER]
    assert result["address_scan_hosts"] == hosts
    assert result["address_scan_port"] == 9200
    assert bool(result["address_scan"]) is flagged


def test_address_scan_counts_restart_every_interval():
    rows = probes(13) + probes(12, start=301.0, first_host=13)
    result = hosts_from(rows).loc[SCANNER]
    assert (result["address_scan_hosts"], bool(result["address_scan"])) == (13, False)
    assert bool(hosts_from(rows, scan_settings({"interval_s": 600})).loc[SCANNER]["address_scan"])


@pytest.mark.parametrize("ports, flagged", [(14, False), (15, True)])
def test_port_scan_needs_the_threshold_of_ports_on_one_host(ports, flagged):
    target = "10.1.0.1"
    rows = []
    for i in range(ports):
        rows += [tcp(i * 0.01, SCANNER, 30000 + i, target, 1 + i, "S"),
                 tcp(i * 0.01 + 0.001, target, 1 + i, SCANNER, 30000 + i, "RA", ack=1)]
    result = hosts_from(rows).loc[SCANNER]
    assert result["port_scan_ports"] == ports and result["port_scan_host"] == target
    assert bool(result["port_scan"]) is flagged
    assert result["failed_attempts"] == ports and result["failed_ratio"] == 1.0


def test_answered_connections_are_neither_failures_nor_scans():
    rows = []
    for i in range(30):
        target = f"10.1.0.{i + 1}"
        rows += [*handshake(i * 0.1, SCANNER, 30000 + i, target, 80),
                 tcp(i * 0.1 + 0.01, SCANNER, 30000 + i, target, 80, "FA", seq=1),
                 tcp(i * 0.1 + 0.02, target, 80, SCANNER, 30000 + i, "FA", seq=1, ack=2)]
    result = hosts_from(rows).loc[SCANNER]
    assert (result["failed_attempts"], bool(result["address_scan"])) == (0, False)
    assert (result["trw_verdict"], result["trw_observed"]) == ("benign", 4)
    assert result["flagged_by"] == ""


def test_half_open_probe_reset_by_the_scanner_is_a_failure_but_a_reset_after_data_is_not():
    target = "10.1.0.1"
    half_open = [*handshake(0, SCANNER, 30000, target, 80),
                 tcp(0.01, SCANNER, 30000, target, 80, "R", seq=1)]
    after_data = [*handshake(1, SCANNER, 30001, target, 81),
                  tcp(1.01, SCANNER, 30001, target, 81, "PA", seq=1, payload=20),
                  tcp(1.02, SCANNER, 30001, target, 81, "R", seq=21)]
    result = hosts_from(half_open + after_data).loc[SCANNER]
    assert (result["attempts"], result["failed_attempts"]) == (2, 1)


def test_trw_uses_only_first_contacts_that_began_with_a_syn():
    target = "10.1.0.1"
    # Three failed attempts to one host count once; a host first met mid-connection not at all.
    rows = [tcp(0, SCANNER, 30000 + i, target, 80 + i, "S") for i in range(3)]
    rows += [tcp(1, SCANNER, 31000, "10.1.0.2", 80, "A", seq=5, ack=9)]
    result = hosts_from(rows).loc[SCANNER]
    assert (result["trw_first_contacts"], result["trw_failures"]) == (1, 1)
    assert result["trw_verdict"] == "pending"


def test_shipped_thresholds_are_the_literature_defaults():
    """The bundled traces are judged with Zeek's and the TRW paper's values, not fitted ones."""
    scan = yaml.safe_load((REPO / "config/config.yaml").read_text())["security"]["scan"]
    assert (scan["address_scan_hosts"], scan["port_scan_ports"], scan["interval_s"]) == \
        (25, 15, 300)
    assert scan["trw"] == {"theta0": 0.8, "theta1": 0.2, "detection_probability": 0.99,
                           "false_positive_probability": 0.01}


def bundled_hosts(trace: str) -> pd.DataFrame:
    return pd.read_parquet(bundled_results() / f"features/{trace}/hosts.parquet")


def test_bundled_scanner_is_flagged_by_both_detectors():
    hosts = bundled_hosts("log4j_scan").set_index("source")
    scanner = hosts.loc["198.18.0.2"]
    assert bool(scanner["address_scan"]) and scanner["trw_verdict"] == "scanner"
    assert scanner["flagged_by"] == "address_scan,trw"


def test_no_bundled_browsing_source_is_flagged():
    hosts = bundled_hosts("web_browsing")
    assert len(hosts) > 0
    assert (hosts["flagged_by"] == "").all()
    assert not (hosts["trw_verdict"] == "scanner").any()

"""Scan detection per source over its TCP connections: Zeek-style address and port scans, and TRW.

- A connection *attempt* is a TCP connection whose originator sent a SYN (history has `S`). It
  *failed* when its conn_state is S0, REJ, RSTOS0, RSTRH, SH or SHR, or RSTO with no payload in
  either direction (the half-open probe `ShR`): Zeek's scan.zeek counts the same outcomes
  (connection_attempt, connection_rejected, and resets judged by `is_failed_conn`).
- Address scan (Zeek policy/misc/scan.zeek): failed attempts from one source to at least
  `address_scan_hosts` distinct hosts on one port within one interval. Port scan: to at least
  `port_scan_ports` distinct ports on one host within one interval. As in Zeek's SumStats, the
  counts restart every interval (epochs aligned at the trace's first connection).
- Threshold Random Walk (Jung, Paxson, Berger, Balakrishnan, "Fast Portscan Detection Using
  Sequential Hypothesis Testing", IEEE S&P 2004): for each source, its *first-contact*
  attempts (the first connection to each distinct host, in time order) are Bernoulli trials,
  success meaning the host answered with a SYN-ACK (history has `h`). With
  theta0 = P(success | benign) and theta1 = P(success | scanner), the likelihood ratio
  Lambda = prod P(Y_i | scanner) / P(Y_i | benign) is multiplied by theta1/theta0 on a success
  and by (1 - theta1)/(1 - theta0) on a failure. The walk stops at the first crossing:
  Lambda >= eta1 = P_D/P_F -> scanner, Lambda <= eta0 = (1 - P_D)/(1 - P_F) -> benign
  (P_D: the detection probability to reach, P_F: the false-positive probability to stay
  under; the paper's eta1 = beta/alpha, eta0 = (1 - beta)/(1 - alpha)); otherwise pending.
  A host whose first connection was already under way (no SYN seen) is not a trial.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_arrow

from tracelab.core.atomic import write_parquet
from tracelab.security.security_connections import FLOWS
from tracelab.core.packets import DICT_STRING, TIMESTAMP

log = logging.getLogger(__name__)

FAILED_STATES = ("S0", "REJ", "RSTOS0", "RSTRH", "SH", "SHR")
TRW_VERDICTS = ("scanner", "benign", "pending")
DETECTORS = ("address_scan", "port_scan", "trw")

HOST_SCHEMA = pa_arrow.schema([
    ("source", DICT_STRING),
    ("first_ts", TIMESTAMP),
    ("last_ts", TIMESTAMP),
    ("connections", pa_arrow.int64()),
    ("distinct_dst_hosts", pa_arrow.int64()),
    ("distinct_dst_ports", pa_arrow.int64()),
    ("attempts", pa_arrow.int64()),
    ("failed_attempts", pa_arrow.int64()),
    ("failed_ratio", pa_arrow.float64()),
    ("address_scan", pa_arrow.bool_()),
    ("address_scan_port", pa_arrow.int32()),
    ("address_scan_hosts", pa_arrow.int64()),
    ("address_scan_at", TIMESTAMP),
    ("port_scan", pa_arrow.bool_()),
    ("port_scan_host", pa_arrow.string()),
    ("port_scan_hosts", pa_arrow.string()),
    ("port_scan_ports", pa_arrow.int64()),
    ("port_scan_at", TIMESTAMP),
    ("trw_first_contacts", pa_arrow.int64()),
    ("trw_observed", pa_arrow.int64()),
    ("trw_successes", pa_arrow.int64()),
    ("trw_failures", pa_arrow.int64()),
    ("trw_llr", pa_arrow.float64()),
    ("trw_verdict", DICT_STRING),
    ("trw_decided_at", TIMESTAMP),
    ("flagged_by", pa_arrow.string()),
])


class HostModel(pa.DataFrameModel):
    """Checks on hosts.parquet before it is written."""

    source: str = pa.Field(unique=True)
    connections: pd.Int64Dtype = pa.Field(ge=1)
    attempts: pd.Int64Dtype = pa.Field(ge=0)
    failed_attempts: pd.Int64Dtype = pa.Field(ge=0)
    failed_ratio: float = pa.Field(ge=0, le=1, nullable=True)
    trw_observed: pd.Int64Dtype = pa.Field(ge=0)
    trw_verdict: str = pa.Field(isin=list(TRW_VERDICTS))

    class Config:
        strict = False
        coerce = False


@dataclass(frozen=True)
class ScanSettings:
    address_scan_hosts: int = 25
    port_scan_ports: int = 15
    interval_s: float = 300.0
    theta0: float = 0.8
    theta1: float = 0.2
    detection_probability: float = 0.99
    false_positive_probability: float = 0.01

    def __post_init__(self):
        if not 0 < self.theta1 < self.theta0 < 1:
            raise ValueError(f"TRW needs 0 < theta1 < theta0 < 1, got theta0={self.theta0}, "
                             f"theta1={self.theta1}")
        if not 0 < self.false_positive_probability < self.detection_probability < 1:
            raise ValueError("TRW needs 0 < false_positive_probability < detection_probability < 1")

    @classmethod
    def from_config(cls, scan: dict) -> ScanSettings:
        trw = scan.get("trw", {})
        return cls(**{k: v for k, v in scan.items() if k != "trw"}, **trw)

    @property
    def eta1(self) -> float:
        return self.detection_probability / self.false_positive_probability

    @property
    def eta0(self) -> float:
        return (1 - self.detection_probability) / (1 - self.false_positive_probability)

    def describe(self) -> dict:
        return {**asdict(self), "eta0": self.eta0, "eta1": self.eta1,
                "log_eta0": math.log(self.eta0), "log_eta1": math.log(self.eta1)}


def attempts(flows: pd.DataFrame) -> pd.Series:
    """TCP connections whose originator sent a SYN."""
    return (flows["proto"] == "tcp") & flows["history"].str.contains("S", regex=False)


def failed_attempts(flows: pd.DataFrame) -> pd.Series:
    """Attempts that failed, by Zeek's scan.zeek standard (see the module docstring)."""
    no_payload = (flows["orig_bytes"] == 0) & (flows["resp_bytes"] == 0)
    failed = flows["conn_state"].isin(FAILED_STATES) | (
        (flows["conn_state"] == "RSTO") & no_payload)
    return attempts(flows) & failed


def answered_attempts(flows: pd.DataFrame) -> pd.Series:
    """Attempts the responder accepted with a SYN-ACK: TRW's success."""
    return attempts(flows) & flows["history"].str.contains("h", regex=False)


def _epoch_counts(failed: pd.DataFrame, group: list[str], counted: str,
                  interval_ns: int, start_ns: int) -> pd.DataFrame:
    """Per source, the group (port or host) and epoch with the most distinct `counted` values."""
    epoch = (failed["t"] - start_ns) // interval_ns
    distinct = failed.assign(epoch=epoch).groupby(["orig", *group, "epoch"], observed=True)[
        counted].nunique().rename("count").reset_index()
    best = distinct.sort_values(["orig", "count", "epoch"], ascending=[True, False, True],
                                kind="stable").drop_duplicates("orig")
    best["at"] = pd.to_datetime(start_ns + best["epoch"] * interval_ns, utc=True)
    return best.set_index("orig")


def _port_scanned_hosts(failed: pd.DataFrame, interval_ns: int, start_ns: int,
                        threshold: int) -> pd.Series:
    """Per source, every host its failed attempts reached on at least `threshold` distinct
    ports within one interval, as "host:ports;host:ports" (most ports first, IPv6 in [])."""
    epoch = (failed["t"] - start_ns) // interval_ns
    ports = failed.assign(epoch=epoch).groupby(["orig", "resp", "epoch"], observed=True)[
        "resp_port"].nunique().groupby(level=["orig", "resp"], observed=True).max()
    hit = ports[ports >= threshold].rename("ports").reset_index().sort_values(
        ["orig", "ports", "resp"], ascending=[True, False, True], kind="stable")
    host = hit["resp"].where(~hit["resp"].str.contains(":", regex=False), "[" + hit["resp"] + "]")
    return (host + ":" + hit["ports"].astype(str)).groupby(hit["orig"]).agg(";".join)


def threshold_random_walk(first_contacts: pd.DataFrame, settings: ScanSettings) -> pd.DataFrame:
    """TRW per source over first-contact outcomes (columns orig, t, success; time order).

    Returns per source: trw_first_contacts, trw_observed (trials until the decision, or all),
    trw_successes, trw_failures (within those), trw_llr (log Lambda there), trw_verdict,
    trw_decided_at.
    """
    success_step = math.log(settings.theta1 / settings.theta0)
    failure_step = math.log((1 - settings.theta1) / (1 - settings.theta0))
    upper, lower = math.log(settings.eta1), math.log(settings.eta0)
    trials = first_contacts.sort_values(["orig", "t"], kind="stable").reset_index(drop=True)
    by_source = trials.groupby("orig", sort=False, observed=True)
    trials["llr"] = np.where(trials["success"], success_step, failure_step)
    trials["llr"] = trials["llr"].groupby(trials["orig"], observed=True).cumsum()
    trials["trial"] = by_source.cumcount() + 1
    trials["successes"] = trials["success"].astype(int).groupby(
        trials["orig"], observed=True).cumsum()
    crossed = (trials["llr"] >= upper) | (trials["llr"] <= lower)
    decisions = trials[crossed].drop_duplicates("orig").set_index("orig")
    last = trials.drop_duplicates("orig", keep="last").set_index("orig")
    stop = last.copy()
    stop.loc[decisions.index] = decisions
    result = pd.DataFrame(index=last.index)
    result["trw_first_contacts"] = last["trial"]
    result["trw_observed"] = stop["trial"]
    result["trw_successes"] = stop["successes"]
    result["trw_failures"] = stop["trial"] - stop["successes"]
    result["trw_llr"] = stop["llr"]
    decided = result.index.isin(decisions.index)
    result["trw_verdict"] = np.where(~decided, "pending",
                                     np.where(stop["llr"] >= upper, "scanner", "benign"))
    result["trw_decided_at"] = pd.to_datetime(stop["t"], utc=True).where(decided)
    return result


def hosts_table(flows: pd.DataFrame, settings: ScanSettings) -> pd.DataFrame:
    """One row a source (originator of at least one connection): fan-out, failures, verdicts."""
    flows = flows.assign(
        t=flows["first_ts"].astype("datetime64[ns, UTC]").astype("int64"),
        attempt=attempts(flows), failed=failed_attempts(flows),
        success=answered_attempts(flows),
        orig=flows["orig"].astype("string"), resp=flows["resp"].astype("string"))
    by_source = flows.groupby("orig", sort=True)
    hosts = pd.DataFrame({
        "first_ts": by_source["first_ts"].min(),
        "last_ts": by_source["last_ts"].max(),
        "connections": by_source.size(),
        "distinct_dst_hosts": by_source["resp"].nunique(),
        "distinct_dst_ports": by_source["resp_port"].nunique(),
        "attempts": by_source["attempt"].sum(),
        "failed_attempts": by_source["failed"].sum(),
    })
    hosts["failed_ratio"] = (hosts["failed_attempts"] / hosts["attempts"]).where(
        hosts["attempts"] > 0)

    interval_ns = int(settings.interval_s * 1e9)
    start_ns = int(flows["t"].min()) if len(flows) else 0
    failed = flows[flows["failed"]]
    address = _epoch_counts(failed, ["resp_port"], "resp", interval_ns, start_ns)
    port = _epoch_counts(failed, ["resp"], "resp_port", interval_ns, start_ns)
    hosts["address_scan_hosts"] = address["count"].reindex(hosts.index).fillna(0)
    hosts["address_scan_port"] = address["resp_port"].reindex(hosts.index)
    hosts["address_scan_at"] = address["at"].reindex(hosts.index)
    hosts["address_scan"] = hosts["address_scan_hosts"] >= settings.address_scan_hosts
    hosts["port_scan_ports"] = port["count"].reindex(hosts.index).fillna(0)
    hosts["port_scan_host"] = port["resp"].reindex(hosts.index)
    hosts["port_scan_hosts"] = _port_scanned_hosts(
        failed, interval_ns, start_ns, settings.port_scan_ports).reindex(hosts.index)
    hosts["port_scan_at"] = port["at"].reindex(hosts.index)
    hosts["port_scan"] = hosts["port_scan_ports"] >= settings.port_scan_ports

    # First contacts: each source's first TCP connection to each host, if it began with a SYN.
    tcp = flows[flows["proto"] == "tcp"].sort_values(["t", "uid"], kind="stable")
    first = tcp.drop_duplicates(["orig", "resp"])
    walk = threshold_random_walk(first.loc[first["attempt"], ["orig", "t", "success"]], settings)
    walk = walk.reindex(hosts.index)
    for column in ("trw_first_contacts", "trw_observed", "trw_successes", "trw_failures"):
        walk[column] = walk[column].fillna(0)
    walk["trw_llr"] = walk["trw_llr"].fillna(0.0)
    walk["trw_verdict"] = walk["trw_verdict"].fillna("pending")
    hosts = hosts.join(walk)

    flagged_by = pd.Series("", index=hosts.index, dtype="str")
    for detector, hit in (("address_scan", hosts["address_scan"]),
                          ("port_scan", hosts["port_scan"]),
                          ("trw", hosts["trw_verdict"] == "scanner")):
        flagged_by = flagged_by + np.where(hit, detector + ",", "")
    hosts["flagged_by"] = flagged_by.str.rstrip(",")
    hosts = hosts.rename_axis("source").reset_index()
    integer = ["connections", "distinct_dst_hosts", "distinct_dst_ports", "attempts",
               "failed_attempts", "address_scan_hosts", "port_scan_ports", "trw_first_contacts",
               "trw_observed", "trw_successes", "trw_failures"]
    hosts[integer] = hosts[integer].astype("Int64")
    hosts["address_scan_port"] = hosts["address_scan_port"].astype("Int32")
    return hosts[HOST_SCHEMA.names]


def write_hosts(*, trace: str, flows_path, hosts_path, settings: dict) -> dict:
    """Stage: results/features/{trace}/hosts.parquet from flows.parquet."""
    scan_settings = ScanSettings.from_config(settings)
    hosts = hosts_table(FLOWS.read_pandas(flows_path), scan_settings)
    HostModel.validate(hosts, lazy=True)
    table = pa_arrow.Table.from_pandas(hosts, preserve_index=False).cast(HOST_SCHEMA)
    write_parquet(table, hosts_path, {"trace": trace,
                                      "scan_settings": json.dumps(scan_settings.describe())})
    flagged = hosts[hosts["flagged_by"] != ""]
    log.info("%s: %d sources, flagged: %s", trace, len(hosts),
             dict(zip(flagged["source"], flagged["flagged_by"])) or "none")
    return {"sources": len(hosts), "flagged": int(len(flagged))}

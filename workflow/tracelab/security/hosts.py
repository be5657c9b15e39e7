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

import contextlib
import json
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pandera.pandas import Check

from tracelab.core import streaming
from tracelab.core.atomic import atomic_path
from tracelab.core.config import settings as config_settings
from tracelab.core.progress import Progress
from tracelab.core.streaming import (
    DistinctRows,
    NameIds,
    non_empty_groups,
    time_ordered,
    time_ranges,
)
from tracelab.core.tables import DICT_STRING, PANDAS_TYPES, TIMESTAMP, Column, Table
from tracelab.security.names import trace_dns_answers
from tracelab.security.notice import write_notice_log
from tracelab.security.protocol_logs import write_dns_log, write_http_log
from tracelab.security.uid import uid_sort_keys
from tracelab.security.zeek_log import trace_span

log = logging.getLogger(__name__)

FAILED_STATES = ("S0", "REJ", "RSTOS0", "RSTRH", "SH", "SHR")
TRW_VERDICTS = ("scanner", "benign", "pending")
DETECTORS = ("address_scan", "port_scan", "trw")
FLOW_COLUMNS = ["uid", "proto", "orig", "resp", "resp_port", "first_ts", "last_ts", "history",
                "conn_state", "orig_bytes", "resp_bytes"]
COUNT = (Check.ge(0),)
# Per-batch source totals kept before they are merged into one.
MERGE_PARTS = 64
# A uid as two integers in its text's order (held per (source, host) pair: 16 bytes, where a
# Python string took about 75), and the order that picks a pair's first connection.
UID_ORDER = ("uid_high", "uid_low")
FIRST_ORDER = ["t", *UID_ORDER]

HOSTS = Table("hosts", "results/features/{trace}/hosts.parquet", (
    "One row a source: an originator of at least one connection, with its fan-out, failed "
    "attempts and the verdicts of the three scan detectors (docs/security.md). File "
    "metadata: `tracelab.scan_settings` (the thresholds, and TRW's eta0, eta1)."), [
    Column("trace", DICT_STRING, "Trace name, as in the trace sheet."),
    Column("source", DICT_STRING, "The originator's address.", unique=True),
    Column("first_ts", TIMESTAMP, "Start of its first connection.", unit="ns"),
    Column("last_ts", TIMESTAMP, "End of its last connection.", unit="ns"),
    Column("connections", pa.int64(), "Connections it originated.", checks=[Check.ge(1)]),
    Column("distinct_dst_hosts", pa.int64(), "Distinct responders of those.", checks=COUNT),
    Column("distinct_dst_ports", pa.int64(), "Distinct responder ports of those.",
           checks=COUNT),
    Column("attempts", pa.int64(), "TCP connection attempts (it sent a SYN).", checks=COUNT),
    Column("failed_attempts", pa.int64(), "Attempts that failed, by Zeek's scan.zeek "
           "standard.", checks=COUNT),
    Column("failed_ratio", pa.float64(), "failed_attempts / attempts; null without attempts.",
           nullable=True, checks=[Check.in_range(0, 1)]),
    Column("address_scan", pa.bool_(), "Failed attempts to at least `address_scan_hosts` "
           "hosts on one port within one interval."),
    Column("address_scan_port", pa.int32(), "The port with the most hosts in one interval.",
           nullable=True, checks=[Check.in_range(0, 65535)]),
    Column("address_scan_hosts", pa.int64(), "Distinct hosts failed on that port in that "
           "interval.", checks=COUNT),
    Column("address_scan_at", TIMESTAMP, "Start of that interval.", unit="ns", nullable=True),
    Column("address_scan_first_ts", TIMESTAMP, "First failed attempt on that port in that "
           "interval (Zeek's SumStats `begin`).", unit="ns", nullable=True),
    Column("address_scan_crossed_ts", TIMESTAMP, "The failed attempt that brought that port's "
           "hosts to `address_scan_hosts` in that interval: when Zeek raises the notice; null "
           "below it.", unit="ns", nullable=True),
    Column("port_scan", pa.bool_(), "Failed attempts to at least `port_scan_ports` ports on "
           "one host within one interval."),
    Column("port_scan_host", pa.string(), "The host with the most ports in one interval.",
           nullable=True),
    Column("port_scan_hosts", pa.string(), "Every host its failed attempts reached on at least "
           "`port_scan_ports` distinct ports within one interval, as `host:ports;host:ports`, "
           "most ports first (IPv6 in []); null when none.", nullable=True),
    Column("port_scan_ports", pa.int64(), "Distinct ports failed on that host in that "
           "interval.", checks=COUNT),
    Column("port_scan_at", TIMESTAMP, "Start of that interval.", unit="ns", nullable=True),
    Column("port_scan_first_ts", TIMESTAMP, "First failed attempt on that host in that "
           "interval (Zeek's SumStats `begin`).", unit="ns", nullable=True),
    Column("port_scan_crossed_ts", TIMESTAMP, "The failed attempt that brought that host's "
           "ports to `port_scan_ports` in that interval: when Zeek raises the notice; null "
           "below it.", unit="ns", nullable=True),
    Column("trw_first_contacts", pa.int64(), "First contacts that began with a SYN: TRW's "
           "trials.", checks=COUNT),
    Column("trw_observed", pa.int64(), "Trials until TRW decided (all, if it did not).",
           checks=COUNT),
    Column("trw_successes", pa.int64(), "Of those, answered with a SYN-ACK.", checks=COUNT),
    Column("trw_failures", pa.int64(), "Of those, not answered.", checks=COUNT),
    Column("trw_llr", pa.float64(), "log of the likelihood ratio at the decision (or the end).",
           unit="log ratio"),
    Column("trw_verdict", DICT_STRING, "TRW's verdict.", checks=[Check.isin(TRW_VERDICTS)]),
    Column("trw_decided_at", TIMESTAMP, "Start of the trial that decided.", unit="ns",
           nullable=True),
    Column("flagged_by", pa.string(), "The detectors that flag the source, comma-separated "
           "(address_scan, port_scan, trw); empty if none."),
])


@dataclass(frozen=True)
class ScanSettings:
    address_scan_hosts: int
    port_scan_ports: int
    interval_s: float
    theta0: float
    theta1: float
    detection_probability: float
    false_positive_probability: float

    def __post_init__(self):
        if not 0 < self.theta1 < self.theta0 < 1:
            raise ValueError(f"TRW needs 0 < theta1 < theta0 < 1, got theta0={self.theta0}, "
                             f"theta1={self.theta1}")
        if not 0 < self.false_positive_probability < self.detection_probability < 1:
            raise ValueError("TRW needs 0 < false_positive_probability < detection_probability < 1")

    @property
    def eta1(self) -> float:
        return self.detection_probability / self.false_positive_probability

    @property
    def eta0(self) -> float:
        return (1 - self.detection_probability) / (1 - self.false_positive_probability)

    def describe(self) -> dict:
        return {**asdict(self), "eta0": self.eta0, "eta1": self.eta1,
                "log_eta0": math.log(self.eta0), "log_eta1": math.log(self.eta1)}


def scan_settings(values: dict | None = None) -> ScanSettings:
    """ScanSettings from config values (`trw` nested or not) over the schema's defaults."""
    return config_settings(ScanSettings, "security.scan", values)


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


def _epoch_counts(failed: pd.DataFrame, group: str, threshold: int,
                  best: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per source, the group (port or host) and epoch with the most distinct hosts or ports
    (`failed`: the distinct orig, resp, resp_port, epoch rows of failed attempts, each with
    its first time t), the earliest epoch and then the lowest group first among equals; with
    the group's first failed attempt in that epoch (`first`: Zeek's SumStats `begin`) and the
    one that brought it to `threshold` (`crossed`, null if none: when Zeek raises the
    notice); `best`: those of earlier epochs."""
    keys = ["orig", group, "epoch"]
    failed = failed.sort_values("t", kind="stable")
    grouped = failed.groupby(keys, observed=True)
    distinct = grouped.agg(count=("t", "size"), first=("t", "min")).reset_index()
    crossing = failed[grouped.cumcount() == threshold - 1].set_index(keys)["t"].astype("Int64")
    distinct["crossed"] = crossing.reindex(pd.MultiIndex.from_frame(distinct[keys])).to_numpy()
    candidates = pd.concat([best, distinct], ignore_index=True) if best is not None \
        else distinct
    return candidates.sort_values(["orig", "count", "epoch", group],
                                  ascending=[True, False, True, True],
                                  kind="stable").drop_duplicates("orig")


def _port_scanned_pairs(failed: pd.DataFrame, threshold: int,
                        best: pd.Series | None = None) -> pd.Series:
    """Per (source, host) whose failed attempts reached at least `threshold` distinct ports
    within one interval, the most ports in one (`failed`: distinct orig, resp, resp_port, epoch
    rows; `best`: earlier epochs'). Pairs under it in every interval are never kept: a sweep
    would make them one a host swept."""
    ports = failed.groupby(["orig", "resp", "epoch"], observed=True)["resp_port"].nunique()
    ports = ports[ports >= threshold].groupby(level=["orig", "resp"], observed=True).max()
    return ports if best is None else pd.concat([best, ports]).groupby(
        level=["orig", "resp"], observed=True).max()


def _port_scanned_hosts(ports: pd.Series | None) -> pd.Series:
    """Per source, the hosts of `_port_scanned_pairs` as "host:ports;host:ports" (most ports
    first, IPv6 in [])."""
    if ports is None:
        return pd.Series(dtype="str")
    hit = ports.rename("ports").reset_index().sort_values(
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


class FirstContacts:
    """Each (source, host) pair's first TCP connection (by time, then uid), fed connections in
    order of their start: the kept firsts sorted by pair (source id << 32 | host id, made by
    `HostAccumulator.flow_values`), and the batches' firsts waiting until they outnumber them,
    all as int64/bool arrays."""

    COLUMNS = {"pair": np.int64, **dict.fromkeys(FIRST_ORDER, np.int64), "attempt": bool,
               "success": bool}

    def __init__(self):
        self.kept = {name: np.empty(0, dtype) for name, dtype in self.COLUMNS.items()}
        self.waiting: list[dict[str, np.ndarray]] = []
        self._waiting_rows = 0

    def add(self, tcp: pd.DataFrame) -> None:
        """The TCP connections of a batch (COLUMNS)."""
        firsts = _firsts({name: tcp[name].to_numpy(dtype) for name, dtype in self.COLUMNS.items()})
        # A pair kept already was first, unless its connection began at the same time.
        at = np.searchsorted(self.kept["pair"], firsts["pair"])
        pairs, times = (np.append(self.kept[name], -1) for name in ("pair", "t"))
        new = ~((pairs[at] == firsts["pair"]) & (times[at] < firsts["t"]))
        self.waiting.append({name: values[new] for name, values in firsts.items()})
        self._waiting_rows += int(new.sum())
        if self._waiting_rows > max(streaming.COMPACT_ROWS, len(self.kept["pair"])):
            self.compact()

    def compact(self) -> None:
        """The waiting firsts merged into the kept ones."""
        if self.waiting:
            both = {name: np.concatenate([self.kept[name]] + [part[name] for part in self.waiting])
                    for name in self.COLUMNS}
            self.kept, self.waiting, self._waiting_rows = _firsts(both), [], 0

    def trials(self) -> pd.DataFrame:
        """The first contacts that began with a SYN (orig id, t, success), by time, then uid."""
        self.compact()
        kept = self.kept
        order = np.lexsort((kept["uid_low"], kept["uid_high"], kept["t"]))
        order = order[kept["attempt"][order]]
        return pd.DataFrame({"orig": kept["pair"][order] >> 32, "t": kept["t"][order],
                             "success": kept["success"][order]})


def _firsts(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Of `rows` (FirstContacts.COLUMNS), each pair's first by time and uid, sorted by pair."""
    order = np.lexsort((rows["uid_low"], rows["uid_high"], rows["t"]))
    _, first = np.unique(rows["pair"][order], return_index=True)
    return {name: values[order[first]] for name, values in rows.items()}


class HostAccumulator:
    """Per-source state of one trace, fed connections in order of their start: totals per
    source, the exact distinct (source, host) and (source, port) pairs, each (source, host)
    pair's first TCP connection, per source the best address- and port-scan counts of the
    intervals passed and the port-scanned hosts (the failed (source, host, port) rows of the
    open interval only)."""

    def __init__(self, settings: ScanSettings, start_ns: int):
        self.settings = settings
        self.start_ns = start_ns
        self.interval_ns = round(settings.interval_s * 1e9)
        self.names = NameIds()
        self.totals: list[pd.DataFrame] = []
        self.hosts = DistinctRows(["pair"])
        self.ports = DistinctRows(["orig", "resp_port"])
        self.failed = DistinctRows(["orig", "resp", "resp_port", "epoch", "t"],
                                   key=["orig", "resp", "resp_port", "epoch"])
        self.address_best: pd.DataFrame | None = None
        self.port_best: pd.DataFrame | None = None
        self.port_scanned: pd.Series | None = None
        self.first_contacts = FirstContacts()

    def flow_values(self, rows: pa.Table) -> pa.Table:
        """What the detectors need of a connection (addresses as ids, times as int64 ns)."""
        flows = rows.drop_columns(["orig", "resp"]).to_pandas(types_mapper=PANDAS_TYPES.get)
        t = rows.column("first_ts").cast(pa.int64()).to_numpy()
        orig, resp = self.names.of(rows.column("orig")), self.names.of(rows.column("resp"))
        return pa.table({
            "first_ts": t, "orig": orig, "resp": resp, "pair": (orig << 32) | resp,
            "resp_port": flows["resp_port"].to_numpy(np.int64),
            "last": rows.column("last_ts").cast(pa.int64()),
            **dict(zip(UID_ORDER, uid_sort_keys(rows.column("uid")))),
            "tcp": (flows["proto"] == "tcp").to_numpy(),
            "attempt": attempts(flows).to_numpy(), "failed": failed_attempts(flows).to_numpy(),
            "success": answered_attempts(flows).to_numpy(),
            "epoch": (t - self.start_ns) // self.interval_ns})

    def add(self, values: pa.Table) -> None:
        """Connection values (`flow_values`) in order of their start, after the previous."""
        frame = values.to_pandas().rename(columns={"first_ts": "t"})
        if frame.empty:
            return
        self.totals.append(frame.groupby("orig").agg(
            first=("t", "min"), last=("last", "max"), connections=("t", "size"),
            attempts=("attempt", "sum"), failed_attempts=("failed", "sum")))
        if len(self.totals) >= MERGE_PARTS:
            self.totals = [self._source_totals()]
        self.hosts.add(frame)
        self.ports.add(frame)
        self.failed.add(frame[frame["failed"]])
        self.first_contacts.add(frame[frame["tcp"]])
        self._close_intervals(int(frame["epoch"].iloc[-1]))

    def _close_intervals(self, open_epoch: int) -> None:
        """Reduce the failed rows of the intervals before `open_epoch` to the best counts."""
        closed = self.failed.take_before("epoch", open_epoch)
        if closed.empty:
            return
        closed = closed.assign(orig=self._name(closed["orig"]), resp=self._name(closed["resp"]))
        self.address_best = _epoch_counts(closed, "resp_port",
                                          self.settings.address_scan_hosts, self.address_best)
        self.port_best = _epoch_counts(closed, "resp", self.settings.port_scan_ports,
                                       self.port_best)
        self.port_scanned = _port_scanned_pairs(closed, self.settings.port_scan_ports,
                                                self.port_scanned)

    def _source_totals(self) -> pd.DataFrame:
        """The batches' per-source totals as one (first, last, connections, attempts, failed)."""
        if not self.totals:
            return pd.DataFrame(columns=["first", "last", "connections", "attempts",
                                         "failed_attempts"], dtype=np.int64)
        by_source = pd.concat(self.totals).groupby(level=0)
        return by_source.agg({"first": "min", "last": "max", "connections": "sum",
                              "attempts": "sum", "failed_attempts": "sum"})

    def _name(self, ids: pd.Series) -> pd.Series:
        return pd.Series(self.names.name(ids), index=ids.index, dtype="string")

    def _best(self, best: pd.DataFrame | None, group: str) -> pd.DataFrame:
        """The best counts per source (indexed by source), with their interval's start."""
        if best is None:
            best = pd.DataFrame({"orig": pd.Series(dtype="string"),
                                 group: pd.Series(dtype=np.int64 if group == "resp_port"
                                                  else "string"),
                                 "epoch": pd.Series(dtype=np.int64),
                                 "count": pd.Series(dtype=np.int64),
                                 "first": pd.Series(dtype=np.int64),
                                 "crossed": pd.Series(dtype="Int64")})
        at = pd.to_datetime(self.start_ns + best["epoch"] * self.interval_ns, utc=True)
        return best.assign(at=at, first_ts=pd.to_datetime(best["first"], utc=True),
                           crossed_ts=pd.to_datetime(best["crossed"], utc=True)
                           ).set_index("orig")

    def result(self) -> pd.DataFrame:
        """One row a source, sorted by address: fan-out, failures, verdicts."""
        settings = self.settings
        totals = self._source_totals()
        hosts = pd.DataFrame({
            "first_ts": pd.to_datetime(totals["first"], utc=True),
            "last_ts": pd.to_datetime(totals["last"], utc=True),
            "connections": totals["connections"],
            "distinct_dst_hosts": pd.Series(self.hosts.rows()["pair"].to_numpy() >> 32)
            .value_counts(),
            "distinct_dst_ports": self.ports.rows().groupby("orig").size(),
            "attempts": totals["attempts"],
            "failed_attempts": totals["failed_attempts"],
        })
        hosts.index = self._name(hosts.index.to_series())
        hosts = hosts.sort_index()
        hosts["failed_ratio"] = (hosts["failed_attempts"] / hosts["attempts"]).where(
            hosts["attempts"] > 0)

        self._close_intervals(np.iinfo(np.int64).max)
        address = self._best(self.address_best, "resp_port")
        port = self._best(self.port_best, "resp")
        hosts["address_scan_hosts"] = address["count"].reindex(hosts.index).fillna(0)
        hosts["address_scan_port"] = address["resp_port"].reindex(hosts.index)
        hosts["address_scan_at"] = address["at"].reindex(hosts.index)
        hosts["address_scan_first_ts"] = address["first_ts"].reindex(hosts.index)
        hosts["address_scan_crossed_ts"] = address["crossed_ts"].reindex(hosts.index)
        hosts["address_scan"] = hosts["address_scan_hosts"] >= settings.address_scan_hosts
        hosts["port_scan_ports"] = port["count"].reindex(hosts.index).fillna(0)
        hosts["port_scan_host"] = port["resp"].reindex(hosts.index)
        hosts["port_scan_hosts"] = _port_scanned_hosts(self.port_scanned).reindex(hosts.index)
        hosts["port_scan_at"] = port["at"].reindex(hosts.index)
        hosts["port_scan_first_ts"] = port["first_ts"].reindex(hosts.index)
        hosts["port_scan_crossed_ts"] = port["crossed_ts"].reindex(hosts.index)
        hosts["port_scan"] = hosts["port_scan_ports"] >= settings.port_scan_ports

        # First contacts: each source's first TCP connection to each host, if it began with a SYN.
        # The walk over address ids, named after: per-row names would be one string a trial.
        walk = threshold_random_walk(self.first_contacts.trials(), settings)
        walk.index = self._name(walk.index.to_series())
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
                   "failed_attempts", "address_scan_hosts", "port_scan_ports",
                   "trw_first_contacts", "trw_observed", "trw_successes", "trw_failures"]
        hosts[integer] = hosts[integer].astype("Int64")
        hosts["address_scan_port"] = hosts["address_scan_port"].astype("Int32")
        return hosts


def hosts_table(flows: pd.DataFrame, settings: ScanSettings) -> pd.DataFrame:
    """The hosts of a connection table held in memory (one row a source)."""
    rows = pa.Table.from_pandas(flows[FLOW_COLUMNS], preserve_index=False).sort_by("first_ts")
    start = rows.column("first_ts").cast(pa.int64())
    accumulator = HostAccumulator(settings, pc.min(start).as_py() or 0)
    accumulator.add(accumulator.flow_values(rows))
    return accumulator.result()


def file_hosts(flows_path, settings: ScanSettings, what: str = "hosts") -> pd.DataFrame:
    """The hosts of a connection file, streamed by row group; the pass's progress is `what`."""
    flows = pq.ParquetFile(flows_path)
    groups = non_empty_groups(flows)
    start_ns = min((low for low, _ in time_ranges(flows, groups, "first_ts")), default=0)
    accumulator = HostAccumulator(settings, start_ns)
    with Progress(what, total_rows=flows.metadata.num_rows) as progress:
        for values in progress.count(time_ordered(flows, FLOW_COLUMNS, accumulator.flow_values,
                                                  order=("first_ts",))):
            accumulator.add(values)
    return accumulator.result()


def write_hosts(*, trace: str, flows_path, hosts_path, settings: dict) -> dict:
    """Stage: results/features/{trace}/hosts.parquet from flows.parquet."""
    chosen = scan_settings(settings)
    hosts = file_hosts(flows_path, chosen, f"{trace}: hosts")
    hosts.insert(0, "trace", trace)
    HOSTS.write(hosts, hosts_path, {"trace": trace,
                                    "scan_settings": json.dumps(chosen.describe())})
    flagged = hosts[hosts["flagged_by"] != ""]
    log.info("%s: %d sources, flagged: %s", trace, len(hosts),
             dict(zip(flagged["source"], flagged["flagged_by"])) or "none")
    return {"sources": len(hosts), "flagged": len(flagged)}


def hosts_stage(*, trace: str, packets_path, flows_path, http_path, hosts_path, notice_log_path,
                http_log_path, dns_log_path, settings: dict) -> dict:
    """Stage of the hosts rule: hosts.parquet, then notice.log of its scan findings
    (`tracelab.security.notice`), and http.log and dns.log of the trace
    (`tracelab.security.protocol_logs`)."""
    # The DNS answers (a pass over every row's Info) are read while the hosts are made.
    with ThreadPoolExecutor(max_workers=1) as background:
        answers = background.submit(trace_dns_answers, packets_path)
        counts = write_hosts(trace=trace, flows_path=flows_path, hosts_path=hosts_path,
                             settings=settings)
        dns, span = answers.result(), trace_span(packets_path)
    with contextlib.ExitStack() as stack:
        def handle(path):
            return stack.enter_context(stack.enter_context(atomic_path(path)).open("wb"))

        counts["notices"] = write_notice_log(handle(notice_log_path), hosts_path, dns, span)
        counts["http_log"] = write_http_log(handle(http_log_path), http_path, flows_path, dns,
                                            span)
        counts["dns_log"] = write_dns_log(handle(dns_log_path), packets_path, flows_path, dns,
                                          span)
    log.info("%s: notice.log %d, http.log %d, dns.log %d records", trace, counts["notices"],
             counts["http_log"], counts["dns_log"])
    return counts

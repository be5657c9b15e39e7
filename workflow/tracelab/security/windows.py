"""Window features: the ML-ready matrix, one row a fixed-length window of a trace.

Every feature is one small function registered with `@feature(name, unit, description,
robustness, reason)`; adding a feature is adding a function here. A function receives the
window totals (`WindowTotals`: per window, the counts, sums, means, variances and distinct
counts listed in `window_totals.TOTALS`, over the trace's packets, the connections that start
in the window and the HTTP requests) and returns one value per window. The registry is also the
declaration of the feature columns of `windows.parquet` (WINDOWS).

Robustness says whether a feature describes what the traffic *does* or how and when it was
*recorded*:
- `behavioural`: fan-out, failure ratio, SYN share, timing regularity, URI shape... these carry
  over to another capture of the same behaviour.
- `artefact`: time of day, absolute ports, capture size, name resolution, Wireshark's text
  formatting... they can separate two captures perfectly and still say nothing about scanning:
  another capture of the same scan, taken at another hour or exported with other settings,
  flips them.

Rates are per second of the time a window covers. Which windows are rows (a short last window,
empty windows inside and beyond pauses; those left out are counted in the file's metadata) and
how the totals are streamed with bounded memory: `tracelab.security.window_totals`.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pandera.pandas import Check

from tracelab.core.config import settings as config_settings
from tracelab.core.progress import Progress
from tracelab.core.streaming import (
    BATCH_ROWS,
    later_minima,
    ordered_runs,
    read_batches,
    time_ordered,
)
from tracelab.core.tables import DICT_STRING, TIMESTAMP, Column, Table
from tracelab.security.window_totals import (
    WindowAccumulator,
    WindowSettings,
    WindowTotals,
    packet_values,
)

log = logging.getLogger(__name__)

# The columns the stage reads of each table.
PACKET_COLUMNS = ["frame", "ts", "src", "dst", "length", "tcp_flags", "info"]
FLOW_COLUMNS = ["proto", "orig", "orig_port", "resp", "resp_port", "first_ts", "orig_pkts",
                "resp_pkts", "history", "conn_state", "orig_bytes", "resp_bytes"]
HTTP_COLUMNS = ["ts", "status", "jndi", "uri_length", "percent_encoded_share"]

BEHAVIOURAL = "behavioural"
ARTEFACT = "artefact"
ROBUSTNESS = (BEHAVIOURAL, ARTEFACT)
SHARE = (Check.in_range(0, 1),)
NON_NEGATIVE = (Check.ge(0),)


@dataclass(frozen=True)
class Feature:
    name: str
    unit: str
    description: str
    robustness: str
    reason: str
    func: Callable[[WindowTotals], pd.Series]
    checks: tuple = ()

    def describe(self) -> dict:
        return {"name": self.name, "unit": self.unit, "description": self.description,
                "robustness": self.robustness, "reason": self.reason}

    def column(self) -> Column:
        return Column(self.name, pa.float64(), self.description, unit=self.unit, nullable=True,
                      checks=self.checks)


FEATURES: dict[str, Feature] = {}


def feature(name: str, *, unit: str, description: str, robustness: str, reason: str,
            checks: tuple = ()):
    """Register the decorated function as window feature `name` (`checks`: pandera checks of
    its values where defined)."""
    if robustness not in ROBUSTNESS:
        raise ValueError(f"feature {name!r}: robustness must be one of {ROBUSTNESS}")
    if name in FEATURES:
        raise ValueError(f"feature {name!r} registered twice")

    def register(func):
        FEATURES[name] = Feature(name, unit, description, robustness, reason, func, checks)
        return func
    return register


# ---- behavioural ---------------------------------------------------------------------------

@feature("packets_per_s", unit="packets/s", robustness=BEHAVIOURAL, checks=NON_NEGATIVE,
         description="Packets in the window per second it covers.",
         reason="Volume the hosts generate; a sweep sends its probes in bursts.")
def packets_per_s(w):
    return w.rate(w["packets"])


@feature("bytes_per_s", unit="bytes/s", robustness=BEHAVIOURAL, checks=NON_NEGATIVE,
         description="Frame bytes in the window per second it covers.",
         reason="Volume: probes are small, page loads carry content.")
def bytes_per_s(w):
    return w.rate(w["bytes"])


@feature("mean_length", unit="bytes", robustness=BEHAVIOURAL, checks=NON_NEGATIVE,
         description="Mean frame length.",
         reason="Packet size mix: bare SYNs and RSTs against full data segments.")
def mean_length(w):
    return w.ratio(w["bytes"], "packets")


@feature("std_length", unit="bytes", robustness=BEHAVIOURAL, checks=NON_NEGATIVE,
         description="Standard deviation of the frame length.",
         reason="A sweep repeats one probe size; transfers mix sizes.")
def std_length(w):
    return np.sqrt(w["length_var"])


@feature("iat_mean_s", unit="s", robustness=BEHAVIOURAL,
         description="Mean time between consecutive packets of the trace, in the window.",
         reason="Timing of the traffic itself.")
def iat_mean_s(w):
    return w["iat_mean"]


@feature("iat_std_s", unit="s", robustness=BEHAVIOURAL, checks=NON_NEGATIVE,
         description="Standard deviation of the inter-arrival time.",
         reason="Timing regularity: tools pace probes evenly, people browse in bursts.")
def iat_std_s(w):
    return np.sqrt(w["iat_var"])


@feature("iat_cv", unit="ratio", robustness=BEHAVIOURAL,
         description="Coefficient of variation of the inter-arrival time (std / mean).",
         reason="Timing regularity independent of the rate.")
def iat_cv(w):
    return iat_std_s(w) / iat_mean_s(w)


@feature("syn_only_share", unit="share of packets", robustness=BEHAVIOURAL, checks=SHARE,
         description="Packets with SYN and without ACK, as a share of all packets.",
         reason="Connection attempts relative to traffic: a SYN sweep is almost all SYNs.")
def syn_only_share(w):
    # All packets as the base: an export leaves HTTP/TLS rows without flags, a capture does
    # not, and a base of "packets with flags" would tell the two forms of one trace apart.
    return w.ratio(w["syn_only"], "packets")


@feature("rst_share", unit="share of packets", robustness=BEHAVIOURAL, checks=SHARE,
         description="Packets with RST, as a share of all packets.",
         reason="Closed ports answer probes with RST.")
def rst_share(w):
    return w.ratio(w["rst"], "packets")


@feature("distinct_dst_hosts", unit="hosts", robustness=BEHAVIOURAL, checks=NON_NEGATIVE,
         description="Distinct responders of the connections that start in the window.",
         reason="Fan-out: how many hosts are contacted.")
def distinct_dst_hosts(w):
    return w["distinct_resp"]


@feature("distinct_dst_ports", unit="ports", robustness=BEHAVIOURAL, checks=NON_NEGATIVE,
         description="Distinct responder ports of the connections that start in the window.",
         reason="Fan-out over services.")
def distinct_dst_ports(w):
    return w["distinct_resp_ports"]


@feature("max_fanout_per_source", unit="hosts", robustness=BEHAVIOURAL, checks=NON_NEGATIVE,
         description="Most distinct responders any one source contacted in the window.",
         reason="Fan-out of the busiest source, not diluted by other hosts.")
def max_fanout_per_source(w):
    return w["max_resp_per_orig"]


@feature("new_connections_per_s", unit="connections/s", robustness=BEHAVIOURAL,
         checks=NON_NEGATIVE,
         description="Connections that start in the window, per second it covers.",
         reason="Rate of new conversations.")
def new_connections_per_s(w):
    return w.rate(w["connections"])


@feature("failed_connection_ratio", unit="share of TCP attempts", robustness=BEHAVIOURAL,
         checks=SHARE,
         description="Connection attempts starting in the window that failed (S0, REJ, "
                     "RSTOS0, half-open resets...), as a share of attempts.",
         reason="Scanners mostly hit closed or absent services.")
def failed_connection_ratio(w):
    return w.ratio(w["failed_attempts"], "attempts")


@feature("short_connection_share", unit="share of connections", robustness=BEHAVIOURAL,
         checks=SHARE,
         description="Connections starting in the window with at most 3 packets.",
         reason="Probes end after a SYN, a SYN-ACK and a RST.")
def short_connection_share(w):
    return w.ratio(w["short_connections"], "connections")


@feature("http_requests_per_s", unit="requests/s", robustness=BEHAVIOURAL, checks=NON_NEGATIVE,
         description="HTTP requests in the window per second it covers.",
         reason="Application activity.")
def http_requests_per_s(w):
    return w.rate(w["requests"])


@feature("http_4xx_share", unit="share of answered requests", robustness=BEHAVIOURAL,
         checks=SHARE,
         description="Requests answered with a 4xx status, among requests with a seen answer.",
         reason="Probing for paths that do not exist draws 404s.")
def http_4xx_share(w):
    return w.ratio(w["answered_4xx"], "answered")


@feature("jndi_lookups", unit="requests", robustness=BEHAVIOURAL, checks=NON_NEGATIVE,
         description="Requests whose URI holds a JNDI lookup after deobfuscation.",
         reason="The Log4Shell exploit string itself.")
def jndi_lookups(w):
    return w["jndi"]


@feature("mean_uri_length", unit="characters", robustness=BEHAVIOURAL, checks=NON_NEGATIVE,
         description="Mean length of the requested URIs.",
         reason="URI shape: injected lookups make long URIs.")
def mean_uri_length(w):
    return w.ratio(w["uri_chars"], "uri_count")


@feature("mean_percent_encoded_share", unit="share of URI characters", robustness=BEHAVIOURAL,
         checks=SHARE,
         description="Mean share of URI characters inside %XX escapes.",
         reason="URI shape: encoding hides payloads from filters.")
def mean_percent_encoded_share(w):
    return w["percent_mean"]


# ---- artefacts -----------------------------------------------------------------------------

@feature("hour_of_day_utc", unit="h", robustness=ARTEFACT, checks=(Check.in_range(0, 24),),
         description="Time of day (UTC, fractional hours) at the window's start.",
         reason="When the capture was taken, not what the traffic does.")
def hour_of_day_utc(w):
    start = w.start_ts
    return start.dt.hour + start.dt.minute / 60 + start.dt.second / 3600


@feature("capture_packets", unit="packets", robustness=ARTEFACT, checks=NON_NEGATIVE,
         description="Packets in the whole trace (the same in every window of it).",
         reason="How long someone let the capture run.")
def capture_packets(w):
    return pd.Series(float(w.trace_packets), index=w.index)


@feature("mean_dst_port", unit="port number", robustness=ARTEFACT,
         description="Mean responder port of the connections that start in the window.",
         reason="Port numbers are labels, not quantities; they reflect which services the "
                "lab ran.")
def mean_dst_port(w):
    return w.ratio(w["resp_port_sum"], "connections")


@feature("mean_src_port", unit="port number", robustness=ARTEFACT,
         description="Mean originator port of the connections that start in the window.",
         reason="Ephemeral ports come from the operating system's allocator.")
def mean_src_port(w):
    return w.ratio(w["orig_port_sum"], "connections")


@feature("resolved_name_share", unit="share of addresses", robustness=ARTEFACT, checks=SHARE,
         description="Packet addresses (source and destination) shown as names, not IPs.",
         reason="Whether name resolution was on when the trace was exported.")
def resolved_name_share(w):
    return w.ratio(w["named_endpoints"], "packets") / 2


@feature("mean_info_length", unit="characters", robustness=ARTEFACT, checks=NON_NEGATIVE,
         description="Mean length of Wireshark's Info text (empty for captures).",
         reason="Wireshark's formatting, which changes with version, preferences and format.")
def mean_info_length(w):
    return w.ratio(w["info_chars"], "packets")


# ---- the table -----------------------------------------------------------------------------

def windows_table(features: dict[str, Feature]) -> Table:
    """windows.parquet: the window columns, then one column a registered feature."""
    return Table("windows", "results/features/{trace}/windows.parquet", (
        "One row a window of `security.windows.window_s` seconds of a trace, from its first "
        "packet: the ML-ready feature matrix. File metadata: `tracelab.window_s`, "
        "`tracelab.features` (the registry: name, unit, description, robustness, reason), "
        "`tracelab.empty_windows_left_out`."), [
        Column("trace", DICT_STRING, "Trace name, as in the trace sheet."),
        Column("window", pa.int64(), "Window number: it starts `window` × window_s after the "
               "trace's first packet.", checks=[Check.ge(0)], unique=True),
        Column("start_s", pa.float64(), "Start, since the trace's first packet.", unit="s",
               checks=[Check.ge(0)]),
        Column("start_ts", TIMESTAMP, "Start time.", unit="ns"),
        Column("duration_s", pa.float64(), "Time the window covers: window_s, or up to the "
               "trace's last packet for the last window.", unit="s", checks=[Check.ge(0)]),
        *(spec.column() for spec in features.values())])


WINDOWS = windows_table(FEATURES)


def window_matrix(totals: WindowTotals, settings: WindowSettings,
                  features: dict[str, Feature] | None = None) -> pd.DataFrame:
    """One row a window: its number, start and duration, then every registered feature."""
    features = FEATURES if features is None else features
    index = totals.index.to_numpy()
    columns = {"window": index, "start_s": index.astype(np.float64) * float(settings.window_s),
               "start_ts": totals.start_ts.to_numpy(), "duration_s": totals.duration_s.to_numpy()}
    for name, spec in features.items():
        columns[name] = pd.Series(spec.func(totals), dtype=np.float64).reindex(
            totals.index).to_numpy()
    return pd.DataFrame(columns)  # at once: 26 columns inserted one by one took 15x as long


def window_settings(values: dict | None = None) -> WindowSettings:
    """WindowSettings from config values over the schema's defaults."""
    return config_settings(WindowSettings, "security.windows", values)


def accumulate(packets_path, flows_path, http_path, settings: WindowSettings,
               what: str = "windows") -> WindowAccumulator:
    """Stream the three tables of a trace into per-window totals; the pass's progress, `what`,
    counts the rows of all three."""
    tables = [pq.ParquetFile(path) for path in (packets_path, flows_path, http_path)]
    packets, flows, http = tables
    with Progress(what, total_rows=sum(t.metadata.num_rows for t in tables)) as progress:
        accumulator = _packets_added(
            progress.count(time_ordered(packets, PACKET_COLUMNS, packet_values)), settings)
        for values in progress.count(time_ordered(flows, FLOW_COLUMNS, accumulator.flow_values,
                                                  order=("first_ts",))):
            accumulator.add_flows(values)
        for rows in progress.count(read_batches(http, HTTP_COLUMNS)):
            accumulator.add_http(rows)
    return accumulator


def _packets_added(packets: Iterator[pa.Table], settings: WindowSettings) -> WindowAccumulator:
    """An accumulator fed time-ordered packet values; its windows start at the first packet."""
    first = next(packets, None)
    accumulator = WindowAccumulator(settings, int(first.column("ts")[0].as_py()) if first else 0)
    for rows in itertools.chain([] if first is None else [first], packets):
        accumulator.add_packets(rows)
    return accumulator


def table_totals(packet_groups: list[pa.Table], flows: pa.Table, http: pa.Table,
                 settings: WindowSettings) -> tuple[WindowTotals, int]:
    """The window totals of tables held in memory, the packet table as the row groups of a
    file and `http` a chunk a row group, from the batches `accumulate` reads of such files:
    equal to the last bit (means and variances of floats depend on where batches end)."""
    groups = [packet_values(rows.select(PACKET_COLUMNS)) for rows in packet_groups
              if rows.num_rows]
    bounds = later_minima([pc.min(rows.column("ts")).as_py() for rows in groups])
    accumulator = _packets_added(ordered_runs(groups, bounds), settings)
    accumulator.add_flows(accumulator.flow_values(
        flows.select(FLOW_COLUMNS).sort_by("first_ts")))
    # A chunk of `http` a row group of its file: the batches `read_batches` gives.
    for batch in http.select(HTTP_COLUMNS).to_batches(BATCH_ROWS):
        accumulator.add_http(pa.Table.from_batches([batch]))
    return accumulator.totals()


def write_windows(*, trace: str, packets_path, flows_path, http_path, windows_path,
                  settings: dict) -> dict:
    """Stage: results/features/{trace}/windows.parquet."""
    chosen = window_settings(settings)
    return write_window_matrix(trace, accumulate(packets_path, flows_path, http_path, chosen,
                                                 f"{trace}: windows").totals(),
                               chosen, windows_path)


def write_window_matrix(trace: str, totals: tuple[WindowTotals, int], chosen: WindowSettings,
                        windows_path, write=None) -> dict:
    """windows.parquet of a trace's window totals (and the count of empty windows left out),
    written by `write` (`Table.write`'s arguments): the table's own by default, a TableParts'
    `add` to check it with others."""
    totals, left_out = totals
    matrix = window_matrix(totals, chosen)
    matrix.insert(0, "trace", trace)
    (write or windows_table(FEATURES).write)(matrix, windows_path, {
        "trace": trace, "window_s": chosen.window_s, "empty_windows_left_out": left_out,
        "features": json.dumps([spec.describe() for spec in FEATURES.values()])})
    log.info("%s: %d windows of %g s, %d features, %d empty windows of long pauses left out",
             trace, len(matrix), chosen.window_s, len(FEATURES), left_out)
    return {"windows": len(matrix), "features": len(FEATURES)}


def recorded_features(paths: list[str]) -> pd.DataFrame:
    """The feature registry as recorded in windows files by `write_windows` (name, unit,
    description, robustness, reason); the first file names the order."""
    specs = {}
    for path in paths:
        for spec in json.loads(pq.read_schema(path).metadata[b"tracelab.features"]):
            specs.setdefault(spec["name"], spec)
    return pd.DataFrame(list(specs.values()))

"""Window features: the ML-ready matrix, one row a fixed-length window of a trace.

Every feature is one small function registered with `@feature(name, unit, description,
robustness, reason)`; adding a feature is adding a function here. A function receives the
window data (`WindowData`: the trace's packets, connections and HTTP requests, each tagged with
its window) and returns one value per window.

Robustness says whether a feature describes what the traffic *does* or how and when it was
*recorded*:
- `behavioural`: fan-out, failure ratio, SYN share, timing regularity, URI shape... these carry
  over to another capture of the same behaviour.
- `artefact`: time of day, absolute ports, capture size, name resolution, Wireshark's text
  formatting... they can separate two captures perfectly and still say nothing about scanning:
  another capture of the same scan, taken at another hour or exported with other settings,
  flips them.

Windows start at the trace's first packet. The final window is kept only if it covers at least
`min_coverage` of the window length (its rates would rest on too little time otherwise), unless
it is the only one; rates are per second of the time a window covers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa_arrow
import pyarrow.parquet as pq

from tracelab.core.atomic import write_parquet
from tracelab.security.security_connections import FLOWS
from tracelab.core.packets import read_packets
from tracelab.security.security_hosts import attempts, failed_attempts

log = logging.getLogger(__name__)

BEHAVIOURAL = "behavioural"
ARTEFACT = "artefact"
ROBUSTNESS = (BEHAVIOURAL, ARTEFACT)

IP_LITERAL = r"^(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*(?:%\S+)?)$"
PACKET_COLUMNS = ["frame", "ts", "src", "dst", "length", "tcp_flags", "info"]


@dataclass(frozen=True)
class Feature:
    name: str
    unit: str
    description: str
    robustness: str
    reason: str
    func: Callable[[WindowData], pd.Series]

    def describe(self) -> dict:
        return {"name": self.name, "unit": self.unit, "description": self.description,
                "robustness": self.robustness, "reason": self.reason}


FEATURES: dict[str, Feature] = {}


def feature(name: str, *, unit: str, description: str, robustness: str, reason: str):
    """Register the decorated function as window feature `name`."""
    if robustness not in ROBUSTNESS:
        raise ValueError(f"feature {name!r}: robustness must be one of {ROBUSTNESS}")
    if name in FEATURES:
        raise ValueError(f"feature {name!r} registered twice")

    def register(func):
        FEATURES[name] = Feature(name, unit, description, robustness, reason, func)
        return func
    return register


@dataclass(frozen=True)
class WindowSettings:
    window_s: float = 10.0
    min_coverage: float = 0.5


@dataclass
class WindowData:
    """A trace cut into windows; every table carries a `window` column (kept windows only)."""

    index: pd.Index
    window_s: float
    start_ts: pd.Series
    duration_s: pd.Series
    packets: pd.DataFrame
    flows: pd.DataFrame
    http: pd.DataFrame
    trace_packets: int

    def count(self, table: pd.DataFrame) -> pd.Series:
        return table.groupby("window").size().reindex(self.index, fill_value=0)

    def rate(self, amount: pd.Series) -> pd.Series:
        """`amount` per second of the window; undefined for a window that covers no time."""
        return amount / self.duration_s.where(self.duration_s > 0)

    def reduce(self, table: pd.DataFrame, values: pd.Series | str, how: str) -> pd.Series:
        """`values` (a column of `table`, or a Series on some of its rows) reduced per window;
        NaN where there are none."""
        if isinstance(values, str):
            column = table[values]
            numeric = pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)
            values = pd.Series(column.to_numpy(np.float64, na_value=np.nan), index=table.index) \
                if numeric else column
        windows = table["window"].reindex(values.index)
        return getattr(values.groupby(windows), how)().reindex(self.index)

    def share(self, table: pd.DataFrame, mask: pd.Series) -> pd.Series:
        """Share of the rows in `mask` where it holds, per window; NaN where there are none."""
        return self.reduce(table, mask.astype(np.float64), "mean")


# ---- behavioural ---------------------------------------------------------------------------

@feature("packets_per_s", unit="packets/s", robustness=BEHAVIOURAL,
         description="Packets in the window per second it covers.",
         reason="Volume the hosts generate; a sweep sends its probes in bursts.")
def packets_per_s(w):
    return w.rate(w.count(w.packets))


@feature("bytes_per_s", unit="bytes/s", robustness=BEHAVIOURAL,
         description="Frame bytes in the window per second it covers.",
         reason="Volume: probes are small, page loads carry content.")
def bytes_per_s(w):
    return w.rate(w.reduce(w.packets, "length", "sum").fillna(0))


@feature("mean_length", unit="bytes", robustness=BEHAVIOURAL,
         description="Mean frame length.",
         reason="Packet size mix: bare SYNs and RSTs against full data segments.")
def mean_length(w):
    return w.reduce(w.packets, "length", "mean")


@feature("std_length", unit="bytes", robustness=BEHAVIOURAL,
         description="Standard deviation of the frame length.",
         reason="A sweep repeats one probe size; transfers mix sizes.")
def std_length(w):
    return w.reduce(w.packets, "length", "std")


@feature("iat_mean_s", unit="s", robustness=BEHAVIOURAL,
         description="Mean time between consecutive packets of the trace, in the window.",
         reason="Timing of the traffic itself.")
def iat_mean_s(w):
    return w.reduce(w.packets, "iat_s", "mean")


@feature("iat_std_s", unit="s", robustness=BEHAVIOURAL,
         description="Standard deviation of the inter-arrival time.",
         reason="Timing regularity: tools pace probes evenly, people browse in bursts.")
def iat_std_s(w):
    return w.reduce(w.packets, "iat_s", "std")


@feature("iat_cv", unit="ratio", robustness=BEHAVIOURAL,
         description="Coefficient of variation of the inter-arrival time (std / mean).",
         reason="Timing regularity independent of the rate.")
def iat_cv(w):
    return iat_std_s(w) / iat_mean_s(w)


@feature("syn_only_share", unit="share of packets", robustness=BEHAVIOURAL,
         description="Packets with SYN and without ACK, as a share of all packets.",
         reason="Connection attempts relative to traffic: a SYN sweep is almost all SYNs.")
def syn_only_share(w):
    # All packets as the base: an export leaves HTTP/TLS rows without flags, a capture does
    # not, and a base of "packets with flags" would tell the two forms of one trace apart.
    flags = w.packets["tcp_flags"].fillna(0).astype(np.int64)
    return w.share(w.packets, (flags & 0x12) == 0x02)


@feature("rst_share", unit="share of packets", robustness=BEHAVIOURAL,
         description="Packets with RST, as a share of all packets.",
         reason="Closed ports answer probes with RST.")
def rst_share(w):
    flags = w.packets["tcp_flags"].fillna(0).astype(np.int64)
    return w.share(w.packets, (flags & 0x04) != 0)


@feature("distinct_dst_hosts", unit="hosts", robustness=BEHAVIOURAL,
         description="Distinct responders of the connections that start in the window.",
         reason="Fan-out: how many hosts are contacted.")
def distinct_dst_hosts(w):
    return w.reduce(w.flows, "resp", "nunique").fillna(0)


@feature("distinct_dst_ports", unit="ports", robustness=BEHAVIOURAL,
         description="Distinct responder ports of the connections that start in the window.",
         reason="Fan-out over services.")
def distinct_dst_ports(w):
    return w.reduce(w.flows, "resp_port", "nunique").fillna(0)


@feature("max_fanout_per_source", unit="hosts", robustness=BEHAVIOURAL,
         description="Most distinct responders any one source contacted in the window.",
         reason="Fan-out of the busiest source, not diluted by other hosts.")
def max_fanout_per_source(w):
    per_source = w.flows.groupby(["window", "orig"], observed=True)["resp"].nunique()
    return per_source.groupby(level="window").max().reindex(w.index, fill_value=0)


@feature("new_connections_per_s", unit="connections/s", robustness=BEHAVIOURAL,
         description="Connections that start in the window, per second it covers.",
         reason="Rate of new conversations.")
def new_connections_per_s(w):
    return w.rate(w.count(w.flows))


@feature("failed_connection_ratio", unit="share of TCP attempts", robustness=BEHAVIOURAL,
         description="Connection attempts starting in the window that failed (S0, REJ, "
                     "RSTOS0, half-open resets...), as a share of attempts.",
         reason="Scanners mostly hit closed or absent services.")
def failed_connection_ratio(w):
    tried = attempts(w.flows)
    return w.share(w.flows, failed_attempts(w.flows)[tried])


@feature("short_connection_share", unit="share of connections", robustness=BEHAVIOURAL,
         description="Connections starting in the window with at most 3 packets.",
         reason="Probes end after a SYN, a SYN-ACK and a RST.")
def short_connection_share(w):
    return w.share(w.flows, (w.flows["orig_pkts"] + w.flows["resp_pkts"]) <= 3)


@feature("http_requests_per_s", unit="requests/s", robustness=BEHAVIOURAL,
         description="HTTP requests in the window per second it covers.",
         reason="Application activity.")
def http_requests_per_s(w):
    return w.rate(w.count(w.http))


@feature("http_4xx_share", unit="share of answered requests", robustness=BEHAVIOURAL,
         description="Requests answered with a 4xx status, among requests with a seen answer.",
         reason="Probing for paths that do not exist draws 404s.")
def http_4xx_share(w):
    answered = w.http["status"].notna()
    return w.share(w.http, w.http["status"].between(400, 499)[answered])


@feature("jndi_lookups", unit="requests", robustness=BEHAVIOURAL,
         description="Requests whose URI holds a JNDI lookup after deobfuscation.",
         reason="The Log4Shell exploit string itself.")
def jndi_lookups(w):
    return w.reduce(w.http, "jndi", "sum").fillna(0)


@feature("mean_uri_length", unit="characters", robustness=BEHAVIOURAL,
         description="Mean length of the requested URIs.",
         reason="URI shape: injected lookups make long URIs.")
def mean_uri_length(w):
    return w.reduce(w.http, "uri_length", "mean")


@feature("mean_percent_encoded_share", unit="share of URI characters", robustness=BEHAVIOURAL,
         description="Mean share of URI characters inside %XX escapes.",
         reason="URI shape: encoding hides payloads from filters.")
def mean_percent_encoded_share(w):
    return w.reduce(w.http, "percent_encoded_share", "mean")


# ---- artefacts -----------------------------------------------------------------------------

@feature("hour_of_day_utc", unit="h", robustness=ARTEFACT,
         description="Time of day (UTC, fractional hours) at the window's start.",
         reason="When the capture was taken, not what the traffic does.")
def hour_of_day_utc(w):
    start = w.start_ts
    return start.dt.hour + start.dt.minute / 60 + start.dt.second / 3600


@feature("capture_packets", unit="packets", robustness=ARTEFACT,
         description="Packets in the whole trace (the same in every window of it).",
         reason="How long someone let the capture run.")
def capture_packets(w):
    return pd.Series(float(w.trace_packets), index=w.index)


@feature("mean_dst_port", unit="port number", robustness=ARTEFACT,
         description="Mean responder port of the connections that start in the window.",
         reason="Port numbers are labels, not quantities; they reflect which services the "
                "lab ran.")
def mean_dst_port(w):
    return w.reduce(w.flows, "resp_port", "mean")


@feature("mean_src_port", unit="port number", robustness=ARTEFACT,
         description="Mean originator port of the connections that start in the window.",
         reason="Ephemeral ports come from the operating system's allocator.")
def mean_src_port(w):
    return w.reduce(w.flows, "orig_port", "mean")


@feature("resolved_name_share", unit="share of addresses", robustness=ARTEFACT,
         description="Packet addresses (source and destination) shown as names, not IPs.",
         reason="Whether name resolution was on when the trace was exported.")
def resolved_name_share(w):
    return w.reduce(w.packets, "named_endpoints", "sum") / (2 * w.count(w.packets))


@feature("mean_info_length", unit="characters", robustness=ARTEFACT,
         description="Mean length of Wireshark's Info text (empty for captures).",
         reason="Wireshark's formatting, which changes with version, preferences and format.")
def mean_info_length(w):
    return w.reduce(w.packets, "info_length", "mean")


# ---- assembling the matrix -----------------------------------------------------------------

def _named(column: pd.Series) -> pd.Series:
    """1 where an address is a name rather than an IPv4/IPv6 literal (decided per category)."""
    categorical = column.astype("category")
    is_name = ~categorical.cat.categories.astype("string").str.match(IP_LITERAL)
    return pd.Series(np.asarray(is_name, dtype=np.int64)[categorical.cat.codes.to_numpy()],
                     index=column.index)


def window_data(packets: pd.DataFrame, flows: pd.DataFrame, http: pd.DataFrame,
                settings: WindowSettings) -> WindowData:
    """Tag packets, connections and requests with their window; keep the covered windows."""
    window_ns = int(settings.window_s * 1e9)
    ts = packets["ts"].astype("datetime64[ns, UTC]")
    start_ns = int(ts.astype("int64").min()) if len(packets) else 0
    end_ns = int(ts.astype("int64").max()) if len(packets) else 0
    last = (end_ns - start_ns) // window_ns
    index = pd.RangeIndex(last + 1 if len(packets) else 0, name="window")
    covered = np.full(len(index), settings.window_s)
    if len(index):
        covered[-1] = (end_ns - (start_ns + last * window_ns)) / 1e9
        if len(index) > 1 and covered[-1] < settings.min_coverage * settings.window_s:
            index, covered = index[:-1], covered[:-1]

    def tag(table, column):
        t = table[column].astype("datetime64[ns, UTC]").astype("int64")
        window = (t - start_ns) // window_ns
        return table.assign(window=window)[window.isin(index)]

    ordered = packets.sort_values(["ts", "frame"], kind="stable")
    ordered = ordered.assign(
        iat_s=ordered["ts"].astype("datetime64[ns, UTC]").astype("int64").diff() / 1e9,
        named_endpoints=_named(ordered["src"]) + _named(ordered["dst"]),
        info_length=ordered["info"].astype("string").str.len().fillna(0))
    start_ts = pd.Series(pd.to_datetime(start_ns + index.to_numpy() * window_ns, utc=True),
                         index=index)
    return WindowData(index=index, window_s=settings.window_s, start_ts=start_ts,
                      duration_s=pd.Series(covered, index=index),
                      packets=tag(ordered, "ts"), flows=tag(flows, "first_ts"),
                      http=tag(http, "ts"), trace_packets=len(packets))


def window_matrix(data: WindowData, features: dict[str, Feature] | None = None) -> pd.DataFrame:
    """One row a window: its start and duration, then every registered feature."""
    features = FEATURES if features is None else features
    matrix = pd.DataFrame({"window": data.index.to_numpy(),
                           "start_s": data.index.to_numpy() * data.window_s,
                           "start_ts": data.start_ts.to_numpy(),
                           "duration_s": data.duration_s.to_numpy()})
    for name, spec in features.items():
        values = spec.func(data)
        matrix[name] = pd.Series(values, dtype=np.float64).reindex(data.index).to_numpy()
    return matrix


def write_windows(*, trace: str, packets_path, flows_path, http_path, windows_path,
                  settings: dict) -> dict:
    """Stage: results/features/{trace}/windows.parquet."""
    window_settings = WindowSettings(**settings)
    packets = read_packets(packets_path, columns=PACKET_COLUMNS).to_pandas()
    flows = FLOWS.read_pandas(flows_path)
    http = pq.read_table(http_path).to_pandas(types_mapper={
        pa_arrow.int64(): pd.Int64Dtype(), pa_arrow.int16(): pd.Int16Dtype()}.get)
    data = window_data(packets, flows, http, window_settings)
    matrix = window_matrix(data)
    table = pa_arrow.Table.from_pandas(matrix, preserve_index=False)
    write_parquet(table, windows_path, {
        "trace": trace, "window_s": window_settings.window_s,
        "features": json.dumps([spec.describe() for spec in FEATURES.values()])})
    log.info("%s: %d windows of %g s, %d features", trace, len(matrix),
             window_settings.window_s, len(FEATURES))
    return {"windows": len(matrix), "features": len(FEATURES)}

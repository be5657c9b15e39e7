"""Per-window totals of a trace, streamed: what the window features (`tracelab.security.windows`)
are computed from.

The tables are streamed row group by row group: packets in time order, connections in order of
their start (both held back only as far as the row groups' times overlap), requests in any
order. What is kept is per window (sums, Chan et al.'s merge of means and variances across row
groups) and the exact distinct (window, host, port) combinations of the connections of the
windows still open, never a row per packet.

Windows start at the trace's first packet. The final window is kept only if it covers at least
`min_coverage` of the window length (its rates would rest on too little time otherwise), unless
it is the only one. A window without a packet is kept (its counts 0, its means undefined) inside
a pause of at most `max_pause_s`; a longer run of empty windows (a stopped capture, a clock
jump) is left out and counted, so that the matrix grows with the packets, not with the time
span.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tracelab.core.errors import TraceInputError
from tracelab.core.packets import TCP_FLAG_BITS
from tracelab.core.streaming import DistinctRows, NameIds
from tracelab.core.tables import PANDAS_TYPES
from tracelab.security.flow_arrays import PerFlow, run_starts
from tracelab.security.hosts import attempts, failed_attempts

IP_LITERAL = r"^(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*(?:%\S+)?)$"
SYN, ACK, RST = TCP_FLAG_BITS["SYN"], TCP_FLAG_BITS["ACK"], TCP_FLAG_BITS["RST"]

# Per-window totals the features are computed from, and what each is. Counts and sums are
# added across row groups; each (count, mean, variance) triple is merged by Chan et al.'s
# pairwise formula; distinct counts come from exact sets of (window, value) rows.
TOTALS = {
    "packets": "packets",
    "bytes": "sum of frame lengths",
    "length_mean": "mean frame length", "length_var": "its variance (ddof 1)",
    "iat_count": "inter-arrival times (each packet's gap to the trace's previous packet)",
    "iat_mean": "their mean (s)", "iat_var": "their variance",
    "syn_only": "packets with SYN and without ACK",
    "rst": "packets with RST",
    "named_endpoints": "packet addresses (source and destination) that are names, not IPs",
    "info_chars": "characters of Wireshark's Info text",
    "connections": "connections starting in the window",
    "attempts": "of those, TCP attempts (originator sent a SYN)",
    "failed_attempts": "attempts that failed (hosts.failed_attempts)",
    "short_connections": "connections with at most 3 packets",
    "resp_port_sum": "sum of responder ports", "orig_port_sum": "sum of originator ports",
    "distinct_resp": "distinct responders", "distinct_resp_ports": "distinct responder ports",
    "max_resp_per_orig": "most distinct responders of one originator",
    "requests": "HTTP requests",
    "answered": "requests with a seen answer", "answered_4xx": "of those, with a 4xx status",
    "jndi": "requests whose URI holds a JNDI lookup",
    "uri_count": "requests with a URI", "uri_chars": "sum of their URI lengths",
    "percent_count": "requests with a percent-encoded share",
    "percent_mean": "mean share of URI characters inside %XX escapes",
}
# (count, mean, variance or None) triples merged by Chan et al.'s formula.
MOMENTS = (("packets", "length_mean", "length_var"), ("iat_count", "iat_mean", "iat_var"),
           ("percent_count", "percent_mean", None))
MEANS = {name for triple in MOMENTS for name in triple[1:] if name}
# Per-row-group parts of totals kept before they are merged into one.
MERGE_PARTS = 64
# Most rows of a trace's window matrix: about 0.7 KB of memory each while it is made (0.7 GB
# measured for 866k windows), so a tiny window_s on a long trace stops with one clear line.
MAX_WINDOWS = 1_000_000


@dataclass(frozen=True)
class WindowSettings:
    """The `security.windows` config section (defaults: the config schema)."""

    window_s: float
    min_coverage: float
    max_pause_s: float

    @property
    def window_ns(self) -> int:
        return round(self.window_s * 1e9)


@dataclass
class WindowTotals:
    """The kept windows of a trace: their TOTALS (a frame indexed by window), start and the
    time each covers."""

    totals: pd.DataFrame
    start_ts: pd.Series
    duration_s: pd.Series
    trace_packets: int

    @property
    def index(self) -> pd.Index:
        return self.totals.index

    def __getitem__(self, name: str) -> pd.Series:
        return self.totals[name]

    def rate(self, amount: pd.Series) -> pd.Series:
        """`amount` per second of the window; undefined for a window that covers no time."""
        return amount / self.duration_s.where(self.duration_s > 0)

    def ratio(self, part: pd.Series, whole: str) -> pd.Series:
        """`part` per unit of the total `whole`; undefined where that is 0."""
        total = self.totals[whole]
        return part / total.where(total > 0)


def merge_parts(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Per-window totals of several row groups as one frame indexed by window: counts and sums
    added, (count, mean, variance) merged by Chan et al.'s pairwise formula. A window that lies
    in one part keeps that part's values as computed (no rounding from a merge)."""
    if not parts:
        return pd.DataFrame(index=pd.Index([], dtype=np.int64, name="window"))
    data = pd.concat(parts)
    repeated = data.index.duplicated(keep=False)
    several = data[repeated]
    if several.empty:
        return data.sort_index()
    by_window = several.groupby(level=0)
    merged = by_window[[c for c in data.columns if c not in MEANS and not c.endswith("_var")]
                       ].sum()
    for count, mean, var in (triple for triple in MOMENTS if triple[1] in data.columns):
        n = merged[count]
        merged[mean] = (several[count] * several[mean]).groupby(level=0).sum() / n.where(n > 0)
        if var is not None:
            spread = several[count] * (several[mean] - merged[mean].reindex(several.index)) ** 2
            within = several[var].fillna(0) * (several[count] - 1).clip(lower=0)
            m2 = within.groupby(level=0).sum() + spread.groupby(level=0).sum()
            merged[var] = m2 / (n - 1).where(n > 1)
    return pd.concat([data[~repeated], merged[data.columns]]).sort_index()


def _append(parts: list[pd.DataFrame], part: pd.DataFrame) -> None:
    """Add a row group's totals, merging the parts once they are many (connections and
    requests come in any order: each part may touch many windows)."""
    parts.append(part)
    if len(parts) >= MERGE_PARTS:
        parts[:] = [merge_parts(parts)]


def _window_index(windows: np.ndarray) -> pd.Index:
    return pd.Index(windows.astype(np.int64), name="window")


def rows_per_window(window: np.ndarray) -> pd.Series:
    """How many rows each window has (`groupby("window").size()`, by counting: a pandas
    group-by costs milliseconds a call, and a robustness copy makes hundreds)."""
    windows, counts = np.unique(window, return_counts=True)
    return pd.Series(counts.astype(np.int64), index=_window_index(windows))


def most_per_window(window: np.ndarray, key: np.ndarray) -> pd.Series:
    """The most rows one `key` has in each window (`groupby(["window", key]).size()`, then its
    maximum per window)."""
    order = np.lexsort((key, window))
    window, key = window[order], key[order]
    pairs = PerFlow(np.cumsum(run_starts(window) | run_starts(key)))
    per_window = PerFlow(window[pairs.starts])
    return pd.Series(per_window.max(pairs.sizes()).astype(np.int64),
                     index=_window_index(per_window.flow[per_window.starts]))


def sums_per_window(window: np.ndarray, columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """Integer columns summed per window, with the rows a window (`connections`), windows in
    order (`groupby("window").agg(...)`; integer sums are exact in any order)."""
    order = np.argsort(window, kind="stable")
    per = PerFlow(window[order])
    totals = {"connections": per.sizes()}
    totals.update((name, per.sum(values[order], dtype=np.int64))
                  for name, values in columns.items())
    return pd.DataFrame({name: values.astype(np.int64) for name, values in totals.items()},
                        index=_window_index(per.flow[per.starts]))


def packet_values(rows: pa.Table) -> pa.Table:
    """What the window totals need of a packet, as integers: its time, frame, length, TCP flags
    (0 for none), addresses shown as names (0-2) and Info characters."""
    return pa.table({
        "ts": rows.column("ts").cast(pa.int64()), "frame": rows.column("frame"),
        "length": rows.column("length").cast(pa.int64()),
        "tcp_flags": rows.column("tcp_flags").fill_null(0).cast(pa.int64()),
        "named_endpoints": pa.array(_is_name(rows.column("src")) + _is_name(rows.column("dst"))),
        "info_chars": pc.utf8_length(rows.column("info")).fill_null(0).cast(pa.int64())})


def _is_name(column: pa.ChunkedArray) -> np.ndarray:
    """1 where an address is a name rather than an IPv4/IPv6 literal (decided per dictionary
    entry)."""
    parts = []
    for chunk in column.chunks:
        if not pa.types.is_dictionary(chunk.type):
            chunk = pc.dictionary_encode(chunk)
        literal = pc.match_substring_regex(chunk.dictionary.cast(pa.string()), IP_LITERAL)
        is_name = ~literal.to_numpy(zero_copy_only=False)
        parts.append(is_name[chunk.indices.to_numpy(zero_copy_only=False)])
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)


class WindowAccumulator:
    """Per-window totals of one trace, fed packets in time order, and connections and requests
    in any order; `totals()` gives the kept windows."""

    def __init__(self, settings: WindowSettings, start_ns: int):
        self.settings = settings
        self.start_ns = start_ns
        self.end_ns = start_ns
        self.packets = 0
        self.previous_ts: int | None = None
        self.names = NameIds()
        self.packet_parts: list[pd.DataFrame] = []
        self.flow_parts: list[pd.DataFrame] = []
        self.http_parts: list[pd.DataFrame] = []
        self.resp = DistinctRows(["window", "resp"])
        self.resp_ports = DistinctRows(["window", "resp_port"])
        self.fanout = DistinctRows(["window", "orig", "resp"])
        self.distinct_parts: list[pd.DataFrame] = []

    def _window(self, ts_ns: np.ndarray) -> np.ndarray:
        return (ts_ns - self.start_ns) // self.settings.window_ns

    def add_packets(self, rows: pa.Table) -> None:
        """Packet values (`packet_values`) in time order, following the previous slice."""
        ts = rows.column("ts").to_numpy()
        if not ts.size:
            return
        gaps = np.diff(ts, prepend=ts[0] if self.previous_ts is None else self.previous_ts)
        iat_s = gaps / 1e9
        if self.previous_ts is None:
            iat_s[0] = np.nan
        self.previous_ts = self.end_ns = int(ts[-1])
        self.packets += ts.size
        window = self._window(ts)
        # Windows are runs of the time-ordered rows: sums by np.add.reduceat; means and
        # variances of floats by pandas (as one table held in memory would get them).
        starts = np.flatnonzero(np.diff(window, prepend=window[0] - 1))
        flags = rows.column("tcp_flags").to_numpy()
        length = rows.column("length").to_numpy()
        sums = {"packets": np.diff(np.append(starts, ts.size)),
                "bytes": np.add.reduceat(length, starts),
                "syn_only": np.add.reduceat((flags & (SYN | ACK)) == SYN, starts, dtype=np.int64),
                "rst": np.add.reduceat((flags & RST) != 0, starts, dtype=np.int64),
                "named_endpoints": np.add.reduceat(rows.column("named_endpoints").to_numpy(),
                                                   starts),
                "info_chars": np.add.reduceat(rows.column("info_chars").to_numpy(), starts)}
        floats = pd.DataFrame({"length": length.astype(np.float64), "iat_s": iat_s})
        moments = floats.groupby(window, sort=True).agg(["mean", "var", "count"])
        part = pd.DataFrame(sums, index=pd.Index(window[starts], name="window"))
        part["length_mean"] = moments[("length", "mean")].to_numpy()
        part["length_var"] = moments[("length", "var")].to_numpy()
        part["iat_count"] = moments[("iat_s", "count")].to_numpy()
        part["iat_mean"] = moments[("iat_s", "mean")].to_numpy()
        part["iat_var"] = moments[("iat_s", "var")].to_numpy()
        _append(self.packet_parts, part)

    def flow_values(self, rows: pa.Table) -> pa.Table:
        """What the window totals need of a connection, as integers (addresses as ids)."""
        flows = rows.drop_columns(["orig", "resp"]).to_pandas(types_mapper=PANDAS_TYPES.get)
        tried = attempts(flows)
        return pa.table({
            "first_ts": rows.column("first_ts").cast(pa.int64()),
            "orig": self.names.of(rows.column("orig")), "resp": self.names.of(rows.column("resp")),
            "resp_port": flows["resp_port"].to_numpy(np.int64),
            "orig_port": flows["orig_port"].to_numpy(np.int64),
            "attempts": tried.to_numpy(np.int64),
            "failed_attempts": (failed_attempts(flows) & tried).to_numpy(np.int64),
            "short_connections": ((flows["orig_pkts"] + flows["resp_pkts"]) <= 3)
            .to_numpy(np.int64)})

    def add_flows(self, values: pa.Table) -> None:
        """Connection values (`flow_values`) in order of their start, following the previous
        slice: the windows before the last one seen are then complete, and their distinct
        (window, host, port) rows are reduced to counts."""
        frame = values.to_pandas()
        if frame.empty:
            return
        frame["window"] = self._window(frame["first_ts"].to_numpy())
        _append(self.flow_parts, sums_per_window(frame["window"].to_numpy(), {
            name: frame[column].to_numpy() for name, column in (
                ("attempts", "attempts"), ("failed_attempts", "failed_attempts"),
                ("short_connections", "short_connections"), ("resp_port_sum", "resp_port"),
                ("orig_port_sum", "orig_port"))}))
        self.resp.add(frame)
        self.resp_ports.add(frame)
        self.fanout.add(frame)
        self._close_flow_windows(int(frame["window"].iloc[-1]))

    def _close_flow_windows(self, open_window: int) -> None:
        fanout = self.fanout.take_before("window", open_window)
        self.distinct_parts.append(pd.DataFrame({
            "distinct_resp": rows_per_window(
                self.resp.take_before("window", open_window)["window"].to_numpy()),
            "distinct_resp_ports": rows_per_window(
                self.resp_ports.take_before("window", open_window)["window"].to_numpy()),
            "max_resp_per_orig": most_per_window(fanout["window"].to_numpy(),
                                                 fanout["orig"].to_numpy())}))

    def add_http(self, rows: pa.Table) -> None:
        http = rows.to_pandas(types_mapper=PANDAS_TYPES.get)
        status = http["status"]
        answered = status.notna()
        frame = pd.DataFrame({
            "window": self._window(rows.column("ts").cast(pa.int64()).to_numpy()),
            "answered": answered.to_numpy(np.int64),
            "answered_4xx": (answered & status.between(400, 499).fillna(False))
            .to_numpy(np.int64),
            "jndi": http["jndi"].fillna(False).to_numpy(np.int64),
            "uri_length": http["uri_length"].to_numpy(np.float64, na_value=np.nan),
            "percent": http["percent_encoded_share"].to_numpy(np.float64, na_value=np.nan)})
        by_window = frame.groupby("window", sort=True)
        _append(self.http_parts, by_window.agg(
            requests=("answered", "size"), answered=("answered", "sum"),
            answered_4xx=("answered_4xx", "sum"), jndi=("jndi", "sum"),
            uri_count=("uri_length", "count"), uri_chars=("uri_length", "sum"),
            percent_count=("percent", "count"), percent_mean=("percent", "mean")))

    def kept_windows(self, busy: pd.Index) -> tuple[pd.Index, int]:
        """The windows that are rows: those with packets, the empty ones inside pauses of at
        most max_pause_s, less a last window that covers too little; and how many empty windows
        of longer pauses were left out."""
        settings = self.settings
        busy = busy.to_numpy(np.int64)
        empty_before = np.diff(busy, prepend=busy[:1]) - 1
        bridged = empty_before <= settings.max_pause_s // settings.window_s
        filled = np.where(bridged, empty_before.clip(min=0), 0)
        rows = busy.size + int(filled.sum())
        if rows > MAX_WINDOWS:
            raise TraceInputError(
                "config", "window count", f"windows of {settings.window_s:g} s would cut the "
                f"trace into {rows:,} rows, more than {MAX_WINDOWS:,}; choose a longer window",
                field="security.windows.window_s")
        offsets = np.arange(filled.sum()) - np.repeat(np.cumsum(filled) - filled, filled)
        empty = np.repeat(busy - filled, filled) + offsets
        index = np.sort(np.concatenate([busy, empty]))
        left_out = int(empty_before[~bridged].sum())
        if index.size > 1 and self._covered(index)[-1] < settings.min_coverage * settings.window_s:
            index = index[:-1]
        return pd.Index(index, name="window"), left_out

    def _covered(self, index: np.ndarray) -> np.ndarray:
        """Seconds each window covers: window_s, up to the trace's last packet for the last."""
        window_ns = self.settings.window_ns
        last = (self.end_ns - self.start_ns) // window_ns
        covered = np.full(index.size, float(self.settings.window_s))
        covered[index == last] = (self.end_ns - (self.start_ns + last * window_ns)) / 1e9
        return covered

    def totals(self) -> tuple[WindowTotals, int]:
        """The kept windows' totals, and the count of empty windows left out."""
        packets = merge_parts(self.packet_parts)
        index, left_out = self.kept_windows(packets.index)
        self._close_flow_windows(np.iinfo(np.int64).max)
        parts = [packets, merge_parts(self.flow_parts), merge_parts(self.http_parts),
                 pd.concat(self.distinct_parts)]
        totals = pd.concat([part.reindex(index) for part in parts], axis=1).reindex(
            columns=list(TOTALS))
        counted = [name for name in TOTALS if name not in MEANS and not name.endswith("_var")]
        totals[counted] = totals[counted].fillna(0)
        start = pd.Series(pd.to_datetime(self.start_ns + index.to_numpy() *
                                         self.settings.window_ns, utc=True), index=index)
        return WindowTotals(totals=totals.astype(np.float64), start_ts=start,
                            duration_s=pd.Series(self._covered(index.to_numpy()), index=index),
                            trace_packets=self.packets), left_out

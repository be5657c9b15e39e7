"""Perturbations of recording and network conditions: the same traffic, recorded differently.

Every perturbation is one small function registered with `@perturbation(name, description)`;
adding one is adding a function here (and its name to `robustness.perturbations` in the
config). A function receives one row group of a trace's packet table and a
`PerturbationContext` (its settings from `robustness.parameters.<name>`, the window stage's
window length and coverage, a seed of its own, and `TraceFacts`: what it may need to know of
the whole trace, gathered in one streamed pass before) and returns the rows as another
recording of the same traffic would have given them: it changes how and when the traffic was
recorded or carried, never what the hosts did.

Functions work row group by row group, so a trace is never held whole: whatever depends on the
whole trace (its time span, DNS answers, endpoints) is in `TraceFacts`, and random choices
depend on the seed and the packet's frame number only (the same whatever the row groups).
Rows keep their `frame` numbers and their order and are never added, so the stage can tell
which packets a perturbation kept and what it changed. Cuts keep whole windows of the trace's
window grid (windows start at its first packet).

A perturbation registered with `relabel=` only moves every timestamp by one offset or renames
endpoints one-to-one: how packets form connections depends on time differences and on which
addresses are equal, never on their values, so it may be applied to the original's connections
instead of assembling them again (`tests/test_robustness_variants.py` checks the windows are
equal either way).
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tracelab.core.arrow_types import TIMESTAMP
from tracelab.core.streaming import derived_row_groups, non_empty_groups, time_ranges
from tracelab.security.flow_arrays import floats
from tracelab.security.names import ADDRESS, IPV4, address_of_name, names_from_dns

NS_PER_S = 1_000_000_000
# Bytes of payload needed to see each field (RFC 9112 status line "HTTP/1.1 200"; a TLS
# record header of 5 bytes, then the handshake message type).
HTTP_STATUS_BYTES = 12
TLS_MESSAGE_BYTES = 6
# The columns TraceFacts are gathered from.
FACT_COLUMNS = ["ts", "src", "dst", "src_port", "dst_port", "protocol", "info"]


@dataclass(frozen=True)
class TraceFacts:
    """What a perturbation may need of the whole trace, from one pass over a few columns."""

    first_ns: int
    last_ns: int
    occupied: np.ndarray  # windows of the trace's grid that hold a packet, ascending
    packets: np.ndarray  # ...and how many packets each holds
    dns: dict[str, str]  # name -> address, from the trace's own DNS answers
    endpoints: list[str]  # every distinct source and destination
    servers: list[str]  # endpoints that received on the lower port of a ported packet


@dataclass(frozen=True)
class PerturbationContext:
    seed: list[int]
    params: dict
    window_s: float
    min_coverage: float
    facts: TraceFacts

    def rng(self) -> np.random.Generator:
        """The same generator at every call (and row group)."""
        return np.random.default_rng(self.seed)

    def uniform(self, frames: np.ndarray) -> np.ndarray:
        """A draw in [0, 1) per packet from its frame number and the seed (splitmix64), the
        same whatever row group the packet is in."""
        x = frames.astype(np.uint64) + np.uint64(self.seed[-1] * 0x9E3779B9 + self.seed[0])
        with np.errstate(over="ignore"):
            x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            x ^= x >> np.uint64(31)
        return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass(frozen=True)
class Relabel:
    """An assembly-preserving change: every time moved by `offset_ns`, endpoints renamed."""

    offset_ns: int = 0
    names: dict[str, str] = field(default_factory=dict)

    def one_to_one(self, endpoints: list[str]) -> bool:
        """No two endpoints end up with one name (else connections could merge)."""
        renamed = [self.names.get(e, e) for e in endpoints]
        return len(set(renamed)) == len(set(endpoints))

    def apply(self, rows: pa.Table, times: tuple[str, ...], addresses: tuple[str, ...]) -> pa.Table:
        for column in times if self.offset_ns else ():
            rows = _replace(rows, column, pc.add(rows.column(column).cast(pa.int64()),
                                                 self.offset_ns))
        for column in addresses if self.names else ():
            rows = _replace(rows, column, _renamed(rows.column(column), self.names))
        return rows


@dataclass(frozen=True)
class Perturbation:
    name: str
    description: str
    func: Callable[[pa.Table, PerturbationContext], pa.Table]
    relabel: Callable[[PerturbationContext], Relabel] | None = None


PERTURBATIONS: dict[str, Perturbation] = {}


def perturbation(name: str, *, description: str):
    """Register the decorated function `(rows, context) -> rows` as perturbation `name`."""
    if name in PERTURBATIONS:
        raise ValueError(f"perturbation {name!r} registered twice")

    def register(func):
        PERTURBATIONS[name] = Perturbation(name, description, func)
        return func
    return register


def relabelling(name: str, *, description: str):
    """Register the decorated function `context -> Relabel` as perturbation `name`."""
    if name in PERTURBATIONS:
        raise ValueError(f"perturbation {name!r} registered twice")

    def register(make: Callable[[PerturbationContext], Relabel]):
        def func(rows, context):
            return make(context).apply(rows, ("ts",), ("src", "dst"))
        PERTURBATIONS[name] = Perturbation(name, description, func, make)
        return make
    return register


# ---- facts of the whole trace --------------------------------------------------------------

def timestamps_ns(rows: pa.Table) -> np.ndarray:
    return rows.column("ts").cast(pa.int64()).to_numpy()


def window_numbers(rows: pa.Table, first_ns: int, window_s: float) -> np.ndarray:
    """Each row's window on the grid `window_s` wide from `first_ns`."""
    return (timestamps_ns(rows) - first_ns) // int(window_s * NS_PER_S)


def _strings(column) -> pa.Array:
    return pc.cast(column, pa.string()) if not isinstance(column, pa.ChunkedArray) \
        else column.cast(pa.string()).combine_chunks()


def gather_facts(packets_path, window_s: float) -> TraceFacts:
    """TraceFacts of a packet table, streamed row group by row group (a few columns)."""
    parquet = pq.ParquetFile(packets_path)
    groups = non_empty_groups(parquet)
    return facts_of(derived_row_groups(parquet, FACT_COLUMNS, groups),
                    *time_span(parquet, groups), window_s)


def time_span(parquet: pq.ParquetFile, groups: list[int]) -> tuple[int, int]:
    """The earliest and latest timestamps (ns) of a packet table's `groups` (0, 0: none)."""
    ranges = time_ranges(parquet, groups)
    return (min((low for low, _ in ranges), default=0),
            max((high for _, high in ranges), default=0))


class WindowTally:
    """Packets in each window of a trace's grid (`window_s` wide from its first packet,
    `first_ns`), counted a group of rows at a time (at least the time column)."""

    def __init__(self, first_ns: int, window_s: float):
        self.first_ns, self.window_s = first_ns, window_s
        self.counts = Counter()

    def add(self, rows: pa.Table) -> None:
        self.counts.update(dict(zip(*(part.tolist() for part in np.unique(
            window_numbers(rows, self.first_ns, self.window_s), return_counts=True)))))

    def occupied(self) -> tuple[np.ndarray, np.ndarray]:
        """The windows that hold a packet, ascending, and how many each holds."""
        windows = sorted(self.counts)
        return (np.array(windows, np.int64),
                np.array([self.counts[w] for w in windows], np.int64))


def facts_of(row_groups: Iterable[pa.Table], first_ns: int, last_ns: int,
             window_s: float) -> TraceFacts:
    """TraceFacts of packets given a group of rows at a time (at least FACT_COLUMNS), their
    first and last times known."""
    tally, dns, endpoints, servers = WindowTally(first_ns, window_s), {}, set(), set()
    for rows in row_groups:
        tally.add(rows)
        dns_rows = pc.fill_null(pc.equal(rows.column("protocol").cast(pa.string()), "DNS"), False)
        dns.update(names_from_dns(_strings(rows.column("info").filter(dns_rows))))
        src, dst = _strings(rows.column("src")), _strings(rows.column("dst"))
        endpoints.update(pc.unique(src).to_pylist() + pc.unique(dst).to_pylist())
        sport, dport = _ports(rows)
        servers.update(pc.unique(dst.filter(pa.array(dport < sport))).to_pylist()
                       + pc.unique(src.filter(pa.array(sport < dport))).to_pylist())
    return TraceFacts(first_ns, last_ns, *tally.occupied(), dns,
                      sorted(e for e in endpoints if e is not None),
                      sorted(s for s in servers if s is not None))


# ---- helpers -------------------------------------------------------------------------------

def _with_timestamps(rows: pa.Table, ts_ns: np.ndarray) -> pa.Table:
    return _replace(rows, "ts", pa.array(ts_ns, pa.int64()))


def _replace(rows: pa.Table, name: str, values) -> pa.Table:
    """The table with column `name` replaced by `values`, cast to the column's type."""
    field_ = rows.schema.field(name)
    if pa.types.is_timestamp(field_.type):
        values = pc.cast(values, pa.int64()).cast(TIMESTAMP)
    return rows.set_column(rows.schema.get_field_index(name), field_, pc.cast(values, field_.type))


def _renamed(column: pa.ChunkedArray, mapping: dict[str, str]) -> pa.Array:
    """Every key of `mapping` replaced (looked up once per distinct value)."""
    encoded = pc.dictionary_encode(_strings(column))
    renamed = pa.array([mapping.get(v, v) for v in encoded.dictionary.to_pylist()], pa.string())
    return pc.take(renamed, encoded.indices)


# ---- time ----------------------------------------------------------------------------------

@relabelling("hour_shift", description="Every timestamp moved by `hours` hours: the same "
             "traffic recorded at another time of day.")
def hour_shift(context):
    return Relabel(offset_ns=context.params["hours"] * 3600 * NS_PER_S)


@relabelling("date_shift", description="Every timestamp moved by `days` days: the same traffic "
             "recorded on another date, at the same time of day.")
def date_shift(context):
    return Relabel(offset_ns=context.params["days"] * 86400 * NS_PER_S)


def _stretched(rows: pa.Table, context: PerturbationContext) -> pa.Table:
    first = context.facts.first_ns
    ts = timestamps_ns(rows)
    return _with_timestamps(rows, first + np.round((ts - first) * context.params["factor"])
                            .astype(np.int64))


@perturbation("slower_path", description="Every gap between packets times `factor` (above 1): "
              "the same traffic carried over a slower path.")
def slower_path(rows, context):
    return _stretched(rows, context)


@perturbation("faster_path", description="Every gap between packets times `factor` (below 1): "
              "the same traffic carried over a faster path.")
def faster_path(rows, context):
    return _stretched(rows, context)


@perturbation("timing_jitter", description="Every timestamp delayed by a smoothly varying "
              "amount within plus or minus `max_ms` milliseconds (a sine of random phase whose "
              "slope is at most one half): a path whose queueing delay varies, gaps between "
              "packets locally stretched or shrunk by up to half, no packet overtaking another.")
def timing_jitter(rows, context):
    amplitude_ns = context.params["max_ms"] * 1e6
    # Slope 2 pi A / P = 1/2: the times stay in order (d t'/d t >= 1/2), and ties stay ties.
    period_ns = 4 * np.pi * amplitude_ns
    phase = context.rng().uniform(0, 2 * np.pi)
    since = timestamps_ns(rows) - context.facts.first_ns
    delay = amplitude_ns * (np.sin(2 * np.pi * since / period_ns + phase) - np.sin(phase))
    return _with_timestamps(rows, timestamps_ns(rows) + np.round(delay).astype(np.int64))


# ---- cuts and loss -------------------------------------------------------------------------

def window_count(context: PerturbationContext) -> int:
    """Windows the window stage keeps: the last, partial one only if it covers `min_coverage`
    of a window (or is the only one)."""
    facts = context.facts
    span_s = (facts.last_ns - facts.first_ns) / NS_PER_S
    last = int(span_s // context.window_s)
    short = last > 0 and span_s - last * context.window_s < context.min_coverage * context.window_s
    return last + (0 if short else 1)


def _keep_windows(rows: pa.Table, context: PerturbationContext, first: int,
                  stop: int | None) -> pa.Table:
    """The packets of windows first..stop-1 (to the end of the trace if stop is None)."""
    window = window_numbers(rows, context.facts.first_ns, context.window_s)
    keep = window >= first
    if stop is not None:
        keep &= window < stop
    return rows.filter(pa.array(keep))


@perturbation("first_half", description="Only the first half of the trace's windows: a capture "
              "stopped halfway.")
def first_half(rows, context):
    return _keep_windows(rows, context, 0, math.ceil(window_count(context) / 2))


@perturbation("second_half", description="Only the second half of the trace's windows: a "
              "capture started halfway.")
def second_half(rows, context):
    windows = window_count(context)
    return _keep_windows(rows, context, windows - math.ceil(windows / 2), None)


@perturbation("shorter_capture", description="A run of `share` of the trace's windows, starting "
              "at a random window that holds packets: a shorter capture taken at another moment.")
def shorter_capture(rows, context):
    windows = window_count(context)
    kept = max(1, round(context.params["share"] * windows))
    starts = context.facts.occupied[context.facts.occupied <= windows - kept]
    start = int(context.rng().choice(starts)) if starts.size else 0
    return _keep_windows(rows, context, start, start + kept)


@perturbation("packet_loss", description="Each packet lost with probability `share` (seeded "
              "per frame): a capture point that drops packets. Connections lose packets, and "
              "their history what the lost packets carried.")
def packet_loss(rows, context):
    keep = context.uniform(rows.column("frame").to_numpy()) >= context.params["share"]
    return rows.filter(pa.array(keep))


@perturbation("heavy_packet_loss", description="As packet_loss, with the larger `share`.")
def heavy_packet_loss(rows, context):
    return packet_loss(rows, context)


# ---- names and addresses -------------------------------------------------------------------

def _endpoints(facts: TraceFacts, addresses: bool) -> pa.Array:
    """The distinct endpoints that are (or are not) address literals."""
    values = pa.array(facts.endpoints, pa.string())
    literal = pc.match_substring_regex(values, ADDRESS)
    return values.filter(literal if addresses else pc.invert(literal))


@relabelling("names_to_addresses", description="Names shown in place of addresses replaced by "
             "the address, where the trace itself tells it (a DNS answer, or the address "
             "written in the name): an export with name resolution off.")
def names_to_addresses(context):
    names = _endpoints(context.facts, addresses=False)
    addresses = address_of_name(names, context.facts.dns)
    known = pc.is_valid(addresses)
    return Relabel(names=dict(zip(names.filter(known).to_pylist(),
                                  addresses.filter(known).to_pylist())))


@relabelling("addresses_to_names", description="Addresses replaced by names: the name a DNS "
             "answer of the trace gives, else a reverse-DNS style name under `suffix`: an "
             "export with name resolution on.")
def addresses_to_names(context):
    addresses = _endpoints(context.facts, addresses=True)
    answered = {address: name for name, address in context.facts.dns.items()}
    suffix = context.params["suffix"]
    ipv4 = pc.extract_regex(addresses, f"^{IPV4}$")
    reverse_dns = pc.binary_join_element_wise(
        *[pc.struct_field(ipv4, letter) for letter in "dcba"], suffix, ".")
    # IPv6: the address with its colons as dashes, which makes a valid label.
    dashed = pc.binary_join_element_wise(pc.replace_substring(addresses, ":", "-"), suffix, ".")
    generated = pc.coalesce(reverse_dns, dashed)
    return Relabel(names={address: answered.get(address, name) for address, name in
                          zip(addresses.to_pylist(), generated.to_pylist())})


@relabelling("server_addresses", description="Every server's IPv4 address (the side of a "
             "connection on the lower port) renumbered from `first_address` up: the same "
             "services hosted in another network.")
def server_addresses(context):
    servers = set(context.facts.servers)
    ipv4 = [s for s in _endpoints(context.facts, addresses=True).to_pylist()
            if s in servers and "." in s]
    start = int(ipaddress.IPv4Address(context.params["first_address"]))
    return Relabel(names={s: str(ipaddress.IPv4Address(start + k)) for k, s in enumerate(ipv4)})


# ---- clock, ports, snap length -------------------------------------------------------------

def _floor_clock(rows: pa.Table, resolution_ns: int) -> pa.Table:
    ts = timestamps_ns(rows)
    return _with_timestamps(rows, ts - ts % resolution_ns)


@perturbation("clock_us", description="Timestamps cut to microseconds: a pcap or an export with "
              "a microsecond clock instead of nanoseconds.")
def clock_us(rows, context):
    return _floor_clock(rows, 1_000)


@perturbation("clock_ms", description="Timestamps cut to milliseconds: a coarser capture clock.")
def clock_ms(rows, context):
    return _floor_clock(rows, 1_000_000)


def _ports(rows: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    return floats(rows.column("src_port")), floats(rows.column("dst_port"))


def _with_ports(rows: pa.Table, src: np.ndarray, dst: np.ndarray) -> pa.Table:
    for name, values in (("src_port", src), ("dst_port", dst)):
        rows = _replace(rows, name, pa.array(values, pa.float64(), mask=np.isnan(values)))
    return rows


@perturbation("ephemeral_ports", description="Client ports drawn anew (a random permutation of "
              "the ports from `lowest` up, the same for every packet of a connection): another "
              "operating system's port allocator. The client port is the higher of a packet's "
              "two ports, if at least `lowest`. Info text is left as recorded.")
def ephemeral_ports(rows, context):
    lowest = context.params["lowest"]
    permutation = lowest + context.rng().permutation(65536 - lowest)
    src, dst = _ports(rows)
    remapped = []
    for mine, other in ((src, dst), (dst, src)):
        # NaN where the port is null: comparisons with it are False, so it stays.
        ephemeral = (mine >= lowest) & ~(mine < other)
        remapped.append(np.where(ephemeral, permutation[np.where(ephemeral, mine - lowest, 0)
                                                        .astype(np.int64)], mine))
    return _with_ports(rows, *remapped)


@perturbation("server_ports", description="Server ports remapped as `ports` says (8443 -> 443): "
              "the same services offered on other ports. Info text is left as recorded.")
def server_ports(rows, context):
    mapping = {int(k): v for k, v in context.params["ports"].items()}
    src, dst = _ports(rows)
    for old, new in mapping.items():
        src, dst = np.where(src == old, new, src), np.where(dst == old, new, dst)
    return _with_ports(rows, src, dst)


def _cut(text: pa.Array, keep: pa.Array) -> pa.Array:
    """Each row's text cut to `keep` characters (few distinct `keep` values: one slice each)."""
    cut = pa.nulls(len(text), pa.string())
    for length in pc.unique(pc.drop_null(keep)).to_pylist():
        rows = pc.fill_null(pc.equal(keep, length), False)
        cut = pc.replace_with_mask(cut, rows, pc.utf8_slice_codeunits(text.filter(rows), 0,
                                                                      max(length, 0)))
    return cut


@perturbation("snap_length", description="A capture cut to `payload_bytes` of TCP payload a "
              "packet: HTTP request lines cut (URI shortened, version lost), status lines and "
              "TLS messages dropped when they do not fit. Frame lengths stay the original ones.")
def snap_length(rows, context):
    payload = context.params["payload_bytes"]
    method = _strings(rows.column("http_method"))
    uri = rows.column("http_uri").combine_chunks()
    version = _strings(rows.column("http_version"))
    method_bytes = pc.add(pc.utf8_length(method), 1)  # the method and a space
    line_bytes = pc.add(pc.add(method_bytes, pc.utf8_length(uri)),
                        pc.add(pc.utf8_length(version), 1))
    seen = pc.fill_null(pc.less(method_bytes, payload), False)  # at least one URI character
    uri_kept = _cut(uri, pc.subtract(payload, method_bytes))
    # A request's version ends its line; a response's starts its status line.
    version_bytes = pc.if_else(pc.is_valid(method), line_bytes, pc.utf8_length(version))
    fields = {
        "http_method": pc.if_else(seen, method, None),
        "http_uri": pc.if_else(seen, uri_kept, None),
        "http_version": pc.if_else(pc.fill_null(pc.less_equal(version_bytes, payload), False),
                                   version, None),
    }
    if payload < HTTP_STATUS_BYTES:
        fields["http_status"] = pa.nulls(rows.num_rows, pa.int16())
    if payload < TLS_MESSAGE_BYTES and "tls_message" in rows.schema.names:
        fields["tls_message"] = pa.nulls(rows.num_rows, pa.string())
    for name, values in fields.items():
        rows = _replace(rows, name, values)
    return rows

"""Perturbations of recording conditions: the same traffic, recorded differently.

Every perturbation is one small function registered with `@perturbation(name, description)`;
adding one is adding a function here (and its name to `robustness.perturbations` in the
config). A function receives a trace's normalized packet table (PACKET_SCHEMA) and a
`PerturbationContext` (its own generator, its settings from `robustness.parameters.<name>`, and
the window stage's window length and coverage) and returns the packet table as another
recording of the same traffic would have given it: it changes how and when the traffic was
recorded, never what the hosts did.

Rows keep their `frame` numbers and their order, and are never added, so the stage can tell
which packets a perturbation kept and what it changed. Cuts keep whole windows of the trace's
window grid (windows start at its first packet), so the windows of a cut are the original
windows and what moves is only what the capture's length moves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tracelab.core.packets import TIMESTAMP

NS_PER_S = 1_000_000_000
IPV4 = r"(?P<a>\d{1,3})\.(?P<b>\d{1,3})\.(?P<c>\d{1,3})\.(?P<d>\d{1,3})"
# A name that starts with the four octets of an address in reverse order, as reverse-DNS
# (in-addr.arpa) names and the names of many hosting providers do: 47.1.18.198.host.example.
REVERSED_ADDRESS_NAME = r"^(?P<d>\d{1,3})\.(?P<c>\d{1,3})\.(?P<b>\d{1,3})\.(?P<a>\d{1,3})\.[A-Za-z]"
# A name that holds an address with dashes, in order: ip-198-18-1-47.example, 198-18-1-47.x.
DASHED_ADDRESS_NAME = (r"(?:^|[^0-9])(?P<a>\d{1,3})-(?P<b>\d{1,3})-(?P<c>\d{1,3})-(?P<d>\d{1,3})"
                       r"(?:[^0-9]|$)")
# Wireshark's Info of a DNS answer: the query name, CNAMEs, then the first A/AAAA address.
DNS_ANSWER = (r"^Standard query response 0x[0-9a-fA-F]{1,4} (?:A|AAAA) (?P<name>[^\s,]+)"
              r"(?: CNAME [^\s,]+)* (?:A|AAAA) (?P<address>[0-9A-Fa-f:.]+)")
ADDRESS = rf"^(?:{IPV4}|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*)$"
# Bytes of payload needed to see each field (RFC 9112 status line "HTTP/1.1 200"; a TLS
# record header of 5 bytes, then the handshake message type).
HTTP_STATUS_BYTES = 12
TLS_MESSAGE_BYTES = 6


@dataclass(frozen=True)
class PerturbationContext:
    rng: np.random.Generator
    params: dict
    window_s: float
    min_coverage: float


@dataclass(frozen=True)
class Perturbation:
    name: str
    description: str
    func: Callable[[pa.Table, PerturbationContext], pa.Table]


PERTURBATIONS: dict[str, Perturbation] = {}


def perturbation(name: str, *, description: str):
    """Register the decorated function as perturbation `name`."""
    if name in PERTURBATIONS:
        raise ValueError(f"perturbation {name!r} registered twice")

    def register(func):
        PERTURBATIONS[name] = Perturbation(name, description, func)
        return func
    return register


def timestamps_ns(packets: pa.Table) -> np.ndarray:
    return packets.column("ts").cast(pa.int64()).to_numpy()


def _with_timestamps(packets: pa.Table, ts_ns: np.ndarray) -> pa.Table:
    index = packets.schema.get_field_index("ts")
    return packets.set_column(index, "ts", pa.array(ts_ns, pa.int64()).cast(TIMESTAMP))


def _replace(packets: pa.Table, name: str, values: pa.Array) -> pa.Table:
    """The table with column `name` replaced by `values`, cast to the column's type."""
    field = packets.schema.field(name)
    return packets.set_column(packets.schema.get_field_index(name), field,
                              values.cast(field.type))


# ---- time ----------------------------------------------------------------------------------

@perturbation("hour_shift", description="Every timestamp moved by `hours` hours: the same "
              "traffic recorded at another time of day.")
def hour_shift(packets, context):
    return _with_timestamps(packets, timestamps_ns(packets) + context.params["hours"] * 3600
                            * NS_PER_S)


@perturbation("date_shift", description="Every timestamp moved by `days` days: the same "
              "traffic recorded on another date, at the same time of day.")
def date_shift(packets, context):
    return _with_timestamps(packets, timestamps_ns(packets) + context.params["days"] * 86400
                            * NS_PER_S)


# ---- cuts ----------------------------------------------------------------------------------

def window_of_each_packet(packets: pa.Table, window_s: float) -> np.ndarray:
    """The window of the trace's grid (starting at its first packet) each packet falls in."""
    ts = timestamps_ns(packets)
    if ts.size == 0:
        return ts
    return (ts - ts.min()) // int(window_s * NS_PER_S)


def kept_windows(packets: pa.Table, context: PerturbationContext) -> tuple[np.ndarray, int]:
    """Each packet's window, and how many windows the window stage keeps: the last, partial
    one only if it covers `min_coverage` of a window (or is the only one)."""
    window = window_of_each_packet(packets, context.window_s)
    if window.size == 0:
        return window, 0
    ts = timestamps_ns(packets)
    last = int(window.max())
    covered_s = (ts.max() - ts.min()) / NS_PER_S - last * context.window_s
    short = last > 0 and covered_s < context.min_coverage * context.window_s
    return window, last + (0 if short else 1)


def _keep_windows(packets: pa.Table, window: np.ndarray, first: int, stop: int | None) -> pa.Table:
    """The packets of windows first..stop-1 (to the end of the trace if stop is None)."""
    keep = window >= first
    if stop is not None:
        keep &= window < stop
    return packets.filter(pa.array(keep))


@perturbation("first_half", description="Only the first half of the trace's windows: a capture "
              "stopped halfway.")
def first_half(packets, context):
    window, windows = kept_windows(packets, context)
    return _keep_windows(packets, window, 0, math.ceil(windows / 2))


@perturbation("second_half", description="Only the second half of the trace's windows: a "
              "capture started halfway.")
def second_half(packets, context):
    window, windows = kept_windows(packets, context)
    return _keep_windows(packets, window, windows - math.ceil(windows / 2), None)


@perturbation("shorter_capture", description="A run of `share` of the trace's windows, starting "
              "at a random window that holds packets: a shorter capture taken at another moment.")
def shorter_capture(packets, context):
    window, windows = kept_windows(packets, context)
    kept = max(1, round(context.params["share"] * windows))
    occupied = np.bincount(window, minlength=windows)[:windows - kept + 1] > 0
    start = int(context.rng.choice(np.flatnonzero(occupied))) if occupied.any() else 0
    return _keep_windows(packets, window, start, start + kept)


# ---- name resolution -----------------------------------------------------------------------

def _octets(match: pa.StructArray) -> pa.Array:
    """The dotted address of a match's octet groups a-d; null where the regex did not match or
    an octet is above 255."""
    numbers = [pc.cast(pc.struct_field(match, letter), pa.int32()) for letter in "abcd"]
    valid = pc.and_kleene(pc.and_kleene(pc.less_equal(numbers[0], 255),
                                        pc.less_equal(numbers[1], 255)),
                          pc.and_kleene(pc.less_equal(numbers[2], 255),
                                        pc.less_equal(numbers[3], 255)))
    dotted = pc.binary_join_element_wise(*[pc.cast(n, pa.string()) for n in numbers], ".")
    return pc.if_else(pc.fill_null(valid, False), dotted, None)


def names_from_dns(packets: pa.Table) -> dict[str, str]:
    """name -> address, from the trace's own DNS answers (Wireshark's Info of a response)."""
    info = pc.fill_null(packets.column("info").combine_chunks(), "")
    answers = pc.extract_regex(info, DNS_ANSWER)
    answers = answers.filter(pc.is_valid(answers))
    return dict(zip(pc.struct_field(answers, "name").to_pylist(),
                    pc.struct_field(answers, "address").to_pylist()))


def _rename(packets: pa.Table, mapping: dict[str, str]) -> pa.Table:
    """src and dst with every key of `mapping` replaced (looked up once per distinct value)."""
    for column in ("src", "dst"):
        values = packets.column(column).cast(pa.string()).combine_chunks()
        encoded = pc.dictionary_encode(values)
        dictionary = encoded.dictionary.to_pylist()
        renamed = pa.array([mapping.get(value, value) for value in dictionary], pa.string())
        packets = _replace(packets, column, pc.take(renamed, encoded.indices))
    return packets


def address_of_name(names: pa.Array, dns: dict[str, str]) -> pa.Array:
    """The address a name stands for, from the trace itself: its DNS answers, or an address
    written in the name (reverse-DNS order with dots, or in order with dashes); null if none."""
    from_dns = pa.array([dns.get(name) for name in names.to_pylist()], pa.string())
    reversed_order = _octets(pc.extract_regex(names, REVERSED_ADDRESS_NAME))
    dashed = _octets(pc.extract_regex(names, DASHED_ADDRESS_NAME))
    return pc.coalesce(from_dns, reversed_order, dashed)


def _endpoints(packets: pa.Table, addresses: bool) -> pa.Array:
    """The distinct sources and destinations that are (or are not) address literals."""
    values = pc.unique(pa.concat_arrays([
        packets.column(column).cast(pa.string()).combine_chunks() for column in ("src", "dst")]))
    literal = pc.match_substring_regex(values, ADDRESS)
    return values.filter(literal if addresses else pc.invert(literal))


@perturbation("names_to_addresses", description="Names shown in place of addresses replaced by "
              "the address, where the trace itself tells it (a DNS answer, or the address "
              "written in the name): an export with name resolution off.")
def names_to_addresses(packets, context):
    names = _endpoints(packets, addresses=False)
    addresses = address_of_name(names, names_from_dns(packets))
    known = pc.is_valid(addresses)
    return _rename(packets, dict(zip(names.filter(known).to_pylist(),
                                     addresses.filter(known).to_pylist())))


@perturbation("addresses_to_names", description="Addresses replaced by names: the name a DNS "
              "answer of the trace gives, else a reverse-DNS style name under `suffix`: an "
              "export with name resolution on.")
def addresses_to_names(packets, context):
    addresses = _endpoints(packets, addresses=True)
    answered = {address: name for name, address in names_from_dns(packets).items()}
    suffix = context.params["suffix"]
    ipv4 = pc.extract_regex(addresses, f"^{IPV4}$")
    reverse_dns = pc.binary_join_element_wise(
        *[pc.struct_field(ipv4, letter) for letter in "dcba"], suffix, ".")
    # IPv6: the address with its colons as dashes, which makes a valid label.
    dashed = pc.binary_join_element_wise(pc.replace_substring(addresses, ":", "-"), suffix, ".")
    generated = pc.coalesce(reverse_dns, dashed)
    return _rename(packets, {address: answered.get(address, name) for address, name in
                             zip(addresses.to_pylist(), generated.to_pylist())})


# ---- clock, ports, snap length -------------------------------------------------------------

def _floor_clock(packets: pa.Table, resolution_ns: int) -> pa.Table:
    ts = timestamps_ns(packets)
    return _with_timestamps(packets, ts - ts % resolution_ns)


@perturbation("clock_us", description="Timestamps cut to microseconds: a pcap or an export with "
              "a microsecond clock instead of nanoseconds.")
def clock_us(packets, context):
    return _floor_clock(packets, 1_000)


@perturbation("clock_ms", description="Timestamps cut to milliseconds: a coarser capture clock.")
def clock_ms(packets, context):
    return _floor_clock(packets, 1_000_000)


@perturbation("ephemeral_ports", description="Client ports drawn anew (a random permutation of "
              "the ports from `lowest` up, the same for every packet of a connection): another "
              "operating system's port allocator. The client port is the higher of a packet's "
              "two ports, if at least `lowest`. Info text is left as recorded.")
def ephemeral_ports(packets, context):
    lowest = context.params["lowest"]
    permutation = lowest + context.rng.permutation(65536 - lowest)
    src = packets.column("src_port").to_numpy(zero_copy_only=False)
    dst = packets.column("dst_port").to_numpy(zero_copy_only=False)
    for name, mine, other in (("src_port", src, dst), ("dst_port", dst, src)):
        # NaN where the port is null: comparisons with it are False, so it stays.
        ephemeral = (mine >= lowest) & ~(mine < other)
        remapped = np.where(ephemeral, permutation[np.where(ephemeral, mine - lowest, 0)
                                                   .astype(np.int64)], mine)
        packets = _replace(packets, name, pa.array(remapped, pa.float64(),
                                                   mask=np.isnan(mine)))
    return packets


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
def snap_length(packets, context):
    payload = context.params["payload_bytes"]
    method = packets.column("http_method").cast(pa.string()).combine_chunks()
    uri = packets.column("http_uri").combine_chunks()
    version = packets.column("http_version").cast(pa.string()).combine_chunks()
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
        fields["http_status"] = pa.nulls(packets.num_rows, pa.int16())
    if payload < TLS_MESSAGE_BYTES:
        fields["tls_message"] = pa.nulls(packets.num_rows, pa.string())
    for name, values in fields.items():
        packets = _replace(packets, name, values)
    return packets

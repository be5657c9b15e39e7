"""Zeek's ASCII log format (the default writer, `LogAscii`), so `zeek-cut` and Zeek log readers
open tracelab's logs.

A log is a header of `#` lines, then one line a record, fields separated by a tab:

    #separator \\x09
    #set_separator	,
    #empty_field	(empty)
    #unset_field	-
    #path	conn
    #open	2026-01-01-12-00-00
    #fields	ts	uid	id.orig_h	...
    #types	time	string	addr	...
    1767268800.000000	CAbc...	10.0.0.1	...
    #close	2026-01-01-12-05-00

Times are seconds since the epoch with 6 decimals, intervals seconds with 6 decimals, counts
and ports decimal; an unset field is `-`, an empty string `(empty)`. In strings a tab, newline,
backslash or any other non-printable byte is written `\\xNN`, and a whole field that would read
as `-` or `(empty)` has its first character escaped, as Zeek does. `#open` and `#close` give
times of the data (the first and last packet of the trace), not of the run, so a rerun writes
the same bytes.

conn.log (`conn_log_writer`, `conn_log_fields`) has Zeek's default fields in Zeek's order, each
from a column of the flows table (`tracelab.security.connections.FLOWS`), then two fields of its
own, `orig_name` and `resp_name`, as Zeek scripts add fields at the end. `id.orig_h` and
`id.resp_h` are Zeek `addr` fields: they hold an address where the trace gives one (the endpoint
itself, or the address the trace reveals for a name: `tracelab.security.names`) and are unset
otherwise; the name an export showed goes to `orig_name`/`resp_name` (unset for an address).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tracelab.security.names import address_of_endpoint, is_address

SEPARATOR = "\t"
SET_SEPARATOR = ","
EMPTY_FIELD = "(empty)"
UNSET_FIELD = "-"
# Bytes a string field writes as \xNN: control characters and the backslash.
_NEEDS_ESCAPE = r"[\x00-\x1f\x7f\\]"


@dataclass(frozen=True)
class LogField:
    """One field of a log: Zeek's name and type."""

    name: str
    type: str


def time_text(ns: pa.Array) -> pa.Array:
    """Nanoseconds since the epoch (int64, null: unset) as Zeek's `time`: seconds, 6 decimals."""
    return _six_decimals(ns)


def interval_text(ns: pa.Array) -> pa.Array:
    """A duration in nanoseconds (int64, null: unset) as Zeek's `interval`."""
    return _six_decimals(ns)


def _six_decimals(ns: pa.Array) -> pa.Array:
    micro = pc.divide(pc.add(ns, 500), 1000)  # integer division, rounded to the microsecond
    seconds = pc.divide(micro, 1_000_000)
    fraction = pc.subtract(micro, pc.multiply(seconds, 1_000_000))
    text = pc.binary_join_element_wise(
        pc.cast(seconds, pa.string()), pc.utf8_lpad(pc.cast(fraction, pa.string()), 6, "0"), ".")
    return pc.fill_null(text, UNSET_FIELD)


def count_text(values: pa.Array) -> pa.Array:
    """Integers (null: unset) as Zeek's `count`/`port`."""
    return pc.fill_null(pc.cast(values, pa.string()), UNSET_FIELD)


def string_text(values: pa.Array) -> pa.Array:
    """Text (null: unset) as Zeek's `string`/`addr`/`enum`: escaped, `(empty)` for ""."""
    text = pc.cast(values, pa.string())
    if pc.any(pc.match_substring_regex(text, _NEEDS_ESCAPE)).as_py():
        text = pa.array([_escape(value) for value in text.to_pylist()], pa.string())
    # a value that would read as a marker: its first character escaped
    for marker in (UNSET_FIELD, EMPTY_FIELD):
        text = pc.if_else(pc.equal(text, marker), _escape_first(marker), text)
    text = pc.if_else(pc.equal(text, ""), EMPTY_FIELD, text)
    return pc.fill_null(text, UNSET_FIELD)


def _escape(text: str | None) -> str | None:
    if text is None:
        return None
    return "".join(f"\\x{ord(c):02x}" if ord(c) < 0x20 or c in "\x7f\\" else c for c in text)


def _escape_first(text: str) -> str:
    return f"\\x{ord(text[0]):02x}{text[1:]}"


def unset(rows: int) -> pa.Array:
    return pa.repeat(pa.scalar(UNSET_FIELD), rows)


class ZeekLogWriter:
    """Writes one Zeek ASCII log to an open text handle: header, record lines, `#close`."""

    def __init__(self, handle, path: str, fields: list[LogField], open_text: str):
        """`handle`: a file opened for writing bytes."""
        self.handle = handle
        self.fields = fields
        handle.write("".join(f"{line}\n" for line in (
            "#separator \\x09", f"#set_separator{SEPARATOR}{SET_SEPARATOR}",
            f"#empty_field{SEPARATOR}{EMPTY_FIELD}", f"#unset_field{SEPARATOR}{UNSET_FIELD}",
            f"#path{SEPARATOR}{path}", f"#open{SEPARATOR}{open_text}",
            SEPARATOR.join(["#fields", *(f.name for f in fields)]),
            SEPARATOR.join(["#types", *(f.type for f in fields)]))).encode())

    def write(self, fields: list[pa.Array]) -> None:
        """Records whose fields (already Zeek text, one array a field, in order) are given."""
        if not len(fields[0]):
            return
        lines = pc.binary_join_element_wise(*fields, SEPARATOR)
        lines = pc.binary_join_element_wise(lines, pa.repeat(pa.scalar("\n"), len(lines)), "")
        # a computed array starts at offset 0: its data buffer holds the lines back to back
        size = pc.sum(pc.binary_length(lines)).as_py()
        self.handle.write(memoryview(lines.buffers()[2])[:size])

    def close(self, close_text: str) -> None:
        self.handle.write(f"#close{SEPARATOR}{close_text}\n".encode())


# ---- conn.log ------------------------------------------------------------------------------

# Zeek's default fields, in Zeek's order, each from a FLOWS column (None: unset).
CONN_LOG_FIELDS = [
    (LogField("ts", "time"), "first_ts"), (LogField("uid", "string"), "uid"),
    (LogField("id.orig_h", "addr"), "orig"), (LogField("id.orig_p", "port"), "orig_port"),
    (LogField("id.resp_h", "addr"), "resp"), (LogField("id.resp_p", "port"), "resp_port"),
    (LogField("proto", "enum"), "proto"), (LogField("service", "string"), "service"),
    (LogField("duration", "interval"), "duration_s"),
    (LogField("orig_bytes", "count"), "orig_bytes"),
    (LogField("resp_bytes", "count"), "resp_bytes"),
    (LogField("conn_state", "string"), "conn_state"),
    (LogField("local_orig", "bool"), None), (LogField("local_resp", "bool"), None),
    (LogField("missed_bytes", "count"), "missed_bytes"),
    (LogField("history", "string"), "history"),
    (LogField("orig_pkts", "count"), "orig_pkts"),
    (LogField("orig_ip_bytes", "count"), "orig_ip_bytes"),
    (LogField("resp_pkts", "count"), "resp_pkts"),
    (LogField("resp_ip_bytes", "count"), "resp_ip_bytes"),
    (LogField("tunnel_parents", "set[string]"), None),
    (LogField("orig_name", "string"), "orig_name"), (LogField("resp_name", "string"), "resp_name"),
]
# Zeek's analyzer names for the services Wireshark names otherwise.
ZEEK_SERVICE_NAMES = {"tls": "ssl"}


def endpoint_fields(endpoints, dns: dict[str, str]) -> tuple[pa.Array, pa.Array]:
    """An endpoint column (addresses or names, plain or dictionary) as Zeek text of its address
    (`addr`, unset where the trace gives none) and of its name (unset for an address), resolved
    once a distinct value."""
    if isinstance(endpoints, pa.ChunkedArray):
        endpoints = endpoints.combine_chunks()
    if not pa.types.is_dictionary(endpoints.type):
        endpoints = pc.dictionary_encode(endpoints)
    values = pc.cast(endpoints.dictionary, pa.string())
    address = address_of_endpoint(values, dns)
    name = pc.if_else(is_address(values), None, values)
    return (string_text(pc.take(address, endpoints.indices)),
            string_text(pc.take(name, endpoints.indices)))


def conn_log_fields(flows: pa.Table, dns: dict[str, str]) -> list[pa.Array]:
    """conn.log's fields of each flow (a FLOWS table) as Zeek text, names resolved with the
    trace's DNS answers `dns` (name -> address). As Zeek's conn.log does, duration and the
    payload byte counts are left unset for a connection of no duration, and an empty history
    or service unset; service names are Zeek's (lowercase, `ssl` for TLS)."""
    flows = flows.combine_chunks()
    timed = pc.greater(flows.column("duration_s"), 0)
    first_ns = flows.column("first_ts").cast(pa.int64())
    last_ns = flows.column("last_ts").cast(pa.int64())
    service = pc.utf8_lower(flows.column("service"))
    for wireshark, zeek in ZEEK_SERVICE_NAMES.items():
        service = pc.replace_substring_regex(service, rf"\b{wireshark}\b", zeek)
    history = flows.column("history")
    orig, orig_name = endpoint_fields(flows.column("orig"), dns)
    resp, resp_name = endpoint_fields(flows.column("resp"), dns)
    text = {
        "orig": orig, "orig_name": orig_name, "resp": resp, "resp_name": resp_name,
        "first_ts": time_text(first_ns),
        "duration_s": interval_text(pc.if_else(timed, pc.subtract(last_ns, first_ns), None)),
        "service": string_text(service),
        "history": string_text(pc.if_else(pc.equal(history, ""), None, history)),
    }
    fields = []
    for log_field, column in CONN_LOG_FIELDS:
        if column is None:
            fields.append(unset(flows.num_rows))
        elif column in text:
            fields.append(text[column])
        elif column in ("orig_bytes", "resp_bytes"):
            fields.append(count_text(pc.if_else(timed, flows.column(column), None)))
        elif log_field.type in ("count", "port"):
            fields.append(count_text(flows.column(column)))
        else:
            fields.append(string_text(flows.column(column)))
    return [values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
            for values in fields]


class ConnLogWriter(ZeekLogWriter):
    """conn.log: ZeekLogWriter that writes flows, their names resolved with `dns`."""

    def __init__(self, handle, opened: str, dns: dict[str, str]):
        super().__init__(handle, "conn", [log_field for log_field, _ in CONN_LOG_FIELDS], opened)
        self.dns = dns

    def flow_fields(self, flows: pa.Table) -> list[pa.Array]:
        """The flows' conn.log fields, names resolved with this log's DNS answers: what
        `write` takes (made apart from it, they can be made on another thread)."""
        return conn_log_fields(flows, self.dns)

    def write_flows(self, flows: pa.Table) -> None:
        self.write(self.flow_fields(flows))


def conn_log_writer(handle, opened: str, dns: dict[str, str]) -> ConnLogWriter:
    """A conn.log writer on `handle` (binary), its header dated `opened`, names resolved with
    the trace's DNS answers `dns` (`tracelab.security.names.trace_dns_answers`)."""
    return ConnLogWriter(handle, opened, dns)


def trace_span(packets_path) -> tuple[str, str]:
    """The first and last packet's times (from the row groups' statistics), as conn.log's
    #open and #close."""
    parquet = pq.ParquetFile(packets_path)
    column = parquet.schema_arrow.get_field_index("ts")
    stats = [parquet.metadata.row_group(g).column(column).statistics
             for g in range(parquet.num_row_groups)]
    times = [s.min for s in stats if s is not None and s.has_min_max] + \
        [s.max for s in stats if s is not None and s.has_min_max]
    if not times:
        return ("1970-01-01-00-00-00",) * 2
    return tuple(pd.Timestamp(t).strftime("%Y-%m-%d-%H-%M-%S") for t in (min(times), max(times)))

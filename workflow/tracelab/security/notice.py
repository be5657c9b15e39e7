"""notice.log: the scan findings of hosts.parquet as Zeek's scan policy (policy/misc/scan.zeek)
writes them through the notice framework (base/frameworks/notice/main.zeek, `Notice::Info`).

A source flagged by the address-scan detector gives one `Scan::Address_Scan` notice, one
flagged by the port-scan detector one `Scan::Port_Scan` notice (Zeek identifies both by the
scanner, so its suppression also keeps one a source an hour). As scan.zeek fills them:

- `src`: the scanner; `p` (and `proto` tcp, filled from it): the scanned port of an address
  scan; `dst`: the scanned host of a port scan.
- `msg`: "<src> scanned at least <n> unique hosts on port <p> in <m>m<s>s" / "<src> scanned
  at least <n> unique ports of host <dst> in <m>m<s>s", scan.zeek's format: <n> the count
  when the threshold was crossed (SumStats checks `unique >= threshold` at each observation,
  so the threshold itself: hosts.parquet's `tracelab.scan_settings`), the duration from the
  first failed attempt of the interval to the crossing one, in whole seconds
  (base/utils/time.zeek `duration_to_mins_secs`).
- `sub`: "local" or "remote", Zeek's `Site::is_local_addr` with its defaults (no
  `Site::local_nets`, `Site::private_address_space_is_local`): an address outside the
  globally reachable space (IANA's special-purpose registries, Python's `is_global`) is local.
- `ts`: when the threshold was crossed: the start of the failed attempt that brought the
  count to it (hosts' `*_crossed_ts`). Zeek observes an attempt when its event fires
  (`connection_attempt` 5 s after the SYN, `connection_rejected` at the RST), so its `ts`
  and durations can be later by those delays; and where a source crosses in several
  intervals, hosts.parquet keeps the one with the most hosts (ports), Zeek notices the first.
- `actions` Notice::ACTION_LOG, `email_dest` empty, `suppress_for` 3600 s: the framework's
  defaults. Connection and file fields (`uid`, `id.*`, `fuid`, `file_*`), `n` and
  `peer_descr` are unset, as for Zeek's scan notices read from a trace.

Addresses are the trace's (`tracelab.security.names`); a source or host the trace gives no
address for has its `src`/`dst` unset and its name in `msg`.
"""

from __future__ import annotations

import ipaddress
import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tracelab.security.names import address_of_endpoint
from tracelab.security.zeek_log import (
    LogField,
    ZeekLogWriter,
    count_text,
    interval_text,
    string_text,
    time_text,
    unset,
)

NOTICE_FIELDS = [LogField(name, type_) for name, type_ in (
    ("ts", "time"), ("uid", "string"), ("id.orig_h", "addr"), ("id.orig_p", "port"),
    ("id.resp_h", "addr"), ("id.resp_p", "port"), ("fuid", "string"),
    ("file_mime_type", "string"), ("file_desc", "string"), ("proto", "enum"), ("note", "enum"),
    ("msg", "string"), ("sub", "string"), ("src", "addr"), ("dst", "addr"), ("p", "port"),
    ("n", "count"), ("peer_descr", "string"), ("actions", "set[enum]"),
    ("email_dest", "set[string]"), ("suppress_for", "interval"))]
# Notice::default_suppression_interval (1 hr) and the action every logged notice has.
SUPPRESS_FOR_NS = 3600 * 1_000_000_000
LOG_ACTION = "Notice::ACTION_LOG"
HOST_COLUMNS = ["source", "address_scan", "address_scan_port", "address_scan_first_ts",
                "address_scan_crossed_ts", "port_scan", "port_scan_host", "port_scan_first_ts",
                "port_scan_crossed_ts"]
# Each detector's threshold in hosts.parquet's `tracelab.scan_settings`.
THRESHOLDS = {"address_scan": "address_scan_hosts", "port_scan": "port_scan_ports"}


def site_side(addresses: list[str | None]) -> list[str | None]:
    """Zeek's "local"/"remote" of each address with Site's defaults; None where unknown."""
    return [None if a is None else "remote" if ipaddress.ip_address(a).is_global else "local"
            for a in addresses]


def mins_secs(ns: pa.Array) -> pa.Array:
    """Durations (int64 ns) as Zeek's `duration_to_mins_secs`: whole seconds as "<m>m<s>s"."""
    seconds = pc.divide(ns, 1_000_000_000)  # integer division: Zeek's double-to-count cast
    minutes = pc.divide(seconds, 60)
    rest = pc.subtract(seconds, pc.multiply(minutes, 60))
    return pc.binary_join_element_wise(pc.cast(minutes, pa.string()), "m",
                                       pc.cast(rest, pa.string()), "s", "")


def _notices(hosts: pa.Table, dns: dict[str, str], kind: str,
             threshold: int) -> dict[str, pa.Array] | None:
    """The notices of one detector (`address_scan` or `port_scan`) as Zeek text, by field."""
    hosts = hosts.filter(pc.fill_null(hosts.column(kind), False))
    if not hosts.num_rows:
        return None

    def column(name: str, type_=None) -> pa.Array:
        values = hosts.column(name).combine_chunks()
        return values if type_ is None else pc.cast(values, type_)

    source = column("source", pa.string())
    src = address_of_endpoint(source, dns)
    shown = pc.coalesce(src, source)
    crossed = column(f"{kind}_crossed_ts", pa.int64())
    common = {"src": string_text(src), "ts": time_text(crossed),
              "sub": string_text(pa.array(site_side(src.to_pylist()), pa.string()))}
    rows = hosts.num_rows
    took = mins_secs(pc.subtract(crossed, column(f"{kind}_first_ts", pa.int64())))
    at_least = pa.repeat(pa.scalar(str(threshold)), rows)
    if kind == "address_scan":
        port = column("address_scan_port")
        port_text = pc.binary_join_element_wise(pc.cast(port, pa.string()), "tcp", "/")
        msg = pc.binary_join_element_wise(
            shown, " scanned at least ", at_least, " unique hosts on port ", port_text, " in ",
            took, "")
        return {**common,
                "note": pa.repeat(pa.scalar("Scan::Address_Scan"), rows),
                "proto": pa.repeat(pa.scalar("tcp"), rows), "p": count_text(port),
                "msg": string_text(msg)}
    host = column("port_scan_host", pa.string())
    dst = address_of_endpoint(host, dns)
    msg = pc.binary_join_element_wise(
        shown, " scanned at least ", at_least, " unique ports of host ", pc.coalesce(dst, host),
        " in ", took, "")
    return {**common,
            "note": pa.repeat(pa.scalar("Scan::Port_Scan"), rows), "msg": string_text(msg),
            "dst": string_text(dst)}


def notice_fields(hosts: pa.Table, dns: dict[str, str],
                  thresholds: dict[str, int]) -> list[pa.Array]:
    """notice.log's fields (Zeek text, one array a field, in NOTICE_FIELDS order) of the scan
    findings of a hosts table: address scans, then port scans, each by the hosts' order;
    `thresholds`: the scan settings (address_scan_hosts, port_scan_ports)."""
    parts = [part for kind in ("address_scan", "port_scan")
             if (part := _notices(hosts, dns, kind, thresholds[THRESHOLDS[kind]])) is not None]
    rows = sum(len(part["note"]) for part in parts)
    defaults = {"actions": pa.repeat(pa.scalar(LOG_ACTION), rows),
                "email_dest": pa.repeat(pa.scalar("(empty)"), rows),
                "suppress_for": interval_text(pa.repeat(pa.scalar(SUPPRESS_FOR_NS), rows))}
    fields = []
    for log_field in NOTICE_FIELDS:
        name = log_field.name
        pieces = [part.get(name, unset(len(part["note"]))) for part in parts]
        fields.append(defaults[name] if name in defaults else
                      pa.concat_arrays(pieces) if pieces else unset(0))
    return fields


def write_notice_log(handle, hosts_path, dns: dict[str, str], span: tuple[str, str]) -> int:
    """notice.log of a hosts table (few rows: one a source) on `handle`; the notices written."""
    hosts = pq.read_table(hosts_path, columns=HOST_COLUMNS)
    settings = json.loads(hosts.schema.metadata[b"tracelab.scan_settings"])
    writer = ZeekLogWriter(handle, "notice", NOTICE_FIELDS, span[0])
    fields = notice_fields(hosts, dns, settings)
    writer.write(fields)
    writer.close(span[1])
    return len(fields[0])

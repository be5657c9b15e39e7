"""notice.log: the scan findings of hosts.parquet as Zeek's scan policy (policy/misc/scan.zeek)
writes them through the notice framework (base/frameworks/notice/main.zeek, `Notice::Info`).

A source flagged by the address-scan detector gives one `Scan::Address_Scan` notice, one
flagged by the port-scan detector one `Scan::Port_Scan` notice (Zeek identifies both by the
scanner, so its suppression also keeps one a source an hour). As scan.zeek fills them:

- `src`: the scanner; `p` (and `proto` tcp, filled from it): the scanned port of an address
  scan; `dst`: the scanned host of a port scan.
- `msg`: "<src> scanned at least <n> unique hosts on port <p>" / "<src> scanned at least <n>
  unique ports of host <dst>". Zeek's message ends " in <m>m<s>s", the time between the first
  and last failed attempt of the interval, which hosts.parquet does not keep: tracelab's ends
  before it.
- `sub`: "local" or "remote", Zeek's `Site::is_local_addr` with its defaults (no
  `Site::local_nets`, `Site::private_address_space_is_local`): an address outside the
  globally reachable space (IANA's special-purpose registries, Python's `is_global`) is local.
- `ts`: the start of the interval in which the threshold was crossed (Zeek: the moment it was
  crossed, within that interval).
- `actions` Notice::ACTION_LOG, `email_dest` empty, `suppress_for` 3600 s: the framework's
  defaults. Connection and file fields (`uid`, `id.*`, `fuid`, `file_*`), `n` and
  `peer_descr` are unset, as for Zeek's scan notices read from a trace.

Addresses are the trace's (`tracelab.security.names`); a source or host the trace gives no
address for has its `src`/`dst` unset and its name in `msg`.
"""

from __future__ import annotations

import ipaddress

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
HOST_COLUMNS = ["source", "address_scan", "address_scan_port", "address_scan_hosts",
                "address_scan_at", "port_scan", "port_scan_host", "port_scan_ports",
                "port_scan_at"]


def site_side(addresses: list[str | None]) -> list[str | None]:
    """Zeek's "local"/"remote" of each address with Site's defaults; None where unknown."""
    return [None if a is None else "remote" if ipaddress.ip_address(a).is_global else "local"
            for a in addresses]


def _notices(hosts: pa.Table, dns: dict[str, str], kind: str) -> dict[str, pa.Array] | None:
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
    common = {"src": string_text(src),
              "sub": string_text(pa.array(site_side(src.to_pylist()), pa.string()))}
    rows = hosts.num_rows
    if kind == "address_scan":
        port = column("address_scan_port")
        port_text = pc.binary_join_element_wise(pc.cast(port, pa.string()), "tcp", "/")
        msg = pc.binary_join_element_wise(
            shown, " scanned at least ", column("address_scan_hosts", pa.string()),
            " unique hosts on port ", port_text, "")
        return {**common, "ts": time_text(column("address_scan_at", pa.int64())),
                "note": pa.repeat(pa.scalar("Scan::Address_Scan"), rows),
                "proto": pa.repeat(pa.scalar("tcp"), rows), "p": count_text(port),
                "msg": string_text(msg)}
    host = column("port_scan_host", pa.string())
    dst = address_of_endpoint(host, dns)
    msg = pc.binary_join_element_wise(
        shown, " scanned at least ", column("port_scan_ports", pa.string()),
        " unique ports of host ", pc.coalesce(dst, host), "")
    return {**common, "ts": time_text(column("port_scan_at", pa.int64())),
            "note": pa.repeat(pa.scalar("Scan::Port_Scan"), rows), "msg": string_text(msg),
            "dst": string_text(dst)}


def notice_fields(hosts: pa.Table, dns: dict[str, str]) -> list[pa.Array]:
    """notice.log's fields (Zeek text, one array a field, in NOTICE_FIELDS order) of the scan
    findings of a hosts table: address scans, then port scans, each by the hosts' order."""
    parts = [part for kind in ("address_scan", "port_scan")
             if (part := _notices(hosts, dns, kind)) is not None]
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
    writer = ZeekLogWriter(handle, "notice", NOTICE_FIELDS, span[0])
    fields = notice_fields(hosts, dns)
    writer.write(fields)
    writer.close(span[1])
    return len(fields[0])

"""Stage 2, normalization: the staged rows of a trace become the typed packet table.

Fields a reader did not supply are parsed out of `info` with Arrow's regex kernels (RE2), one
pass per protocol family over the rows it can match, never a Python loop over packets. The
result is checked with the PACKETS declaration per row group and written with zstd and the
source's SHA-256.
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from tracelab.core.fingerprint import file_sha256
from tracelab.core.packets import (
    DICT_STRING,
    INFO_FIELDS,
    PACKET_SCHEMA,
    PACKETS,
    TCP_FLAG_BITS,
    PacketWriter,
    null_if_empty,
    open_staged,
)
from tracelab.core.progress import Progress

log = logging.getLogger(__name__)

# `[TCP Retransmission] [TCP Port numbers reused] 51292  >  80 [SYN] Seq=0 Win=64240 Len=0 ...`
# The GUI writes the arrow as "  >  ", tshark as " → "; UDP rows have only "Len=N" after the
# ports. Two regexes of at most four groups, each unambiguous at every character: RE2 then
# extracts with its one-pass engine (it allows four groups), 1.5x faster than one regex with all
# eight groups, which RE2 runs on its backtracker.
PORTS_INFO = (r"^(?P<analysis>(?:\[[^\]]*\] *)*)(?P<src_port>\d{1,5}) *(?:>|→) *"
              r"(?P<dst_port>\d{1,5})(?: +\[(?P<flags>[A-Z, ]*)\])?")
TCP_NUMBERS_INFO = (r"^(?:\[[^\]]*\] *)*\d{1,5} *(?:>|→) *\d{1,5} +\[[A-Z, ]*\] "
                    r"(?:Seq=(?P<seq>\d{1,18})\b *)?(?:Ack=(?P<ack>\d{1,18})\b *)?"
                    r"(?:Win=(?P<win>\d{1,18})\b *)?(?:Urg=\d+ *)?(?:Len=(?P<len>\d{1,18})\b)?")
HTTP_REQUEST = r"^(?P<method>[A-Z][A-Z_-]{1,19}) (?P<uri>\S+) (?P<version>HTTP/\d(?:\.\d)?)\b"
HTTP_RESPONSE = r"^(?P<version>HTTP/\d(?:\.\d)?) (?P<status>[1-9]\d{2})\b"
DNS_QUERY = (r"^Standard query (?:response )?0x[0-9a-fA-F]{1,4} "
             r"(?:No such name |Server failure |Refused |Format error |Not implemented )?"
             r"(?:[A-Z][A-Z0-9]* )(?P<name>[^\s,]+)")


def _group(match: pa.StructArray, name: str) -> pa.Array:
    """A regex group's text: null where the regex did not match or the group took no part."""
    return null_if_empty(pc.struct_field(match, name))


def _port(ports: pa.StructArray, name: str) -> pa.Array:
    """A port number; null for the impossible ones (> 65535) a hand-made export may hold. The
    group (one to five digits) is never empty where the regex matched: nothing to null first."""
    port = pc.cast(pc.struct_field(ports, name), pa.int32())
    return pc.if_else(pc.less_equal(port, 65535), port, None)


def _spread(mask: pa.Array, selected: pa.Array) -> pa.Array:
    """`selected`, one value for each row where `mask` holds, put back at those rows; null
    elsewhere."""
    return pc.replace_with_mask(pa.nulls(len(mask), selected.type), mask, selected)


def _only_where(mask: pa.Array, values: pa.Array, transform) -> pa.Array:
    """`transform` of the rows where `mask` holds, null elsewhere: a kernel over every Info
    costs as much on the rows it cannot match as on the few it can."""
    return _spread(mask, null_if_empty(transform(values.filter(mask))))


def _flag_bits(flags_text: pa.Array) -> pa.Array:
    """"SYN, ACK" -> 0x12, computed once per distinct flag set rather than once per packet."""
    encoded = pc.dictionary_encode(flags_text)
    masks = [sum(TCP_FLAG_BITS.get(name.strip(), 0) for name in text.split(","))
             for text in encoded.dictionary.to_pylist()]
    return pc.take(pa.array(masks, pa.int16()), encoded.indices)


def _analysis_text(notes: pa.Array) -> pa.Array:
    """"[TCP Retransmission] [TCP Port numbers reused] " -> "TCP Retransmission; TCP Port
    numbers reused"."""
    return pc.utf8_trim(pc.replace_substring_regex(
        pc.replace_substring_regex(notes, r"\]\s*\[", "; "), r"[\[\]]", ""), " ")


def _tcp_fields(info: pa.Array, ports: pa.StructArray) -> dict[str, pa.Array]:
    """Flags, sequence numbers and analysis notes of the TCP rows (a flag set in brackets
    after the ports); null for the others."""
    flags_text = pc.fill_null(pc.struct_field(ports, "flags"), "")
    is_tcp = pc.not_equal(flags_text, "")
    numbers = pc.extract_regex(info.filter(is_tcp), TCP_NUMBERS_INFO)
    notes = pc.struct_field(ports, "analysis")  # "" where a matched row has none
    noted = pc.fill_null(pc.greater(pc.binary_length(notes), 0), False)
    return {
        "tcp_flags": pc.if_else(is_tcp, _flag_bits(flags_text), None),
        **{f"tcp_{name}": _spread(is_tcp, pc.cast(_group(numbers, name), pa.int64()))
           for name in ("seq", "ack", "win", "len")},
        "tcp_analysis": _only_where(noted, notes, _analysis_text),
    }


def _http_fields(info: pa.Array, ports: pa.StructArray) -> dict[str, pa.Array]:
    """HTTP request and response lines, each regex run only on the rows it can match: a
    response starts with "HTTP/"; a request with [A-Z][A-Z_-]+ and a blank, so neither with
    "HTTP/" nor with the '[' or digit of a row the ports regex matches."""
    is_response = pc.starts_with(info, "HTTP/")
    may_request = pc.invert(pc.or_(ports.is_valid(), is_response))
    request = pc.extract_regex(info.filter(may_request), HTTP_REQUEST)
    response = pc.extract_regex(info.filter(is_response), HTTP_RESPONSE)
    return {
        "http_method": pc.dictionary_encode(_spread(may_request, _group(request, "method"))),
        "http_uri": _spread(may_request, _group(request, "uri")),
        "http_version": pc.dictionary_encode(
            pc.coalesce(_spread(may_request, _group(request, "version")),
                        _spread(is_response, _group(response, "version")))),
        "http_status": _spread(is_response, pc.cast(_group(response, "status"), pa.int16())),
    }


def _dns_query(info: pa.Array) -> pa.Array:
    """The query name, parsed only where Info starts as every DNS_QUERY match does."""
    is_query = pc.starts_with(info, "Standard query ")
    return _spread(is_query, _group(pc.extract_regex(info.filter(is_query), DNS_QUERY), "name"))


def parse_info(info: pa.Array, protocol: pa.Array) -> dict[str, pa.Array]:
    """Every INFO_FIELDS column parsed from Wireshark's Info text (nulls where absent; always
    for the IP and UDP lengths, which only a capture's headers give)."""
    info = pc.fill_null(info, "")
    ports = pc.extract_regex(info, PORTS_INFO)
    protocol = protocol if pa.types.is_dictionary(protocol.type) else \
        pc.dictionary_encode(protocol)
    is_tls = pc.fill_null(pc.take(pc.match_substring_regex(protocol.dictionary, r"^(?:TLS|SSL)"),
                                  protocol.indices), False)
    return {
        # An export's Info gives no header lengths (connections fall back to frame lengths).
        "ip_len": pa.nulls(len(info), pa.int32()),
        "udp_len": pa.nulls(len(info), pa.int32()),
        "src_port": _port(ports, "src_port"),
        "dst_port": _port(ports, "dst_port"),
        **_tcp_fields(info, ports),
        **_http_fields(info, ports),
        "dns_id": pa.nulls(len(info), pa.int32()),  # dns.log reads id and type off Info
        "dns_query": _dns_query(info),
        "dns_qtype": pa.nulls(len(info), pa.int32()),
        "tls_message": _only_where(is_tls, info, pc.utf8_trim_whitespace),
    }


def seconds_since(ts_ns: pa.Array, first_ts_ns: int) -> pa.Array:
    """Seconds from `first_ts_ns` to each of `ts_ns` (int64 ns): the difference is exact
    (checked int64), then rounded once to the nearest double. Up to 2**53 ns (104 days) that
    double holds every ns; beyond, it holds what a double can (a strict cast would refuse).
    """
    elapsed_ns = pc.subtract_checked(ts_ns, first_ts_ns)
    return pc.divide(pc.cast(elapsed_ns, pa.float64(), safe=False), 1e9)


def normalize_table(staged: pa.Table, first_ts_ns: int, trace: str) -> pa.Table:
    """One batch of staged rows of `trace` as PACKET_SCHEMA rows (`first_ts_ns` anchors
    t_rel_s)."""
    columns = {name: staged.column(name).combine_chunks() for name in staged.column_names}
    columns["trace"] = pa.DictionaryArray.from_arrays(
        pa.repeat(pa.scalar(0, pa.int32()), staged.num_rows), pa.array([trace], pa.string()))
    for name in ("src", "dst", "protocol"):
        if columns[name].type != DICT_STRING:
            columns[name] = pc.dictionary_encode(columns[name])
    ts_ns = pc.cast(columns["ts"], pa.int64())
    columns["t_rel_s"] = seconds_since(ts_ns, first_ts_ns)
    missing = [field.name for field in INFO_FIELDS if field.name not in columns]
    if missing:
        parsed = parse_info(columns["info"], columns["protocol"])
        columns.update((name, parsed[name]) for name in missing)
    return pa.Table.from_pydict({name: columns[name] for name in PACKET_SCHEMA.names}
                                ).cast(PACKET_SCHEMA)


def normalize_trace(*, trace: str, staged_path, source, source_format: str, packets_path,
                    row_group_rows: int = 1 << 17, threads: int = 1,
                    source_sha256: str | None = None) -> dict:
    """Write `packets_path` from the staged rows; return a short account of what was written.

    `source_sha256`, the source's hex SHA-256 for the file's metadata, is hashed here when not
    given (the workflow passes the digest its fingerprint cache already holds)."""
    staged = open_staged(staged_path)
    first_ts_ns, staged_rows = _earliest_time(staged_path)
    missing = [f.name for f in INFO_FIELDS if f.name not in staged.schema.names]
    log.info("%s: %d staged rows; parsing %s from Info", trace, staged_rows, missing or "nothing")
    workers = max(threads, 1)

    def prepare(rows: pa.Table) -> pa.Table:
        table = normalize_table(rows, first_ts_ns, trace)
        PACKETS.check(table)
        return table

    # Row groups are prepared on `threads` threads, one each (Arrow's kernels release the GIL),
    # while this thread writes the oldest (Parquet encoding releases it too): at most
    # threads + 1 row groups in memory.
    source_sha256 = source_sha256 or file_sha256(source)
    with PacketWriter(packets_path, source_path=source, source_sha256=source_sha256,
                      trace=trace, source_format=source_format) as writer, \
            ThreadPoolExecutor(max_workers=workers) as pool:
        in_flight: deque = deque()
        for rows in Progress(f"{trace}: normalizing", total_rows=staged_rows).track(
                _row_groups(staged, row_group_rows)):
            in_flight.append(pool.submit(prepare, rows))
            if len(in_flight) > workers:
                writer.write(in_flight.popleft().result())
        while in_flight:
            writer.write(in_flight.popleft().result())
        rows = writer.rows
    log.info("%s: wrote %d packets to %s", trace, rows, packets_path)
    return {"trace": trace, "packets": rows, "path": str(Path(packets_path))}


def _earliest_time(staged_path) -> tuple[int, int]:
    """The earliest timestamp (ns; 0 when there are no rows), which anchors t_rel_s (times may
    go backwards: not the first row's), and the row count; one staged batch at a time."""
    earliest, rows = None, 0
    for batch in open_staged(staged_path, ["ts"]):
        rows += batch.num_rows
        least = pc.min(batch.column(0)).cast(pa.int64()).as_py()
        if least is not None:
            earliest = least if earliest is None else min(earliest, least)
    return earliest or 0, rows


def _row_groups(staged: pa.ipc.RecordBatchStreamReader, rows: int):
    """The staged batches (as the reader wrote them) regrouped into tables of `rows` rows."""
    held: list[pa.RecordBatch] = []
    held_rows = 0
    for batch in staged:
        held.append(batch)
        held_rows += batch.num_rows
        while held_rows >= rows:
            table = pa.Table.from_batches(held, staged.schema)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            held, held_rows = rest.to_batches(), rest.num_rows
    if held_rows:
        yield pa.Table.from_batches(held, staged.schema)


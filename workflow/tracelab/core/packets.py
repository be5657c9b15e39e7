"""The normalized packet table: one row a packet, the same schema whatever the source format.

`results/packets/{trace}.parquet` is declared by PACKETS. Readers produce a *staged* table
(`STAGED_BASE` columns, plus any of INFO_FIELDS they can read straight from headers); the
normalization stage fills the remaining INFO_FIELDS by parsing `info`, adds `t_rel_s`, checks
each row group against PACKETS and writes it with `PacketWriter`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa_arrow
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pandera.pandas import Check

from tracelab.core.atomic import AtomicPath, parquet_options, tracelab_metadata
from tracelab.core.tables import DICT_STRING, TIMESTAMP, Column, Table

PORT_CHECK = Check.in_range(0, 65535)

PACKETS = Table("packets", "results/packets/{trace}.parquet", (
    "One row a packet, in the order of the source (a Wireshark CSV export or a pcap/pcapng "
    "capture), the same columns whatever the format. Zstd, row groups of "
    "`normalize.row_group_rows`, file metadata `tracelab.source_path`, "
    "`tracelab.source_sha256`."), [
    Column("trace", DICT_STRING, "Trace name, as in the trace sheet (so that a glob of packet "
           "tables, e.g. DuckDB's `results/packets/*.parquet`, tells the traces apart)."),
    Column("frame", pa_arrow.int64(), "Frame number: the export's `No.`, a capture's record "
           "number.", checks=[Check.gt(0)]),
    Column("ts", TIMESTAMP, "When the packet was captured.", unit="ns"),
    Column("t_rel_s", pa_arrow.float64(), "Seconds since the trace's first packet.", unit="s"),
    Column("src", DICT_STRING, "Source: IP address, a resolved name, or a MAC address for "
           "non-IP frames."),
    Column("dst", DICT_STRING, "Destination, as `src`."),
    Column("protocol", DICT_STRING, "Highest protocol, as Wireshark names it (TCP, HTTP, "
           "TLSv1.3, DNS, ...)."),
    Column("length", pa_arrow.int64(), "Frame length on the wire.", unit="bytes",
           checks=[Check.gt(0)]),
    Column("ip_len", pa_arrow.int32(), "IP packet length as its header gives it: IPv4's total "
           "length, IPv6's 40 + payload length (Zeek's `IP_Hdr::TotalLen`, what conn.log's "
           "`*_ip_bytes` add up). Captures only: null for Wireshark CSV exports and non-IP "
           "frames.", unit="bytes", nullable=True, checks=[Check.ge(0)]),
    Column("udp_len", pa_arrow.int32(), "UDP payload length as the UDP header gives it (its "
           "length field less 8; Zeek's UDP payload bytes). Captures only: null for exports "
           "and non-UDP packets.", unit="bytes", nullable=True, checks=[Check.ge(0)]),
    Column("info", pa_arrow.string(), "Wireshark's Info column (empty for captures).",
           nullable=True),
    Column("src_port", pa_arrow.int32(), "Source port (TCP/UDP).", nullable=True,
           checks=[PORT_CHECK]),
    Column("dst_port", pa_arrow.int32(), "Destination port (TCP/UDP).", nullable=True,
           checks=[PORT_CHECK]),
    Column("tcp_flags", pa_arrow.int16(), "TCP flags as in the header: FIN 0x01, SYN 0x02, "
           "RST 0x04, PSH 0x08, ACK 0x10, URG 0x20, ECE 0x40, CWR 0x80, AE 0x100.",
           nullable=True, checks=[Check.in_range(0, 0x1FF)]),
    Column("tcp_seq", pa_arrow.int64(), "Sequence number, relative to the connection's first "
           "(as Wireshark shows it).", nullable=True, checks=[Check.ge(0)]),
    Column("tcp_ack", pa_arrow.int64(), "Acknowledgement number, relative.", nullable=True,
           checks=[Check.ge(0)]),
    Column("tcp_win", pa_arrow.int64(), "Receive window, scaled.", unit="bytes", nullable=True,
           checks=[Check.ge(0)]),
    Column("tcp_len", pa_arrow.int64(), "TCP segment payload length.", unit="bytes",
           nullable=True, checks=[Check.ge(0)]),
    Column("tcp_analysis", pa_arrow.string(), "Wireshark's TCP analysis notes, e.g. "
           "`TCP Retransmission`.", nullable=True),
    Column("http_method", DICT_STRING, "HTTP request method.", nullable=True),
    Column("http_uri", pa_arrow.string(), "HTTP request URI (a prefix where the capture's snap "
           "length cut it).", nullable=True),
    Column("http_version", DICT_STRING, "HTTP version of a request or response line.",
           nullable=True),
    Column("http_status", pa_arrow.int16(), "HTTP response status code.", nullable=True,
           checks=[Check.in_range(100, 999)]),
    Column("dns_id", pa_arrow.int32(), "DNS message id (transaction id); a capture's only "
           "(an export's Info shows it: dns.log reads it there).", nullable=True,
           checks=[Check.in_range(0, 0xFFFF)]),
    Column("dns_query", pa_arrow.string(), "DNS query name.", nullable=True),
    Column("dns_qtype", pa_arrow.int32(), "DNS type of the first question (1 A, 28 AAAA, ...); "
           "a capture's only.", nullable=True, checks=[Check.in_range(0, 0xFFFF)]),
    Column("tls_message", pa_arrow.string(), "TLS messages of the record(s), as Wireshark's "
           "Info lists them.", nullable=True),
])
PACKET_SCHEMA = PACKETS.schema

# Columns every reader supplies, in order (text as plain strings; normalization encodes them).
STAGED_BASE = pa_arrow.schema([
    pa_arrow.field(name, pa_arrow.string() if PACKETS.column(name).type == DICT_STRING
                   else PACKETS.column(name).type)
    for name in ("frame", "ts", "src", "dst", "protocol", "length", "info")])

# Fields that come from the Info column of an export, or from the headers of a capture (the
# IP and UDP lengths from headers only: an export's are null).
INFO_FIELDS = pa_arrow.schema(PACKET_SCHEMA.field(name) for name in PACKETS.names
                              if name not in (*STAGED_BASE.names, "trace", "t_rel_s"))

# Columns written with min/max statistics: the ones readers skip row groups by (time, frame,
# length, ports); trace_features takes each row group's earliest timestamp from them.
# Statistics of every column took a fifth of the writing time.
STATISTICS_COLUMNS = ["frame", "ts", "t_rel_s", "length", "src_port", "dst_port"]

# TCP flag bits, as in the TCP header (and Wireshark's tcp.flags).
TCP_FLAG_BITS = {
    "FIN": 0x01, "SYN": 0x02, "RST": 0x04, "PSH": 0x08,
    "ACK": 0x10, "URG": 0x20, "ECE": 0x40, "CWR": 0x80,
}


def null_if_empty(text):
    """Empty text as null, in staged and packet tables alike (masked only where some is empty):
    an empty export field, or a regex group that took no part."""
    empty = pc.equal(pc.binary_length(text), 0)  # text or bytes
    return pc.if_else(empty, None, text) if pc.any(empty).as_py() else text


class StagedWriter:
    """Writes a reader's staged rows: a temp file read once, straight after, by normalization.

    An Arrow IPC stream with lz4 buffers rather than Parquet: measured on 2M staged rows, it
    writes in 0.17 s per 1M rows (Parquet with lz4: 0.27 s) and reads back in 0.07 s (Parquet:
    0.46 s), for 51 bytes a row on disk (Parquet: 34). A stream, not an IPC file: a capture's
    dictionary columns get a new dictionary with each batch, which the file format forbids.
    Each batch is written on a background thread (the IPC writer releases the GIL) while the
    reader checks the next one.
    """

    def __init__(self, path, schema: pa_arrow.Schema):
        self._sink = pa_arrow.OSFile(str(path), "wb")
        self._writer = pa_arrow.ipc.new_stream(
            self._sink, schema, options=pa_arrow.ipc.IpcWriteOptions(compression="lz4"))
        self._thread = ThreadPoolExecutor(max_workers=1)
        self._pending = None

    def write_table(self, table: pa_arrow.Table) -> None:
        self._wait()
        self._pending = self._thread.submit(self._writer.write_table, table)

    def _wait(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self._wait()
        finally:
            self._thread.shutdown()
            self._writer.close()
            self._sink.close()
        return False


def open_staged(path, columns: list[str] | None = None) -> pa_arrow.ipc.RecordBatchStreamReader:
    """A staged file's batches, in order, with only `columns` (all if None) decompressed."""
    if columns is None:
        return pa_arrow.ipc.open_stream(pa_arrow.OSFile(str(path)))
    with pa_arrow.ipc.open_stream(pa_arrow.OSFile(str(path))) as peek:
        names = peek.schema.names
    options = pa_arrow.ipc.IpcReadOptions(included_fields=[names.index(c) for c in columns])
    return pa_arrow.ipc.open_stream(pa_arrow.OSFile(str(path)), options=options)


def read_staged(path, columns: list[str] | None = None) -> pa_arrow.Table:
    """A staged file as one table (the whole of it in memory: for small files and tests)."""
    return open_staged(path, columns).read_all()


# How a packet table is written (the robustness experiment's perturbed copies too): as every
# table (one dictionary of every distinct Info string would cost more than it saves), with
# statistics for the columns readers select on; batches of 64k rows: 15% faster than 1k.
WRITE_OPTIONS = {
    **parquet_options(PACKET_SCHEMA),
    "write_statistics": STATISTICS_COLUMNS,
    "write_batch_size": 1 << 16,
}


class PacketWriter:
    """Writes PACKET_SCHEMA row groups with zstd, atomically, recording the source and its hash."""

    def __init__(self, path, *, source_path, source_sha256: str, trace: str,
                 source_format: str, extra_metadata: dict | None = None):
        metadata = tracelab_metadata({
            "trace": trace, "source_path": source_path, "source_sha256": source_sha256,
            "source_format": source_format, **(extra_metadata or {})})
        self.schema = PACKET_SCHEMA.with_metadata(metadata)
        self._output = AtomicPath(path)
        self._tmp = self._output.tmp
        self._writer = pq.ParquetWriter(self._tmp, self.schema, **WRITE_OPTIONS)
        self.rows = 0

    def write(self, table: pa_arrow.Table) -> None:
        self._writer.write_table(table.cast(self.schema))
        self.rows += table.num_rows

    def close(self, ok: bool = True) -> None:
        self._writer.close()
        if ok:
            self._output.commit()
        else:
            self._output.discard()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(ok=exc_type is None)
        return False


def read_packets(path, columns=None) -> pa_arrow.Table:
    """Read a normalized packet table (only `columns`, if given)."""
    return pq.read_table(Path(path), columns=columns)

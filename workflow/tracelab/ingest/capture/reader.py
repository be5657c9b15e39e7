"""Reader for packet captures: pcap and pcapng, plain or gzip-compressed.

The one inherently sequential step is framing (pcap, pcapng): each record's length says where
the next one begins. That loop does the least possible per record; everything else is
vectorised per batch of `settings.batch_bytes` bytes: record headers are gathered from the
batch's bytes with numpy, checked, and the packets decoded by `decode` into Arrow columns,
written as one staged batch.

Checks (record index = 1-based position among the packet records, offsets in the
uncompressed capture):
- per record (the record is rejected, reading goes on): CHECKS.
- damage (Wireshark is the reference: every whole record before it is kept, as tshark and
  capinfos read them): a capture cut short (a plain file cut, a gzip stream cut or damaged,
  "cut short in the middle of a packet"), a pcapng block structure broken (an impossible
  block length, leading and trailing lengths that differ), a pcap record whose captured
  length is beyond any snap length (the next record cannot be found), a gzip trailer that does
  not match its data. Each is reported with its offset in `structural_notes`; the record cut
  by the end of the file is not a row (capinfos does not count it). Only when no record came
  before it does damage stop the trace (`structural_errors`), as do a bad magic number or an
  unreadable file header.
- notes, not rejections (Wireshark shows these packets): a captured length above the snap
  length (`above_snap_length`), a clock that starts at the epoch (`clock_at_epoch`),
  timestamps going backwards (counted, not re-sorted) and forward jumps.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa

from tracelab.core.atomic import atomic_path
from tracelab.core.packets import INFO_FIELDS, STAGED_BASE, StagedWriter
from tracelab.core.progress import Progress
from tracelab.ingest.capture import decode
from tracelab.ingest.capture.link import LINKTYPE_NAMES
from tracelab.ingest.capture.pcap import PCAP_MAGIC, PcapReader
from tracelab.ingest.capture.pcapng import PCAPNG_SHB, PcapngReader
from tracelab.ingest.capture.records import (
    CaptureDamaged,
    FramingReader,
    Records,
    Tail,
)
from tracelab.ingest.capture.stream import CaptureStream
from tracelab.ingest.outcome import (
    EXAMPLES_PER_CHECK,
    EpochClock,
    InvalidRows,
    TimeOrder,
    ValidationOutcome,
    ValidationSettings,
)

log = logging.getLogger(__name__)

# Wireshark's largest ordinary packet; a captured length above it and above the snap length
# can only be a damaged record header.
MAX_PACKET = 262144

RAW_COLUMNS = ["record", "offset", "interface", "linktype", "captured_len", "orig_len", "ts_ns"]

CHECKS = {
    "captured <= original": "captured length is at most the original (wire) length",
    "length in range": "original length is a plausible frame length "
                       "(validation.length_min..length_max)",
    "time in range": "the timestamp is a time int64 ns since the epoch can hold (1970-01-01 "
                     "00:00 to 2262-04-11): not before the epoch (a negative pcapng "
                     "if_tsoffset), not beyond 2262 (pcapng timestamp units overflow)",
    "packet within block": "pcapng: the packet data fits inside its block",
    "known interface": "pcapng: the packet names an interface described before it",
    "supported link type": "the interface's link type is one the reader decodes: "
                           + ", ".join(sorted(set(LINKTYPE_NAMES.values()))),
}


def open_capture(source: Path, batch_bytes: int, max_captured: int) -> FramingReader:
    """The reader for `source`, chosen by its magic bytes (raises CaptureDamaged)."""
    stream = CaptureStream(source)
    try:
        head = stream.read(max(batch_bytes, 1 << 16))
        what = "gunzipped capture" if stream.compressed else "file"
        if not head and stream.cut_short:
            raise CaptureDamaged("readable", f"cannot read the gzip-compressed capture: "
                                 f"{stream.cut_short}", offset=0)
        if not head:
            raise CaptureDamaged("magic", f"the {what} is empty", offset=0)
        if len(head) >= 4 and struct.unpack_from("<I", head)[0] == PCAPNG_SHB:
            return PcapngReader(stream, head, batch_bytes)
        if head[:4] in PCAP_MAGIC:
            return PcapReader(stream, head, batch_bytes, max_captured)
        raise CaptureDamaged("magic", f"the {what} starts with bytes {head[:4].hex(' ')}, "
                             f"which are neither a pcap nor a pcapng magic number", offset=0)
    except CaptureDamaged:
        stream.close()
        raise


def staged_schema() -> pa.Schema:
    """STAGED_BASE and every INFO_FIELDS column a capture's headers give."""
    return pa.schema(list(STAGED_BASE) + [f for f in INFO_FIELDS
                                          if f.name in decode.HEADER_FIELDS])


class _KeptNotes:
    """What the kept records show that is worth a note but no rejection."""

    def __init__(self):
        self.time_order = TimeOrder()
        self.epoch = EpochClock()
        self.snapped = 0
        self.snapped_captured = [np.inf, -np.inf]   # capinfos' "packet size limit (inferred)"
        self.per_interface = np.zeros(0, dtype=np.int64)
        self.above_snap = {"count": 0, "examples": []}

    def update(self, kept: Records, snaplen: np.ndarray) -> None:
        self.time_order.update(kept.ts_ns, kept.place)
        self.epoch.update(kept.ts_ns, kept.place)
        snapped = kept.captured[kept.captured < kept.original]
        self.snapped += snapped.size
        if snapped.size:
            self.snapped_captured = [min(self.snapped_captured[0], snapped.min()),
                                     max(self.snapped_captured[1], snapped.max())]
        counts = np.bincount(kept.interface)
        self.per_interface = np.pad(self.per_interface, (0, max(0, counts.size
                                                                 - self.per_interface.size)))
        self.per_interface[:counts.size] += counts
        # Wireshark shows such packets as they are: the header's snap length is what is off.
        above = np.flatnonzero((snaplen > 0) & (kept.captured > snaplen))
        if above.size:
            self.above_snap["count"] += int(above.size)
            room = EXAMPLES_PER_CHECK - len(self.above_snap["examples"])
            self.above_snap["examples"].extend(
                {**kept.place(int(i)), "captured_len": int(kept.captured[i]),
                 "snaplen": int(snaplen[i])} for i in above[:max(room, 0)])

    def capture_notes(self) -> dict:
        return {"snap_truncated_packets": self.snapped,
                "packets_per_interface": self.per_interface.tolist(),
                **({"snap_length_inferred": {"min": int(self.snapped_captured[0]),
                                             "max": int(self.snapped_captured[1])}}
                   if self.snapped else {}),
                **({"above_snap_length": self.above_snap} if self.above_snap["count"] else {})}

    def time_notes(self) -> dict:
        return {**self.time_order.notes(), **self.epoch.notes()}


def stage(source: Path, *, staged_path: Path, invalid_path: Path, report: ValidationOutcome,
          timezone: str, settings: ValidationSettings) -> None:
    """Validate a pcap/pcapng capture and write its packets to `staged_path`."""
    for name, description in CHECKS.items():
        report.declare(name, description)
    try:
        reader = open_capture(source, settings.batch_bytes,
                              max(MAX_PACKET, settings.length_max))
    except CaptureDamaged as damage:
        report.structural(damage.check, damage.detail, **damage.where)
        return
    if reader.format != report.source_format:
        report.notes["format_detected"] = (f"{reader.format} (the trace sheet says "
                                           f"{report.source_format}; read as {reader.format})")
    if timezone != "UTC":
        report.notes["timezone"] = (f"capture timestamps are absolute (UTC); the sheet's "
                                    f"timezone {timezone} is not applied")
    schema = staged_schema()
    decoder = decode.Decoder()
    kept_notes = _KeptNotes()
    sink = InvalidRows(invalid_path, RAW_COLUMNS)
    try:
        with atomic_path(staged_path) as tmp, \
                StagedWriter(tmp, schema) as writer, \
                _Pipeline(decoder, writer, schema) as pipeline:
            tracker = Progress(f"{report.trace}: validating", total_bytes=source.stat().st_size)
            for records in tracker.track(reader.batches(), lambda: reader.stream.position):
                keep = _check_records(records, reader, report, sink, settings)
                report.rows_read += len(records)
                report.rows_valid += int(keep.sum())
                report.rows_invalid += int((~keep).sum())
                if not keep.any():
                    continue
                kept = records if keep.all() else records.take(keep)
                linktype = np.array([i.linktype for i in reader.interfaces],
                                    dtype=np.int64)[kept.interface]
                snaplen = np.array([i.snaplen for i in reader.interfaces],
                                   dtype=np.int64)[kept.interface]
                kept_notes.update(kept, snaplen)
                pipeline.put(kept, linktype)
            pipeline.finish()
    finally:
        sink.close()
        reader.stream.close()
    for check, detail, where in _damage(reader):
        # Wireshark's rule: damage stops the trace only when no record came before it.
        add = report.structural_note if report.rows_read else report.structural
        add(check, detail, **where)
    report.notes["capture"] = {**reader.notes(), **kept_notes.capture_notes(),
                               **decoder.notes()}
    report.notes.update(kept_notes.time_notes())
    log.info("%s: %d records read, %d kept, %d rejected, %d cut by the snap length; "
             "%d timestamps went backwards", source, report.rows_read, report.rows_valid,
             report.rows_invalid, kept_notes.snapped,
             kept_notes.time_order.backwards["count"])


class _Pipeline:
    """Batches decoded on two threads, in capture order: one batch's headers while the TCP
    conversations of the batch before are analysed (numpy, pandas and Arrow release the GIL
    in their kernels), while StagedWriter's thread writes the batch before that, and this
    thread frames the next. At most a few batches are in flight."""

    def __init__(self, decoder: decode.Decoder, writer: StagedWriter, schema: pa.Schema):
        self.decoder = decoder
        self.writer = writer
        self.schema = schema
        self._headers = ThreadPoolExecutor(max_workers=1)
        self._conversations = ThreadPoolExecutor(max_workers=1)
        self._decoding: deque = deque()      # (records, future headers), oldest first
        self._analysing: deque = deque()     # future tables, oldest first

    def put(self, records: Records, linktype: np.ndarray) -> None:
        self._decoding.append((records, self._headers.submit(
            self.decoder.headers, records.data, records.start, records.captured,
            records.original, linktype, records.ts_ns, records.index)))
        self._advance(in_flight=1)

    def finish(self) -> None:
        self._advance(in_flight=0)

    def _advance(self, in_flight: int) -> None:
        while len(self._decoding) > in_flight:
            records, headers = self._decoding.popleft()
            self._analysing.append(self._conversations.submit(self._table, records,
                                                              headers.result()))
        while len(self._analysing) > in_flight:
            self.writer.write_table(self._analysing.popleft().result())

    def _table(self, records: Records, headers: decode.Headers) -> pa.Table:
        n = len(records)
        table = pa.table({
            "frame": pa.array(records.index, pa.int64()),
            "ts": pa.array(records.ts_ns, pa.int64()).cast(STAGED_BASE.field("ts").type),
            "length": pa.array(records.original, pa.int64()),
            "info": pa.StringArray.from_buffers(
                n, pa.py_buffer(np.zeros(n + 1, dtype=np.int32)), pa.py_buffer(b"")),
            **self.decoder.conversations(headers),
        })
        return table.select(self.schema.names).cast(self.schema)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for pool in (self._headers, self._conversations):
            pool.shutdown(cancel_futures=True)
        return False


def _check_records(records: Records, reader: FramingReader, report: ValidationOutcome,
                   sink: InvalidRows, settings: ValidationSettings) -> np.ndarray:
    """Apply the per-record checks; write the rejected records; return the rows to keep."""
    snaplen = np.array([i.snaplen for i in reader.interfaces] + [0], dtype=np.int64)[
        records.interface]
    linktype = np.array([i.linktype for i in reader.interfaces] + [-1],
                        dtype=np.int64)[records.interface]
    unsupported = (records.interface >= 0) & ~np.isin(linktype, list(LINKTYPE_NAMES))
    failures = {
        "supported link type": unsupported,
        "known interface": records.interface < 0,
        "packet within block": records.captured > records.room,
        "captured <= original": records.captured > records.original,
        "length in range": (records.original < settings.length_min)
        | (records.original > settings.length_max),
        "time in range": records.ts_ns < 0,
    }
    if not any(failed.any() for failed in failures.values()):
        return np.ones(len(records), dtype=bool)   # the usual case: no reasons to build
    if unsupported.any():
        counts = report.notes.setdefault("unsupported_link_types", {})
        for value, count in zip(*np.unique(linktype[unsupported], return_counts=True)):
            counts[str(value)] = counts.get(str(value), 0) + int(count)
    reasons = np.full(len(records), "", dtype=object)
    for check, failed in failures.items():
        rows = np.flatnonzero(failed)
        if not rows.size:
            continue
        reasons[rows] = np.where(reasons[rows] == "", check, reasons[rows] + "; " + check)
        report.fail(check, rows.size, [_example(records, int(i), snaplen[i], linktype[i])
                                       for i in rows[:5]], CHECKS[check])
    rejected = reasons != ""
    if rejected.any():
        rows = np.flatnonzero(rejected)
        sink.write(pa.table({
            "location": [f"record {records.index[i]} at byte offset {records.offset[i]}"
                         for i in rows],
            "reason": reasons[rows].tolist(),
            "record": records.index[rows].astype(str).tolist(),
            "offset": records.offset[rows].astype(str).tolist(),
            "interface": records.interface[rows].astype(str).tolist(),
            "linktype": linktype[rows].astype(str).tolist(),
            "captured_len": records.captured[rows].astype(str).tolist(),
            "orig_len": records.original[rows].astype(str).tolist(),
            "ts_ns": records.ts_ns[rows].astype(str).tolist(),
        }))
    return ~rejected


def _example(records: Records, i: int, snaplen, linktype) -> dict:
    return {"record": int(records.index[i]), "offset": int(records.offset[i]),
            "captured_len": int(records.captured[i]), "orig_len": int(records.original[i]),
            "snaplen": int(snaplen), "interface": int(records.interface[i]),
            "linktype": int(linktype)}


def _damage(reader: FramingReader) -> list[tuple[str, str, dict]]:
    """(check, one-line detail, where) of each damage that ended reading or was read past, in
    file order: the framing's, the record or block cut by the end of the file (or the gzip
    stream's cut), a gzip trailer that does not match its data."""
    found = []
    gzip_cut = reader.stream.cut_short
    if reader.damage is not None:
        found.append((reader.damage.check, reader.damage.detail, reader.damage.where))
    if reader.tail is not None:
        found.append(_cut_tail(reader.tail, gzip_cut))
    elif gzip_cut is not None and reader.damage is None:
        index, offset = reader.records_seen + 1, reader.stream.consumed
        found.append(("capture complete", f"the capture is cut short: it ends at byte offset "
                      f"{offset}, after record {index - 1} ({gzip_cut})",
                      {"record": index, "offset": offset}))
    for damage in reader.stream.trailer_damage:
        where = {k: v for k, v in damage.items() if k != "detail"}
        found.append(("gzip trailer", damage["detail"], where))
    return found


def _cut_tail(tail: Tail, gzip_cut: str | None) -> tuple[str, str, dict]:
    """A record cut in the middle ("record complete": Wireshark's "cut short in the middle of
    a packet"), or a pcapng block without packets cut ("capture complete")."""
    where = {"record": tail.index, "offset": tail.offset, "bytes_present": tail.have,
             "bytes_needed": tail.need, **tail.fields}
    gzip_text = f" ({gzip_cut})" if gzip_cut else ""
    if tail.block:
        return ("capture complete", f"the capture is cut short: it ends {tail.have} bytes into "
                f"the {tail.block} at byte offset {tail.offset}, which needs {tail.need} "
                f"bytes{gzip_text}", where)
    need = f"{tail.need} bytes" if tail.need is not None else "a whole record header"
    return ("record complete", f"the capture is cut short in the middle of a packet: it ends "
            f"{tail.have} bytes into record {tail.index} at byte offset {tail.offset}, which "
            f"needs {need}; the record is not read{gzip_text}", where)

"""Reader for packet captures: pcap and pcapng, plain or gzip-compressed.

The one inherently sequential step is framing: each record's length says where the next one
begins. That loop does the least possible per record (append the offset, add the length read
through a memoryview); everything else is vectorised per batch of `settings.batch_bytes`
bytes: record headers are gathered from the batch's bytes with numpy, checked, and the
packets decoded by `decode` into Arrow columns, written as one staged batch.

Checks (record index = 1-based position among the packet records, offsets in the
uncompressed capture):
- structural (the trace stops): bad magic, truncated or unreadable file header, a gzip stream
  with nothing readable, pcapng block structure broken (block length impossible, trailer
  mismatch), a pcap record whose captured length is absurd (beyond any snap length: the next
  record cannot be found).
- per record (the record is rejected, reading goes on): captured length above the original
  length, above the interface's snap length, original length outside
  validation.length_min..length_max, pcapng packet data overrunning its block, unknown
  interface, a link type the decoder does not know (its packets would have no addresses).
- a capture cut short (a plain file cut, a gzip stream cut or damaged, as Wireshark says "cut
  short in the middle of a packet"): every whole record before the cut is read; a record cut
  in the middle is rejected ("record complete"), any other cut (a pcapng block without
  packets, a gzip stream cut at a record's end) fails "capture complete", which stops the
  trace only when no record came before it.
- timestamps going backwards are counted in the report's notes, not re-sorted.
"""

from __future__ import annotations

import logging
import struct
import sys
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from tracelab.core.atomic import atomic_path
from tracelab.core.packets import INFO_FIELDS, STAGED_BASE, StagedWriter
from tracelab.ingest.capture import decode
from tracelab.ingest.outcome import (
    InvalidRows,
    TimeOrder,
    ValidationOutcome,
    ValidationSettings,
    time_out_of_range,
)

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
GZIP_WBITS = 16 + zlib.MAX_WBITS   # a gzip header and trailer around the deflate stream
# Compressed bytes inflated per step: a damaged deflate stream loses at most what one step gives.
GZIP_STEP = 1 << 18
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BYTE_ORDER = 0x1A2B3C4D
# pcap magic as the first four bytes -> (byte order, ns per timestamp fraction unit, record
# header length). 0xa1b2cd34 is Kuznetzov's "modified pcap" with 8 more header bytes.
PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000, 16), b"\xa1\xb2\xc3\xd4": (">", 1000, 16),
    b"\x4d\x3c\xb2\xa1": ("<", 1, 16), b"\xa1\xb2\x3c\x4d": (">", 1, 16),
    b"\x34\xcd\xb2\xa1": ("<", 1000, 24), b"\xa1\xb2\xcd\x34": (">", 1000, 24),
}
PCAP_FILE_HEADER = 24
# Wireshark's largest ordinary packet; a captured length above it and above the snap length
# can only be a damaged record header.
MAX_PACKET = 262144
# libpcap refuses pcapng blocks above 16 MiB; so do we.
MAX_BLOCK = 16 << 20
# pcapng packet blocks: EPB and the obsolete PB carry an interface and a timestamp,
# SPB carries neither (interface 0, and the previous packet's time).
EPB, PB, SPB, IDB = 6, 2, 3, 1
BLOCK_NAMES = {IDB: "interface description", 4: "name resolution", 5: "interface statistics",
               10: "decryption secrets", 0xBAD: "custom", 0x40000BAD: "custom",
               PCAPNG_SHB: "section header"}

RAW_COLUMNS = ["record", "offset", "interface", "linktype", "captured_len", "orig_len", "ts_ns"]

CHECKS = {
    "record complete": "the record's header and captured bytes are all in the file",
    "capture complete": "the capture is not cut short: a gzip stream reaches its end marker "
                        "and no pcapng block is cut",
    "captured <= original": "captured length is at most the original (wire) length",
    "captured <= snap length": "captured length is at most the interface's snap length",
    "length in range": "original length is a plausible frame length "
                       "(validation.length_min..length_max)",
    "time in range": "the timestamp is one a packet can have (1970-01-02 to 2099)",
    "packet within block": "pcapng: the packet data fits inside its block",
    "known interface": "pcapng: the packet names an interface described before it",
    "supported link type": "the interface's link type is one the reader decodes: "
                           + ", ".join(sorted(set(decode.LINKTYPE_NAMES.values()))),
}


class CaptureDamaged(Exception):
    """The capture cannot be read past this point."""

    def __init__(self, check: str, detail: str, **where):
        super().__init__(detail)
        self.check = check
        self.detail = detail
        self.where = where


@dataclass
class Interface:
    """A capture interface: its link type, snap length and clock."""

    linktype: int
    snaplen: int
    # Timestamp units -> ns: ns = units * mul // div (+ offset_ns).
    mul: int = 1000
    div: int = 1
    offset_ns: int = 0

    def describe(self) -> dict:
        return {"linktype": self.linktype,
                "link": decode.LINKTYPE_NAMES.get(self.linktype, f"linktype {self.linktype}"),
                "snaplen": self.snaplen,
                "timestamp_resolution_ns": self.mul / self.div,
                **({"timestamp_offset_s": self.offset_ns // 10**9} if self.offset_ns else {})}


@dataclass
class Records:
    """The complete records of one batch: their bytes and their header fields."""

    data: np.ndarray            # the batch's bytes (uint8)
    index: np.ndarray           # 1-based record number in the capture
    offset: np.ndarray          # byte offset of the record in the (uncompressed) capture
    start: np.ndarray           # where the packet data begins in `data`
    captured: np.ndarray
    original: np.ndarray
    ts_ns: np.ndarray
    interface: np.ndarray       # index into the reader's interfaces (-1: unknown)
    room: np.ndarray            # bytes the container leaves for packet data

    def __len__(self) -> int:
        return len(self.index)

    def place(self, i: int) -> dict:
        """Where record i of the batch is in the capture."""
        return {"record": int(self.index[i]), "offset": int(self.offset[i])}


@dataclass
class Tail:
    """A last record, or pcapng block, cut short by the end of the file."""

    index: int                  # the record number it has, or the next record would have
    offset: int
    have: int
    need: int | None            # bytes the record or block needs (None: header unreadable)
    fields: dict = field(default_factory=dict)
    block: str = ""             # a pcapng block that holds no packet: its kind


def _u32(data: np.ndarray, at: np.ndarray, big: bool) -> np.ndarray:
    """uint32 fields at byte offsets `at` of a batch (one gather through a strided view)."""
    view = np.ndarray(shape=(len(data) - 3,), dtype=">u4" if big else "<u4", buffer=data,
                      strides=(1,))
    return view[at].astype(np.int64)


def _words(buffer: bytes, start: int, end: int, big: bool):
    """uint32 values of buffer[start:end] (4-aligned from start), indexable from Python."""
    count = (end - start) // 4
    if count <= 0:
        return memoryview(b"").cast("I")
    if big == (sys.byteorder == "big"):
        return memoryview(buffer)[start:start + 4 * count].cast("I")
    swapped = np.frombuffer(buffer, dtype=">u4" if big else "<u4", count=count, offset=start)
    return memoryview(swapped.astype(np.uint32))


class _Stream:
    """The capture's bytes in chunks, gunzipped if it starts with the gzip magic.

    Gzip is inflated here with zlib step by step, so a stream cut short or damaged still
    gives every byte before the cut (`cut_short` then says where it stopped); a gzip file of
    several members reads as their concatenation, as gzip -d does."""

    def __init__(self, source: Path):
        self._file = open(source, "rb")  # noqa: SIM115 (closed by close())
        self.compressed = self._file.read(2) == GZIP_MAGIC
        self._file.seek(0)
        self._inflate = zlib.decompressobj(GZIP_WBITS)
        self._input = b""           # compressed bytes read, not yet inflated
        self.consumed = 0           # (uncompressed) bytes given out
        self.cut_short: str | None = None
        self.trailing_bytes = 0     # bytes after the last gzip member that are not one
        self._ended = False

    def read(self, size: int) -> bytes:
        try:
            data = self._inflated(size) if self.compressed else self._file.read(size)
        except OSError as error:
            raise CaptureDamaged("readable", f"cannot read the capture after byte "
                                 f"{self.consumed}: {error}", offset=self.consumed) from None
        self.consumed += len(data)
        return data

    def _inflated(self, size: int) -> bytes:
        parts, have = [], 0
        while have < size and not self._ended:
            if not self._input:
                self._input = self._file.read(GZIP_STEP)
                if not self._input:
                    self._ended = True
                    if not self._inflate.eof:
                        self.cut_short = (f"the gzip stream ends before its end marker "
                                          f"(compressed file size {self._file.tell()} bytes)")
                    break
            if self._inflate.eof:              # what follows a gzip member
                if len(self._input) < len(GZIP_MAGIC):
                    self._input += self._file.read(GZIP_STEP)
                if not self._input.startswith(GZIP_MAGIC):
                    position = self._file.tell()
                    self.trailing_bytes = self._file.seek(0, 2) - position + len(self._input)
                    self._ended = True
                    break
                self._inflate = zlib.decompressobj(GZIP_WBITS)
            try:
                part = self._inflate.decompress(self._input, size - have)
            except zlib.error as error:
                self.cut_short = (f"the gzip stream is damaged at compressed bytes "
                                  f"{self._file.tell() - len(self._input)}.."
                                  f"{self._file.tell()}: {error}")
                self._ended = True
                break
            self._input = self._inflate.unconsumed_tail or self._inflate.unused_data
            parts.append(part)
            have += len(part)
        return b"".join(parts)

    def close(self) -> None:
        self._file.close()


class _Reader:
    """Frames records batch by batch; subclasses know the file format."""

    format = ""

    def __init__(self, stream: _Stream, head: bytes, batch_bytes: int):
        self.stream = stream
        self.batch_bytes = max(batch_bytes, 1 << 16)
        self.interfaces: list[Interface] = []
        self.records_seen = 0
        self.tail: Tail | None = None
        self._buffer = head
        self._base = 0        # file offset of _buffer[0]
        self._eof = False

    def batches(self):
        while True:
            if not self._eof and len(self._buffer) < self.batch_bytes:
                more = self.stream.read(self.batch_bytes)
                self._eof = not more
                if more:
                    self._buffer = self._buffer + more
            records, used = self._frame(self._buffer)
            if records is not None and len(records):
                yield records
            self._base += used
            self._buffer = self._buffer[used:]
            if self._eof:
                if self._buffer:
                    self.tail = self._tail(self._buffer)
                return
            if used == 0 and len(self._buffer) >= self.batch_bytes:
                # One record longer than a batch: read on until it is whole.
                more = self.stream.read(self.batch_bytes)
                self._eof = not more
                self._buffer = self._buffer + more

    def _frame(self, buffer: bytes):
        raise NotImplementedError

    def _tail(self, buffer: bytes) -> Tail:
        raise NotImplementedError

    def notes(self) -> dict:
        """What the report should say about the file itself."""
        return {"format": self.format, "gzip": self.stream.compressed,
                "interfaces": [i.describe() for i in self.interfaces],
                **({"gzip_cut_short": self.stream.cut_short} if self.stream.cut_short else {}),
                **({"gzip_trailing_bytes_ignored": self.stream.trailing_bytes}
                   if self.stream.trailing_bytes else {})}

    def _numbered(self, count: int) -> np.ndarray:
        index = np.arange(self.records_seen + 1, self.records_seen + 1 + count, dtype=np.int64)
        self.records_seen += count
        return index


class PcapReader(_Reader):
    format = "pcap"

    def __init__(self, stream: _Stream, head: bytes, batch_bytes: int, max_captured: int):
        order, self.fraction_ns, self.header_len = PCAP_MAGIC[head[:4]]
        self.big = order == ">"
        if len(head) < PCAP_FILE_HEADER:
            raise CaptureDamaged("file header", f"the pcap file header is cut short: "
                                 f"{len(head)} of {PCAP_FILE_HEADER} bytes", offset=0)
        major, minor, thiszone, _, snaplen, linktype = struct.unpack_from(order + "HHiIII", head, 4)
        super().__init__(stream, head[PCAP_FILE_HEADER:], batch_bytes)
        self._base = PCAP_FILE_HEADER
        self.version = f"{major}.{minor}"
        self.thiszone = thiszone
        # The upper bits of the link type field carry FCS information.
        self.interfaces = [Interface(linktype & 0xFFFF, snaplen, mul=self.fraction_ns)]
        self.max_captured = max(max_captured, snaplen if 0 < snaplen < 1 << 30 else 0)

    def notes(self) -> dict:
        notes = {**super().notes(), "pcap_version": self.version}
        if self.thiszone:
            notes["thiszone_ignored_s"] = self.thiszone   # as libpcap and Wireshark do
        return notes

    def _frame(self, buffer: bytes):
        end = len(buffer)
        header = self.header_len
        # views[k][j]: the word at byte 4 * j + k + 8, the captured length of a record at
        # 4 * j + k (the third word of its header).
        views = [_words(buffer, k + 8, end, self.big) for k in range(4)]
        offsets = []
        append = offsets.append
        pos, last = 0, end - header
        # The hot loop.
        while pos <= last:
            append(pos)
            pos += header + views[pos & 3][pos >> 2]
        if not offsets:
            return None, 0
        at = np.array(offsets, dtype=np.int64)
        data = decode.padded(buffer)
        captured = _u32(data, at + 8, self.big)
        absurd = np.flatnonzero(captured > self.max_captured)
        if absurd.size:
            first = int(absurd[0])
            raise CaptureDamaged(
                "record header", f"record {self.records_seen + first + 1} at byte offset "
                f"{self._base + offsets[first]}: captured length {int(captured[first])} is "
                f"beyond any snap length (max {self.max_captured}); the file is damaged here "
                f"and the records after it cannot be found",
                record=self.records_seen + first + 1, offset=self._base + offsets[first])
        if offsets[-1] + header + int(captured[-1]) > end:
            # The last record is not whole yet: leave it for the next batch.
            at, captured = at[:-1], captured[:-1]
        if not len(at):
            return None, 0
        used = int(at[-1] + header + captured[-1])
        seconds = _u32(data, at, self.big)
        fraction = _u32(data, at + 4, self.big)
        return Records(
            data=data, index=self._numbered(len(at)), offset=at + self._base, start=at + header,
            captured=captured, original=_u32(data, at + 12, self.big),
            ts_ns=seconds * 1_000_000_000 + fraction * self.fraction_ns,
            interface=np.zeros(len(at), dtype=np.int64), room=captured), used

    def _tail(self, buffer: bytes) -> Tail:
        index, offset = self.records_seen + 1, self._base
        if len(buffer) < self.header_len:
            return Tail(index, offset, len(buffer), None)
        order = ">" if self.big else "<"
        seconds, fraction, captured, original = struct.unpack_from(order + "IIII", buffer, 0)
        return Tail(index, offset, len(buffer), self.header_len + captured,
                    {"captured_len": captured, "orig_len": original, "interface": 0,
                     "ts_ns": seconds * 10**9 + fraction * self.fraction_ns})


class PcapngReader(_Reader):
    format = "pcapng"

    def __init__(self, stream: _Stream, head: bytes, batch_bytes: int):
        super().__init__(stream, head, batch_bytes)
        self.big = False
        self.section_base = 0     # index in self.interfaces of this section's interface 0
        self.sections = 0
        self.last_ts_ns = 0
        self.other_blocks: dict[str, int] = {}
        if len(head) < 28:
            raise CaptureDamaged("file header", f"the pcapng section header block is cut "
                                 f"short: {len(head)} of at least 28 bytes", offset=0)
        length = self._section_length(head, 0)
        if length is None or length > len(head):
            raise CaptureDamaged("file header", "the pcapng section header block is cut "
                                 "short or its length is impossible", offset=0)
        self._start_section(head, 0)
        self._buffer = head[length:]
        self._base = length

    @property
    def _order(self) -> str:
        return ">" if self.big else "<"

    def _section_length(self, buffer: bytes, pos: int) -> int | None:
        """A section header's total length, read in its own byte order (None if unreadable)."""
        if pos + 28 > len(buffer):
            return None
        order = struct.unpack_from("<I", buffer, pos + 8)[0]
        if order == PCAPNG_BYTE_ORDER:
            big = False
        elif order == struct.unpack("<I", struct.pack(">I", PCAPNG_BYTE_ORDER))[0]:
            big = True
        else:
            raise CaptureDamaged("file header", f"pcapng section header at byte offset "
                                 f"{self._base + pos}: byte-order magic 0x{order:08x} is "
                                 f"neither 1a2b3c4d nor its byte swap", offset=self._base + pos)
        length, _, major = struct.unpack_from((">" if big else "<") + "IIH", buffer, pos + 4)
        if major != 1:
            raise CaptureDamaged("file header", f"pcapng section header at byte offset "
                                 f"{self._base + pos}: unsupported major version {major}",
                                 offset=self._base + pos)
        if length < 28 or length % 4 or length > MAX_BLOCK:
            raise CaptureDamaged("block structure", f"pcapng section header at byte offset "
                                 f"{self._base + pos}: total length {length} is impossible",
                                 offset=self._base + pos)
        return length

    def _start_section(self, buffer: bytes, pos: int) -> None:
        self.big = struct.unpack_from("<I", buffer, pos + 8)[0] != PCAPNG_BYTE_ORDER
        self.section_base = len(self.interfaces)
        self.sections += 1

    def _interface(self, buffer: bytes, pos: int, length: int) -> None:
        linktype, _, snaplen = struct.unpack_from(self._order + "HHI", buffer, pos + 8)
        interface = Interface(linktype, snaplen, mul=1000)
        for code, value in self._options(buffer, pos + 16, pos + length - 4):
            if code == 9 and len(value) >= 1:          # if_tsresol
                exponent = value[0] & 0x7F
                if value[0] & 0x80:
                    interface.mul, interface.div = 10**9, 2**exponent
                elif exponent <= 9:
                    interface.mul, interface.div = 10**(9 - exponent), 1
                else:
                    interface.mul, interface.div = 1, 10**(exponent - 9)
            elif code == 14 and len(value) >= 8:       # if_tsoffset, seconds
                interface.offset_ns = struct.unpack_from(self._order + "q", value)[0] * 10**9
        self.interfaces.append(interface)

    def _options(self, buffer: bytes, pos: int, end: int):
        while pos + 4 <= end:
            code, length = struct.unpack_from(self._order + "HH", buffer, pos)
            if code == 0:
                return
            yield code, buffer[pos + 4:pos + 4 + length]
            pos += 4 + ((length + 3) & ~3)

    def notes(self) -> dict:
        return {**super().notes(), "sections": self.sections,
                "other_blocks": self.other_blocks}

    def _damaged(self, pos: int, detail: str, packets_before: int) -> CaptureDamaged:
        return CaptureDamaged(
            "block structure", f"block at byte offset {self._base + pos} (after record "
            f"{self.records_seen + packets_before}): {detail}; the file is damaged here",
            offset=self._base + pos, record=self.records_seen + packets_before + 1)

    def _frame(self, buffer: bytes):
        end = len(buffer)
        data = decode.padded(buffer)
        parts = []              # per run of one section: packet blocks and their context
        packets = 0
        pos = 0
        while True:
            words = _words(buffer, pos, end, self.big)
            run = []
            append = run.append
            word, last = 0, (end - pos) // 4 - 2
            # The hot loop: a block's total length is its second word (blocks are 4-aligned).
            while word <= last:
                append(word)
                word += (words[word + 1] >> 2) or 1 << 40
            found = np.array(run, dtype=np.int64) * 4 + pos
            kinds = _u32(data, found, self.big)
            lengths = _u32(data, found + 4, self.big)
            bad = (lengths < 12) | (lengths % 4 != 0) | (lengths > MAX_BLOCK) \
                | ((kinds == EPB) | (kinds == PB)) & (lengths < 32) \
                | (kinds == SPB) & (lengths < 16)
            cut = np.flatnonzero(bad | (kinds == PCAPNG_SHB))
            cut = int(cut[0]) if cut.size else len(found)
            complete = int(np.searchsorted(found[:cut] + lengths[:cut] > end, True))
            at, btype, blen = found[:complete], kinds[:complete], lengths[:complete]
            trailer = _u32(data, at + blen - 4, self.big)
            wrong = np.flatnonzero(trailer != blen)
            if wrong.size:
                i = int(wrong[0])
                raise self._damaged(int(at[i]), f"leading length {int(blen[i])} and trailing "
                                    f"length {int(trailer[i])} differ",
                                    packets + int(np.isin(btype[:i], (EPB, PB, SPB)).sum()))
            is_packet = (btype == EPB) | (btype == PB) | (btype == SPB)
            # Interfaces described so far in this section, before each packet block.
            described = len(self.interfaces) - self.section_base
            for i in np.flatnonzero(btype == IDB):
                self._interface(buffer, int(at[i]), int(blen[i]))
            idb_rows = np.flatnonzero(btype == IDB)
            for kind in btype[~is_packet & (btype != IDB)].tolist():
                name = BLOCK_NAMES.get(kind, f"type 0x{kind:08x}")
                self.other_blocks[name] = self.other_blocks.get(name, 0) + 1
            rows = np.flatnonzero(is_packet)
            if rows.size:
                parts.append({
                    "at": at[rows], "btype": btype[rows], "blen": blen[rows],
                    "base": self.section_base, "big": self.big,
                    "described": described + np.searchsorted(idb_rows, rows),
                })
                packets += rows.size
            pos = int(at[-1] + blen[-1]) if complete else pos
            if complete < cut or cut == len(found):
                break
            # The block at `cut` has a readable header: damaged, or a new section.
            if bad[cut]:
                raise self._damaged(pos, f"block type 0x{int(kinds[cut]):08x} has an "
                                    f"impossible total length {int(lengths[cut])}", packets)
            length = self._section_length(buffer, pos)
            if length is None or pos + length > end:
                break
            self._start_section(buffer, pos)
            pos += length
        if not packets:
            return None, pos
        return self._records(data, parts), pos

    def _records(self, data: np.ndarray, parts: list[dict]) -> Records:
        fields = {name: [] for name in ("at", "start", "room", "captured", "original",
                                        "interface", "ts_ns", "spb")}
        for part in parts:
            at, btype, blen, big = part["at"], part["btype"], part["blen"], part["big"]
            word8 = _u32(data, at + 8, big)   # interface id, or an SPB's original length
            local = word8
            pb = btype == PB
            if pb.any():   # the obsolete packet block has a 16-bit interface id
                local = np.where(pb, word8 >> 16 if big else word8 & 0xFFFF, word8)
            spb = btype == SPB
            local = np.where(spb, 0, local)
            known = local < part["described"]
            interface = np.where(known, part["base"] + local, -1)
            units = (_u32(data, at + 12, big).astype(np.uint64) << np.uint64(32)) | \
                _u32(data, at + 16, big).astype(np.uint64)
            captured = _u32(data, at + 20, big)
            original = np.where(spb, word8, _u32(data, at + 24, big))
            start = np.where(spb, at + 12, at + 28)
            room = np.where(spb, blen - 16, blen - 32)
            if spb.any():
                # A simple packet block holds min(original, snap length) bytes, padded.
                base = part["base"]
                snap = self.interfaces[base].snaplen if base < len(self.interfaces) else 0
                limit = np.minimum(original, room)
                if snap:
                    limit = np.minimum(limit, snap)
                captured = np.where(spb, limit, captured)
                interface = np.where(spb & (len(self.interfaces) <= base), -1, interface)
            if interface.min() == interface.max() >= 0:   # one interface: no rows to pick
                ts_ns = _units_to_ns(units, self.interfaces[int(interface[0])])
            else:
                ts_ns = np.zeros(len(at), dtype=np.int64)
                for number in np.unique(interface[interface >= 0]):
                    rows = interface == number
                    ts_ns[rows] = _units_to_ns(units[rows], self.interfaces[int(number)])
            for name, value in (("at", at), ("start", start), ("room", room),
                                ("captured", captured), ("original", original),
                                ("interface", interface), ("ts_ns", ts_ns), ("spb", spb)):
                fields[name].append(value)
        merged = {name: np.concatenate(values) for name, values in fields.items()}
        ts_ns = merged["ts_ns"]
        spb = merged["spb"]
        if spb.any():
            # No timestamp in a simple packet block: it keeps its predecessor's.
            has_time = np.where(~spb, np.arange(len(spb)), -1)
            previous = np.maximum.accumulate(has_time)
            ts_ns = np.where(previous >= 0, ts_ns[np.maximum(previous, 0)], self.last_ts_ns)
        self.last_ts_ns = int(ts_ns[-1])
        n = len(ts_ns)
        return Records(data=data, index=self._numbered(n), offset=merged["at"] + self._base,
                       start=merged["start"], captured=merged["captured"],
                       original=merged["original"], ts_ns=ts_ns,
                       interface=merged["interface"], room=merged["room"])

    def _tail(self, buffer: bytes) -> Tail:
        index, offset = self.records_seen + 1, self._base
        if len(buffer) < 8:
            return Tail(index, offset, len(buffer), None)
        kind, length = struct.unpack_from(self._order + "II", buffer, 0)
        if kind not in (EPB, PB, SPB):
            name = BLOCK_NAMES.get(kind, f"type 0x{kind:08x}")
            return Tail(index, offset, len(buffer), length, block=f"{name} block")
        fields = {}
        if kind == EPB and len(buffer) >= 28:
            iface, _, _, cap, orig = struct.unpack_from(self._order + "IIIII", buffer, 8)
            fields = {"interface": iface, "captured_len": cap, "orig_len": orig}
        return Tail(index, offset, len(buffer), length, fields)


def _units_to_ns(units: np.ndarray, spec: Interface) -> np.ndarray:
    """Timestamp units of one interface to ns since the epoch, without float rounding."""
    if spec.div == 1:
        ns = units.astype(np.int64) * spec.mul
    elif spec.mul == 1:
        ns = (units // np.uint64(spec.div)).astype(np.int64)
    else:
        # Binary fractions (2^-k s): whole seconds, then the fraction, truncated to the ns
        # below (as Wireshark does); integer arithmetic while it fits in 64 bits.
        bits = spec.div.bit_length() - 1
        seconds = (units >> np.uint64(bits)).astype(np.int64)
        fraction = units & np.uint64(spec.div - 1)
        if bits <= 34:
            part = ((fraction * np.uint64(10**9)) >> np.uint64(bits)).astype(np.int64)
        else:
            part = np.floor(fraction.astype(np.float64) * 1e9 / spec.div).astype(np.int64)
        ns = seconds * 1_000_000_000 + part
    return ns + spec.offset_ns


def open_capture(source: Path, batch_bytes: int, max_captured: int) -> _Reader:
    """The reader for `source`, chosen by its magic bytes (raises CaptureDamaged)."""
    stream = _Stream(source)
    try:
        head = stream.read(max(batch_bytes, 1 << 16))
    except CaptureDamaged:
        stream.close()
        raise
    what = "gunzipped capture" if stream.compressed else "file"
    if not head:
        stream.close()
        if stream.cut_short:
            raise CaptureDamaged("readable", f"cannot read the gzip-compressed capture: "
                                 f"{stream.cut_short}", offset=0)
        raise CaptureDamaged("magic", f"the {what} is empty", offset=0)
    if len(head) >= 4 and struct.unpack_from("<I", head)[0] == PCAPNG_SHB:
        return PcapngReader(stream, head, batch_bytes)
    if head[:4] in PCAP_MAGIC:
        return PcapReader(stream, head, batch_bytes, max_captured)
    stream.close()
    raise CaptureDamaged("magic", f"the {what} starts with bytes {head[:4].hex(' ')}, which "
                         f"are neither a pcap nor a pcapng magic number", offset=0)


def staged_schema() -> pa.Schema:
    """STAGED_BASE and every INFO_FIELDS column a capture's headers give."""
    return pa.schema(list(STAGED_BASE) + [f for f in INFO_FIELDS
                                          if f.name in decode.HEADER_FIELDS])


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
    time_order = TimeOrder()
    snapped = 0
    sink = InvalidRows(invalid_path, RAW_COLUMNS)
    try:
        with atomic_path(staged_path) as tmp, \
                StagedWriter(tmp, schema) as writer, \
                _Pipeline(decoder, writer, schema) as pipeline:
            for records in reader.batches():
                keep = _check_records(records, reader, report, sink, settings)
                report.rows_read += len(records)
                report.rows_valid += int(keep.sum())
                report.rows_invalid += int((~keep).sum())
                if not keep.any():
                    continue
                kept = records if keep.all() else _take(records, keep)
                time_order.update(kept.ts_ns, kept.place)
                snapped += int((kept.captured < kept.original).sum())
                linktype = np.array([i.linktype for i in reader.interfaces],
                                    dtype=np.int64)[kept.interface]
                pipeline.put(kept, linktype)
            pipeline.finish()
            _report_cut(reader, report, sink)
    except CaptureDamaged as damage:
        report.structural(damage.check, damage.detail, **damage.where)
    finally:
        sink.close()
        reader.stream.close()
    report.notes["capture"] = {**reader.notes(), "snap_truncated_packets": snapped,
                               **decoder.notes()}
    report.notes.update(time_order.notes())
    log.info("%s: %d records read, %d kept, %d rejected, %d cut by the snap length; "
             "%d timestamps went backwards", source, report.rows_read, report.rows_valid,
             report.rows_invalid, snapped, time_order.backwards["count"])


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


def _take(records: Records, keep: np.ndarray) -> Records:
    return Records(data=records.data, **{
        name: getattr(records, name)[keep]
        for name in ("index", "offset", "start", "captured", "original", "ts_ns", "interface",
                     "room")})


def _check_records(records: Records, reader: _Reader, report: ValidationOutcome,
                   sink: InvalidRows, settings: ValidationSettings) -> np.ndarray:
    """Apply the per-record checks; write the rejected records; return the rows to keep."""
    snaplen = np.array([i.snaplen for i in reader.interfaces] + [0], dtype=np.int64)[
        records.interface]
    linktype = np.array([i.linktype for i in reader.interfaces] + [-1],
                        dtype=np.int64)[records.interface]
    unsupported = (records.interface >= 0) & ~np.isin(linktype, list(decode.LINKTYPE_NAMES))
    failures = {
        "supported link type": unsupported,
        "known interface": records.interface < 0,
        "packet within block": records.captured > records.room,
        "captured <= original": records.captured > records.original,
        "captured <= snap length": (snaplen > 0) & (records.captured > snaplen),
        "length in range": (records.original < settings.length_min)
        | (records.original > settings.length_max),
        "time in range": time_out_of_range(records.ts_ns),
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


def _report_cut(reader: _Reader, report: ValidationOutcome, sink: InvalidRows) -> None:
    """Where the capture is cut short, if it is: a record cut in the middle is a rejected row
    (every whole record before it was read); a cut elsewhere (a pcapng block that holds no
    packet, a gzip stream cut at a record's end) fails "capture complete", and stops the
    trace when no record came before it."""
    tail, gzip_cut = reader.tail, reader.stream.cut_short
    if tail is None and gzip_cut is None:
        return
    if tail is not None and not tail.block:
        _reject_tail(tail, report, sink, gzip_cut)
        return
    index = tail.index if tail else reader.records_seen + 1
    offset = tail.offset if tail else reader.stream.consumed
    what = (f"it ends {tail.have} bytes into the {tail.block} at byte offset {tail.offset}, "
            f"which needs {tail.need} bytes" if tail else
            f"it ends at byte offset {offset}, after record {index - 1}")
    detail = f"the capture is cut short: {what}" + (f" ({gzip_cut})" if gzip_cut else "")
    if not report.rows_read:
        report.structural("capture complete", f"{detail}; no packet record before the cut",
                          offset=offset)
        return
    report.fail("capture complete", 1, [{"record": index, "offset": offset, "detail": detail}],
                CHECKS["capture complete"])


def _reject_tail(tail: Tail, report: ValidationOutcome, sink: InvalidRows,
                 gzip_cut: str | None) -> None:
    need = f"{tail.need} bytes" if tail.need is not None else "a whole record header"
    reason = (f"record complete: the capture is cut short in the middle of a packet: it ends "
              f"{tail.have} bytes into a record that needs {need}"
              + (f" ({gzip_cut})" if gzip_cut else ""))
    report.rows_read += 1
    report.rows_invalid += 1
    report.fail("record complete", 1, [{"record": tail.index, "offset": tail.offset,
                                        "bytes_present": tail.have,
                                        "bytes_needed": tail.need}], CHECKS["record complete"])
    sink.write(pa.table({
        "location": [f"record {tail.index} at byte offset {tail.offset}"],
        "reason": [reason],
        "record": [str(tail.index)], "offset": [str(tail.offset)],
        **{name: [str(tail.fields.get(name, ""))]
           for name in ("interface", "captured_len", "orig_len", "ts_ns")},
        "linktype": [""],
    }))

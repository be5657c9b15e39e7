"""What the pcap and pcapng framers share: the batch of records they give out, the record cut
by the end of the file, the damage that ends reading, and the batch loop itself.

A framer reads until the capture ends or is damaged; damage never takes back the whole
records framed before it (as Wireshark reads them): `FramingReader.damage` then says where
reading stopped, and `tail` where the file ended inside a record or block.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np

from tracelab.ingest.capture import link
from tracelab.ingest.capture.columns import PADDING

# The largest timestamp int64 ns since the epoch can hold (2262-04-11).
MAX_NS = (1 << 63) - 1


class CaptureDamaged(Exception):
    """The capture cannot be read past this point."""

    def __init__(self, check: str, detail: str, **where):
        super().__init__(detail)
        self.check = check
        self.detail = detail
        self.where = where


@dataclass
class Interface:
    """A capture interface: its link type, snap length, clock and (pcapng if_name) name."""

    linktype: int
    snaplen: int
    # Timestamp units -> ns: ns = units * mul // div (+ offset_ns).
    mul: int = 1000
    div: int = 1
    offset_ns: int = 0
    name: str = ""

    def describe(self) -> dict:
        return {"linktype": self.linktype,
                "link": link.LINKTYPE_NAMES.get(self.linktype, f"linktype {self.linktype}"),
                "snaplen": self.snaplen,
                "timestamp_resolution_ns": self.mul / self.div,
                **({"timestamp_offset_s": self.offset_ns // 10**9} if self.offset_ns else {}),
                **({"name": self.name} if self.name else {})}


@dataclass
class Records:
    """The complete records of one batch: their bytes and their header fields."""

    data: np.ndarray            # the batch's bytes (uint8)
    index: np.ndarray           # 1-based record number in the capture
    offset: np.ndarray          # byte offset of the record in the (uncompressed) capture
    start: np.ndarray           # where the packet data begins in `data`
    captured: np.ndarray
    original: np.ndarray
    ts_ns: np.ndarray           # -1: a time int64 ns cannot hold
    interface: np.ndarray       # index into the reader's interfaces (-1: unknown)
    room: np.ndarray            # bytes the container leaves for packet data

    def __len__(self) -> int:
        return len(self.index)

    def place(self, i: int) -> dict:
        """Where record i of the batch is in the capture."""
        return {"record": int(self.index[i]), "offset": int(self.offset[i])}

    def take(self, keep: np.ndarray) -> Records:
        return Records(data=self.data, **{
            name: getattr(self, name)[keep]
            for name in ("index", "offset", "start", "captured", "original", "ts_ns",
                         "interface", "room")})


@dataclass
class Tail:
    """A last record, or pcapng block, cut short by the end of the file."""

    index: int                  # the record number it has, or the next record would have
    offset: int
    have: int
    need: int | None            # bytes the record or block needs (None: header unreadable)
    fields: dict = field(default_factory=dict)
    block: str = ""             # a pcapng block that holds no packet: its kind


def u32_at(data: np.ndarray, at: np.ndarray, big: bool) -> np.ndarray:
    """uint32 fields at byte offsets `at` of a batch (one gather through a strided view)."""
    view = np.ndarray(shape=(len(data) - 3,), dtype=">u4" if big else "<u4", buffer=data,
                      strides=(1,))
    return view[at].astype(np.int64)


def words(buffer: bytes, start: int, end: int, big: bool):
    """uint32 values of buffer[start:end] (4-aligned from start), indexable from Python."""
    count = (end - start) // 4
    if count <= 0:
        return memoryview(b"").cast("I")
    if big == (sys.byteorder == "big"):
        return memoryview(buffer)[start:start + 4 * count].cast("I")
    swapped = np.frombuffer(buffer, dtype=">u4" if big else "<u4", count=count, offset=start)
    return memoryview(swapped.astype(np.uint32))


def units_to_ns(units: np.ndarray, spec: Interface) -> np.ndarray:
    """Timestamp units (uint64) of one interface to ns since the epoch, without float
    rounding; -1 where the time is before the epoch or beyond what int64 ns hold."""
    if spec.div == 1:
        over = units > np.uint64(MAX_NS // spec.mul)
        ns = np.where(over, 0, units).astype(np.int64) * spec.mul
    elif spec.mul == 1:
        whole = units // np.uint64(spec.div)
        over = whole > np.uint64(MAX_NS)
        ns = np.where(over, 0, whole).astype(np.int64)
    else:
        # Binary fractions (2^-k s): whole seconds, then the fraction, truncated to the ns
        # below (as Wireshark does); integer arithmetic while it fits in 64 bits.
        bits = spec.div.bit_length() - 1
        seconds = units >> np.uint64(bits)
        over = seconds > np.uint64(MAX_NS // 10**9 - 1)
        fraction = units & np.uint64(spec.div - 1)
        if bits <= 34:
            part = ((fraction * np.uint64(10**9)) >> np.uint64(bits)).astype(np.int64)
        else:
            part = np.floor(fraction.astype(np.float64) * 1e9 / spec.div).astype(np.int64)
        ns = np.where(over, 0, seconds).astype(np.int64) * 1_000_000_000 + part
    if spec.offset_ns > 0:
        over |= ns > MAX_NS - spec.offset_ns
        ns = np.where(over, 0, ns) + spec.offset_ns
    elif spec.offset_ns < 0:
        over |= ns < -spec.offset_ns
        ns = ns + spec.offset_ns
    return np.where(over, -1, ns)


class FramingReader:
    """Frames records batch by batch; subclasses know the file format."""

    format = ""

    def __init__(self, stream, head: bytes, batch_bytes: int):
        self.stream = stream
        self.batch_bytes = max(batch_bytes, 1 << 16)
        self.interfaces: list[Interface] = []
        self.records_seen = 0
        self.tail: Tail | None = None
        self.damage: CaptureDamaged | None = None   # what ended reading before the file did
        self._buffer = memoryview(b"")   # the bytes not framed yet, a view of _data
        self._data = np.zeros(PADDING, dtype=np.uint8)   # the same, then PADDING zero bytes
        self._join(head)
        self._base = 0        # file offset of _buffer[0]
        self._eof = False

    def batches(self):
        while True:
            if not self._eof and len(self._buffer) < self.batch_bytes:
                self._read_more()
            records, used = self._frame(self._buffer, self._data)
            if records is not None and len(records):
                yield records
            self._drop(used)
            if self.damage is not None:
                return
            if self._eof:
                if self._buffer:
                    self.tail = self._tail(self._buffer)
                return
            if used == 0 and len(self._buffer) >= self.batch_bytes:
                self._read_more()    # one record longer than a batch: read on until it is whole

    def _read_more(self) -> None:
        try:
            more = self.stream.read(self.batch_bytes)
        except CaptureDamaged as damage:
            self.damage, more = damage, b""
        self._eof = not more
        if more:
            self._join(more)

    def _join(self, more: bytes) -> None:
        """The bytes not framed yet and `more`, in a new array that ends in PADDING zero bytes:
        one copy, which is the batch's Records.data as it is (records framed from the old array
        keep it: another thread may still be decoding them)."""
        size = len(self._buffer) + len(more)
        data = np.empty(size + PADDING, dtype=np.uint8)
        data[:len(self._buffer)] = self._data[:len(self._buffer)]
        data[len(self._buffer):size] = np.frombuffer(more, dtype=np.uint8)
        data[size:] = 0
        self._data = data
        self._buffer = memoryview(data)[:size]

    def _drop(self, used: int) -> None:
        """Move past `used` framed bytes (views: nothing is copied)."""
        self._base += used
        self._buffer = self._buffer[used:]
        self._data = self._data[used:]

    def _frame(self, buffer: memoryview, data: np.ndarray):
        """(Records of the whole records at the start of `buffer`, or None; bytes used).
        `data` is `buffer` followed by PADDING zero bytes, as an array (Records.data).
        Damage found sets `self.damage` after the records before it."""
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

    def numbered(self, count: int) -> np.ndarray:
        """Record numbers for the next `count` records."""
        index = np.arange(self.records_seen + 1, self.records_seen + 1 + count, dtype=np.int64)
        self.records_seen += count
        return index

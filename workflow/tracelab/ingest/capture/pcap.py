"""Framing of pcap files (libpcap's format): a 24-byte file header, then records, each a
16-byte header (seconds, fraction, captured length, original length) and its packet bytes."""

from __future__ import annotations

import struct

import numpy as np

from tracelab.ingest.capture.records import (
    CaptureDamaged,
    FramingReader,
    Interface,
    Records,
    Tail,
    u32_at,
    words,
)

# pcap magic as the first four bytes -> (byte order, ns per timestamp fraction unit, record
# header length). 0xa1b2cd34 is Kuznetzov's "modified pcap" with 8 more header bytes.
PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000, 16), b"\xa1\xb2\xc3\xd4": (">", 1000, 16),
    b"\x4d\x3c\xb2\xa1": ("<", 1, 16), b"\xa1\xb2\x3c\x4d": (">", 1, 16),
    b"\x34\xcd\xb2\xa1": ("<", 1000, 24), b"\xa1\xb2\xcd\x34": (">", 1000, 24),
}
PCAP_FILE_HEADER = 24


class PcapReader(FramingReader):
    format = "pcap"

    def __init__(self, stream, head: bytes, batch_bytes: int, max_captured: int):
        order, self.fraction_ns, self.header_len = PCAP_MAGIC[head[:4]]
        self.big = order == ">"
        if len(head) < PCAP_FILE_HEADER:
            raise CaptureDamaged("file header", f"the pcap file header is cut short: "
                                 f"{len(head)} of {PCAP_FILE_HEADER} bytes", offset=0)
        major, minor, thiszone, _, snaplen, linktype = struct.unpack_from(order + "HHiIII", head, 4)
        super().__init__(stream, head, batch_bytes)
        self._drop(PCAP_FILE_HEADER)
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

    def _frame(self, buffer: memoryview, data: np.ndarray):
        end = len(buffer)
        header = self.header_len
        # views[k][j]: the word at byte 4 * j + k + 8, the captured length of a record at
        # 4 * j + k (the third word of its header).
        views = [words(buffer, k + 8, end, self.big) for k in range(4)]
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
        captured = u32_at(data, at + 8, self.big)
        absurd = np.flatnonzero(captured > self.max_captured)
        if absurd.size:
            # As Wireshark: the records before it are read, nothing after it can be found.
            first = int(absurd[0])
            record, offset = self.records_seen + first + 1, self._base + offsets[first]
            self.damage = CaptureDamaged(
                "record header", f"record {record} at byte offset {offset}: captured length "
                f"{int(captured[first])} is beyond any snap length (max {self.max_captured}); "
                f"the file is damaged here and the records after it cannot be found",
                record=record, offset=offset)
            at, captured = at[:first], captured[:first]
        elif offsets[-1] + header + int(captured[-1]) > end:
            # The last record is not whole yet: leave it for the next batch.
            at, captured = at[:-1], captured[:-1]
        if not len(at):
            return None, 0
        used = int(at[-1] + header + captured[-1])
        seconds = u32_at(data, at, self.big)
        fraction = u32_at(data, at + 4, self.big)
        return Records(
            data=data, index=self.numbered(len(at)), offset=at + self._base, start=at + header,
            captured=captured, original=u32_at(data, at + 12, self.big),
            ts_ns=seconds * 1_000_000_000 + fraction * self.fraction_ns,
            interface=np.zeros(len(at), dtype=np.int64), room=captured), used

    def _tail(self, buffer: memoryview) -> Tail:
        index, offset = self.records_seen + 1, self._base
        if len(buffer) < self.header_len:
            return Tail(index, offset, len(buffer), None)
        order = ">" if self.big else "<"
        seconds, fraction, captured, original = struct.unpack_from(order + "IIII", buffer, 0)
        return Tail(index, offset, len(buffer), self.header_len + captured,
                    {"captured_len": captured, "orig_len": original, "interface": 0,
                     "ts_ns": seconds * 10**9 + fraction * self.fraction_ns})

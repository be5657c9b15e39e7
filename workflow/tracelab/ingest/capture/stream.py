"""A capture's bytes in chunks, gunzipped when the file starts with the gzip magic.

Gzip is taken apart here (RFC 1952: header, raw deflate data, CRC32 and ISIZE trailer) rather
than by zlib's gzip mode, which raises on a damaged trailer and takes back the data of the call
that reached it. So, as `gzip -d` does, every byte the deflate data yields is given out: a
stream cut short or damaged gives every byte before the damage (`cut_short` says where it
stopped), a trailer that does not match the data is reported (`trailer_damage`) after every
byte was given out, and a file of several members reads as their concatenation.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from tracelab.ingest.capture.records import CaptureDamaged

GZIP_MAGIC = b"\x1f\x8b"
GZIP_DEFLATE = 8            # the only compression method gzip defines
GZIP_TRAILER = 8            # CRC32 and ISIZE, little-endian
FHCRC, FEXTRA, FNAME, FCOMMENT = 2, 4, 8, 16
# Compressed bytes read and inflated per step: a damaged deflate stream loses at most what one
# step gives.
GZIP_STEP = 1 << 18


def gzip_header_length(data: bytes) -> int | None:
    """The length of the gzip member header at the start of `data` (None: `data` ends inside
    it); ValueError if it is none."""
    if len(data) < 10:
        return None
    if data[:2] != GZIP_MAGIC or data[2] != GZIP_DEFLATE:
        raise ValueError(f"bytes {data[:3].hex(' ')} are not a gzip header with deflate data")
    flags, pos = data[3], 10
    if flags & FEXTRA:
        if len(data) < pos + 2:
            return None
        pos += 2 + struct.unpack_from("<H", data, pos)[0]
    for flag in (FNAME, FCOMMENT):
        if flags & flag:
            end = data.find(b"\x00", pos)
            if end < 0:
                return None
            pos = end + 1
    if flags & FHCRC:
        pos += 2
    return pos if pos <= len(data) else None


class CaptureStream:
    """read(size) gives the capture's (uncompressed) bytes in order; b"" at the end."""

    def __init__(self, source: Path):
        self._file = open(source, "rb")  # noqa: SIM115 (closed by close())
        self.compressed = self._file.read(2) == GZIP_MAGIC
        self._file.seek(0)
        self._input = b""           # compressed bytes read, not yet used
        self._input_offset = 0      # compressed file offset of _input[0]
        self._inflate = None        # the member being inflated (None: at a member's start)
        self._members = 0
        self._crc = 0               # of the member's data so far, for its trailer
        self._size = 0
        self.consumed = 0           # (uncompressed) bytes given out
        self.cut_short: str | None = None
        self.trailer_damage: list[dict] = []
        self.trailing_bytes = 0     # bytes after the last gzip member that are not one
        self._ended = False

    def read(self, size: int) -> bytes:
        try:
            if self.compressed:
                return self._inflated(size)    # counts `consumed` as it goes
            data = self._file.read(size)
        except OSError as error:
            raise CaptureDamaged("readable", f"cannot read the capture after byte "
                                 f"{self.consumed}: {error}", offset=self.consumed) from None
        self.consumed += len(data)
        return data

    @property
    def position(self) -> int:
        """Bytes of the file read so far (compressed bytes of a gzip file): the share done."""
        return self._file.tell()

    def close(self) -> None:
        self._file.close()

    def _fill(self) -> bool:
        more = self._file.read(GZIP_STEP)
        self._input += more
        return bool(more)

    def _drop(self, count: int) -> None:
        self._input = self._input[count:]
        self._input_offset += count

    def _end(self, cut_short: str | None = None) -> None:
        self._ended = True
        self.cut_short = cut_short

    def _inflated(self, size: int) -> bytes:
        parts, have = [], 0
        while have < size and not self._ended:
            if self._inflate is None:
                self._start_member()
                continue
            if self._inflate.eof:
                self._check_trailer()
                continue
            if not self._input and not self._fill():
                self._end(f"the gzip stream ends before its end marker (compressed file size "
                          f"{self._input_offset} bytes)")
                break
            step = self._input[:GZIP_STEP]
            try:
                part = self._inflate.decompress(step, size - have)
            except zlib.error as error:
                self._end(f"the gzip stream is damaged at compressed bytes "
                          f"{self._input_offset}..{self._input_offset + len(step)}: {error}")
                break
            self._drop(len(step) - len(self._inflate.unconsumed_tail)
                       - len(self._inflate.unused_data))
            self._crc = zlib.crc32(part, self._crc)
            self._size += len(part)
            self.consumed += len(part)
            parts.append(part)
            have += len(part)
        return b"".join(parts)

    def _start_member(self) -> None:
        while len(self._input) < len(GZIP_MAGIC) and self._fill():
            pass
        if self._members and not self._input.startswith(GZIP_MAGIC):
            # What follows the last member: gzip -d ignores it (with a warning).
            position = self._file.tell()
            self.trailing_bytes = len(self._input) + self._file.seek(0, 2) - position
            self._end()
            return
        where = f"the gzip header of member {self._members + 1} at compressed byte offset " \
                f"{self._input_offset}"
        try:
            while (length := gzip_header_length(self._input)) is None:
                if not self._fill():
                    self._end(f"{where} is cut short")
                    return
        except ValueError as error:
            self._end(f"{where} is damaged: {error}")
            return
        self._drop(length)
        self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        self._members += 1
        self._crc = self._size = 0

    def _check_trailer(self) -> None:
        while len(self._input) < GZIP_TRAILER and self._fill():
            pass
        where = f"the gzip trailer of member {self._members} at compressed byte offset " \
                f"{self._input_offset}"
        if len(self._input) < GZIP_TRAILER:
            self._end(f"{where} is cut short ({len(self._input)} of {GZIP_TRAILER} bytes)")
            return
        crc, length = struct.unpack_from("<II", self._input)
        data_crc, data_length = self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF
        if (crc, length) != (data_crc, data_length):
            self.trailer_damage.append({
                "detail": f"{where} does not match the data before it (CRC32 {crc:08x}, size "
                          f"{length}; the data gives {data_crc:08x}, {data_length}); every "
                          f"byte inflated is read, as gzip -d gives them",
                "compressed_offset": self._input_offset, "offset": self.consumed})
        self._drop(GZIP_TRAILER)
        self._inflate = None

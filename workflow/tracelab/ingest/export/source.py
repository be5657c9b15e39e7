"""The bytes of an export file, gunzipped when it is gzip-compressed."""

from __future__ import annotations

import os
import queue
import threading
import zlib
from pathlib import Path

from isal import isal_zlib

GZIP_MAGIC = b"\x1f\x8b"
HEADER_MAX_BYTES = 1 << 20


def is_gzip(source: Path) -> bool:
    with open(source, "rb") as handle:
        return handle.read(2) == GZIP_MAGIC


def read_head(source: Path) -> tuple[bytes, bytes, str | None]:
    """The first line with its line end (at most 1 MiB), the first 4 KiB, and what stopped the
    gunzipping early (None if nothing did): a damaged gzip stream gives what comes before the
    damage. A line ends at \\n, \\r\\n or a lone \\r, as Python's csv module reads lines."""
    with open(source, "rb") as handle:
        gzipped = is_gzip(source)
        inflate, head, damage = zlib.decompressobj(wbits=31), b"", None
        while first_line(head, ended=False) is None and len(head) < HEADER_MAX_BYTES:
            # Small pieces: zlib gives nothing of a piece it fails on.
            compressed = handle.read(4096)
            if not gzipped:
                head += compressed
            else:
                inflated, error = _inflate_to_damage(inflate, compressed,
                                                     HEADER_MAX_BYTES - len(head))
                head += inflated
                if error is not None:
                    damage = f"corrupt gzip data ({error})"
                    break
            if not compressed or (gzipped and inflate.eof):
                break
    head = head[:HEADER_MAX_BYTES]
    return first_line(head, ended=True), head[:4096], damage


def _inflate_to_damage(inflate, compressed: bytes, limit: int) -> tuple[bytes, Exception | None]:
    """What `inflate` gives of `compressed` (at most `limit` bytes), and zlib's error if it
    stops: then every byte before the one it stops at (zlib gives nothing of a piece it fails
    on, so that piece is fed again, a byte at a time)."""
    state = inflate.copy()
    try:
        return inflate.decompress(compressed, limit), None
    except zlib.error:
        pass
    inflated = b""
    for at in range(len(compressed)):
        try:
            inflated += state.decompress(compressed[at:at + 1], limit - len(inflated))
        except zlib.error as error:
            return inflated, error
    return inflated, None


def first_line(head: bytes, *, ended: bool) -> bytes | None:
    """The first line of `head` with its line end; None when `head` does not show yet where it
    ends (and `ended` is False: more may come)."""
    ends = [at for at in (head.find(b"\r"), head.find(b"\n")) if at >= 0]
    if not ends:
        return head if ended else None
    end = min(ends)
    if head[end:end + 1] == b"\r":
        if end + 1 == len(head) and not ended:
            return None  # a CR at the end of what was read: \r\n, or a lone \r?
        end += head[end + 1:end + 2] == b"\n"
    return head[:end + 1]


class Inflated:
    """The gunzipped bytes of a file, inflated by ISA-L on a thread of its own while the CSV is
    parsed and checked (10M packets: 1.2 s instead of Arrow's zlib stream's 3.0 s).

    Every byte that inflates is handed on, up to the point where the stream breaks off (a file
    cut short, corrupt data, a damaged trailer): then `damage` says what happened and at which
    compressed byte. Concatenated gzip members are read one after the other, as gzip does; bytes
    after a member that do not start another are not read, as gzip ignores them ("trailing
    garbage ignored"): `trailing` says how many and where.
    """

    CHUNK = 1 << 18  # compressed bytes read at once
    OUT_MAX = 1 << 23  # bytes inflated per call: bounded, whatever the ratio
    SALVAGE_STEP = 1 << 10  # compressed bytes fed at once near corrupt data

    def __init__(self, source: Path):
        self.damage: str | None = None
        self.trailing: str | None = None
        self.position = 0  # compressed bytes read so far (the progress shown)
        self._chunks: queue.Queue = queue.Queue(maxsize=8)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._inflate, args=(source,), daemon=True)
        self._thread.start()

    def _inflate(self, source: Path) -> None:
        handed_on = piece_at = 0
        try:
            with open(source, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                inflate = None
                while not self._stop.is_set():
                    piece_at = at = handle.tell()
                    compressed = handle.read(self.CHUNK)
                    self.position = at + len(compressed)
                    if not compressed:
                        if inflate is None or not inflate.eof:
                            self.damage = (f"the gzip stream ends at compressed byte {size} "
                                           f"before its end marker: the file was cut short")
                        break
                    more = True  # output ISA-L may hold back once it has taken all the input
                    while (compressed or more) and not self._stop.is_set():
                        if inflate is not None and inflate.eof:  # the next member?
                            compressed += handle.read(max(len(GZIP_MAGIC) - len(compressed), 0))
                            if not compressed.startswith(GZIP_MAGIC):
                                self.trailing = (f"{size - at} bytes after the end of the gzip "
                                                 f"stream (from compressed byte {at}) do not "
                                                 f"start a gzip member: not read, as gzip does")
                                return
                        if inflate is None or inflate.eof:
                            inflate = isal_zlib.decompressobj(wbits=31)
                        inflated = inflate.decompress(compressed, self.OUT_MAX)
                        if inflated:  # b"" is the end for the reader
                            self._chunks.put(inflated)
                            handed_on += len(inflated)
                        rest = inflate.unused_data if inflate.eof else inflate.unconsumed_tail
                        at, compressed = at + len(compressed) - len(rest), rest
                        more = len(inflated) == self.OUT_MAX and not inflate.eof
        except isal_zlib.error as error:
            found = self._salvage(source, piece_at, handed_on)
            self.damage = (f"corrupt gzip data: zlib stops at compressed byte {found[0]} "
                           f"({found[1]})" if found else
                           f"corrupt gzip data in compressed bytes {piece_at}.."
                           f"{piece_at + self.CHUNK} ({error})")
        except OSError as error:
            self.damage = f"cannot read the file ({error})"
        finally:
            self._chunks.put(b"")

    def _salvage(self, source: Path, piece_at: int,
                 handed_on: int) -> tuple[int, zlib.error] | None:
        """Inflate again with zlib, the piece that held the damage (from file offset `piece_at`)
        in steps of SALVAGE_STEP bytes, and hand on what comes after the `handed_on` bytes
        already handed on, up to the damage: ISA-L gives nothing of a piece it fails on. zlib
        gives nothing of a step it fails on either, so that step is fed again byte by byte:
        every byte before the one zlib stops at is handed on (all of them when only the
        trailer's CRC-32 or length is wrong). Return that byte's offset and zlib's error.
        Rare (a corrupt file), and it reads the file again from the start."""
        refeed = _Refeed(handed_on, self._chunks.put)
        with open(source, "rb") as handle:
            while not self._stop.is_set() and handle.tell() < piece_at + self.CHUNK:
                at, before = handle.tell(), piece_at - handle.tell()
                compressed = handle.read(min(before, self.CHUNK) if before > 0
                                         else self.SALVAGE_STEP)
                if not compressed:
                    return None
                state = refeed.state()
                try:
                    refeed.feed(compressed, self.OUT_MAX)
                except zlib.error:
                    refeed.restore(state)
                    for i in range(len(compressed)):
                        try:
                            refeed.feed(compressed[i:i + 1], self.OUT_MAX)
                        except zlib.error as error:
                            return at + i, error
        return None

    def read(self) -> bytes:
        """The next inflated bytes; b"" at the end (or where the stream broke off)."""
        return self._chunks.get()

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():  # unblock a full queue
            try:
                self._chunks.get_nowait()
            except queue.Empty:
                self._thread.join(0.01)


class _Refeed:
    """zlib inflating gzip members from the start of a file, handing on only the bytes past the
    `handed` first (already handed on); it can go back to an earlier state."""

    def __init__(self, handed: int, put):
        self.inflate, self.produced, self.handed, self.put = \
            zlib.decompressobj(wbits=31), 0, handed, put

    def state(self) -> tuple:
        return self.inflate.copy(), self.produced

    def restore(self, state: tuple) -> None:
        self.inflate, self.produced = state[0].copy(), state[1]

    def feed(self, compressed: bytes, out_max: int) -> None:
        while compressed:
            if self.inflate.eof:
                self.inflate = zlib.decompressobj(wbits=31)
            inflated = self.inflate.decompress(compressed, out_max)
            fresh = inflated[max(self.handed - self.produced, 0):]
            self.produced += len(inflated)
            if fresh:
                self.put(fresh)
                self.handed += len(fresh)
            compressed = self.inflate.unused_data if self.inflate.eof else \
                self.inflate.unconsumed_tail


class Plain:
    """The bytes of an uncompressed file, in the same interface as Inflated."""

    CHUNK = 1 << 23

    def __init__(self, source: Path):
        self.damage: str | None = None
        self.trailing: str | None = None
        self._handle = open(source, "rb")  # noqa: SIM115 - closed by close()

    def read(self) -> bytes:
        return self._handle.read(self.CHUNK)

    @property
    def position(self) -> int:
        """Bytes read so far."""
        return self._handle.tell()

    def close(self) -> None:
        self._handle.close()

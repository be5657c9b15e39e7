"""The export's bytes as pyarrow's CSV reader reads them."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from tracelab.ingest.export.source import Inflated, Plain, is_gzip

# pyarrow's escape character here (see ExportBytes): a control character that exports hold
# nowhere, doubled wherever one does turn up.
ESCAPE = b"\x01"
LONE_CR = re.compile(rb"\r(?!\n)")
UNESCAPE = re.compile("\x01(.)", re.DOTALL)
# A line longer than this is handed on in pieces (pyarrow's reader stops on it unless
# validation.batch_bytes is larger): memory stays bounded in a file with no line ends.
LINE_MAX = 1 << 26


class ExportBytes:
    """The export's bytes as pyarrow's CSV reader reads them (a file object): valid UTF-8 only,
    and ending where the last whole line ends.

    A byte that is not UTF-8 is passed on as the text `\\xNN` (Python's backslashreplace) and
    its line is noted in `bad_utf8_lines`, so the row is rejected, with its true line, instead
    of stopping the read. A last line that the file does not finish is held back as `cut` (at
    line `cut_line`): where the gzip stream breaks off, or, in a quoted export, a last line
    that is not blank and does not end in a quote. Whole lines are passed on as they come; the
    start of a line that a chunk does not finish waits for the next chunk.

    Lines end in \\n or \\r\\n. In an export whose header line ends in a lone \\r (`cr_line_ends`,
    as on old Macs), a lone \\r ends a line too, as Python's csv module reads it: it is passed on
    as \\n, so lines are counted one way everywhere. In the other exports a lone \\r is a
    character of its field, as a plain line count has it (pyarrow would end the record there
    and move every later line number): it is passed on escaped by ESCAPE, and ESCAPE itself
    doubled (`escaped` is then True, and `unescaped` gives a record's text back).
    """

    def __init__(self, source: Path, *, quoted: bool, cr_line_ends: bool):
        self._source = Inflated(source) if is_gzip(source) else Plain(source)
        self._quoted = quoted
        self._cr_line_ends = cr_line_ends
        self._cr = b""  # a \r that ended the latest chunk: the start of a \r\n?
        self._carry = b""  # the start of a line that the latest chunk did not finish
        self._ready: list[memoryview] = []
        self._ready_bytes = 0
        self._ended = False
        self.lines_passed = 0  # line breaks handed on so far
        self.bad_utf8_lines: list[int] = []
        self.cut: bytes | None = None
        self.cut_line = 0
        self.escaped = False
        self.closed = False

    @property
    def damage(self) -> str | None:
        return self._source.damage

    @property
    def position(self) -> int:
        """Bytes of the file read so far (compressed bytes of a gzip file)."""
        return self._source.position

    @property
    def trailing(self) -> str | None:
        return self._source.trailing

    def unescaped(self, text: str) -> str:
        """A record's text as the file holds it."""
        return UNESCAPE.sub(r"\1", text) if self.escaped else text

    def read(self, size: int = -1) -> bytes:
        """`size` bytes (all if negative), fewer only at the end: pyarrow's reader wants whole
        blocks (it looks for the header in the first). A chunk is handed on uncopied when it is
        just what was asked."""
        while not self._ended and (size < 0 or self._ready_bytes < size):
            self._advance()
        need = self._ready_bytes if size < 0 else min(size, self._ready_bytes)
        self._ready_bytes -= need
        parts = []
        while need:
            first = self._ready[0]
            if len(first) <= need:
                parts.append(self._ready.pop(0))
                need -= len(first)
            else:
                parts.append(first[:need])
                self._ready[0] = first[need:]
                need = 0
        if len(parts) == 1 and len(parts[0]) == len(parts[0].obj):
            return parts[0].obj
        return b"".join(parts)

    def _advance(self) -> None:
        chunk = self._source.read()
        if chunk:
            chunk, self._cr = self._cr + chunk, b""
            if chunk.endswith(b"\r"):
                chunk, self._cr = chunk[:-1], b"\r"
            self._pass_on(self._normalized(chunk), last=False)
            return
        self._ended = True
        self._pass_on(self._normalized(self._cr), last=False)
        partial, self._carry, self._cr = self._carry, b"", b""
        if partial and (self.damage is not None or (
                self._quoted and partial.strip() and
                not partial.rstrip(b"\r").endswith(b'"'))):
            self.cut, self.cut_line = partial, self.lines_passed + 1
        else:
            self._pass_on(partial, last=True)

    def _normalized(self, chunk: bytes) -> bytes:
        """`chunk` with its lone \\r read as the export's line ends say (see the class)."""
        lone_cr = b"\r" in chunk and chunk.count(b"\r") != chunk.count(b"\r\n")
        if ESCAPE in chunk:
            chunk, self.escaped = chunk.replace(ESCAPE, ESCAPE * 2), True
        if lone_cr and self._cr_line_ends:
            chunk = LONE_CR.sub(b"\n", chunk)
        elif lone_cr:
            chunk, self.escaped = LONE_CR.sub(ESCAPE + b"\r", chunk), True
        return chunk

    def _pass_on(self, data: bytes, *, last: bool) -> None:
        data, self._carry = self._carry + data, b""
        if not last:
            end = data.rfind(b"\n") + 1
            if not end and len(data) > LINE_MAX:
                end = len(data) - _incomplete_character(data)
            data, self._carry = data[:end], data[end:]
        if not data.isascii():
            data = self._valid_utf8(data)
        self.lines_passed += data.count(b"\n")
        if data:
            self._ready.append(memoryview(data))
            self._ready_bytes += len(data)

    def _valid_utf8(self, data: bytes) -> bytes:
        """`data` with every byte that is not UTF-8 as `\\xNN`, its line noted."""
        try:
            data.decode("utf-8")
            return data
        except UnicodeDecodeError as error:
            first = error.start
        repaired, start = [], 0
        while first is not None:
            line_start = data.rfind(b"\n", 0, first) + 1
            line_end = data.find(b"\n", first)
            line_end = len(data) if line_end < 0 else line_end + 1
            self.bad_utf8_lines.append(self.lines_passed + 1 + data.count(b"\n", 0, line_start))
            repaired += [data[start:line_start],
                         data[line_start:line_end].decode("utf-8", errors="backslashreplace")
                         .encode("utf-8")]
            start, first = line_end, None
            try:
                data[start:].decode("utf-8")
            except UnicodeDecodeError as error:
                first = start + error.start
        repaired.append(data[start:])
        return b"".join(repaired)

    def close(self) -> None:
        self._source.close()
        self.closed = True


def _incomplete_character(data: bytes) -> int:
    """How many bytes at the end of `data` begin a UTF-8 character that the next chunk ends."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return 0
        if byte >= 0xC0:  # a lead byte: how long its character is
            length = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return back if length > back else 0
    return 0


class BadLines:
    """The lines ExportBytes found bytes that are not UTF-8 in, handed out batch by batch."""

    def __init__(self, stream: ExportBytes):
        self._found = stream.bad_utf8_lines

    def up_to(self, last: int) -> np.ndarray:
        taken = [line for line in self._found if line <= last]
        del self._found[:len(taken)]
        return np.array(taken, dtype=np.int64)

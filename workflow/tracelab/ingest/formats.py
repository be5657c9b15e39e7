"""The trace formats, declared once: name, file name suffixes, content signature and reader.

Everything else that knows the formats comes from FORMATS: the trace sheet's inference by suffix
and by content and its messages, validate's READERS, the `tracelab add` check (the sheet
schema's `format` enum is checked against it by a test). A reader is named by its module path
and imported only by the job that reads that format.
"""

from __future__ import annotations

import codecs
import gzip
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

GZIP_MAGIC = b"\x1f\x8b"
GZIP_SUFFIX = ".gz"
# Bytes of the (gunzipped) content read to tell the format.
HEAD_BYTES = 4096


@dataclass(frozen=True)
class TraceFormat:
    """One format: its sheet name, the suffixes of its files (each also with .gz after it), how
    its content starts, what messages call such content, and its reader module (see
    tracelab.ingest.validate for what a reader exposes)."""

    name: str
    suffixes: tuple[str, ...]
    # The first bytes of the content, any of these; empty for text, told by `delimiters`.
    magic: tuple[bytes, ...]
    shown_as: str
    reader: str
    # Text formats: UTF-8 whose first line holds one of these field delimiters.
    delimiters: tuple[str, ...] = ()
    # Cores the reader keeps busy (the capture reader frames, decodes and analyses on threads).
    threads: int = 1

    def shows(self, head: bytes) -> bool:
        """Whether content starting with `head` is of this format."""
        if self.magic:
            return head.startswith(self.magic)
        return _is_utf8_text(head) and any(d.encode() in _first_line(head)
                                           for d in self.delimiters)


FORMATS = (
    TraceFormat("wireshark_csv", (".csv",), (), "UTF-8 text with a CSV header (a CSV export)",
                "tracelab.ingest.export.reader", delimiters=(",", ";", "\t")),
    # pcap: microsecond and nanosecond magic numbers, both byte orders, and Kuznetzov's
    # modified pcap (0xa1b2cd34).
    TraceFormat("pcap", (".pcap", ".cap"),
                (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1",
                 b"\xa1\xb2\x3c\x4d", b"\x34\xcd\xb2\xa1", b"\xa1\xb2\xcd\x34"),
                "a pcap capture", "tracelab.ingest.capture.reader", threads=2),
    # pcapng's section header block type reads the same in both byte orders.
    TraceFormat("pcapng", (".pcapng",), (b"\x0a\x0d\x0d\x0a",), "a pcapng capture",
                "tracelab.ingest.capture.reader", threads=2),
)
BY_NAME = {fmt.name: fmt for fmt in FORMATS}
BY_SUFFIX = {suffix: fmt for fmt in FORMATS for suffix in fmt.suffixes}
# The format told by content alone; its reader says the most about a file that shows none.
TEXT_FORMAT = next(fmt for fmt in FORMATS if not fmt.magic)


def suffixes_text() -> str:
    """The known suffixes for messages: `.cap, .csv, .pcap, .pcapng, optionally .gz`."""
    return f"{', '.join(sorted(BY_SUFFIX))}, optionally {GZIP_SUFFIX}"


def shown_as_text() -> str:
    """Every format's content for messages: `a pcapng capture, a pcap capture or ...`."""
    shown = [fmt.shown_as for fmt in FORMATS]
    return f"{', '.join(shown[:-1])} or {shown[-1]}"


def _without_gz(name: str) -> str:
    return name[: -len(GZIP_SUFFIX)] if name.lower().endswith(GZIP_SUFFIX) else name


def format_by_suffix(path) -> str | None:
    """The format named by the file name's suffix, looking through a trailing .gz."""
    fmt = BY_SUFFIX.get(Path(_without_gz(Path(path).name)).suffix.lower())
    return fmt.name if fmt else None


def trace_name_for(path) -> str:
    """A trace name from a file name: without .gz and the format's suffix, and with anything a
    name may not hold (see the sheet schema's pattern) replaced by `_`."""
    name = _without_gz(Path(path).name)
    stem, suffix = os.path.splitext(name)
    name = stem if suffix.lower() in BY_SUFFIX else name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-") or "trace"


def _head(path: Path) -> bytes:
    """The file's first HEAD_BYTES, gunzipped if it starts with the gzip magic (b"" if that
    much cannot be read: the reader then says what is wrong)."""
    with open(path, "rb") as handle:
        compressed = handle.read(len(GZIP_MAGIC)) == GZIP_MAGIC
        handle.seek(0)
        stream = gzip.GzipFile(fileobj=handle) if compressed else handle
        try:
            return stream.read(HEAD_BYTES)
        except (OSError, EOFError, zlib.error):
            return b""


def _is_utf8_text(head: bytes) -> bool:
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return b"\x00" not in head


def _first_line(head: bytes) -> bytes:
    return re.split(rb"[\r\n]", head, maxsplit=1)[0]


def content_format(path) -> str | None:
    """The format the file's first bytes show, through gzip (a capture's magic number, or text
    with a CSV header line); None when they show none (empty, damaged, UTF-16, other text or
    binary data), which the format's reader reports in detail."""
    head = _head(Path(path))
    by_magic_first = sorted(FORMATS, key=lambda fmt: not fmt.magic)
    return next((fmt.name for fmt in by_magic_first if head and fmt.shows(head)), None)

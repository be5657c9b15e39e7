"""Reader for Wireshark CSV exports (GUI "Export Packet Dissections > As CSV", or tshark -T fields).

Streams the file with pyarrow's CSV reader, types each batch with Arrow kernels, checks it with
the pandera row model (`export_row_model`, lazily, so every failure of a batch is collected at
once) and the checks that need the rows before it (`_StreamState`),
and sends rejected rows verbatim to the invalid-rows file. Valid rows go to the staged file
(packets.StagedWriter: Arrow IPC, read once by normalization).

pyarrow sees the bytes through `ExportBytes`, which hands it whole lines of valid UTF-8 only: a
damaged end (a cut file, a truncated or corrupt gzip stream) is one rejected row at its line,
after every whole row before it, and a byte that is not UTF-8 is one rejected row, not the end
of the read (pyarrow decodes a malformed record's text for the invalid-row handler, and stops
on invalid UTF-8 there).
"""

from __future__ import annotations

import csv
import logging
import queue
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_arrow
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from isal import isal_zlib
from pandera.errors import SchemaErrors

from tracelab.core.atomic import AtomicPath
from tracelab.core.packets import PACKETS, STAGED_BASE, StagedWriter, null_if_empty
from tracelab.core.tables import TIMESTAMP
from tracelab.ingest.outcome import (
    TIME_RANGE_NS,
    TIME_RANGE_TEXT,
    InvalidRows,
    TimeOrder,
    ValidationOutcome,
    ValidationSettings,
    time_out_of_range,
)

log = logging.getLogger(__name__)

RAW_COLUMNS = ["No.", "Time", "Source", "Destination", "Protocol", "Length", "Info"]

# Other spellings of the seven headers: tshark field names and localized GUI titles.
HEADER_ALIASES = {
    "No.": ["_ws.col.No.", "_ws.col.number", "frame.number", "Nr.", "N°", "Nº", "No", "Número"],
    "Time": ["_ws.col.Time", "_ws.col.def_time", "frame.time", "Zeit", "Temps", "Tiempo", "Tempo",
             "Время"],
    "Source": ["_ws.col.Source", "_ws.col.def_src", "Quelle", "Origen", "Origem", "Sorgente",
               "Источник"],
    "Destination": ["_ws.col.Destination", "_ws.col.def_dst", "Ziel", "Destino", "Destinazione",
                    "Назначение"],
    "Protocol": ["_ws.col.Protocol", "_ws.col.protocol", "Protokoll", "Protocole", "Protocolo",
                 "Protocollo", "Протокол"],
    "Length": ["_ws.col.Length", "_ws.col.packet_length", "frame.len", "Länge", "Longueur",
               "Longitud", "Comprimento", "Lunghezza", "Длина"],
    "Info": ["_ws.col.Info", "_ws.col.info", "Información", "Informação", "Информация"],
}
CANONICAL_HEADER = {alias.casefold(): name for name, aliases in HEADER_ALIASES.items()
                    for alias in [name, *aliases]}
# A first line with fewer of the seven columns than this is not taken for an export's header,
# and is never quoted back (the sheet may point at any file).
HEADER_MIN_KNOWN = 4

GZIP_MAGIC = b"\x1f\x8b"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
HEADER_MAX_BYTES = 1 << 20
ABSOLUTE_TIME = r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?$"
EPOCH_TIME = r"^(?P<seconds>\d{1,11})(?:\.(?P<fraction>\d{1,9}))?$"
# What timestamp[ns] holds (1677-09-21 .. 2262-04-11): whole years for dates, seconds for epochs.
NS_YEARS = (1678, 2261)
NS_EPOCH_SECONDS_MAX = 9_223_372_035
# What pyarrow writes for a byte that is not UTF-8 (Python's backslashreplace): \xNN.
ESCAPED_BYTE = r"\\x[89a-f][0-9a-f]"
# In the hour a fall-back change repeats, the clock has gone back at the first row that is more
# than this earlier than a row before it in that hour (less is the jitter of a capture's clock).
FALL_BACK_STEP_NS = 60 * 10**9
# Exact copies are looked for among this many rows before each row (memory stays bounded).
DUPLICATE_LOOKBACK = 32

# Report names of the checks. Pandera reports (column, check); these say what that means here.
CHECKS = {
    "columns": "the export has one field per header column",
    "complete": "the row is whole: the file (or its gzip stream) does not end inside it",
    "utf8": "the row is valid UTF-8",
    "No. integer": "No. is an integer",
    "No. positive": "No. is positive",
    "No. increasing": "No. is strictly increasing (gaps allowed)",
    "Time parseable": "Time is an absolute date and time (µs or ns digits) or epoch seconds",
    "Time exists": "Time exists in the trace's timezone (not in the hour skipped when the clocks "
                   "go forward)",
    "Time in range": f"{TIME_RANGE_TEXT} (earlier is epoch 0, or Wireshark's seconds since the "
                     f"beginning of the capture; later is a wrong year)",
    "Length integer": "Length is an integer",
    "Length in range": "Length is a plausible frame length (validation.length_min..length_max)",
    "Source non-empty": "Source is not empty",
    "Destination non-empty": "Destination is not empty",
    "Protocol non-empty": "Protocol is not empty",
    "duplicate": f"the row is not an exact copy (same Time, Source, Destination, Protocol, "
                 f"Length and Info, whatever its No.) of one of the {DUPLICATE_LOOKBACK} rows "
                 f"before it",
}
PANDERA_CHECK_NAMES = {
    ("frame", "not_nullable"): "No. integer",
    ("frame", "greater_than(0)"): "No. positive",
    ("ts", "not_nullable"): "Time parseable",
    ("length", "not_nullable"): "Length integer",
    ("length", "in_range"): "Length in range",
    ("src", "not_nullable"): "Source non-empty",
    ("dst", "not_nullable"): "Destination non-empty",
    ("protocol", "not_nullable"): "Protocol non-empty",
}


def export_row_model(settings: ValidationSettings) -> pa.DataFrameSchema:
    """Row checks of an export: the packet table's declared checks on the staged columns
    (empty or blank text is read as missing: see _text), with the length range from config."""
    length_range = pa.Check.in_range(settings.length_min, settings.length_max)
    columns = {}
    for field_ in STAGED_BASE:
        if field_.name == "info":
            continue
        declared = PACKETS.column(field_.name)
        checks = [length_range] if field_.name == "length" else list(declared.checks)
        columns[field_.name] = pa.Column(pd.ArrowDtype(field_.type), checks=checks,
                                         nullable=declared.nullable)
    return pa.DataFrameSchema(columns, strict=False)


class _Header:
    """The first line of the export: delimiter, column order, extras."""

    def __init__(self, first_line: str):
        text = first_line.lstrip("\ufeff").rstrip("\r\n")
        counts = {d: text.count(d) for d in (",", ";", "\t")}
        self.delimiter = max(counts, key=counts.get)
        self.names = next(csv.reader([text], delimiter=self.delimiter), [])
        self.canonical = [CANONICAL_HEADER.get(n.strip().casefold(), n.strip())
                          for n in self.names]
        self.missing = [c for c in RAW_COLUMNS if c not in self.canonical]
        self.extra = [n for n, c in zip(self.names, self.canonical) if c not in RAW_COLUMNS]
        self.duplicated = sorted({c for c in self.canonical if self.canonical.count(c) > 1})
        self.quoted = '"' in text

    def problem(self) -> tuple[str, str] | None:
        """What is wrong with the header, and the field(s) to name; None when it is usable."""
        known = len(RAW_COLUMNS) - len(self.missing)
        if known < HEADER_MIN_KNOWN:
            detail = (f"the first line is not a CSV header with the expected columns ({known} "
                      f"of {RAW_COLUMNS} found; tshark field names like _ws.col.No. and "
                      f"localized titles are accepted): is the sheet's path a Wireshark CSV "
                      f"export?")
            return detail, None
        if not (self.missing or self.duplicated):
            return None
        problem = (f"missing column(s) {self.missing}" if self.missing
                   else f"duplicated column(s) {self.duplicated}")
        detail = (f"{problem}; found {self.names}; expected {RAW_COLUMNS} (tshark field names "
                  f"like _ws.col.No. and localized titles are accepted)")
        return detail, ", ".join(self.missing or self.duplicated)


def _is_gzip(source: Path) -> bool:
    with open(source, "rb") as handle:
        return handle.read(2) == GZIP_MAGIC


def _read_head(source: Path) -> tuple[bytes, bytes, str | None]:
    """The first line (at most 1 MiB), the first 4 KiB, and what stopped the gunzipping early
    (None if nothing did): a damaged gzip stream gives what comes before the damage."""
    with open(source, "rb") as handle:
        if not _is_gzip(source):
            first_line = handle.readline(HEADER_MAX_BYTES)
            handle.seek(0)
            return first_line, handle.read(4096), None
        inflate, head, damage = zlib.decompressobj(wbits=31), b"", None
        while b"\n" not in head and len(head) < HEADER_MAX_BYTES:
            compressed = handle.read(4096)  # small: zlib gives nothing of a piece it fails on
            try:
                head += inflate.decompress(compressed, HEADER_MAX_BYTES - len(head))
            except zlib.error as error:
                damage = f"corrupt gzip data ({error})"
                break
            if not compressed or inflate.eof:
                break
    end = head.find(b"\n")
    return head[: end + 1] if end >= 0 else head, head[:4096], damage


class _Inflated:
    """The gunzipped bytes of a file, inflated by ISA-L on a thread of its own while the CSV is
    parsed and checked (10M packets: 1.2 s instead of Arrow's zlib stream's 3.0 s).

    Every byte that inflates is handed on, up to the point where the stream breaks off (a file
    cut short, corrupt data): then `damage` says what happened. Concatenated gzip members are
    read one after the other, as gzip does.
    """

    CHUNK = 1 << 18  # compressed bytes read at once
    OUT_MAX = 1 << 23  # bytes inflated per call: bounded, whatever the ratio
    SALVAGE_STEP = 1 << 10  # compressed bytes fed at once near corrupt data

    def __init__(self, source: Path):
        self.damage: str | None = None
        self._chunks: queue.Queue = queue.Queue(maxsize=8)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._inflate, args=(source,), daemon=True)
        self._thread.start()

    def _inflate(self, source: Path) -> None:
        handed_on = piece_at = 0
        try:
            with open(source, "rb") as handle:
                inflate = None
                while not self._stop.is_set():
                    piece_at = handle.tell()
                    compressed = handle.read(self.CHUNK)
                    if not compressed:
                        if inflate is None or not inflate.eof:
                            self.damage = ("the gzip stream ends before its end marker: the "
                                           "file was cut short")
                        break
                    while compressed and not self._stop.is_set():
                        if inflate is None or inflate.eof:  # the first member, or the next
                            inflate = isal_zlib.decompressobj(wbits=31)
                        inflated = inflate.decompress(compressed, self.OUT_MAX)
                        if inflated:  # b"" is the end for the reader
                            self._chunks.put(inflated)
                            handed_on += len(inflated)
                        compressed = inflate.unused_data if inflate.eof else \
                            inflate.unconsumed_tail
        except isal_zlib.error as error:
            self.damage = f"corrupt gzip data ({error})"
            self._salvage(source, piece_at, handed_on)
        except OSError as error:
            self.damage = f"cannot read the file ({error})"
        finally:
            self._chunks.put(b"")

    def _salvage(self, source: Path, piece_at: int, handed_on: int) -> None:
        """Inflate again with zlib, the piece that held the damage (from file offset `piece_at`)
        in steps of SALVAGE_STEP bytes, and hand on what comes after the `handed_on` bytes
        already handed on, up to the damage: ISA-L gives nothing of a piece it fails on.
        Rare (a corrupt file), and it reads the file again from the start."""
        inflate, produced = zlib.decompressobj(wbits=31), 0
        with open(source, "rb") as handle:
            while not self._stop.is_set() and handle.tell() < piece_at + self.CHUNK:
                before = piece_at - handle.tell()
                compressed = handle.read(min(before, self.CHUNK) if before > 0
                                         else self.SALVAGE_STEP)
                if not compressed:
                    return
                try:
                    while compressed:
                        if inflate.eof:
                            inflate = zlib.decompressobj(wbits=31)
                        inflated = inflate.decompress(compressed, self.OUT_MAX)
                        fresh = inflated[max(handed_on - produced, 0):]
                        produced += len(inflated)
                        if fresh:
                            self._chunks.put(fresh)
                        compressed = inflate.unused_data if inflate.eof else \
                            inflate.unconsumed_tail
                except zlib.error:
                    return

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


class _Plain:
    """The bytes of an uncompressed file, in the same interface as _Inflated."""

    CHUNK = 1 << 23

    def __init__(self, source: Path):
        self.damage: str | None = None
        self._handle = open(source, "rb")  # noqa: SIM115 - closed by close()

    def read(self) -> bytes:
        return self._handle.read(self.CHUNK)

    def close(self) -> None:
        self._handle.close()


class ExportBytes:
    """The export's bytes as pyarrow's CSV reader reads them (a file object): valid UTF-8 only,
    and ending where the last whole line ends.

    A byte that is not UTF-8 is passed on as the text `\\xNN` (Python's backslashreplace) and
    its line is noted in `bad_utf8_lines`, so the row is rejected, with its true line, instead
    of stopping the read. A last line that the file does not finish is held back as `cut` (at
    line `cut_line`): where the gzip stream breaks off, or, in a quoted export, a last line not
    ending in a quote. Chunks are passed on as they come (no copy), one chunk behind the source,
    since only the last one is split.
    """

    def __init__(self, source: Path, *, quoted: bool):
        self._source = _Inflated(source) if _is_gzip(source) else _Plain(source)
        self._quoted = quoted
        self._held: bytes | None = None  # the latest chunk: the last one?
        self._carry = b""  # a character that the held chunk's end cut in two
        self._ready: list[memoryview] = []
        self._ready_bytes = 0
        self._ended = False
        self.lines_passed = 0  # line breaks handed on so far
        self.bad_utf8_lines: list[int] = []
        self.cut: bytes | None = None
        self.cut_line = 0
        self.closed = False

    @property
    def damage(self) -> str | None:
        return self._source.damage

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
            held, self._held = self._held, chunk
            if held is not None:
                self._pass_on(held, last=False)
            return
        self._ended = True
        data, self._carry = self._carry + (self._held or b""), b""
        end = data.rfind(b"\n") + 1
        whole, partial = data[:end], data[end:]
        if self.damage is not None or (self._quoted and partial and
                                       not partial.rstrip(b"\r").endswith(b'"')):
            self._pass_on(whole, last=True)
            self.cut, self.cut_line = partial, self.lines_passed + 1
        else:
            self._pass_on(data, last=True)

    def _pass_on(self, data: bytes, *, last: bool) -> None:
        if self._carry:
            data, self._carry = self._carry + data, b""
        if not last:
            split = len(data) - _incomplete_character(data)
            data, self._carry = data[:split], data[split:]
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


@dataclass
class _Times:
    """Time of a batch's rows as UTC ns, and what the trace's timezone leaves open.

    Where a local time is ambiguous (the hour repeated when the clocks go back), `ts` holds the
    earlier reading (daylight saving time) and `standard` the later; _FallBack chooses.
    """

    ts: pa_arrow.Array
    formats: dict[str, int]
    nonexistent: np.ndarray  # rows of local times skipped when the clocks go forward
    ambiguous: np.ndarray  # rows of local times in a repeated hour
    naive: np.ndarray  # their local times as ns (as if UTC)
    standard: np.ndarray  # their later reading, UTC ns


def _parse_time(raw: pa_arrow.Array, timezone: str) -> _Times:
    """Parse Time into UTC ns timestamps (null where unparseable); count each format seen."""
    naive = _usual_calendar_time(raw)
    if naive is not None:
        return _localized(naive, timezone, None, {"absolute": len(raw), "epoch_seconds": 0})
    absolute = pc.fill_null(pc.match_substring_regex(raw, ABSOLUTE_TIME), False)
    epoch_parts = pc.extract_regex(raw, EPOCH_TIME)
    epoch = epoch_parts.is_valid()

    naive = _calendar_time(pc.if_else(absolute, raw, None))
    absolute = pc.and_(absolute, naive.is_valid())

    seconds = pc.cast(pc.if_else(epoch, epoch_parts.field("seconds"), None), pa_arrow.int64())
    epoch = pc.fill_null(pc.less_equal(seconds, NS_EPOCH_SECONDS_MAX), False)
    seconds = pc.if_else(epoch, seconds, None)
    fraction = pc.utf8_rpad(epoch_parts.field("fraction"), 9, "0")
    fraction_ns = pc.cast(pc.if_else(epoch, fraction, None), pa_arrow.int64())
    epoch_ns = pc.add(pc.multiply(seconds, 1_000_000_000), fraction_ns)
    formats = {"absolute": int(pc.sum(absolute).as_py() or 0),
               "epoch_seconds": int(pc.sum(epoch).as_py() or 0)}
    return _localized(naive, timezone, epoch_ns, formats)


def _localized(naive: pa_arrow.Array, timezone: str, epoch_ns: pa_arrow.Array | None,
               formats: dict[str, int]) -> _Times:
    """Local dates and times (`naive`) read in `timezone`, then the epoch times (absolute
    already) where there is no date."""
    none = np.zeros(0, dtype=np.int64)
    if timezone == "UTC":
        ns = pc.cast(naive, pa_arrow.int64())
        nonexistent = ambiguous = naive_ns = standard = none
    else:
        def reading(ambiguous: str, nonexistent: str) -> pa_arrow.Array:
            local = pc.assume_timezone(naive, timezone, ambiguous=ambiguous,
                                       nonexistent=nonexistent)
            return pc.cast(local, pa_arrow.int64())

        ns = reading("earliest", "earliest")
        later = reading("latest", "earliest")
        nonexistent = np.flatnonzero(pc.fill_null(
            pc.not_equal(ns, reading("earliest", "latest")), False).to_numpy(
                zero_copy_only=False))
        ambiguous = np.flatnonzero(pc.fill_null(pc.not_equal(ns, later), False).to_numpy(
            zero_copy_only=False))
        naive_ns = pc.cast(naive, pa_arrow.int64()).to_numpy(zero_copy_only=False)[ambiguous]
        standard = later.to_numpy(zero_copy_only=False)[ambiguous]
    if epoch_ns is not None:
        ns = pc.coalesce(ns, epoch_ns)
    return _Times(pc.cast(ns, TIMESTAMP), formats, nonexistent, ambiguous,
                  naive_ns.astype(np.int64), standard.astype(np.int64))


def _usual_calendar_time(raw: pa_arrow.Array) -> pa_arrow.Array | None:
    """The usual batch, every Time an absolute date and time, as naive ns timestamps; else None.

    Arrow's cast is strict ISO 8601: with at least 19 characters (seconds given) it takes
    exactly what ABSOLUTE_TIME matches, so no regex pass is needed (it cost 3/4 of the parse).
    """
    if not len(raw) or raw.null_count or pc.min(pc.binary_length(raw)).as_py() < 19:
        return None
    try:
        return pc.cast(raw, pa_arrow.timestamp("ns"))
    except pa_arrow.ArrowInvalid:
        return None


def _calendar_time(text: pa_arrow.Array) -> pa_arrow.Array:
    """`YYYY-MM-DD hh:mm:ss[.fraction]` as naive ns timestamps; null where no such moment exists.

    Arrow's cast is strict and fast but fails the whole array on one bad value (month 13,
    February 30, year 0001), so only then are the real dates found, by a strptime round trip
    and the years timestamp[ns] can hold.
    """
    try:
        return pc.cast(text, pa_arrow.timestamp("ns"))  # takes either " " or "T" before the time
    except pa_arrow.ArrowInvalid:
        pass
    text = pc.replace_substring(text, "T", " ")
    clock = pc.utf8_slice_codeunits(text, 0, 19)
    seconds = pc.strptime(clock, format="%Y-%m-%d %H:%M:%S", unit="s", error_is_null=True)
    real = pc.and_(pc.equal(pc.strftime(seconds, format="%Y-%m-%d %H:%M:%S"), clock),
                   pc.and_(pc.greater_equal(pc.year(seconds), NS_YEARS[0]),
                           pc.less_equal(pc.year(seconds), NS_YEARS[1])))
    return pc.cast(pc.if_else(pc.fill_null(real, False), text, None), pa_arrow.timestamp("ns"))


@dataclass
class _FallBack:
    """Which reading each time of a repeated hour (clocks going back) takes, from the sequence.

    Packets come in time order: in the repeated hour, rows are daylight saving time until the
    first row more than FALL_BACK_STEP_NS earlier than a row before it in that hour (the clock
    went back); that row and the repeated-hour rows after it are standard time. The state is
    kept per local day, carried from batch to batch.
    """

    day: int | None = None
    latest_naive: int | None = None
    went_back: bool = False
    ambiguous_rows: int = 0
    read_as_standard: int = 0

    def resolve(self, times: _Times) -> pa_arrow.Array:
        """The batch's UTC times with each ambiguous row's reading chosen."""
        if not times.ambiguous.size:
            return times.ts
        days = times.naive // (86_400 * 10**9)
        later = np.zeros(times.ambiguous.size, dtype=bool)
        _, first = np.unique(days, return_index=True)
        for day in days[np.sort(first)]:
            rows = np.flatnonzero(days == day)
            later[rows] = self._went_back(int(day), times.naive[rows])
        ns = times.ts.cast(pa_arrow.int64()).to_numpy(zero_copy_only=False).copy()
        ns[times.ambiguous[later]] = times.standard[later]
        self.ambiguous_rows += int(times.ambiguous.size)
        self.read_as_standard += int(later.sum())
        valid = times.ts.is_valid().to_numpy(zero_copy_only=False)
        return pa_arrow.array(ns, TIMESTAMP, mask=~valid)

    def _went_back(self, day: int, naive: np.ndarray) -> np.ndarray:
        if day != self.day:
            self.day, self.latest_naive, self.went_back = day, None, False
        latest = np.maximum.accumulate(naive)
        if self.latest_naive is not None:
            latest = np.maximum(latest, self.latest_naive)
        before = np.concatenate([[naive[0] if self.latest_naive is None else self.latest_naive],
                                 latest[:-1]])
        went_back = np.logical_or.accumulate(before - naive > FALL_BACK_STEP_NS) | self.went_back
        self.latest_naive, self.went_back = int(latest[-1]), bool(went_back[-1])
        return went_back

    def notes(self, timezone: str) -> dict:
        return {"timezone": timezone, "ambiguous_rows": self.ambiguous_rows,
                "read_as_standard_time": self.read_as_standard,
                "read_as_daylight_saving_time": self.ambiguous_rows - self.read_as_standard}


def _integer(raw: pa_arrow.Array) -> pa_arrow.Array:
    """Decimal digits, with an optional minus sign, as int64; null where the text is anything
    else (so -5 is an integer out of range, not a non-integer)."""
    plain = pc.and_(pc.ascii_is_decimal(raw), pc.less_equal(pc.binary_length(raw), 18))
    if plain.false_count == 0:  # ten times faster than the regex below, and the usual case
        return pc.cast(raw, pa_arrow.int64())
    digits = pc.match_substring_regex(raw, r"^\s*-?\d{1,18}\s*$")
    return pc.cast(pc.utf8_trim_whitespace(pc.if_else(digits, raw, None)), pa_arrow.int64())


def _text(raw: pa_arrow.ChunkedArray) -> pa_arrow.ChunkedArray:
    """Text without surrounding blanks; null where nothing is left."""
    return null_if_empty(pc.utf8_trim_whitespace(raw))


class _RowRejector:
    """Collects per-row reasons for one batch, then writes the rejected rows and counts checks."""

    def __init__(self, lines: np.ndarray, raw: pa_arrow.Table, report: ValidationOutcome):
        self.reasons = np.full(raw.num_rows, "", dtype=object)
        self.invalid = np.zeros(raw.num_rows, dtype=bool)
        self.lines = lines
        self.raw = raw
        self.report = report

    def reject(self, check: str, rows: np.ndarray, fields: np.ndarray | None = None,
               details: np.ndarray | None = None) -> None:
        """Reject `rows` for `check`; `fields` names the failing column per row if not the
        check's own; `details` (per row) is the reason given instead of the check's name."""
        rows, first = np.unique(rows, return_index=True)
        if rows.size == 0:
            return
        reason = details[first] if details is not None else check
        self.reasons[rows] = np.where(self.invalid[rows], self.reasons[rows] + "; " + reason,
                                      reason)
        self.invalid[rows] = True
        examples = []
        for i in rows[:5]:
            field = fields[i] if fields is not None else _raw_column_of(check)
            example = {"line": int(self.lines[i]), "No.": self.raw.column("No.")[int(i)].as_py(),
                       "field": field, "value": _clip(self.raw.column(field)[int(i)].as_py())}
            examples.append(example)
        if details is not None:
            for example, detail in zip(examples, details[first][:5]):
                example["detail"] = detail
        self.report.fail(check, rows.size, examples, CHECKS[check])

    def invalid_table(self) -> pa_arrow.Table:
        mask = pa_arrow.array(self.invalid)
        locations = pa_arrow.array([f"line {n}" for n in self.lines[self.invalid]],
                                   pa_arrow.string())
        rejected = self.raw.filter(mask)
        return rejected.append_column("location", locations).append_column(
            "reason", pa_arrow.array(self.reasons[self.invalid].tolist(), pa_arrow.string()))


def _raw_column_of(check: str) -> str:
    first = check.split(" ")[0]
    return first if first in RAW_COLUMNS else "Info"


def _clip(value, limit: int = 200):
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + f"… ({len(value)} characters)"
    return value


def _pandera_failures(frame: pd.DataFrame, schema: pa.DataFrameSchema) -> dict[str, np.ndarray]:
    """Run the row model lazily; return report check name -> failing row positions."""
    try:
        # inplace: nothing is coerced, and the copy pandera makes otherwise is 3/4 of its time.
        schema.validate(frame, lazy=True, inplace=True)
        return {}
    except SchemaErrors as errors:
        cases = errors.failure_cases
    failures: dict[str, list] = {}
    for (column, check), group in cases.groupby(["column", "check"], dropna=False):
        key = PANDERA_CHECK_NAMES.get((column, str(check).split("(")[0])) or \
            PANDERA_CHECK_NAMES.get((column, str(check)))
        if key is None:
            # A schema-level failure (dtype, missing column) is a bug in this reader, not data.
            raise RuntimeError(f"unexpected pandera failure {column}/{check}: {group.head()}")
        index = group["index"].dropna().astype("int64").to_numpy()
        failures.setdefault(key, []).append(index)
    return {k: np.concatenate(v) for k, v in failures.items()}


@dataclass
class _TypedBatch:
    """A batch after the work that needs nothing from earlier batches (done a batch ahead, on a
    second thread): its raw text, its typed columns, and the rows each row check rejects."""

    raw: pa_arrow.Table
    typed: pa_arrow.Table
    times: _Times
    failures: dict[str, np.ndarray]


def _typed_batch(batch: pa_arrow.RecordBatch, row_schema: pa.DataFrameSchema,
                 timezone: str) -> _TypedBatch:
    raw = pa_arrow.Table.from_batches([batch])
    times = _parse_time(raw.column("Time").combine_chunks(), timezone)
    typed = pa_arrow.table({
        "frame": _integer(raw.column("No.").combine_chunks()),
        "ts": times.ts,
        "src": _text(raw.column("Source")),
        "dst": _text(raw.column("Destination")),
        "protocol": _text(raw.column("Protocol")),
        "length": _integer(raw.column("Length").combine_chunks()),
    })
    failures = _pandera_failures(typed.to_pandas(types_mapper=pd.ArrowDtype), row_schema)
    # Unparseable times (null) fail "Time parseable" only.
    ts_ns = pc.fill_null(pc.cast(times.ts, pa_arrow.int64()), TIME_RANGE_NS[0]).to_numpy()
    failures["Time exists"] = times.nonexistent
    failures["Time in range"] = np.flatnonzero(time_out_of_range(ts_ns))
    return _TypedBatch(raw, typed, times, failures)


@dataclass
class _BatchLines:
    """Where a batch's rows are in the file: first and last line of each row, the malformed
    records among them as (line, fields, text), and the last line placed."""

    start: np.ndarray
    end: np.ndarray
    malformed: list[tuple[int, int, str]]
    last: int


class _Lines:
    """The line in the file where each row starts, batch by batch.

    The reader hands a record with the wrong number of fields to the invalid-row handler with
    its record number (header = 1, blank lines not counted) and leaves it out of the batch, so
    the batch's rows take the numbers around it; a quoted field with line breaks makes its
    record span several lines, which moves every later record down.
    """

    def __init__(self):
        self.record = 1  # the header
        self.breaks = 0  # line breaks inside fields before the next record
        self.last = 1  # last line placed
        self._pending: list[tuple[int | None, int, str]] = []

    def malformed(self, row) -> str:
        self._pending.append((row.number, row.actual_columns, row.text))
        return "skip"

    def place(self, batch) -> _BatchLines:
        """Lines of `batch`'s rows, and the malformed records among them; `batch=None` at the
        end of the file takes every remaining one."""
        n = batch.num_rows if batch is not None else 0
        records = np.arange(self.record + 1, self.record + 1 + n)
        taken = []
        self._pending.sort(key=lambda item: (item[0] is None, item[0] or 0))
        while self._pending:
            number, fields, text = self._pending[0]
            last = max(int(records[-1]) if n else self.record, taken[-1][0] if taken else 0)
            if number is None:  # not numbered by the reader: put after this batch's rows
                number = last + 1
            elif number > last + 1 and batch is not None:
                break  # a later batch's
            records[records >= number] += 1
            taken.append((number, fields, text))
            self._pending.pop(0)
        numbers = np.concatenate([records, np.array([t[0] for t in taken], dtype=np.int64)])
        breaks = np.array([t[2].count("\n") for t in taken], dtype=np.int64)
        if n:
            inside = np.zeros(n, dtype=np.int64)
            for column in batch.columns:
                if _may_hold_line_breaks(column):
                    inside += pc.fill_null(pc.count_substring(column, "\n"), 0).to_numpy()
            breaks = np.concatenate([inside, breaks])
        order = np.argsort(numbers, kind="stable")
        before = np.empty_like(breaks)
        before[order] = self.breaks + np.cumsum(breaks[order]) - breaks[order]
        lines = numbers + before
        if numbers.size:
            self.record = int(numbers.max())
            self.breaks += int(breaks.sum())
            self.last = int((lines + breaks).max())
        return _BatchLines(lines[:n], lines[:n] + breaks[:n],
                           [(int(line), fields, text)
                            for line, (_, fields, text) in zip(lines[n:], taken)], self.last)


def _may_hold_line_breaks(column: pa_arrow.Array) -> bool:
    """False when the column's bytes hold no line break at all: a memchr-speed scan that
    spares the per-value count in nearly every batch."""
    data = column.buffers()[2]
    return data is not None and data.to_pybytes().find(b"\n") >= 0


def _rows_holding(bad_lines: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """For each line of `bad_lines`, the row (by its first and last line) holding it, or -1."""
    if not start.size:
        return np.full(bad_lines.size, -1)
    row = np.searchsorted(start, bad_lines, side="right") - 1
    inside = (row >= 0) & (end[np.maximum(row, 0)] >= bad_lines)
    return np.where(inside, row, -1)


KEY_COLUMNS = ["ts", "length", "src", "dst", "protocol", "info"]
# The rows the next batch's duplicate check looks back at: their keys and lines.
RECENT_SCHEMA = pa_arrow.schema([STAGED_BASE.field(name) for name in KEY_COLUMNS] +
                                [("line", pa_arrow.int64())])


def _duplicate_of(keys: pa_arrow.Table, candidate: np.ndarray, lines: np.ndarray,
                  recent: pa_arrow.Table) -> np.ndarray:
    """For each `candidate` row of a batch (`keys`: its KEY_COLUMNS), the line of the nearest
    earlier exact copy among the DUPLICATE_LOOKBACK candidates before it (those of the batch
    before it in `recent` first), or 0.

    Copies share their time: the rows are sorted by time (nearly sorted already, so this is
    quick), and only rows in runs of equal times are paired and their text compared.
    """
    first_new = recent.num_rows
    ts = np.concatenate([recent.column("ts").cast(pa_arrow.int64()).to_numpy(),
                         keys.column("ts").cast(pa_arrow.int64()).to_numpy()[candidate]])
    length = np.concatenate([recent.column("length").to_numpy(),
                             keys.column("length").to_numpy()[candidate]])
    earlier_line = np.zeros(candidate.size, dtype=np.int64)
    order = np.argsort(ts, kind="stable")
    in_run = np.flatnonzero(ts[order][1:] == ts[order][:-1])
    if not in_run.size:
        return earlier_line
    members = order[np.union1d(in_run, in_run + 1)]  # by time, then position
    later, earlier = [], []
    for step in range(1, min(DUPLICATE_LOOKBACK, members.size - 1) + 1):
        a, b = members[step:], members[:-step]
        pair = (ts[a] == ts[b]) & (a - b <= DUPLICATE_LOOKBACK) & (length[a] == length[b]) & \
            (a >= first_new)
        later.append(a[pair])
        earlier.append(b[pair])
    later, earlier = np.concatenate(later), np.concatenate(earlier)
    copy = np.zeros(later.size, dtype=bool)
    later_rows = keys.take(candidate[later - first_new])
    for in_batch in (True, False):
        group = (earlier >= first_new) == in_batch
        if not group.any():
            continue
        earlier_rows = keys.take(candidate[earlier[group] - first_new]) if in_batch \
            else recent.take(earlier[group])
        same = np.ones(int(group.sum()), dtype=bool)
        for name in ("src", "dst", "protocol", "info"):
            same &= pc.fill_null(pc.equal(later_rows.column(name).filter(group),
                                          earlier_rows.column(name)),
                                 False).to_numpy(zero_copy_only=False)
        copy[group] = same
    later, earlier = later[copy], earlier[copy]
    nearest = np.lexsort((-earlier, later))  # per row, the nearest copy first
    found, first = np.unique(later[nearest], return_index=True)
    all_lines = np.concatenate([recent.column("line").to_numpy(), lines[candidate]])
    earlier_line[found - first_new] = all_lines[earlier[nearest][first]]
    return earlier_line


@dataclass
class _StreamState:
    """What the checks of a batch need from the rows before it, in file order."""

    timezone: str
    last_frame: int = 0
    time_formats: dict[str, int] = field(
        default_factory=lambda: {"absolute": 0, "epoch_seconds": 0})
    time_order: TimeOrder = field(default_factory=TimeOrder)
    fall_back: _FallBack = field(default_factory=_FallBack)
    recent: pa_arrow.Table = field(default_factory=RECENT_SCHEMA.empty_table)
    small_epoch_times: int = 0  # epoch times before 1970-01-02: relative times, most likely

    def remember(self, kept: pa_arrow.Table, lines: np.ndarray) -> None:
        """Keep the last DUPLICATE_LOOKBACK kept rows for the next batch's duplicate check."""
        tail = kept.select(KEY_COLUMNS).slice(max(kept.num_rows - DUPLICATE_LOOKBACK, 0))
        tail = tail.append_column("line", pa_arrow.array(lines[-tail.num_rows:], pa_arrow.int64()))
        both = pa_arrow.concat_tables([self.recent, tail])
        self.recent = both.slice(max(both.num_rows - DUPLICATE_LOOKBACK, 0))

    def notes(self) -> dict:
        notes = {"time_formats": self.time_formats, **self.time_order.notes()}
        if self.timezone != "UTC":
            notes["local_times"] = self.fall_back.notes(self.timezone)
        if self.small_epoch_times:
            notes["warning"] = (
                f"{self.small_epoch_times} Time values are small numbers: this looks like "
                f"Wireshark's 'seconds since beginning of capture', not absolute time; export "
                f"with View > Time Display Format > Date and Time of Day (or UTC Date and Time "
                f"of Day), or tshark -t ud.")
        return notes


@dataclass
class _Outputs:
    """Where a batch's rows go: counted in the report, rejected ones to the invalid-rows file,
    kept ones to the staged file."""

    report: ValidationOutcome
    invalid: InvalidRows
    staged: StagedWriter


def _check_batch(batch: _TypedBatch, lines: _BatchLines, bad_utf8_lines: np.ndarray,
                 state: _StreamState, out: _Outputs) -> None:
    """Reject a typed batch's invalid rows and stage the others, in file order after all the
    rows before them (local times, No. increasing, duplicates and the time order need those)."""
    out.report.rows_read += batch.raw.num_rows
    rejector = _RowRejector(lines.start, batch.raw, out.report)
    typed = _row_checks(batch, lines, bad_utf8_lines, state, rejector)
    _order_checks(typed, batch.raw, lines, state, rejector)
    keep = ~rejector.invalid
    out.invalid.write(rejector.invalid_table())
    out.report.rows_invalid += int((~keep).sum())
    out.report.rows_valid += int(keep.sum())
    if keep.any():
        _stage_kept(typed.append_column("info", batch.raw.column("Info")).filter(
            pa_arrow.array(keep)), lines.start[keep], state, out)


def _row_checks(batch: _TypedBatch, lines: _BatchLines, bad_utf8_lines: np.ndarray,
                state: _StreamState, rejector: _RowRejector) -> pa_arrow.Table:
    """Reject the rows failing a check of their own; return the typed rows with each local time
    of a repeated hour read as the sequence says."""
    bad_rows = _rows_holding(bad_utf8_lines, lines.start, lines.end)
    bad_rows = bad_rows[bad_rows >= 0]
    rejector.reject("utf8", bad_rows, fields=_escaped_field(batch.raw, bad_rows))
    for check, rows in batch.failures.items():
        rejector.reject(check, rows)
    formats = batch.times.formats
    for key, count in formats.items():
        state.time_formats[key] += count
    if formats["epoch_seconds"] and not formats["absolute"]:
        state.small_epoch_times += int(np.sum(
            batch.times.ts.cast(pa_arrow.int64()).to_numpy(zero_copy_only=False)
            < TIME_RANGE_NS[0]))
    return batch.typed.set_column(batch.typed.schema.get_field_index("ts"), "ts",
                                  state.fall_back.resolve(batch.times))


def _order_checks(typed: pa_arrow.Table, raw: pa_arrow.Table, lines: _BatchLines,
                  state: _StreamState, rejector: _RowRejector) -> None:
    """Reject, among the rows left, those that break the order of the rows kept before them:
    No. not increasing (gaps are normal after a display filter), exact copies."""
    frames = pc.fill_null(typed.column("frame"), -1).to_numpy()
    candidate = ~rejector.invalid
    running = np.maximum.accumulate(np.where(candidate, frames, -1))
    previous_max = np.concatenate([[state.last_frame],
                                   np.maximum(running[:-1], state.last_frame)])
    rejector.reject("No. increasing", np.flatnonzero(candidate & (frames <= previous_max)))

    candidate = np.flatnonzero(~rejector.invalid)
    keys = typed.append_column("info", raw.column("Info")).select(KEY_COLUMNS)
    earlier = _duplicate_of(keys, candidate, lines.start, state.recent)
    copies = np.flatnonzero(earlier)
    rejector.reject("duplicate", candidate[copies],
                    details=np.array([f"duplicate of line {n}" for n in earlier[copies]],
                                     dtype=object))


def _stage_kept(kept: pa_arrow.Table, kept_lines: np.ndarray, state: _StreamState,
                out: _Outputs) -> None:
    state.time_order.update(kept.column("ts").cast(pa_arrow.int64()).to_numpy(),
                            lambda i: {"line": int(kept_lines[i])})
    state.remember(kept, kept_lines)
    state.last_frame = int(pc.max(kept.column("frame")).as_py())
    out.staged.write_table(kept.select(STAGED_BASE.names).cast(STAGED_BASE))


def _escaped_field(raw: pa_arrow.Table, rows: np.ndarray) -> np.ndarray:
    """Per row of `raw`, the first column holding a byte that was not UTF-8 (ExportBytes wrote
    it as \\xNN), among `rows`; "" elsewhere."""
    fields = np.full(raw.num_rows, "", dtype=object)
    if not rows.size:
        return fields
    for name in RAW_COLUMNS:
        escaped = pc.match_substring_regex(raw.column(name).take(rows), ESCAPED_BYTE)
        found = rows[pc.fill_null(escaped, False).to_numpy(zero_copy_only=False)]
        fields[found] = np.where(fields[found] == "", name, fields[found])
    fields[rows] = np.where(fields[rows] == "", "Info", fields[rows])
    return fields


def _reject_records(records: list[tuple[int, str, str]], check: str, out: _Outputs) -> None:
    """Records kept whole in the Info column: (line, reason, text) with the wrong number of
    fields, or cut short."""
    if not records:
        return
    out.report.rows_read += len(records)
    out.report.rows_invalid += len(records)
    out.report.fail(check, len(records),
                    [{"line": line, "No.": None, "field": "record", "value": _clip(text)}
                     for line, _, text in records[:5]], CHECKS[check])
    rows = {name: [""] * len(records) for name in RAW_COLUMNS}
    rows["Info"] = [text for _, _, text in records]
    out.invalid.write(pa_arrow.table({
        **rows, "location": [f"line {line}" for line, _, _ in records],
        "reason": [reason for _, reason, _ in records]}))


def _reject_malformed(lines: _BatchLines, bad_utf8_lines: np.ndarray, header: _Header,
                      out: _Outputs) -> None:
    """Records with the wrong number of fields (and any bytes in them that are not UTF-8)."""
    expected = len(header.names)
    records, not_utf8 = [], []
    for line, fields, text in lines.malformed:
        reason = f"columns: {fields} fields where the header has {expected}"
        spanned = text.count("\n") + 1
        if spanned > 1:
            reason += (f", over {spanned} lines (a quote that is never closed joins the lines "
                       f"up to the next quote)")
        elif fields > expected and not header.quoted:
            reason += (f" (an unquoted export with {header.delimiter!r} inside a field? "
                       f"export with quoted fields, e.g. tshark -E quote=d)")
        if ((bad_utf8_lines >= line) & (bad_utf8_lines < line + spanned)).any():
            reason += "; utf8"
            not_utf8.append({"line": line, "No.": None, "field": "record", "value": _clip(text)})
        records.append((line, reason, text))
    if not_utf8:
        out.report.fail("utf8", len(not_utf8), not_utf8, CHECKS["utf8"])
    _reject_records(records, "columns", out)


def _reject_cut(stream: ExportBytes, out: _Outputs) -> None:
    """The last line, which the file does not finish."""
    why = stream.damage or "a quoted field is never closed"
    text = stream.cut.decode("utf-8", errors="backslashreplace")
    reason = (f"complete: the file ends inside this line ({why}); every whole row before it "
              f"was read")
    _reject_records([(stream.cut_line, reason, text)], "complete", out)


class _BadLines:
    """The lines ExportBytes found bytes that are not UTF-8 in, handed out batch by batch."""

    def __init__(self, stream: ExportBytes):
        self._found = stream.bad_utf8_lines

    def up_to(self, last: int) -> np.ndarray:
        taken = [line for line in self._found if line <= last]
        del self._found[:len(taken)]
        return np.array(taken, dtype=np.int64)


def stage(source: Path, *, staged_path: Path, invalid_path: Path, report: ValidationOutcome,
          timezone: str, settings: ValidationSettings) -> None:
    """Validate a Wireshark CSV export and write its valid rows to `staged_path`."""
    for name, description in CHECKS.items():
        report.declare(name, description)
    header = _read_header(source, report)
    if header is None:
        return
    if header.extra:
        report.notes["extra_columns"] = header.extra
    report.notes["delimiter"] = header.delimiter
    state = _StreamState(timezone)
    staged = AtomicPath(staged_path)
    invalid = InvalidRows(invalid_path, RAW_COLUMNS)
    try:
        with staged as tmp:
            with StagedWriter(tmp, STAGED_BASE) as writer:
                _RowReader(source, header, state, _Outputs(report, invalid, writer),
                           settings).read()
            if report.structural_errors:
                staged.discard()
    finally:
        invalid.close()
    report.notes.update(state.notes())
    log.info("%s: %d rows read, %d kept, %d rejected", source, report.rows_read,
             report.rows_valid, report.rows_invalid)


def _read_header(source: Path, report: ValidationOutcome) -> _Header | None:
    """The export's header line; None (with the structural error reported) when there is no
    usable one."""
    try:
        first_line, head, damage = _read_head(source)
    except OSError as error:
        report.structural("readable", f"cannot read the file: {error}")
        return None
    if damage and not first_line.endswith(b"\n"):
        report.structural("readable", f"cannot read the file: {damage}", row=1)
        return None
    if not head:
        report.structural("header", "the file is empty: no header line", row=1)
        return None
    if head.startswith(UTF16_BOMS) or b"\x00" in first_line or \
            (not first_line.strip() and b"\x00" in head):
        report.structural("encoding", "the file starts with NUL bytes: UTF-16 text (as "
                          "PowerShell's '>' writes it) or not text at all (a pcap/pcapng capture "
                          "needs format pcap or pcapng); save the export as UTF-8 CSV", row=1)
        return None
    if not first_line.strip():
        report.structural("header", "line 1 is blank: expected the header line "
                          f"({', '.join(RAW_COLUMNS)})", row=1)
        return None
    header = _Header(first_line.decode("utf-8", errors="replace"))
    problem = header.problem()
    if problem is not None:
        detail, fields = problem
        where = {"row": 1} if fields is None else {"row": 1, "field": fields}
        report.structural("columns", detail, **where)
        return None
    return header


class _RowReader:
    """Streams the rows after the header through the checks, in file order."""

    def __init__(self, source: Path, header: _Header, state: _StreamState, out: _Outputs,
                 settings: ValidationSettings):
        self.header, self.state, self.out, self.settings = header, state, out, settings
        self.lines = _Lines()
        self.stream = ExportBytes(source, quoted=header.quoted)
        self.bad_lines = _BadLines(self.stream)
        self.row_schema = export_row_model(settings)

    def open(self) -> pacsv.CSVStreamingReader:
        # Parsed serially, the reader gives the invalid-row handler each record's number (in
        # parallel it gives None); on 2 cores parallel parsing saved only 8% at 10M rows.
        read_options = pacsv.ReadOptions(column_names=self.header.canonical, skip_rows=1,
                                         block_size=self.settings.batch_bytes,
                                         use_threads=False)
        # An unquoted header means an unquoted export (tshark -E quote=n): a '"' in Info is
        # text.
        parse_options = pacsv.ParseOptions(delimiter=self.header.delimiter,
                                           quote_char='"' if self.header.quoted else False,
                                           newlines_in_values=self.header.quoted,
                                           invalid_row_handler=self.lines.malformed)
        # ExportBytes hands on valid UTF-8 only: no need to check it again.
        convert_options = pacsv.ConvertOptions(
            column_types={name: pa_arrow.string() for name in self.header.canonical},
            include_columns=RAW_COLUMNS, strings_can_be_null=False,
            quoted_strings_can_be_null=False, check_utf8=False)
        return pacsv.open_csv(self.stream, read_options=read_options,
                              parse_options=parse_options, convert_options=convert_options)

    def read(self) -> None:
        # Batch k+1 is typed and checked by pandera on a second thread (Arrow's kernels release
        # the GIL) while batch k is finished here: its rejects need the rows kept before it.
        pending = None  # the batch being typed ahead: (its future, its lines)
        with ThreadPoolExecutor(max_workers=1) as ahead:
            try:
                for batch in self.open():
                    batch_lines = self.lines.place(batch)
                    typing = ahead.submit(_typed_batch, batch, self.row_schema,
                                          self.state.timezone)
                    if pending is not None:
                        self.finish(*pending)
                    pending = (typing, batch_lines)
                if pending is not None:
                    pending, last = None, pending
                    self.finish(*last)
                rest = self.lines.place(None)
                _reject_malformed(rest, self.bad_lines.up_to(rest.last), self.header, self.out)
                if self.stream.cut is not None:
                    _reject_cut(self.stream, self.out)
            except (pa_arrow.ArrowInvalid, OSError) as error:
                if pending is not None:
                    self.finish(*pending)  # the rows read before the error are counted
                self.stopped(error)
            finally:
                self.stream.close()

    def finish(self, typing, batch_lines: _BatchLines) -> None:
        found = self.bad_lines.up_to(batch_lines.last)
        _reject_malformed(batch_lines, found, self.header, self.out)
        _check_batch(typing.result(), batch_lines, found, self.state, self.out)

    def stopped(self, error: Exception) -> None:
        last = self.lines.last
        detail = self.stream.damage or _clip(str(error))
        if "straddl" in detail:
            detail = (f"the record starting at line {last + 1} does not fit in "
                      f"validation.batch_bytes ({self.settings.batch_bytes} bytes): raise it, "
                      f"or look there for a quote that is never closed")
        self.out.report.structural("readable", f"reading stopped after line {last}: {detail}",
                                   row=last + 1)

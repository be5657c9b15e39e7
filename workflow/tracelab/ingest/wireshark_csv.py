"""Reader for Wireshark CSV exports (GUI "Export Packet Dissections > As CSV", or tshark -T fields).

Streams the file with pyarrow's CSV reader, types each batch with Arrow kernels, checks it with
the pandera model `ExportRowModel` (lazily, so every failure of a batch is collected at once),
and sends rejected rows verbatim to the invalid-rows file. Valid rows go to the staged file
(packets.StagedWriter: Arrow IPC, read once by normalization).
"""

from __future__ import annotations

import csv
import gzip
import logging
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_arrow
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from isal import igzip_threaded, isal_zlib
from pandera.errors import SchemaErrors

from tracelab.core.atomic import atomic_path
from tracelab.core.packets import PACKETS, STAGED_BASE, StagedWriter, null_if_empty
from tracelab.core.tables import TIMESTAMP
from tracelab.ingest.report import (InvalidRows, ValidationReport, ValidationSettings,
                         count_time_backwards)

log = logging.getLogger(__name__)

RAW_COLUMNS = ["No.", "Time", "Source", "Destination", "Protocol", "Length", "Info"]
INTERNAL_NAMES = {"No.": "frame", "Time": "ts", "Source": "src", "Destination": "dst",
                  "Protocol": "protocol", "Length": "length", "Info": "info"}

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

GZIP_MAGIC = b"\x1f\x8b"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
ABSOLUTE_TIME = r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?$"
EPOCH_TIME = r"^(?P<seconds>\d{1,11})(?:\.(?P<fraction>\d{1,9}))?$"
# What timestamp[ns] holds (1677-09-21 .. 2262-04-11): whole years for dates, seconds for epochs.
NS_YEARS = (1678, 2261)
NS_EPOCH_SECONDS_MAX = 9_223_372_035

# Report names of the checks. Pandera reports (column, check); these say what that means here.
CHECKS = {
    "columns": "the export has one field per header column",
    "utf8": "the row is valid UTF-8",
    "No. integer": "No. is an integer",
    "No. positive": "No. is positive",
    "No. increasing": "No. is strictly increasing (gaps allowed)",
    "Time parseable": "Time is an absolute date and time (µs or ns digits) or epoch seconds",
    "Length integer": "Length is an integer",
    "Length in range": "Length is a plausible frame length (validation.length_min..length_max)",
    "Source non-empty": "Source is not empty",
    "Destination non-empty": "Destination is not empty",
    "Protocol non-empty": "Protocol is not empty",
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
    for field in STAGED_BASE:
        if field.name == "info":
            continue
        declared = PACKETS.column(field.name)
        checks = [length_range] if field.name == "length" else list(declared.checks)
        columns[field.name] = pa.Column(pd.ArrowDtype(field.type), checks=checks,
                                        nullable=declared.nullable)
    return pa.DataFrameSchema(columns, strict=False)


class _Header:
    """The first line of the export: delimiter, column order, extras."""

    def __init__(self, source: Path, first_line: str):
        self.source = source
        text = first_line.lstrip("\ufeff").rstrip("\r\n")
        counts = {d: text.count(d) for d in (",", ";", "\t")}
        self.delimiter = max(counts, key=counts.get)
        self.names = next(csv.reader([text], delimiter=self.delimiter))
        self.canonical = [CANONICAL_HEADER.get(n.strip().casefold(), n.strip())
                          for n in self.names]
        self.missing = [c for c in RAW_COLUMNS if c not in self.canonical]
        self.extra = [n for n, c in zip(self.names, self.canonical) if c not in RAW_COLUMNS]
        self.duplicated = sorted({c for c in self.canonical if self.canonical.count(c) > 1})
        self.quoted = '"' in text


def _open_binary(source: Path):
    """The export as a byte stream, gunzipped if it starts with the gzip magic.

    ISA-L's inflate, on a thread of its own, instead of Arrow's zlib stream: on a 10M-packet
    export it gunzips in 1.2 s instead of 3.0 s, while the CSV is parsed and checked here.
    """
    with open(source, "rb") as handle:
        magic = handle.read(2)
    if magic == GZIP_MAGIC:
        return igzip_threaded.open(source, "rb", threads=1)
    return pa_arrow.input_stream(source)


def _read_head(source: Path) -> tuple[bytes, bytes]:
    """The first line, and the first 4 KiB, of the (gunzipped) export."""
    with open(source, "rb") as handle:
        magic = handle.read(2)
        handle.seek(0)
        stream = gzip.GzipFile(fileobj=handle) if magic == GZIP_MAGIC else handle
        first_line = stream.readline(1 << 20)
        stream.seek(0)
        return first_line, stream.read(4096)


def _parse_time(raw: pa_arrow.Array, timezone: str) -> tuple[pa_arrow.Array, dict]:
    """Parse Time into UTC ns timestamps (null where unparseable); count each format seen."""
    naive = _usual_calendar_time(raw)
    if naive is not None:
        local = naive.cast(pa_arrow.timestamp("ns", tz="UTC")) if timezone == "UTC" else \
            pc.assume_timezone(naive, timezone, ambiguous="earliest", nonexistent="earliest")
        return local, {"absolute": len(raw), "epoch_seconds": 0}
    absolute = pc.match_substring_regex(raw, ABSOLUTE_TIME)
    epoch_parts = pc.extract_regex(raw, EPOCH_TIME)
    epoch = epoch_parts.is_valid()
    absolute = pc.fill_null(absolute, False)

    naive = _calendar_time(pc.if_else(absolute, raw, None))
    absolute = pc.and_(absolute, naive.is_valid())
    local = pc.assume_timezone(naive, timezone, ambiguous="earliest", nonexistent="earliest")
    absolute_ns = pc.cast(local, pa_arrow.int64())

    seconds = pc.cast(pc.if_else(epoch, epoch_parts.field("seconds"), None), pa_arrow.int64())
    epoch = pc.fill_null(pc.less_equal(seconds, NS_EPOCH_SECONDS_MAX), False)
    seconds = pc.if_else(epoch, seconds, None)
    fraction = pc.utf8_rpad(epoch_parts.field("fraction"), 9, "0")
    fraction_ns = pc.cast(pc.if_else(epoch, fraction, None), pa_arrow.int64())
    epoch_ns = pc.add(pc.multiply(seconds, 1_000_000_000), fraction_ns)

    ns = pc.coalesce(absolute_ns, epoch_ns)
    formats = {"absolute": int(pc.sum(absolute).as_py() or 0),
               "epoch_seconds": int(pc.sum(epoch).as_py() or 0)}
    return pc.cast(ns, pa_arrow.timestamp("ns", tz="UTC")), formats


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


def _integer(raw: pa_arrow.Array) -> pa_arrow.Array:
    """Decimal digits as int64; null where the text is anything else (signs included)."""
    plain = pc.and_(pc.ascii_is_decimal(raw), pc.less_equal(pc.binary_length(raw), 18))
    if plain.false_count == 0:  # ten times faster than the regex below, and the usual case
        return pc.cast(raw, pa_arrow.int64())
    digits = pc.match_substring_regex(raw, r"^\s*\d{1,18}\s*$")
    return pc.cast(pc.utf8_trim_whitespace(pc.if_else(digits, raw, None)), pa_arrow.int64())


def _text(raw: pa_arrow.ChunkedArray) -> pa_arrow.ChunkedArray:
    """Text without surrounding blanks; null where nothing is left."""
    return null_if_empty(pc.utf8_trim_whitespace(raw))


def _decode_batch(batch: pa_arrow.RecordBatch) -> tuple[pa_arrow.Table, np.ndarray]:
    """Binary columns to UTF-8 strings (rare path: invalid bytes shown as \\x escapes).

    Returns the table and, per row, the first column with invalid UTF-8 ("" where none).
    """
    columns, bad_field = [], np.full(batch.num_rows, "", dtype=object)
    for name, column in zip(batch.schema.names, batch.columns):
        try:
            columns.append(column.cast(pa_arrow.string()))
        except pa_arrow.ArrowInvalid:
            values = column.to_pylist()
            decoded = []
            for i, value in enumerate(values):
                try:
                    decoded.append(value.decode("utf-8"))
                except UnicodeDecodeError:
                    bad_field[i] = bad_field[i] or name
                    decoded.append(value.decode("utf-8", errors="backslashreplace"))
            columns.append(pa_arrow.array(decoded, pa_arrow.string()))
    return pa_arrow.Table.from_arrays(columns, names=batch.schema.names), bad_field


class _RowRejector:
    """Collects per-row reasons for one batch, then writes the rejected rows and counts checks."""

    def __init__(self, n_rows: int, lines: np.ndarray, raw: pa_arrow.Table,
                 report: ValidationReport):
        self.reasons = np.full(n_rows, "", dtype=object)
        self.invalid = np.zeros(n_rows, dtype=bool)
        self.lines = lines
        self.raw = raw
        self.report = report

    def reject(self, check: str, rows: np.ndarray, fields: np.ndarray | None = None) -> None:
        """Reject `rows` for `check`; `fields` names the failing column per row if not the
        check's own."""
        rows = np.unique(rows)
        if rows.size == 0:
            return
        self.reasons[rows] = np.where(self.invalid[rows], self.reasons[rows] + "; " + check,
                                      check)
        self.invalid[rows] = True
        examples = []
        for i in rows[:5]:
            field = fields[i] if fields is not None else _raw_column_of(check)
            examples.append({"line": int(self.lines[i]),
                             "No.": self.raw.column("No.")[int(i)].as_py(),
                             "field": field,
                             "value": _clip(self.raw.column(field)[int(i)].as_py())})
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


def stage(source: Path, *, staged_path: Path, invalid_path: Path, report: ValidationReport,
          timezone: str, settings: ValidationSettings) -> None:
    """Validate a Wireshark CSV export and write its valid rows to `staged_path`."""
    for name, description in CHECKS.items():
        report.declare(name, description)
    try:
        first_line, head = _read_head(source)
    except (OSError, EOFError, zlib.error) as error:
        report.structural("readable", f"cannot read the file: {error}")
        return
    if not head:
        report.structural("header", "the file is empty: no header line", row=1)
        return
    if head.startswith(UTF16_BOMS) or b"\x00" in first_line or \
            (not first_line.strip() and b"\x00" in head):
        report.structural("encoding", "the file starts with NUL bytes: UTF-16 text (as "
                          "PowerShell's '>' writes it) or not text at all (a pcap/pcapng capture "
                          "needs format pcap or pcapng); save the export as UTF-8 CSV", row=1)
        return
    if not first_line.strip():
        report.structural("header", "line 1 is blank: expected the header line "
                          f"({', '.join(RAW_COLUMNS)})", row=1)
        return
    header_text = first_line.decode("utf-8", errors="replace")
    header = _Header(source, header_text)
    if header.missing or header.duplicated:
        problem = (f"missing column(s) {header.missing}" if header.missing
                   else f"duplicated column(s) {header.duplicated}")
        report.structural(
            "columns", f"{problem}; found {header.names}; expected {RAW_COLUMNS} "
            f"(tshark field names like _ws.col.No. and localized titles are accepted)",
            row=1, field=", ".join(header.missing or header.duplicated))
        return
    if header.extra:
        report.notes["extra_columns"] = header.extra
    report.notes["delimiter"] = header.delimiter

    lines = _Lines()
    column_names = header.canonical
    # Parsed serially, the reader gives the invalid-row handler each record's number (in
    # parallel it gives None); on 2 cores parallel parsing saved only 8% at 10M rows.
    read_options = pacsv.ReadOptions(column_names=column_names, skip_rows=1,
                                     block_size=settings.batch_bytes, use_threads=False)
    # An unquoted header means an unquoted export (tshark -E quote=n): a '"' in Info is text.
    parse_options = pacsv.ParseOptions(delimiter=header.delimiter,
                                       quote_char='"' if header.quoted else False,
                                       newlines_in_values=header.quoted,
                                       invalid_row_handler=lines.malformed)
    convert_options = pacsv.ConvertOptions(
        column_types={name: pa_arrow.binary() for name in column_names},
        include_columns=RAW_COLUMNS, strings_can_be_null=False, quoted_strings_can_be_null=False)
    row_schema = export_row_model(settings)

    last_frame = 0
    last_ts = None
    backwards = {"count": 0, "examples": []}
    time_formats = {"absolute": 0, "epoch_seconds": 0}
    invalid_sink = InvalidRows(invalid_path, RAW_COLUMNS)
    pending = None  # the batch being typed ahead: (future, its lines, its malformed records)

    def finish_pending() -> None:
        """Reject and stage the pending batch's rows, in file order after all earlier ones."""
        nonlocal pending, last_frame, last_ts
        if pending is None:
            return
        (typing, batch_lines, malformed), pending = pending, None
        _reject_malformed(malformed, header, invalid_sink, report)
        last_frame, last_ts = _check_batch(
            typing.result(), batch_lines, report, invalid_sink, writer, last_frame, last_ts,
            backwards, time_formats)

    try:
        with atomic_path(staged_path) as tmp, \
                StagedWriter(tmp, STAGED_BASE) as writer, ExitStack() as stack:
            # Batch k+1 is typed and checked by pandera on a second thread (Arrow's kernels
            # release the GIL) while batch k is finished here: its rejects need the rows kept
            # before it (No. increasing, times going backwards).
            ahead = stack.enter_context(ThreadPoolExecutor(max_workers=1))
            try:
                stream = stack.enter_context(_open_binary(source))
                reader = pacsv.open_csv(stream, read_options=read_options,
                                        parse_options=parse_options,
                                        convert_options=convert_options)
                for batch in reader:
                    batch_lines, malformed = lines.place(batch)
                    typing = ahead.submit(_typed_batch, batch, row_schema, timezone)
                    finish_pending()
                    pending = (typing, batch_lines, malformed)
                finish_pending()
                _, malformed = lines.place(None)
                _reject_malformed(malformed, header, invalid_sink, report)
            except (pa_arrow.ArrowInvalid, OSError, EOFError, isal_zlib.error) as error:
                finish_pending()  # the rows read before the error are counted
                detail = _clip(str(error))
                if isinstance(error, EOFError):
                    detail = f"Truncated gzip file ({detail})"
                if "straddl" in detail:
                    detail = (f"the record starting at line {lines.last + 1} does not fit in "
                              f"validation.batch_bytes ({settings.batch_bytes} bytes): raise it, "
                              f"or look there for a quote that is never closed")
                report.structural("readable", f"reading stopped after line {lines.last}: "
                                  f"{detail}", row=lines.last + 1)
            if report.structural_errors:
                raise _Abandon
    except _Abandon:
        pass
    finally:
        invalid_sink.close()
    report.notes["time_formats"] = time_formats
    report.notes["time_backwards"] = backwards
    if time_formats["epoch_seconds"] and not time_formats["absolute"] and last_ts is not None \
            and last_ts < 631152000 * 10**9:
        report.notes["warning"] = ("Time values are small numbers: this looks like Wireshark's "
                                   "'seconds since beginning of capture', not absolute time; "
                                   "they are read as seconds since the epoch (1970).")


class _Abandon(Exception):
    """Leave the staged file unwritten (atomic_path discards it)."""


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

    def place(self, batch) -> tuple[np.ndarray, list[tuple[int, int, str]]]:
        """Lines of `batch`'s rows, and the malformed records among them as (line, fields,
        text); `batch=None` at the end of the file takes every remaining one."""
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
        return lines[:n], [(int(line), fields, text)
                           for line, (_, fields, text) in zip(lines[n:], taken)]


def _may_hold_line_breaks(column: pa_arrow.Array) -> bool:
    """False when the column's bytes hold no line break at all: a memchr-speed scan that
    spares the per-value count in nearly every batch."""
    data = column.buffers()[2]
    return data is not None and data.to_pybytes().find(b"\n") >= 0


def _reject_malformed(malformed: list[tuple[int, int, str]], header: _Header, sink: InvalidRows,
                      report: ValidationReport) -> None:
    """Records with the wrong number of fields, kept whole in the Info column."""
    if not malformed:
        return
    expected = len(header.names)
    reasons = []
    for _, fields, text in malformed:
        reason = f"columns: {fields} fields where the header has {expected}"
        spanned = text.count("\n") + 1
        if spanned > 1:
            reason += (f", over {spanned} lines (a quote that is never closed joins the lines "
                       f"up to the next quote)")
        elif fields > expected and not header.quoted:
            reason += (f" (an unquoted export with {header.delimiter!r} inside a field? "
                       f"export with quoted fields, e.g. tshark -E quote=d)")
        reasons.append(reason)
    report.rows_read += len(malformed)
    report.rows_invalid += len(malformed)
    report.fail("columns", len(malformed),
                [{"line": line, "No.": None, "field": "record", "value": _clip(text)}
                 for line, _, text in malformed[:5]], CHECKS["columns"])
    rows = {name: [""] * len(malformed) for name in RAW_COLUMNS}
    rows["Info"] = [text for _, _, text in malformed]
    sink.write(pa_arrow.table({**rows, "location": [f"line {line}" for line, _, _ in malformed],
                               "reason": reasons}))


def _typed_batch(batch: pa_arrow.RecordBatch, row_schema: pa.DataFrameSchema,
                 timezone: str) -> dict:
    """The work on a batch that needs nothing from earlier batches: decoding, typing, and the
    pandera row model's failures."""
    raw, bad_utf8_field = _decode_batch(batch)
    ts, formats = _parse_time(raw.column("Time").combine_chunks(), timezone)
    typed = pa_arrow.table({
        "frame": _integer(raw.column("No.").combine_chunks()),
        "ts": ts,
        "src": _text(raw.column("Source")),
        "dst": _text(raw.column("Destination")),
        "protocol": _text(raw.column("Protocol")),
        "length": _integer(raw.column("Length").combine_chunks()),
    })
    failures = _pandera_failures(typed.to_pandas(types_mapper=pd.ArrowDtype), row_schema)
    return {"raw": raw, "bad_utf8_field": bad_utf8_field, "time_formats": formats,
            "typed": typed, "failures": failures}


def _check_batch(batch: dict, lines, report, sink, writer, last_frame, last_ts, backwards,
                 time_formats):
    """Reject a typed batch's invalid rows and stage the others; return the new last No. and
    last timestamp kept."""
    raw, typed = batch["raw"], batch["typed"]
    n = raw.num_rows
    report.rows_read += n
    rejector = _RowRejector(n, lines, raw, report)
    bad_utf8_field = batch["bad_utf8_field"]
    rejector.reject("utf8", np.flatnonzero(bad_utf8_field != ""), fields=bad_utf8_field)
    for key, count in batch["time_formats"].items():
        time_formats[key] += count
    for check, rows in batch["failures"].items():
        rejector.reject(check, rows)

    # No. strictly increasing over the rows kept so far (gaps are normal after a filter).
    frames = typed.column("frame").to_numpy(zero_copy_only=False)
    frames = np.where(np.isnan(frames.astype("float64")), -1, frames).astype("int64")
    candidate = ~rejector.invalid
    running = np.maximum.accumulate(np.where(candidate, frames, -1))
    previous_max = np.concatenate([[last_frame], np.maximum(running[:-1], last_frame)])
    rejector.reject("No. increasing", np.flatnonzero(candidate & (frames <= previous_max)))

    keep = ~rejector.invalid
    sink.write(rejector.invalid_table())
    report.rows_invalid += int((~keep).sum())
    report.rows_valid += int(keep.sum())
    if not keep.any():
        return last_frame, last_ts

    kept = typed.filter(pa_arrow.array(keep)).append_column(
        "info", raw.column("Info").filter(pa_arrow.array(keep)))
    ts_ns = kept.column("ts").cast(pa_arrow.int64()).to_numpy()
    kept_lines = lines[keep]
    new_last_ts = count_time_backwards(ts_ns, last_ts, backwards,
                                       lambda i: {"line": int(kept_lines[i])})
    writer.write_table(kept.select(STAGED_BASE.names).cast(STAGED_BASE))
    return int(frames[keep].max()), new_last_ts

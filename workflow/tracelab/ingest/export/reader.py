"""Reader for Wireshark CSV exports (GUI "Export Packet Dissections > As CSV", or tshark -T fields).

Streams the file with pyarrow's CSV reader, types each batch with Arrow kernels, checks it with
the pandera row model (`rows.export_row_model`, lazily, so every failure of a batch is collected
at once) and the checks that need the rows before it (`_StreamState`),
and sends rejected rows verbatim to the invalid-rows file. Valid rows go to the staged file
(packets.StagedWriter: Arrow IPC, read once by normalization).

pyarrow sees the bytes through `stream.ExportBytes`, which hands it whole lines of valid UTF-8
only: a damaged end (a cut file, a truncated or corrupt gzip stream) is one rejected row at its
line, after every whole row before it, and a byte that is not UTF-8 is one rejected row, not the
end of the read (pyarrow decodes a malformed record's text for the invalid-row handler, and
stops on invalid UTF-8 there).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa_arrow
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from tracelab.core.atomic import AtomicPath
from tracelab.core.packets import STAGED_BASE, StagedWriter
from tracelab.core.progress import Progress
from tracelab.ingest.export.duplicates import (
    DUPLICATE_LOOKBACK,
    KEY_COLUMNS,
    RECENT_SCHEMA,
    duplicate_of,
)
from tracelab.ingest.export.header import RAW_COLUMNS, Header, read_header
from tracelab.ingest.export.lines import BatchLines, Lines, rows_holding
from tracelab.ingest.export.rows import (
    CHECKS,
    RowRejector,
    TypedBatch,
    clip,
    escaped_field,
    export_row_model,
    typed_batch,
)
from tracelab.ingest.export.stream import ESCAPE, BadLines, ExportBytes
from tracelab.ingest.export.times import FallBack
from tracelab.ingest.outcome import (
    TIME_RANGE_NS,
    InvalidRows,
    TimeOrder,
    ValidationOutcome,
    ValidationSettings,
)

log = logging.getLogger(__name__)

@dataclass
class _StreamState:
    """What the checks of a batch need from the rows before it, in file order."""

    timezone: str
    last_frame: int = 0
    time_formats: dict[str, int] = field(
        default_factory=lambda: {"absolute": 0, "epoch_seconds": 0})
    time_order: TimeOrder = field(default_factory=TimeOrder)
    fall_back: FallBack = field(default_factory=FallBack)
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


def _check_batch(batch: TypedBatch, lines: BatchLines, bad_utf8_lines: np.ndarray,
                 state: _StreamState, out: _Outputs) -> None:
    """Reject a typed batch's invalid rows and stage the others, in file order after all the
    rows before them (local times, No. increasing, duplicates and the time order need those)."""
    out.report.rows_read += batch.raw.num_rows
    rejector = RowRejector(lines.start, batch.raw, out.report)
    typed = _row_checks(batch, lines, bad_utf8_lines, state, rejector)
    _order_checks(typed, batch.raw, lines, state, rejector)
    keep = ~rejector.invalid
    out.invalid.write(rejector.invalid_table())
    out.report.rows_invalid += int((~keep).sum())
    out.report.rows_valid += int(keep.sum())
    if keep.any():
        _stage_kept(typed.append_column("info", batch.raw.column("Info")).filter(
            pa_arrow.array(keep)), lines.start[keep], state, out)


def _row_checks(batch: TypedBatch, lines: BatchLines, bad_utf8_lines: np.ndarray,
                state: _StreamState, rejector: RowRejector) -> pa_arrow.Table:
    """Reject the rows failing a check of their own; return the typed rows with each local time
    of a repeated hour read as the sequence says."""
    bad_rows = rows_holding(bad_utf8_lines, lines.start, lines.end)
    bad_rows = bad_rows[bad_rows >= 0]
    rejector.reject("utf8", bad_rows, fields=escaped_field(batch.raw, bad_rows))
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


def _order_checks(typed: pa_arrow.Table, raw: pa_arrow.Table, lines: BatchLines,
                  state: _StreamState, rejector: RowRejector) -> None:
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
    earlier = duplicate_of(keys, candidate, lines.start, state.recent)
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


def _reject_records(records: list[tuple[int, str, str]], check: str, out: _Outputs) -> None:
    """Records kept whole in the Info column: (line, reason, text) with the wrong number of
    fields, or cut short."""
    if not records:
        return
    out.report.rows_read += len(records)
    out.report.rows_invalid += len(records)
    out.report.fail(check, len(records),
                    [{"line": line, "No.": None, "field": "record", "value": clip(text)}
                     for line, _, text in records[:5]], CHECKS[check])
    rows = {name: [""] * len(records) for name in RAW_COLUMNS}
    rows["Info"] = [text for _, _, text in records]
    out.invalid.write(pa_arrow.table({
        **rows, "location": [f"line {line}" for line, _, _ in records],
        "reason": [reason for _, reason, _ in records]}))


def _reject_malformed(lines: BatchLines, bad_utf8_lines: np.ndarray, header: Header,
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
            not_utf8.append({"line": line, "No.": None, "field": "record", "value": clip(text)})
        records.append((line, reason, text))
    if not_utf8:
        out.report.fail("utf8", len(not_utf8), not_utf8, CHECKS["utf8"])
    _reject_records(records, "columns", out)


def _reject_cut(stream: ExportBytes, out: _Outputs) -> None:
    """The last line, which the file does not finish."""
    why = stream.damage or "a quoted field is never closed"
    text = stream.unescaped(stream.cut.decode("utf-8", errors="backslashreplace"))
    reason = (f"complete: the file ends inside this line ({why}); every whole row before it "
              f"was read")
    _reject_records([(stream.cut_line, reason, text)], "complete", out)


def stage(source: Path, *, staged_path: Path, invalid_path: Path, report: ValidationOutcome,
          timezone: str, settings: ValidationSettings) -> None:
    """Validate a Wireshark CSV export and write its valid rows to `staged_path`."""
    for name, description in CHECKS.items():
        report.declare(name, description)
    header = read_header(source, report)
    if header is None or header.alone:  # alone: no line after the header, no rows
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


class _RowReader:
    """Streams the rows after the header through the checks, in file order."""

    def __init__(self, source: Path, header: Header, state: _StreamState, out: _Outputs,
                 settings: ValidationSettings):
        self.header, self.state, self.out, self.settings = header, state, out, settings
        self.size = source.stat().st_size
        self.lines = Lines()
        self.stream = ExportBytes(source, quoted=header.quoted,
                                  cr_line_ends=header.cr_line_ends)
        self.bad_lines = BadLines(self.stream)
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
                                           escape_char=ESCAPE.decode(),
                                           invalid_row_handler=self.malformed)
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
                tracker = Progress(f"{self.out.report.trace}: validating",
                                   total_bytes=self.size)
                for batch in tracker.track(self.open(), lambda: self.stream.position):
                    batch_lines = self.lines.place(batch)
                    typing = ahead.submit(typed_batch, batch, self.row_schema,
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
        for key, note in (("gzip_damage", self.stream.damage),
                          ("gzip_trailing_bytes", self.stream.trailing)):
            if note:
                self.out.report.notes[key] = note

    def malformed(self, row) -> str:
        """pyarrow's invalid-row handler: the record is rejected, with its line, later."""
        self.lines.malformed(row.number, row.actual_columns, self.stream.unescaped(row.text))
        return "skip"

    def finish(self, typing, batch_lines: BatchLines) -> None:
        found = self.bad_lines.up_to(batch_lines.last)
        _reject_malformed(batch_lines, found, self.header, self.out)
        _check_batch(typing.result(), batch_lines, found, self.state, self.out)

    def stopped(self, error: Exception) -> None:
        last = self.lines.last
        detail = self.stream.damage or clip(str(error))
        if "straddl" in detail:
            detail = (f"the record starting at line {last + 1} does not fit in "
                      f"validation.batch_bytes ({self.settings.batch_bytes} bytes): raise it, "
                      f"or look there for a quote that is never closed")
        self.out.report.structural("readable", f"reading stopped after line {last}: {detail}",
                                   row=last + 1)

"""Checks of an export's rows that need nothing from the rows before them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_arrow
import pyarrow.compute as pc
from pandera.errors import SchemaErrors

from tracelab.core.packets import PACKETS, STAGED_BASE, null_if_empty
from tracelab.ingest.export.duplicates import DUPLICATE_LOOKBACK
from tracelab.ingest.export.header import RAW_COLUMNS
from tracelab.ingest.export.times import Times, parse_time
from tracelab.ingest.outcome import (
    TIME_RANGE_NS,
    TIME_RANGE_TEXT,
    ValidationOutcome,
    ValidationSettings,
    time_out_of_range,
)

# What pyarrow writes for a byte that is not UTF-8 (Python's backslashreplace): \xNN.
ESCAPED_BYTE = r"\\x[89a-f][0-9a-f]"


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


class RowRejector:
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
                       "field": field, "value": clip(self.raw.column(field)[int(i)].as_py())}
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


def clip(value, limit: int = 200):
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
class TypedBatch:
    """A batch after the work that needs nothing from earlier batches (done a batch ahead, on a
    second thread): its raw text, its typed columns, and the rows each row check rejects."""

    raw: pa_arrow.Table
    typed: pa_arrow.Table
    times: Times
    failures: dict[str, np.ndarray]


def typed_batch(batch: pa_arrow.RecordBatch, row_schema: pa.DataFrameSchema,
                 timezone: str) -> TypedBatch:
    raw = pa_arrow.Table.from_batches([batch])
    times = parse_time(raw.column("Time").combine_chunks(), timezone)
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
    return TypedBatch(raw, typed, times, failures)


def escaped_field(raw: pa_arrow.Table, rows: np.ndarray) -> np.ndarray:
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

"""What every reader reports: rows read, kept and rejected, each check with counts and examples.

A reader streams its source, rejects rows through `InvalidRows` and counts them in a
`ValidationOutcome`. `finish()` applies the policy (structural errors, zero valid rows, too
many invalid rows), writes `results/validation/{trace}.json` and raises `TraceInputError`
when the trace must stop. Damage after whole rows that the reader read past or stopped at
(`structural_note`) is reported, and stops nothing: the rows before it stand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from tracelab.core.atomic import AtomicPath, write_json
from tracelab.core.config import settings as config_settings
from tracelab.core.errors import TraceInputError
from tracelab.core.safe_text import spreadsheet_safe_array

EXAMPLES_PER_CHECK = 5

# Times a packet can have, as ns since the epoch: from 1970-01-02 (epoch 0 and the small numbers
# after it are a clock never set, or Wireshark's seconds since the beginning of the capture) to
# the end of 2099 (a wrong year). Fixed dates: never the day the pipeline runs.
TIME_RANGE_NS = (86_400 * 10**9, 4_102_444_800 * 10**9)
TIME_RANGE_TEXT = "1970-01-02 00:00:00 <= Time < 2100-01-01 00:00:00 UTC"
# A forward jump: the latest time so far moves on by more than JUMP_FACTOR times the trace's
# median step, and by at least JUMP_MIN_NS (an hour).
JUMP_FACTOR = 10_000
JUMP_MIN_NS = 3_600 * 10**9


def time_out_of_range(ts_ns: np.ndarray) -> np.ndarray:
    """Which timestamps (ns since the epoch) no packet can have: see TIME_RANGE_NS."""
    return (ts_ns < TIME_RANGE_NS[0]) | (ts_ns >= TIME_RANGE_NS[1])


@dataclass
class ValidationSettings:
    """config's `validation` section (defaults: tracelab/schemas/config.schema.yaml)."""

    max_invalid_fraction: float
    length_min: int
    length_max: int
    batch_bytes: int


def validation_settings(values: dict | None = None) -> ValidationSettings:
    return config_settings(ValidationSettings, "validation", values)


@dataclass
class CheckResult:
    description: str
    failures: int = 0
    examples: list[dict] = field(default_factory=list)


class ValidationOutcome:
    def __init__(self, *, trace: str, source, source_format: str, settings: ValidationSettings):
        self.trace = trace
        self.source = str(source)
        self.source_format = source_format
        self.settings = settings
        self.rows_read = 0
        self.rows_valid = 0
        self.rows_invalid = 0
        self.checks: dict[str, CheckResult] = {}
        self.structural_errors: list[dict] = []
        self.structural_notes: list[dict] = []
        self.notes: dict[str, object] = {}

    def declare(self, name: str, description: str) -> None:
        """Name a check up front, so the report lists it even when nothing fails it."""
        self.checks.setdefault(name, CheckResult(description))

    def fail(self, name: str, count: int, examples: list[dict], description: str = "") -> None:
        result = self.checks.setdefault(name, CheckResult(description or name))
        result.failures += int(count)
        room = EXAMPLES_PER_CHECK - len(result.examples)
        if room > 0:
            result.examples.extend(examples[:room])

    def structural(self, check: str, detail: str, **where) -> None:
        self.structural_errors.append({"check": check, "detail": detail, **where})

    def structural_note(self, check: str, detail: str, **where) -> None:
        """Damage after whole rows, which were kept: reported, not a reason to stop."""
        self.structural_notes.append({"check": check, "detail": detail, **where})

    def to_dict(self, status: str) -> dict:
        read = self.rows_read
        return {
            "trace": self.trace,
            "source": self.source,
            "format": self.source_format,
            "status": status,
            "rows_read": read,
            "rows_valid": self.rows_valid,
            "rows_invalid": self.rows_invalid,
            "invalid_fraction": (self.rows_invalid / read) if read else 0.0,
            "max_invalid_fraction": self.settings.max_invalid_fraction,
            "structural_errors": self.structural_errors,
            **({"structural_notes": self.structural_notes} if self.structural_notes else {}),
            "checks": {
                name: {"description": c.description, "failures": c.failures,
                       "examples": c.examples}
                for name, c in self.checks.items()
            },
            **self.notes,
        }

    def finish(self, report_path) -> dict:
        """Decide the trace's fate, write the report, raise if the trace must stop."""
        failed_checks = {n: c.failures for n, c in self.checks.items() if c.failures}
        fraction = (self.rows_invalid / self.rows_read) if self.rows_read else 0.0
        problem = None
        if self.structural_errors:
            first = self.structural_errors[0]
            where = {k: v for k, v in first.items() if k in ("row", "field")}
            problem = (first["check"], first["detail"], where)
        elif self.rows_valid == 0:
            where, first = self._first_failure(failed_checks)
            problem = ("zero valid rows",
                       f"{self.rows_read} rows read, none valid; failed checks: "
                       f"{_counts(failed_checks)}{first}" if self.rows_read
                       else "no rows after the header", where)
        elif fraction > self.settings.max_invalid_fraction:
            where, first = self._first_failure(failed_checks)
            detail = (f"{self.rows_invalid} of {self.rows_read} rows invalid "
                      f"({fraction:.2%} > {self.settings.max_invalid_fraction:.2%}); "
                      f"failed checks: {_counts(failed_checks)}{first}")
            problem = ("max_invalid_fraction", detail, where)
        status = "failed" if problem else ("passed_with_invalid_rows" if self.rows_invalid
                                           else "passed")
        data = self.to_dict(status)
        write_json(report_path, data)
        if problem:
            check, detail, where = problem
            detail = detail.replace("\r", "\\r").replace("\n", "\\n")  # one line, always
            raise TraceInputError(self.source, check, detail, report=str(report_path), **where)
        return data

    def _first_failure(self, failed: dict[str, int]) -> tuple[dict, str]:
        """Where the most frequent failure first happened, and its value, for the message."""
        if not failed:
            return {}, ""
        check = max(failed, key=failed.get)
        examples = self.checks[check].examples
        if not examples or not isinstance(examples[0].get("line"), int):
            return {}, ""
        example = examples[0]
        where = {"row": example["line"]}
        if example.get("field"):
            where["field"] = str(example["field"])
        return where, f"; first {check!r} failure: {example.get('value')!r}"


def _counts(failed: dict[str, int]) -> str:
    return ", ".join(f"{name}={count}" for name, count in failed.items())


class InvalidRows:
    """Streams rejected rows to `{trace}.invalid.csv` with where and why.

    Columns: `location` (line number of an export, record index and byte offset of a capture),
    `reason` (the failed checks, `;`-separated), then the row's own fields as strings, as read
    except that a field a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab, CR
    first) gets a leading `'`; `location` points at the untouched original.
    """

    def __init__(self, path, raw_columns: list[str]):
        self.columns = ["location", "reason", *raw_columns]
        self.schema = pa.schema([(name, pa.string()) for name in self.columns])
        self._output = AtomicPath(path)
        self._writer = pacsv.CSVWriter(self._output.tmp, self.schema,
                                       write_options=pacsv.WriteOptions(quoting_style="all_valid"))
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            table = table.select(self.columns).cast(self.schema)
            fields = [column if name in ("location", "reason") else spreadsheet_safe_array(column)
                      for name, column in zip(self.columns, table.columns)]
            self._writer.write_table(pa.Table.from_arrays(fields, schema=self.schema))
            self.rows += table.num_rows

    def close(self, ok: bool = True) -> None:
        self._writer.close()
        if ok:
            self._output.commit()
        else:
            self._output.discard()


def count_time_backwards(ts_ns: np.ndarray, last_ts: int | None, backwards: dict,
                         where) -> int:
    """Count timestamps earlier than one before them, in `backwards` (kept in file order, not
    re-sorted, as Wireshark shows them), with a few examples located by `where(i)`; return the
    latest timestamp so far, carried to the next batch as `last_ts`."""
    running = np.maximum.accumulate(ts_ns)
    previous = np.concatenate([[ts_ns[0] if last_ts is None else last_ts], running[:-1]])
    if last_ts is not None:
        previous = np.maximum(previous, last_ts)
    went_back = np.flatnonzero(ts_ns < previous)
    if went_back.size:
        backwards["count"] += int(went_back.size)
        room = max(EXAMPLES_PER_CHECK - len(backwards["examples"]), 0)
        backwards["examples"].extend(
            {**where(int(i)), "by_s": float((previous[i] - ts_ns[i]) / 1e9)}
            for i in went_back[:room])
    top = int(running[-1])
    return top if last_ts is None else max(top, last_ts)


class EpochClock:
    """Kept rows stamped before 1970-01-02 (TIME_RANGE_NS[0]): a clock that starts at the epoch
    (relative-time captures, anonymised traces, simulators such as ns-3, which start at 0 s).
    A fact to report, not bad data; where the clock later jumps to real time, TimeOrder counts
    the jump."""

    def __init__(self):
        self.count = 0
        self.first: dict | None = None

    def update(self, ts_ns: np.ndarray, where) -> None:
        """Add the timestamps of one batch of kept rows; `where(i)` locates row i."""
        early = np.flatnonzero(ts_ns < TIME_RANGE_NS[0])
        if early.size:
            self.count += int(early.size)
            self.first = self.first or where(int(early[0]))

    def notes(self) -> dict:
        """The report's `clock_at_epoch`, when some row has such a time."""
        if not self.count:
            return {}
        return {"clock_at_epoch": {
            "detail": "clock starts at the epoch (1970-01-01): times relative to the start of "
                      "the capture, or a clock never set",
            "rows": self.count, "first": self.first}}


class TimeOrder:
    """Timestamps of the kept rows in file order: how often they go backwards, and the forward
    jumps far beyond the trace's usual steps (a row with a wrong year, a capture paused for days).

    A step is how far a row moves the latest timestamp so far on (0 when it does not). The steps
    are counted in a histogram of powers of two (bounded whatever the trace's length); the steps
    of at least JUMP_MIN_NS are kept exactly, since the jump threshold depends on the median step
    and is known only at the end.
    """

    def __init__(self):
        self.last_ts: int | None = None
        self.backwards = {"count": 0, "examples": []}
        self._step_bins = np.zeros(65, dtype=np.int64)
        self._long_steps: list[np.ndarray] = []
        self._long_where: list[dict] = []

    def update(self, ts_ns: np.ndarray, where) -> None:
        """Add the timestamps of one batch of kept rows; `where(i)` locates row i."""
        before = self.last_ts
        self.last_ts = count_time_backwards(ts_ns, before, self.backwards, where)
        running = np.maximum.accumulate(ts_ns)
        if before is not None:
            running = np.maximum(running, before)
        previous = np.concatenate([[running[0] if before is None else before], running[:-1]])
        steps = running - previous
        self._step_bins += np.bincount(np.frexp(steps.astype(np.float64) + 1.0)[1],
                                       minlength=65)[:65]
        long = np.flatnonzero(steps >= JUMP_MIN_NS)
        if long.size:
            self._long_steps.append(steps[long])
            self._long_where.extend(where(int(i)) for i in long)

    def notes(self) -> dict:
        """The report's `time_backwards` and `time_jumps`."""
        steps = int(self._step_bins.sum())
        median_bin = int(np.searchsorted(np.cumsum(self._step_bins), (steps + 1) // 2)) \
            if steps else 0
        usual_ns = (1 << median_bin) - 1  # the upper end of the median step's bin
        threshold = max(JUMP_FACTOR * usual_ns, JUMP_MIN_NS)
        long = np.concatenate(self._long_steps) if self._long_steps else np.zeros(0, np.int64)
        jumps = np.flatnonzero(long > threshold)
        largest = jumps[np.argsort(-long[jumps], kind="stable")][:EXAMPLES_PER_CHECK]
        return {
            "time_backwards": self.backwards,
            "time_jumps": {
                "count": int(jumps.size),
                "median_step_s_at_most": usual_ns / 1e9,
                "threshold_s": threshold / 1e9,
                "examples": [{**self._long_where[i], "by_s": int(long[i]) / 1e9}
                             for i in largest],
            },
        }

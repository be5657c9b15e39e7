"""Stage 1, validation: stream a trace through its format's reader and apply the policy.

A reader module exposes
    stage(source, *, staged_path, invalid_path, report, timezone, settings) -> None
It streams `source`, writes the valid rows to `staged_path` (packets.StagedWriter: STAGED_BASE
columns, plus any packets.INFO_FIELDS it reads straight from headers), writes every rejected
row to `invalid_path` through validation.InvalidRows, and counts everything in `report`
(rows_read = rows_valid + rows_invalid). A structural problem is recorded with
report.structural(...) and the reader returns; the policy here turns it into the error.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

from tracelab.core.atomic import atomic_path
from tracelab.core.errors import TraceInputError
from tracelab.ingest.formats import FORMATS
from tracelab.ingest.outcome import InvalidRows, ValidationOutcome, validation_settings

# format -> its reader module (also the Snakefile's: a job's code version is its reader's).
READERS = {fmt.name: fmt.reader for fmt in FORMATS}


def validate_trace(*, trace: str, source, source_format: str, staged_path, report_path,
                   invalid_path, timezone: str = "UTC", settings: dict | None = None,
                   log_report_path=None, log_invalid_path=None) -> dict:
    """Validate one trace; return the report, or raise TraceInputError when it must stop.

    Snakemake deletes the outputs of a failed job but keeps its log files, so the report and
    the rejected rows also go to `log_report_path` and `log_invalid_path` (when given): copied
    when the trace passes, moved there when it fails, and the error names that report.
    """
    settings = validation_settings(settings)
    report = ValidationOutcome(trace=trace, source=source, source_format=source_format,
                              settings=settings)
    reader = importlib.import_module(READERS[source_format])
    reader.stage(Path(source), staged_path=Path(staged_path), invalid_path=Path(invalid_path),
                 report=report, timezone=timezone, settings=settings)
    if not Path(invalid_path).exists():
        InvalidRows(invalid_path, []).close()
    try:
        data = report.finish(report_path)
    except TraceInputError as error:
        Path(staged_path).unlink(missing_ok=True)  # a failed trace stages nothing
        if log_report_path is None:
            raise
        for path, kept in ((report_path, log_report_path), (invalid_path, log_invalid_path)):
            with atomic_path(kept) as tmp:
                shutil.move(path, tmp)
        raise TraceInputError(error.path, error.check, error.detail, row=error.row,
                              field=error.field, report=str(log_report_path)) from None
    if log_report_path is not None:
        for path, kept in ((report_path, log_report_path), (invalid_path, log_invalid_path)):
            with atomic_path(kept) as tmp:
                shutil.copyfile(path, tmp)
    return data

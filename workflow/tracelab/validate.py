"""Stage 1, validation: stream a trace through its format's reader and apply the policy.

A reader module exposes
    stage(source, *, staged_path, invalid_path, report, timezone, settings) -> None
It streams `source`, writes the valid rows to `staged_path` (Parquet: packets.STAGED_BASE
columns, plus any packets.INFO_FIELDS it reads straight from headers), writes every rejected
row to `invalid_path` through validation.InvalidRows, and counts everything in `report`
(rows_read = rows_valid + rows_invalid). A structural problem is recorded with
report.structural(...) and the reader returns; the policy here turns it into the error.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from .validation import InvalidRows, ValidationReport, ValidationSettings

READERS = {
    "wireshark_csv": "tracelab.wireshark_csv",
    "pcap": "tracelab.capture",
    "pcapng": "tracelab.capture",
}


def validate_trace(*, trace: str, source, source_format: str, staged_path, report_path,
                   invalid_path, timezone: str = "UTC", settings: dict | None = None) -> dict:
    """Validate one trace; return the report, or raise TraceInputError when it must stop."""
    settings = ValidationSettings(**(settings or {}))
    report = ValidationReport(trace=trace, source=source, source_format=source_format,
                              settings=settings)
    reader = importlib.import_module(READERS[source_format])
    reader.stage(Path(source), staged_path=Path(staged_path), invalid_path=Path(invalid_path),
                 report=report, timezone=timezone, settings=settings)
    if not Path(invalid_path).exists():
        InvalidRows(invalid_path, []).close()
    return report.finish(report_path)

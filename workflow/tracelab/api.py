"""One file in one call, without Snakemake: the pipeline's first stages run in a temporary
directory, exactly as the workflow's jobs run them.

    >>> import tracelab
    >>> packets = tracelab.read("data/log4j_scan.pcapng")      # pyarrow.Table, PACKET_SCHEMA
    >>> summary = tracelab.inspect("data/log4j_scan.csv.gz")   # validation + trace summary
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tracelab.core.errors import TraceInputError
from tracelab.features.summary import trace_features
from tracelab.ingest.formats import (
    TEXT_FORMAT,
    content_format,
    format_by_suffix,
    trace_name_for,
)
from tracelab.ingest.normalize import normalize_trace
from tracelab.ingest.sheet import is_time_zone
from tracelab.ingest.validate import validate_trace


@dataclass(frozen=True)
class Workspace:
    """The files of one trace's run, in a temporary directory."""
    staged: Path
    report: Path
    invalid: Path
    packets: Path
    summary: Path
    distributions: Path

    @classmethod
    def inside(cls, directory) -> Workspace:
        return cls(*(Path(directory) / name for name in (
            "staged.arrow", "validation.json", "invalid.csv", "packets.parquet", "summary.json",
            "distributions.parquet")))


def source_format_of(path: Path) -> str:
    """The format the file's content shows, else its name's; else the text format (CSV
    exports), whose reader then says what is wrong with the file (empty, UTF-16, not text, a
    folder...)."""
    found = content_format(path) if path.is_file() else None
    return found or format_by_suffix(path) or TEXT_FORMAT.name


def _normalized(path, timezone: str, source_format: str | None, work: Workspace,
                settings: dict | None = None) -> dict:
    """Validate and normalize `path` into `work` (config's `validation` section: `settings`
    over its defaults); return the validation report."""
    path = Path(path)
    if not path.exists():  # checked here: the capture reader expects an existing file
        raise TraceInputError(path, "readable", "no such file")
    if not is_time_zone(timezone):
        raise TraceInputError(path, "timezone", f"unknown IANA time zone {timezone!r}")
    source_format = source_format or source_format_of(path)
    trace = trace_name_for(path)
    try:
        report = validate_trace(trace=trace, source=str(path), source_format=source_format,
                                staged_path=work.staged, report_path=work.report,
                                invalid_path=work.invalid, timezone=timezone,
                                settings=settings)
    except TraceInputError as error:
        # The report named by the error is in the temporary directory, gone on return.
        raise TraceInputError(error.path, error.check, error.detail, row=error.row,
                              field=error.field) from None
    normalize_trace(trace=trace, staged_path=work.staged, source=str(path),
                    source_format=source_format, packets_path=work.packets)
    return report


def read(path, timezone: str = "UTC", source_format: str | None = None) -> pa.Table:
    """The packet table of one trace file (any supported CSV export or capture, gzip or not),
    with the normalized schema (tracelab.core.packets.PACKET_SCHEMA).

    The format is read from the file's first bytes unless `source_format` names it; `timezone`
    is the IANA zone of a CSV export's local clock. Raises TraceInputError, naming the file, row
    and check, when the trace fails validation; rows set aside as invalid are left out with a
    warning (tracelab.inspect gives the whole validation report).
    """
    with tempfile.TemporaryDirectory(prefix="tracelab-") as tmp:
        work = Workspace.inside(tmp)
        report = _normalized(path, timezone, source_format, work)
        if report["rows_invalid"]:
            warnings.warn(f"{path}: {report['rows_invalid']} of {report['rows_read']} rows "
                          f"failed validation and are left out ({report['status']})",
                          stacklevel=2)
        return pq.read_table(work.packets)


def inspect(path, timezone: str = "UTC", source_format: str | None = None,
            max_invalid_fraction: float | None = None) -> dict:
    """What the pipeline learns of one trace file: its validation report under `validation`
    and the per-trace summary of results/features/{trace}/summary.json under `summary`;
    `max_invalid_fraction` replaces config's validation.max_invalid_fraction default."""
    with tempfile.TemporaryDirectory(prefix="tracelab-") as tmp:
        work = Workspace.inside(tmp)
        settings = None if max_invalid_fraction is None else {
            "max_invalid_fraction": max_invalid_fraction}
        report = _normalized(path, timezone, source_format, work, settings)
        summary = trace_features(trace=report["trace"], packets_path=work.packets,
                                 summary_path=work.summary,
                                 distributions_path=work.distributions)
    return {"validation": report, "summary": summary}

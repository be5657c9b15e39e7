"""One file in one call, without Snakemake: the pipeline's stages run in a temporary
directory, exactly as the workflow's jobs run them, streaming through files as they do.

    >>> import tracelab
    >>> packets = tracelab.read("data/log4j_scan.pcapng")      # pyarrow.Table, PACKET_SCHEMA
    >>> summary = tracelab.inspect("data/log4j_scan.csv.gz")   # validation + trace summary
    >>> flows = tracelab.flows("data/log4j_scan.pcapng")       # pandas DataFrame, as flows.parquet

Progress shows on stderr while they run (tracelab.core.progress.on_console).
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tracelab.core.config import check_config, defaults, lookup
from tracelab.core.errors import TraceInputError
from tracelab.core.progress import on_console
from tracelab.core.tables import PANDAS_TYPES
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
from tracelab.security.connections import write_connections
from tracelab.security.hosts import write_hosts
from tracelab.security.windows import write_windows


@dataclass(frozen=True)
class Workspace:
    """The files of one trace's run, in a temporary directory."""
    staged: Path
    report: Path
    invalid: Path
    packets: Path
    summary: Path
    distributions: Path
    flows: Path
    http: Path
    conn_log: Path
    hosts: Path
    windows: Path

    @classmethod
    def inside(cls, directory) -> Workspace:
        return cls(*(Path(directory) / name for name in (
            "staged.arrow", "validation.json", "invalid.csv", "packets.parquet", "summary.json",
            "distributions.parquet", "flows.parquet", "http.parquet", "conn.log",
            "hosts.parquet", "windows.parquet")))


def source_format_of(path: Path) -> str:
    """The format the file's content shows, else its name's; else the text format (CSV
    exports), whose reader then says what is wrong with the file (empty, UTF-16, not text, a
    folder...)."""
    found = content_format(path) if path.is_file() else None
    return found or format_by_suffix(path) or TEXT_FORMAT.name


def _normalized(path, timezone: str, source_format: str | None, work: Workspace,
                settings: dict | None = None, trace: str | None = None) -> dict:
    """Validate and normalize `path` into `work` (config's `validation` section: `settings`
    over its defaults) as trace `trace` (default: from the file name); return the validation
    report."""
    path = Path(path)
    if not path.exists():  # checked here: the capture reader expects an existing file
        raise TraceInputError(path, "readable", "no such file")
    if not is_time_zone(timezone):
        raise TraceInputError(path, "timezone", f"unknown IANA time zone {timezone!r}")
    source_format = source_format or source_format_of(path)
    trace = trace or trace_name_for(path)
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


def _warn_left_out(path, report: dict) -> None:
    if report["rows_invalid"]:
        warnings.warn(f"{path}: {report['rows_invalid']} of {report['rows_read']} rows "
                      f"failed validation and are left out ({report['status']})", stacklevel=3)


def read(path, timezone: str = "UTC", source_format: str | None = None) -> pa.Table:
    """The packet table of one trace file (any supported CSV export or capture, gzip or not),
    with the normalized schema (tracelab.core.packets.PACKET_SCHEMA).

    The format is read from the file's first bytes unless `source_format` names it; `timezone`
    is the IANA zone of a CSV export's local clock. Raises TraceInputError, naming the file, row
    and check, when the trace fails validation; rows set aside as invalid are left out with a
    warning (tracelab.inspect gives the whole validation report).
    """
    with on_console(), tempfile.TemporaryDirectory(prefix="tracelab-") as tmp:
        work = Workspace.inside(tmp)
        report = _normalized(path, timezone, source_format, work)
        _warn_left_out(path, report)
        return pq.read_table(work.packets)


def file_facts(path) -> dict:
    """What capinfos says of the file itself: its size and SHA-256."""
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256")
    return {"size_bytes": Path(path).stat().st_size, "sha256": digest.hexdigest()}


def inspect(path, timezone: str = "UTC", source_format: str | None = None,
            max_invalid_fraction: float | None = None) -> dict:
    """What the pipeline learns of one trace file: its validation report under `validation`,
    the per-trace summary of results/features/{trace}/summary.json under `summary` and the
    file's size and SHA-256 under `file`; `max_invalid_fraction` replaces config's
    validation.max_invalid_fraction default."""
    settings = None if max_invalid_fraction is None else {
        "max_invalid_fraction": max_invalid_fraction}
    with on_console(), tempfile.TemporaryDirectory(prefix="tracelab-") as tmp, \
            ThreadPoolExecutor(max_workers=1) as pool:
        work = Workspace.inside(tmp)
        # Hashed while the file is validated (hashlib releases the GIL), the second read
        # mostly from the page cache; a pipe (`<(zcat ...)`) can be read only once.
        facts = pool.submit(file_facts, path) if Path(path).is_file() else None
        report = _normalized(path, timezone, source_format, work, settings)
        summary = trace_features(trace=report["trace"], packets_path=work.packets,
                                 summary_path=work.summary,
                                 distributions_path=work.distributions)
        return {"validation": report, "summary": summary,
                "file": None if facts is None else facts.result()}


# --- Security stages ------------------------------------------------------------------------

# The config sections each call takes its keyword settings from.
SECTIONS = {
    "flows": ("validation", "security.flows"),
    "hosts": ("validation", "security.flows", "security.scan"),
    "windows": ("validation", "security.flows", "security.windows"),
}


def call_config(call: str, given: dict) -> dict[str, dict]:
    """The config sections of `call` with the keyword settings `given` over the defaults, each
    key in the section that declares it, checked as the workflow checks its config."""
    owner = {key: section for section in SECTIONS[call] for key in defaults(section)}
    unknown = sorted(set(given) - set(owner))
    if unknown:
        raise TypeError(f"tracelab.{call}() got unknown setting(s) {', '.join(unknown)}; "
                        f"its settings: {', '.join(sorted(owner))}")
    config: dict = {"traces": "-"}  # the schema requires the sheet, which is not used here
    for key, value in given.items():
        node = config
        for part in owner[key].split("."):
            node = node.setdefault(part, {})
        node[key] = value
    checked = check_config(config, source=f"tracelab.{call}()")
    return {section: lookup(checked, section) for section in SECTIONS[call]}


def frame(path) -> pd.DataFrame:
    """A table the stages wrote, in pandas as tracelab's tables read (nullable integers)."""
    return pq.read_table(path).to_pandas(types_mapper=PANDAS_TYPES.get)


@contextlib.contextmanager
def _connections(call: str, path, trace, timezone, source_format,
                 settings: dict) -> Iterator[tuple[str, Workspace, dict]]:
    """The trace validated, normalized and made into connections in a temporary directory:
    (trace, its files, the config sections of `call`)."""
    sections = call_config(call, settings)
    with on_console(), tempfile.TemporaryDirectory(prefix="tracelab-") as tmp:
        work = Workspace.inside(tmp)
        report = _normalized(path, timezone, source_format, work, sections["validation"],
                             trace)
        _warn_left_out(path, report)
        trace = report["trace"]
        write_connections(trace=trace, packets_path=work.packets, flows_path=work.flows,
                          http_path=work.http, conn_log_path=work.conn_log,
                          settings=sections["security.flows"])
        yield trace, work, sections


def flows(path, *, trace: str | None = None, timezone: str = "UTC",
          source_format: str | None = None, **settings) -> pd.DataFrame:
    """The connections of one trace file, as the workflow's flows.parquet holds them (one row
    a connection, the columns of docs/tables.md), in a pandas DataFrame as nfstream's
    `to_pandas()` gives one; integer columns are pandas' nullable Int64.

    Made by the workflow's own stages, streaming through files in a temporary directory.
    `trace` names the trace (default: from the file name); connection uids hash it, so the
    workflow's uids need its sheet name. `settings` are keys of config's `validation` and
    `security.flows` sections (tcp_idle_timeout_s=120, ...) over their defaults. Raises
    TraceInputError for a trace that fails validation, ConfigError for a bad setting.
    """
    with _connections("flows", path, trace, timezone, source_format, settings) as (_, work, _s):
        return frame(work.flows)


def hosts(path, *, trace: str | None = None, timezone: str = "UTC",
          source_format: str | None = None, **settings) -> pd.DataFrame:
    """Scan verdicts per source of one trace file, as the workflow's hosts.parquet (pandas);
    `settings` also take config's `security.scan` keys (address_scan_hosts=10,
    trw={"theta0": 0.7}, ...). Otherwise as tracelab.flows."""
    with _connections("hosts", path, trace, timezone, source_format, settings) as found:
        trace, work, sections = found
        write_hosts(trace=trace, flows_path=work.flows, hosts_path=work.hosts,
                    settings=sections["security.scan"])
        return frame(work.hosts)


def windows(path, *, trace: str | None = None, timezone: str = "UTC",
            source_format: str | None = None, **settings) -> pd.DataFrame:
    """The window feature matrix of one trace file, as the workflow's windows.parquet (pandas);
    `settings` also take config's `security.windows` keys (window_s=5, ...). Otherwise as
    tracelab.flows."""
    with _connections("windows", path, trace, timezone, source_format, settings) as found:
        trace, work, sections = found
        write_windows(trace=trace, packets_path=work.packets, flows_path=work.flows,
                      http_path=work.http, windows_path=work.windows,
                      settings=sections["security.windows"])
        return frame(work.windows)

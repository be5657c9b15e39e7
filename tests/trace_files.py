"""Trace files written byte by byte for the validation stage, and the stage run on them as its
rule runs it: Wireshark CSV exports (rows, quoting, damage) and pcap frames built with dpkt."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import dpkt
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from tracelab.core.errors import TraceInputError
from tracelab.core.packets import read_staged
from tracelab.ingest.validate import validate_trace

# --- Wireshark CSV exports -------------------------------------------------------------------

COLUMNS = ["No.", "Time", "Source", "Destination", "Protocol", "Length", "Info"]
SYN = "51292  >  9200 [SYN] Seq=0 Win=64240 Len=0 MSS=1460"
GOOD_ROWS = 300  # one bad row among them is 0.33%, under the default 1%


def packet(n: int, *, time: str | None = None, src: str = "198.18.0.2",
           dst: str = "198.18.1.10", protocol: str = "TCP", length: str = "74",
           info: str = SYN) -> list[str]:
    time = f"2026-11-28 07:56:30.{n:06d}" if time is None else time
    return [str(n), time, src, dst, protocol, length, info]


def packets(count: int = GOOD_ROWS, start: int = 1) -> list[list[str]]:
    return [packet(n) for n in range(start, start + count)]


def export(rows, *, header=COLUMNS, delimiter: str = ",", quoted: bool = True,
           newline: str = "\n", bom: bool = False) -> bytes:
    """An export as Wireshark writes it: every field quoted, `"` doubled inside a field."""
    def field(value: str) -> str:
        return '"' + value.replace('"', '""') + '"' if quoted else value
    lines = [delimiter.join(field(value) for value in row) for row in [header, *rows]]
    return (("\ufeff" if bom else "") + newline.join(lines) + newline).encode("utf-8")


def replaced(rows, at: int, **fields) -> list[list[str]]:
    """`rows` with row `at` (0-based) rebuilt with other fields (same No.)."""
    rows = [list(r) for r in rows]
    rows[at] = packet(int(rows[at][0]), **fields)
    return rows


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


@dataclass
class Run:
    source: Path
    paths: dict[str, Path]
    report: dict | None
    error: TraceInputError | None


def validate(tmp_path: Path, data: bytes | None, *, name: str = "trace.csv",
             source_format: str = "wireshark_csv", timezone: str = "UTC", **settings) -> Run:
    """Validate `data` (None: leave the source missing) with the paths the rule gives."""
    source = tmp_path / name
    if data is not None:
        source.write_bytes(data)
    paths = {"staged_path": tmp_path / "results/staged/t.arrow",
             "report_path": tmp_path / "results/validation/t.json",
             "invalid_path": tmp_path / "results/validation/t.invalid.csv",
             "log_report_path": tmp_path / "results/logs/validate/t.report.json",
             "log_invalid_path": tmp_path / "results/logs/validate/t.invalid.csv"}
    try:
        report = validate_trace(trace="t", source=source, source_format=source_format,
                                timezone=timezone, settings=settings or None, **paths)
        return Run(source, paths, report, None)
    except TraceInputError as error:
        return Run(source, paths, None, error)


def read_invalid(path: Path) -> pa.Table:
    """The invalid-rows file as strings, quoted line breaks and all."""
    return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True),
                          convert_options=pacsv.ConvertOptions(
                              column_types={c: pa.string() for c in ["location", "reason",
                                                                     *COLUMNS]}))


def as_written(value: str) -> str:
    """A field as the invalid-rows file holds it: formula-like cells get a leading `'`."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def failures(report: dict) -> dict[str, int]:
    return {name: check["failures"] for name, check in report["checks"].items()
            if check["failures"]}


def assert_clean(run: Run, expected_failures: dict[str, int]) -> pa.Table:
    """A clean result: rows read = rows staged + rows rejected, each rejected row located."""
    assert run.error is None, str(run.error)
    report, paths = run.report, run.paths
    staged_rows = read_staged(paths["staged_path"]).num_rows
    invalid = read_invalid(paths["invalid_path"])
    assert report["rows_read"] == staged_rows + invalid.num_rows
    assert (report["rows_valid"], report["rows_invalid"]) == (staged_rows, invalid.num_rows)
    assert failures(report) == expected_failures
    for location, reason in zip(invalid.column("location").to_pylist(),
                                invalid.column("reason").to_pylist()):
        assert re.fullmatch(r"line \d+", location), location
        assert any(reason.startswith(check) or f"; {check}" in reason
                   for check in expected_failures), reason
    # The log copies Snakemake keeps whatever happens are the same files.
    assert paths["log_report_path"].read_bytes() == paths["report_path"].read_bytes()
    assert paths["log_invalid_path"].read_bytes() == paths["invalid_path"].read_bytes()
    return invalid


def assert_one_clear_error(run: Run, check: str, *, row: int | None = None,
                           field: str | None = None) -> str:
    """One line naming file, row and/or field, and check; the report and rows are kept."""
    assert run.error is not None, f"expected check {check!r} to fail: {run.report}"
    message = str(run.error)
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(f"{run.source}"), message
    assert f"check '{check}' failed" in message, message
    if row is not None:
        assert f", line {row}" in message, message
    if field is not None:
        assert f"field '{field}'" in message, message
    paths = run.paths
    assert f"full report: {paths['log_report_path']}" in message
    kept = json.loads(paths["log_report_path"].read_text())
    assert kept["status"] == "failed"
    assert kept["rows_read"] == kept["rows_valid"] + kept["rows_invalid"]
    assert read_invalid(paths["log_invalid_path"]).num_rows == kept["rows_invalid"] \
        if kept["rows_invalid"] else paths["log_invalid_path"].exists()
    # The outputs Snakemake would delete anyway are not left half-made.
    assert not paths["report_path"].exists() and not paths["invalid_path"].exists()
    assert not paths["staged_path"].exists()
    return message


# Every field quoted, as the GUI writes it.
HEADER = ",".join(f'"{column}"' for column in COLUMNS) + "\n"


def write_export(path: Path, rows: list[tuple], header: str = HEADER, gz: bool = False) -> Path:
    """A Wireshark-style CSV export of `rows` (any values) under a header line."""
    lines = [header] + [",".join(f'"{field}"' for field in row) + "\n" for row in rows]
    data = "".join(lines).encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


# --- Captures -------------------------------------------------------------------------------

NS = 10**9
T0 = 1_795_852_800  # 2026-11-28T08:00:00Z


def stage(path, tmp_path, name="trace", source_format=None, **settings):
    """Validate `path` as the pipeline does: (staged table or None, report dict, error or None)."""
    source_format = source_format or ("pcapng" if ".pcapng" in str(path) else "pcap")
    out = tmp_path / f"out_{name}"
    out.mkdir(exist_ok=True)
    error = None
    try:
        validate_trace(trace=name, source=path, source_format=source_format,
                       staged_path=out / "staged.arrow", report_path=out / "report.json",
                       invalid_path=out / "invalid.csv", settings=settings)
    except TraceInputError as raised:
        error = raised
    report = json.loads((out / "report.json").read_text())
    staged = out / "staged.arrow"
    if not staged.exists():
        return None, report, error
    table = read_staged(staged)
    # Dictionary columns as plain strings, so tables from different batchings compare equal.
    plain = pa.schema([pa.field(f.name, pa.string()) if pa.types.is_dictionary(f.type) else f
                       for f in table.schema])
    return table.cast(plain).to_pandas(), report, error


def invalid_rows(tmp_path, name="trace") -> pd.DataFrame:
    return pd.read_csv(tmp_path / f"out_{name}" / "invalid.csv", dtype=str)


def ether(payload, kind=0x0800, dst=b"\4" * 6, src=b"\2" * 6):
    return dpkt.ethernet.Ethernet(src=src, dst=dst, type=kind, data=payload)


def ipv4(payload, proto, src="198.18.0.1", dst="198.18.0.2", **fields):
    return dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=proto, ttl=64,
                      data=payload, **fields)


def tcp(sport, dport, flags, seq=1000, ack=0, data=b"", opts=b"", win=1000):
    segment = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, win=win,
                           opts=opts, data=data)
    segment.off = 5 + len(opts) // 4
    return segment


def udp(sport, dport, data):
    return dpkt.udp.UDP(sport=sport, dport=dport, ulen=8 + len(data), data=data)


S, A, P, F, R = (dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH, dpkt.tcp.TH_FIN,
                 dpkt.tcp.TH_RST)


def wireshark_count(path) -> int | None:
    """The packets Wireshark reads from a capture, damaged or not (tshark reads up to the
    damage and exits non-zero); None without tshark."""
    if not shutil.which("tshark"):
        return None
    run = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "frame.number"],
                         capture_output=True, text=True, check=False)
    return len(run.stdout.split())

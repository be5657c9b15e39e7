"""The trace sheet: which traces exist, where, in what format, with what label and clock.

Checked row by row before any job runs, so a bad row stops the run with one line naming the
row and the problem.
"""

from __future__ import annotations

import codecs
import gzip
import os
import re
import struct
import zlib
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jsonschema
import pandas as pd
import yaml

from tracelab.ingest.capture.reader import GZIP_MAGIC, PCAP_MAGIC, PCAPNG_SHB

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "traces.schema.yaml"
COLUMNS = ["trace", "path", "format", "label", "timezone", "description"]
REQUIRED = ["trace", "path"]
FORMAT_BY_SUFFIX = {
    ".csv": "wireshark_csv",
    ".pcap": "pcap",
    ".cap": "pcap",
    ".pcapng": "pcapng",
}
# How each format is named when the content shows one format and the sheet says another.
CONTENT_NAMES = {"wireshark_csv": "UTF-8 text (a CSV export)", "pcap": "a pcap capture",
                 "pcapng": "a pcapng capture"}
HEAD_BYTES = 4096


class TraceSheetError(ValueError):
    pass


def infer_format(path: str) -> str | None:
    """Format from the file name, looking through a trailing .gz."""
    name = Path(path).name.lower()
    name = name.removesuffix(".gz")
    return FORMAT_BY_SUFFIX.get(Path(name).suffix)


def trace_name_for(path) -> str:
    """A trace name from a file name: without .gz and the format's suffix, and with anything a
    name may not hold (see the sheet schema's pattern) replaced by `_`."""
    name = Path(path).name
    name = name[:-3] if name.lower().endswith(".gz") else name
    stem, suffix = os.path.splitext(name)
    name = stem if suffix.lower() in FORMAT_BY_SUFFIX else name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-") or "trace"


def is_time_zone(name: str) -> bool:
    """Whether `name` is an IANA time zone (Europe/Berlin, UTC)."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _head(path: Path) -> bytes:
    """The file's first HEAD_BYTES, gunzipped if it starts with the gzip magic (b"" if that
    much cannot be read: the reader then says what is wrong)."""
    with open(path, "rb") as handle:
        compressed = handle.read(2) == GZIP_MAGIC
        handle.seek(0)
        stream = gzip.GzipFile(fileobj=handle) if compressed else handle
        try:
            return stream.read(HEAD_BYTES)
        except (OSError, EOFError, zlib.error):
            return b""


def _is_utf8_text(head: bytes) -> bool:
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return b"\x00" not in head


def content_format(path) -> str | None:
    """The format the file's first bytes show, through gzip: pcap or pcapng by their magic
    number, wireshark_csv for UTF-8 text; None when they show none of these (empty, damaged,
    UTF-16 or other binary data), which the format's reader reports in detail."""
    head = _head(Path(path))
    if len(head) >= 4 and struct.unpack_from("<I", head)[0] == PCAPNG_SHB:
        return "pcapng"
    if head[:4] in PCAP_MAGIC:
        return "pcap"
    if head and _is_utf8_text(head):
        return "wireshark_csv"
    return None


def read_sheet(sheet_path) -> pd.DataFrame:
    """The sheet's rows as text (every column present, fields stripped), with their line
    numbers in `line` and the file's columns in `.attrs["header"]`; raises TraceSheetError on a
    file that is not a tab-separated table."""
    where = f"trace sheet {sheet_path}"
    try:
        text = Path(sheet_path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise TraceSheetError(f"{where}: file not found") from None
    except UnicodeDecodeError as error:
        raise TraceSheetError(f"{where}: not UTF-8 text: {error}") from None
    lines = [(number, line.removesuffix("\r"))
             for number, line in enumerate(text.split("\n"), start=1) if line.strip()]
    if not lines:
        raise TraceSheetError(f"{where}: empty; expected a header line {COLUMNS}")
    header = [name.strip() for name in lines[0][1].split("\t")]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise TraceSheetError(f"{where}: missing column(s) {missing}; expected {COLUMNS} "
                              f"separated by tabs")
    unknown = [c for c in header if c not in COLUMNS]
    if unknown:
        raise TraceSheetError(f"{where}: unknown column(s) {unknown}; expected {COLUMNS}")
    rows = []
    for number, line in lines[1:]:
        fields = [value.strip() for value in line.split("\t")]
        # Trailing empty fields may be left out, but every required column must be reached.
        needed = max(header.index(c) for c in REQUIRED) + 1
        if not needed <= len(fields) <= len(header):
            raise TraceSheetError(
                f"{where}: the sheet is tab-separated; line {number} has {len(fields)} "
                f"field{'s' if len(fields) != 1 else ''}, the header {len(header)}")
        rows.append({**dict.fromkeys(COLUMNS, ""), **dict(zip(header, fields)), "line": number})
    sheet = pd.DataFrame(rows, columns=[*COLUMNS, "line"])
    sheet.attrs["header"] = header
    return sheet


def load_trace_sheet(sheet_path, root) -> pd.DataFrame:
    """Read and check the sheet; return it indexed by trace with `path` made absolute."""
    return check_sheet(read_sheet(sheet_path), f"trace sheet {sheet_path}", root)


def check_sheet(sheet: pd.DataFrame, where: str, root) -> pd.DataFrame:
    """Check every row of `sheet` (as read_sheet gives it); return the rows indexed by trace,
    with `path` made absolute and format, label and timezone filled in."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    seen: dict[str, int] = {}
    rows = []
    for row in sheet.to_dict("records"):
        line = row.pop("line")
        name = row["trace"]
        here = f"{where}, line {line} (trace {name!r})"
        for error in validator.iter_errors(row):
            field = ".".join(str(p) for p in error.path) or "row"
            meaning = error.schema.get("description") if isinstance(error.schema, dict) else None
            raise TraceSheetError(f"{here}: field {field!r}: {error.message}"
                                  + (f" ({meaning})" if meaning else ""))
        if name in seen:
            raise TraceSheetError(f"{here}: duplicate trace name, first used on line {seen[name]}")
        seen[name] = line
        path = Path(row["path"])
        path = path if path.is_absolute() else Path(root) / path
        if not path.exists():
            raise TraceSheetError(f"{here}: field 'path': file not found: {path}")
        if not path.is_file():
            raise TraceSheetError(f"{here}: field 'path': not a regular file: {path}")
        fmt = row["format"] or infer_format(row["path"])
        if fmt is None:
            raise TraceSheetError(
                f"{here}: field 'format': cannot infer the format of {row['path']!r}; "
                f"name it (wireshark_csv, pcap, pcapng) or use a known suffix "
                f"({', '.join(sorted(FORMAT_BY_SUFFIX))}, optionally .gz)")
        found = content_format(path)
        if found not in (None, fmt):
            raise TraceSheetError(
                f"{here}: field 'format': {fmt!r}, but the file holds {CONTENT_NAMES[found]}; "
                f"set the format to {found}")
        timezone = row["timezone"] or schema["properties"]["timezone"]["default"]
        if not is_time_zone(timezone):
            raise TraceSheetError(f"{here}: field 'timezone': unknown IANA time zone {timezone!r}")
        rows.append({**row, "path": str(path), "format": fmt, "timezone": timezone,
                     "label": row["label"] or name, "line": line})
    if not rows:
        raise TraceSheetError(f"{where}: no traces listed")
    return pd.DataFrame(rows).set_index("trace", drop=False)

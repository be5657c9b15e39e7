"""The trace sheet: which traces exist, where, in what format, with what label and clock.

Checked row by row before any job runs, so a bad row stops the run with one line naming the
row and the problem.
"""

from __future__ import annotations

import re
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jsonschema
import pandas as pd
import yaml

from tracelab.ingest.formats import (
    BY_NAME,
    content_format,
    format_by_suffix,
    suffixes_text,
)

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "traces.schema.yaml"
COLUMNS = ["trace", "path", "format", "label", "timezone", "description"]
REQUIRED = ["trace", "path"]
# Snakemake refuses a wildcard value that ends in 20 or more repeats of one substring (its
# PeriodicityDetector takes it for a cyclic dependency): such a name would pass here and stop the
# run with a PeriodicWildcardError.
PERIODIC = re.compile(r"(.+)\1{19,}$")


class TraceSheetError(ValueError):
    pass


def is_time_zone(name: str) -> bool:
    """Whether `name` is an IANA time zone (Europe/Berlin, UTC)."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


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


def _name_problem(name: str, seen: dict[str, tuple[str, int]]) -> str | None:
    """What keeps `name` from naming output files next to the names `seen` so far (casefolded
    name -> (name, line)), or None."""
    if name.casefold() in seen:
        first, line = seen[name.casefold()]
        if first == name:
            return f"duplicate trace name, first used on line {line}"
        return (f"trace name differs from {first!r} (line {line}) only by case; the two would "
                f"share output files on a case-insensitive file system")
    periodic = PERIODIC.search(name)
    if periodic:
        return (f"field 'trace': ends in {periodic.group(1)!r} repeated 20 or more times, "
                f"which Snakemake refuses as a periodic wildcard; choose another name")
    return None


def _source_format(row: dict, path: Path, here: str) -> str:
    """The row's format: as given or from the suffix, and not contradicted by the content."""
    fmt = row["format"] or format_by_suffix(row["path"])
    if fmt is None:
        raise TraceSheetError(
            f"{here}: field 'format': cannot infer the format of {row['path']!r}; name it "
            f"({', '.join(BY_NAME)}) or use a known suffix ({suffixes_text()})")
    found = content_format(path)
    if found not in (None, fmt):
        raise TraceSheetError(
            f"{here}: field 'format': {fmt!r}, but the file holds {BY_NAME[found].shown_as}; "
            f"set the format to {found}")
    return fmt


def check_sheet(sheet: pd.DataFrame, where: str, root) -> pd.DataFrame:
    """Check every row of `sheet` (as read_sheet gives it); return the rows indexed by trace,
    with `path` made absolute and format, label and timezone filled in."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    seen: dict[str, tuple[str, int]] = {}
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
        problem = _name_problem(name, seen)
        if problem:
            raise TraceSheetError(f"{here}: {problem}")
        seen[name.casefold()] = (name, line)
        path = Path(row["path"])
        path = path if path.is_absolute() else Path(root) / path
        if not path.exists():
            raise TraceSheetError(f"{here}: field 'path': file not found: {path}")
        if not path.is_file():
            raise TraceSheetError(f"{here}: field 'path': not a regular file: {path}")
        fmt = _source_format(row, path, here)
        timezone = row["timezone"] or schema["properties"]["timezone"]["default"]
        if not is_time_zone(timezone):
            raise TraceSheetError(f"{here}: field 'timezone': unknown IANA time zone {timezone!r}")
        rows.append({**row, "path": str(path), "format": fmt, "timezone": timezone,
                     "label": row["label"] or name, "line": line})
    if not rows:
        raise TraceSheetError(f"{where}: no traces listed")
    return pd.DataFrame(rows).set_index("trace", drop=False)

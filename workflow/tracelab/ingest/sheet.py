"""The trace sheet: which traces exist, where, in what format, with what label and clock.

Checked row by row before any job runs, so a bad row stops the run with one line naming the
row and the problem.
"""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jsonschema
import pandas as pd
import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "traces.schema.yaml"
COLUMNS = ["trace", "path", "format", "label", "timezone", "description"]
FORMAT_BY_SUFFIX = {
    ".csv": "wireshark_csv",
    ".pcap": "pcap",
    ".cap": "pcap",
    ".pcapng": "pcapng",
}


class TraceSheetError(ValueError):
    pass


def infer_format(path: str) -> str | None:
    """Format from the file name, looking through a trailing .gz."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return FORMAT_BY_SUFFIX.get(Path(name).suffix)


def load_trace_sheet(sheet_path, root) -> pd.DataFrame:
    """Read and check the sheet; return it indexed by trace with `path` made absolute."""
    sheet_path = Path(sheet_path)
    root = Path(root)
    where = f"trace sheet {sheet_path}"
    try:
        sheet = pd.read_csv(sheet_path, sep="\t", dtype=str, keep_default_na=False,
                            comment=None, quoting=3)
    except FileNotFoundError:
        raise TraceSheetError(f"{where}: file not found") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise TraceSheetError(f"{where}: not a readable TSV: {error}") from None
    missing = [c for c in ("trace", "path") if c not in sheet.columns]
    if missing:
        raise TraceSheetError(f"{where}: missing column(s) {missing}; expected {COLUMNS}")
    unknown = [c for c in sheet.columns if c not in COLUMNS]
    if unknown:
        raise TraceSheetError(f"{where}: unknown column(s) {unknown}; expected {COLUMNS}")
    for column in COLUMNS:
        if column not in sheet.columns:
            sheet[column] = ""
    sheet = sheet[COLUMNS].apply(lambda s: s.str.strip())
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    seen: dict[str, int] = {}
    rows = []
    for index, row in enumerate(sheet.to_dict("records")):
        line = index + 2  # the header is line 1
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
        path = path if path.is_absolute() else root / path
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
        timezone = row["timezone"] or "UTC"
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise TraceSheetError(
                f"{here}: field 'timezone': unknown IANA time zone {timezone!r}") from None
        rows.append({**row, "path": str(path), "format": fmt, "timezone": timezone,
                     "label": row["label"] or name, "line": line})
    if not rows:
        raise TraceSheetError(f"{where}: no traces listed")
    return pd.DataFrame(rows).set_index("trace", drop=False)


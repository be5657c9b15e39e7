"""Zeek's ASCII log format (the default writer, `LogAscii`), so `zeek-cut` and Zeek log readers
open tracelab's logs.

A log is a header of `#` lines, then one line a record, fields separated by a tab:

    #separator \\x09
    #set_separator	,
    #empty_field	(empty)
    #unset_field	-
    #path	conn
    #open	2026-01-01-12-00-00
    #fields	ts	uid	id.orig_h	...
    #types	time	string	addr	...
    1767268800.000000	CAbc...	10.0.0.1	...
    #close	2026-01-01-12-05-00

Times are seconds since the epoch with 6 decimals, intervals seconds with 6 decimals, counts
and ports decimal; an unset field is `-`, an empty string `(empty)`. In strings a tab, newline,
backslash or any other non-printable byte is written `\\xNN`, and a whole field that would read
as `-` or `(empty)` has its first character escaped, as Zeek does. `#open` and `#close` give
times of the data (the first and last packet of the trace), not of the run, so a rerun writes
the same bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

SEPARATOR = "\t"
SET_SEPARATOR = ","
EMPTY_FIELD = "(empty)"
UNSET_FIELD = "-"
HEADER_TIME_FORMAT = "%Y-%m-%d-%H-%M-%S"
_NEEDS_ESCAPE = re.compile(r"[\x00-\x1f\x7f\\]")


@dataclass(frozen=True)
class LogField:
    """One field of a log: Zeek's name and type."""

    name: str
    type: str


def time_text(ns: pd.Series) -> pd.Series:
    """Nanoseconds since the epoch (nullable integers) as Zeek's `time`: seconds, 6 decimals."""
    return _six_decimals(ns)


def interval_text(ns: pd.Series) -> pd.Series:
    """A duration in nanoseconds (nullable integers) as Zeek's `interval`."""
    return _six_decimals(ns)


def _six_decimals(ns: pd.Series) -> pd.Series:
    values = ns.astype("Int64")
    micro = (values + 500) // 1000
    text = (micro // 1_000_000).astype("string") + "." + \
        (micro % 1_000_000).astype("string").str.zfill(6)
    return text.fillna(UNSET_FIELD)


def count_text(values: pd.Series) -> pd.Series:
    """Integers (nullable) as Zeek's `count`/`port`."""
    return values.astype("Int64").astype("string").fillna(UNSET_FIELD)


def string_text(values: pd.Series) -> pd.Series:
    """Text (nullable) as Zeek's `string`/`addr`/`enum`: escaped, `(empty)` for "", `-` unset."""
    text = values.astype("string")
    odd = text.str.contains(_NEEDS_ESCAPE, na=False)
    if odd.any():
        text = text.mask(odd, text[odd].map(_escape))
    # a value that would read as a marker: its first character escaped
    text = text.replace({marker: _escape_first(marker) for marker in (UNSET_FIELD, EMPTY_FIELD)})
    return text.mask((text == "").fillna(False), EMPTY_FIELD).fillna(UNSET_FIELD)


def _escape(text: str) -> str:
    return _NEEDS_ESCAPE.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)


def _escape_first(text: str) -> str:
    return f"\\x{ord(text[0]):02x}{text[1:]}"


def unset(rows: int) -> pd.Series:
    return pd.Series(np.full(rows, UNSET_FIELD, dtype=object), dtype="string")


class ZeekLogWriter:
    """Writes one Zeek ASCII log to an open text handle: header, record lines, `#close`."""

    def __init__(self, handle, path: str, fields: list[LogField], open_text: str):
        self.handle = handle
        self.fields = fields
        handle.write("".join(f"{line}\n" for line in (
            "#separator \\x09", f"#set_separator{SEPARATOR}{SET_SEPARATOR}",
            f"#empty_field{SEPARATOR}{EMPTY_FIELD}", f"#unset_field{SEPARATOR}{UNSET_FIELD}",
            f"#path{SEPARATOR}{path}", f"#open{SEPARATOR}{open_text}",
            SEPARATOR.join(["#fields", *(f.name for f in fields)]),
            SEPARATOR.join(["#types", *(f.type for f in fields)]))))

    def write(self, columns: list[pd.Series]) -> None:
        """Records whose fields (already Zeek text, one Series a field, in order) are given."""
        if not len(columns[0]):
            return
        lines = columns[0].str.cat(columns[1:], sep=SEPARATOR)
        self.handle.write("\n".join(lines.tolist()) + "\n")

    def close(self, close_text: str) -> None:
        self.handle.write(f"#close{SEPARATOR}{close_text}\n")

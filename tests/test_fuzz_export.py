"""Seeded fuzz of Wireshark CSV exports (issue 21): line-end kinds, CRs inside fields, gzip
trailer damage, bytes after the gzip stream, trailing spaces, a header and nothing else.

The expected rows and lines come from tools that read the same bytes on their own: Python's
csv module (records and the line each starts on), zcat (what a damaged gzip stream holds), and
the gzip trailer's layout (RFC 1952: CRC-32, then the length, 4 bytes each, at the end). A lone
CR ends a line only in an export whose header line ends in one (as Python's csv module reads
such a file); elsewhere it is a character of its field, as a plain line count has it, so the
oracle reads those files with each lone CR swapped for a character the csv module keeps.
Small random chunk sizes put chunk ends everywhere, between a CR and its LF too.
"""

from __future__ import annotations

import csv
import gzip
import io
import random
import re
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from tracelab.core.errors import TraceInputError
from tracelab.core.packets import read_staged
from tracelab.ingest.export.source import Inflated, Plain
from tracelab.ingest.validate import validate_trace

COLUMNS = ["No.", "Time", "Source", "Destination", "Protocol", "Length", "Info"]
LONE_CR = re.compile("\r(?!\n)")
KEPT = "\ue000"  # stands for a lone CR that is no line end, for the csv module


def row(n: int, info: str) -> list[str]:
    return [str(n), f"2026-11-28 07:56:30.{n:06d}", "198.18.0.2", "198.18.1.10", "TCP", "74",
            info]


def line(fields: list[str], quoted: bool) -> str:
    if not quoted:
        return ",".join(fields)
    return ",".join('"' + f.replace('"', '""') + '"' for f in fields)


def export(rng: random.Random, *, newline: str, mixed: bool, quoted: bool,
           cr_in_fields: bool) -> bytes:
    """A header and 20-80 rows. `mixed`: each row ends in one of the line ends that the header's
    kind of export reads as one. `cr_in_fields`: lone CRs inside some Info fields, and lines
    of junk with a CR inside."""
    ends = ["\r", "\n", "\r\n"] if newline == "\r" else ["\n", "\r\n"]
    text = line(COLUMNS, quoted) + newline
    for n in range(1, rng.randint(20, 80) + 1):
        info = f"{40000 + n}  >  80 [SYN] Seq=0 Len=0"
        if cr_in_fields and rng.random() < 0.15:
            at = rng.randrange(len(info))
            info = info[:at] + "\r" + info[at:]
        text += line(row(n, info), quoted) + (rng.choice(ends) if mixed else newline)
        if cr_in_fields and rng.random() < 0.05:
            text += "junk\rmore junk" + newline
    return text.encode()


def records(data: bytes) -> list[tuple[int, list[str]]]:
    """Each record after the header with the line it starts on, by Python's csv module."""
    text = data.decode()
    header_end = re.search("\r\n|\r|\n", text)
    cr_export = header_end is not None and header_end.group() == "\r"
    # A CR-only export's lone CRs are line ends even inside a quoted field: the reader hands
    # them on as LF there.
    kept = "\n" if cr_export else "\r"
    if not cr_export:
        text = LONE_CR.sub(KEPT, text)
    reader = csv.reader(io.StringIO(text, newline=""))
    found, at = [], 1
    for fields in reader:
        if fields:
            found.append((at, [LONE_CR.sub(kept, f.replace(KEPT, "\r")) for f in fields]))
        at = reader.line_num + 1
    return found[1:]


def zcat(data: bytes) -> bytes:
    """What gzip -dc writes for `data`, damaged or not (it says so on stderr)."""
    return subprocess.run(["gzip", "-dc"], input=data, capture_output=True).stdout


def validate(tmp_path: Path, data: bytes, name: str) -> tuple[dict | None, Path, Path, str]:
    source = tmp_path / name
    source.write_bytes(data)
    staged, invalid = tmp_path / "t.arrow", tmp_path / "t.invalid.csv"
    try:
        report = validate_trace(trace="t", source=source, source_format="wireshark_csv",
                                staged_path=staged, report_path=tmp_path / "t.json",
                                invalid_path=invalid, settings={"max_invalid_fraction": 0.5})
        return report, staged, invalid, ""
    except TraceInputError as error:
        return None, staged, invalid, str(error)


def read_invalid(path: Path) -> pa.Table:
    return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True),
                          convert_options=pacsv.ConvertOptions(
                              column_types={c: pa.string() for c in ["location", "reason",
                                                                     *COLUMNS]}))


def assert_read_as(tmp_path: Path, source: bytes, name: str, inflated: bytes) -> dict:
    """Validate `source`: every record of `inflated` (the bytes the export holds) is read at its
    line, the whole ones kept, the others rejected there; rows read = kept + rejected."""
    expected = records(inflated)
    report, staged, invalid_path, error = validate(tmp_path, source, name)
    assert report is not None, error
    invalid = read_invalid(invalid_path)
    kept = read_staged(staged)
    assert report["rows_read"] == len(expected) == kept.num_rows + invalid.num_rows
    bad = [at for at, fields in expected if len(fields) != len(COLUMNS)]
    assert sorted(int(loc.split()[1]) for loc in invalid.column("location").to_pylist()) == bad
    good = [fields for _, fields in expected if len(fields) == len(COLUMNS)]
    assert kept.column("frame").to_pylist() == [int(fields[0]) for fields in good]
    assert kept.column("info").to_pylist() == [fields[6] for fields in good]
    return report


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunk sizes from the case's generator: chunk ends fall anywhere."""
    def use(rng: random.Random) -> None:
        monkeypatch.setattr(Plain, "CHUNK", rng.choice([1, 2, 7, 64, 1000, 1 << 23]))
        monkeypatch.setattr(Inflated, "CHUNK", rng.choice([5, 64, 1 << 18]))
        monkeypatch.setattr(Inflated, "OUT_MAX", rng.choice([3, 100, 1 << 23]))
    return use


@pytest.mark.parametrize("seed", range(60))
def test_line_ends_and_crs_inside_fields(tmp_path, small_chunks, seed):
    rng = random.Random(seed)
    small_chunks(rng)
    newline = rng.choice(["\n", "\r\n", "\r"])
    data = export(rng, newline=newline, mixed=rng.random() < 0.5, quoted=rng.random() < 0.8,
                  cr_in_fields=rng.random() < 0.7)
    gzipped = rng.random() < 0.3
    assert_read_as(tmp_path, gzip.compress(data, mtime=0) if gzipped else data,
                   "t.csv.gz" if gzipped else "t.csv", data)


def test_a_lone_cr_in_an_unquoted_field_moves_no_line(tmp_path):
    """Issue 21's case: a line `junk\\rmore junk` after line 3 and line 8's Length "abc"."""
    lines = [line(COLUMNS, True)] + [line(row(n, "x"), True) for n in range(1, 11)]
    lines.insert(3, "junk\rmore junk")
    lines[7] = lines[7].replace('"74"', '"abc"')
    data = ("\n".join(lines) + "\n").encode()
    report, _, invalid, error = validate(tmp_path, data, "t.csv")
    assert report is not None, error
    assert report["rows_read"] == data.count(b"\n") - 1 == 11
    assert read_invalid(invalid).column("location").to_pylist() == ["line 4", "line 8"]


TRAILER_DAMAGE = ["crc", "isize", "cut trailer"]


@pytest.mark.parametrize("seed", range(24))
def test_gzip_trailer_damage_keeps_every_row_zcat_recovers(tmp_path, small_chunks, seed):
    rng = random.Random(seed)
    small_chunks(rng)
    data = export(rng, newline=rng.choice(["\n", "\r\n", "\r"]), mixed=False, quoted=True,
                  cr_in_fields=False)
    damaged = bytearray(gzip.compress(data, mtime=0))
    size, kind = len(damaged), TRAILER_DAMAGE[seed % 3]
    if kind == "crc":
        damaged[size - 8 + rng.randrange(4)] ^= 1 << rng.randrange(8)
    elif kind == "isize":
        damaged[size - 4 + rng.randrange(4)] ^= 1 << rng.randrange(8)
    else:
        del damaged[size - rng.randint(1, 8):]
    damaged = bytes(damaged)
    recovered = zcat(damaged)
    assert recovered == data  # the deflate data is whole: zcat writes all of it
    report = assert_read_as(tmp_path, damaged, "t.csv.gz", recovered)
    offset = int(re.search(r"compressed byte (\d+)", report["gzip_damage"]).group(1))
    if kind == "cut trailer":
        assert offset == len(damaged)
    else:  # zlib reads the whole CRC-32 (or length) before it compares
        assert size - 8 <= offset < size


@pytest.mark.parametrize("seed", range(12))
def test_bytes_after_the_gzip_stream_add_no_row(tmp_path, small_chunks, seed):
    rng = random.Random(seed)
    small_chunks(rng)
    data = export(rng, newline="\n", mixed=False, quoted=True, cr_in_fields=False)
    member = gzip.compress(data, mtime=0)
    junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
    if junk.startswith(b"\x1f"):  # the start of a gzip magic number: another member
        junk = b"x" + junk
    assert zcat(member + junk) == data  # gzip: "trailing garbage ignored"
    report = assert_read_as(tmp_path, member + junk, "t.csv.gz", data)
    assert f"{len(junk)} bytes after the end of the gzip stream (from compressed byte " \
           f"{len(member)})" in report["gzip_trailing_bytes"]


@pytest.mark.parametrize("seed", range(16))
def test_trailing_spaces_are_one_row(tmp_path, small_chunks, seed):
    """Spaces after the last line: one record of one field (Python's csv module), wherever a
    chunk ends; never a quoted field left open."""
    rng = random.Random(seed)
    small_chunks(rng)
    newline = rng.choice(["\n", "\r\n", "\r"])
    data = export(rng, newline=newline, mixed=False, quoted=rng.random() < 0.8,
                  cr_in_fields=False)
    data += b" " * rng.randint(1, 300) + (newline.encode() if rng.random() < 0.3 else b"")
    gzipped = rng.random() < 0.3
    assert_read_as(tmp_path, gzip.compress(data, mtime=0) if gzipped else data,
                   "t.csv.gz" if gzipped else "t.csv", data)
    assert "never closed" not in read_invalid(tmp_path / "t.invalid.csv").column(
        "reason").to_pylist()


@pytest.mark.parametrize("newline", ["", "\n", "\r\n", "\r"])
@pytest.mark.parametrize("gzipped", [False, True])
def test_a_header_and_nothing_else(tmp_path, newline, gzipped):
    data = (line(COLUMNS, True) + newline).encode()
    assert records(data) == []
    report, _, _, error = validate(tmp_path, gzip.compress(data, mtime=0) if gzipped else data,
                                   "t.csv.gz" if gzipped else "t.csv")
    assert report is None
    assert "check 'zero valid rows' failed: no rows after the header" in error
    assert "\n" not in error

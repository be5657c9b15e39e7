"""Damaged Wireshark CSV exports: a bad row is one rejected row at its true line, never the end
of the trace; a cut file keeps every whole row before the cut. Checked against Python's csv
module reading the same bytes, an independent parser and line count."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import random
import zlib

import pytest
from trace_files import assert_clean, export, packet, packets, read_invalid, validate

from tracelab.core.packets import read_staged
from tracelab.ingest.export.source import Inflated, Plain

COLUMNS = 7


def records(data: bytes) -> list[tuple[int, list[str]]]:
    """Each non-blank record of an export with the line it starts on, by Python's csv module
    (bytes read as Latin-1, one character a byte, so line breaks stay where they are)."""
    reader = csv.reader(io.StringIO(data.decode("latin-1"), newline=""))
    found, line = [], 1
    for fields in reader:
        if fields:
            found.append((line, fields))
        line = reader.line_num + 1
    return found


def is_utf8(fields: list[str]) -> bool:
    try:
        "".join(fields).encode("latin-1").decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def expected(data: bytes, *, gzipped_cut: bool) -> tuple[list[int], int, int]:
    """(lines of the rows to reject, rows read, rows kept) for the (inflated) export `data`."""
    found = records(data)[1:]  # the header aside
    cut_line = None
    if gzipped_cut and not data.endswith(b"\n"):  # a stream cut at a line's end cuts no row
        cut_line = data.count(b"\n") + 1
    elif not data.endswith(b"\n") and not data.rstrip(b"\r").endswith(b'"'):
        cut_line = data.count(b"\n") + 1  # a quoted export's last line, not finished
    if cut_line is not None:
        found = [(line, fields) for line, fields in found if line < cut_line]
    bad = [line for line, fields in found if len(fields) != COLUMNS or not is_utf8(fields)]
    read = len(found) + (cut_line is not None)
    return sorted(bad + ([cut_line] if cut_line is not None else [])), read, len(found) - len(bad)


def mutate(lines: list[bytes], rng: random.Random) -> list[bytes]:
    """One to three of: a field lost or added, a byte that is not UTF-8, a quote never closed,
    a quote inside a field that is not doubled."""
    lines = list(lines)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(1, len(lines) - 5)
        kind = rng.choice(["fewer", "more", "byte", "unclosed", "stray"])
        line = lines[at]
        if kind == "fewer":
            line = line[: line.rindex(b',"')]
        elif kind == "more":
            line += b',"extra"'
        elif kind == "byte":
            where = rng.randrange(1, len(line) - 1)
            line = line[:where] + bytes([rng.randrange(0x80, 0x100)]) + line[where:]
        elif kind == "unclosed" and line.endswith(b'"'):
            line = line[:-1]
        elif kind == "stray":  # a quote inside Info that is not doubled
            where = line.rindex(b',"') + 2 + rng.randrange(1, 20)
            line = line[:where] + b'"' + line[where:]
        lines[at] = line
    return lines


@pytest.mark.parametrize("seed", range(300))
def test_fuzzed_exports_reject_each_bad_row_at_its_line(tmp_path, seed):
    rng = random.Random(seed)
    lines = mutate(export(packets()).split(b"\n")[:-1], rng)
    data = b"\n".join(lines) + b"\n"
    gzipped = rng.random() < 0.3
    cut = rng.random() < 0.5
    source = gzip.compress(data, mtime=0) if gzipped else data
    if cut:
        source = source[: rng.randrange(len(source) // 2, len(source) - 1)]
    inflated = zlib.decompressobj(wbits=31).decompress(source) if gzipped else source
    bad, read, kept = expected(inflated, gzipped_cut=gzipped and cut)

    run = validate(tmp_path, source, name="t.csv.gz" if gzipped else "t.csv",
                   max_invalid_fraction=0.05)
    assert run.error is None, str(run.error)
    assert (run.report["rows_read"], run.report["rows_valid"]) == (read, kept)
    invalid = read_invalid(run.paths["invalid_path"])
    # A batch's malformed records are written before its other rejected rows.
    located = sorted(int(text.split()[1]) for text in invalid.column("location").to_pylist())
    assert located == bad
    assert run.report["rows_read"] == run.report["rows_valid"] + invalid.num_rows


def test_wrong_field_count_and_a_latin1_byte_on_line_12(tmp_path):
    lines = export(packets()).split(b"\n")
    lines[11] = lines[11].replace(b"SYN]", b"S\xe9N]") + b',"extra"'
    run = validate(tmp_path, b"\n".join(lines))
    invalid = assert_clean(run, {"columns": 1, "utf8": 1})
    assert invalid.column("location").to_pylist() == ["line 12"]
    reason = invalid.column("reason")[0].as_py()
    assert reason.startswith("columns: 8 fields") and reason.endswith("; utf8")
    assert "S\\xe9N]" in invalid.column("Info")[0].as_py()
    assert run.report["rows_valid"] == 299


def test_a_plain_export_cut_inside_a_quoted_field(tmp_path):
    data = export(packets())
    cut = data[: data.index(b"[SYN]", data.index(b'"151"'))]
    run = validate(tmp_path, cut)
    invalid = assert_clean(run, {"complete": 1})
    assert invalid.column("location").to_pylist() == ["line 152"]
    assert run.report["rows_valid"] == 150


def zeroed_past_inflating(data: bytes, start: int) -> tuple[bytes, int]:
    """`data` with 64 bytes zeroed at the first offset from `start` (in steps of 64) past which
    zlib cannot inflate, and that offset: Huffman codes mostly resynchronise after damaged
    bytes, leaving only the CRC-32 wrong, until the damage hits a block's header."""
    for damage in range(start, len(data) - 64, 64):
        broken = data[:damage] + bytes(64) + data[damage + 64:]
        try:
            zlib.decompressobj(wbits=31).decompress(broken)
        except zlib.error as error:
            if "incorrect data check" not in str(error):
                return broken, damage
    raise AssertionError("no damage zlib stops at")


def test_a_corrupt_gzip_stream_keeps_the_rows_before_the_damage(tmp_path, monkeypatch):
    # Hashes do not compress: the stream is ~140 KB, read in 8 KiB pieces so that the damage
    # lies well past the first pieces, as in a large file read in the stage's own pieces.
    monkeypatch.setattr(Inflated, "CHUNK", 1 << 13)
    rows = [packet(n, protocol="HTTP", info=f"GET /{hashlib.sha256(b'%d' % n).hexdigest()}")
            for n in range(1, 3001)]
    clean = gzip.compress(export(rows), mtime=0)
    data, damage = zeroed_past_inflating(clean, len(clean) * 3 // 4)
    assert damage > 8 * Inflated.CHUNK
    run = validate(tmp_path, data, name="t.csv.gz", max_invalid_fraction=0.5)
    assert run.error is None, str(run.error)
    assert run.report["checks"]["complete"]["failures"] == 1
    reasons = read_invalid(run.paths["invalid_path"]).column("reason").to_pylist()
    assert "corrupt gzip data" in next(r for r in reasons if r.startswith("complete"))
    # zlib, fed a byte at a time, inflates these lines before it finds the damage: every whole
    # one is a row read, the part line after them the rejected cut.
    inflate, pieces = zlib.decompressobj(wbits=31), []
    with pytest.raises(zlib.error):
        for at in range(len(data)):
            pieces.append(inflate.decompress(data[at:at + 1]))
    assert run.report["rows_read"] == b"".join(pieces).count(b"\n") - 1 + 1
    assert f"zlib stops at compressed byte {at} " in run.report["gzip_damage"]
    # Every row before the damaged byte is kept.
    whole = zlib.decompressobj(wbits=31).decompress(data[:damage]).count(b"\n") - 1
    frames = read_staged(run.paths["staged_path"]).column("frame").to_pylist()
    assert whole > 1_000 and frames[:whole] == list(range(1, whole + 1))


@pytest.mark.parametrize("gzipped", [False, True])
def test_characters_and_lines_cut_by_chunk_ends(tmp_path, monkeypatch, gzipped):
    """Chunks of a few bytes cut "→" (3 bytes) and lines everywhere: nothing changes."""
    monkeypatch.setattr(Plain, "CHUNK", 7)
    monkeypatch.setattr(Inflated, "CHUNK", 5)
    monkeypatch.setattr(Inflated, "OUT_MAX", 11)
    rows = [packet(n, info=f"{40000 + n} → 80 [SYN] Seq=0 Win=64240 Len=0 ünïcödé")
            for n in range(1, 301)]
    lines = export(rows).split(b"\n")
    lines[50] = lines[50].replace("ü".encode(), b"\xfc")  # Latin-1, line 51
    data = b"\n".join(lines)
    source = gzip.compress(data, mtime=0) if gzipped else data
    run = validate(tmp_path, source, name="t.csv.gz" if gzipped else "t.csv")
    invalid = assert_clean(run, {"utf8": 1})
    assert invalid.column("location").to_pylist() == ["line 51"]
    info = read_staged(run.paths["staged_path"]).column("info").to_pylist()
    assert info == [r[6] for r in rows[:49] + rows[50:]]

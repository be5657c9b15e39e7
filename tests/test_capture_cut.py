"""Captures cut short, plain and gzip-compressed, pcap and pcapng, at many offsets: every whole
record before the cut is read, the cut is reported at its record number and byte offset, and
rows read = kept + rejected (as Wireshark: "cut short in the middle of a packet").

The number of whole records is found independently of the reader: the uncut file's record
boundaries (parsed here with struct) against the bytes the cut file still holds: its size, or
for gzip what zlib inflates from it in one call (GNU gzip -dc, another inflater, gives the
same to within its few bytes of look-ahead); and, where Wireshark's capinfos is installed,
the packet count it reads from the cut file.
"""

from __future__ import annotations

import gzip
import random
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass

import pytest
from conftest import REPO
from trace_files import invalid_rows, stage

from tracelab.cli import main
from tracelab.ingest.capture import stream
from tracelab.synth.capture import write_capture

PACKET_BLOCKS = (2, 3, 6)


@dataclass
class Block:
    start: int
    end: int
    packet: bool


def blocks_of(raw: bytes) -> tuple[int, list[Block]]:
    """The file header's length and the records (pcap) or blocks (pcapng) after it."""
    if raw[:4] == b"\x0a\x0d\x0d\x0a":
        header = struct.unpack_from("<I", raw, 4)[0]
        blocks, pos = [], header
        while pos < len(raw):
            kind, length = struct.unpack_from("<II", raw, pos)
            blocks.append(Block(pos, pos + length, kind in PACKET_BLOCKS))
            pos += length
        return header, blocks
    blocks, pos = [], 24
    while pos < len(raw):
        captured = struct.unpack_from("<I", raw, pos + 8)[0]
        blocks.append(Block(pos, pos + 16 + captured, True))
        pos += 16 + captured
    return 24, blocks


def gunzipped_length(data: bytes) -> int:
    """The bytes a (possibly cut) gzip file still holds."""
    length = len(zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data))
    if shutil.which("gzip"):
        run = subprocess.run(["gzip", "-dc"], input=data, capture_output=True, check=False)
        assert 0 <= length - len(run.stdout) <= 16
    return length


def capinfos_packets(path) -> int | None:
    """The packet count Wireshark's capinfos reads (None without capinfos)."""
    if not shutil.which("capinfos"):
        return None
    output = subprocess.run(["capinfos", "-c", "-M", str(path)], capture_output=True, check=False,
                            text=True).stdout
    return int(output.split("Number of packets:")[1].split()[0])


def check_cut(tmp_path, name: str, raw: bytes, kept: int, compressed: bool, batch_bytes: int):
    """Stage the first `kept` bytes of the capture `raw` (gzip-compressed when `compressed`:
    then `kept` is what gzip -dc gives out of the cut file) and check what the report says."""
    _, blocks = blocks_of(raw)
    whole = sum(block.packet and block.end <= kept for block in blocks)
    inside = next((block for block in blocks if block.start < kept < block.end), None)
    # The default max_invalid_fraction: a cut record is not an invalid one.
    table, report, error = stage(tmp_path / name, tmp_path, name, batch_bytes=batch_bytes)
    assert error is None, (name, str(error))
    # The record cut in the middle is no row, as capinfos counts: nothing is invalid.
    assert report["rows_read"] == report["rows_valid"] == whole == len(table), name
    assert capinfos_packets(tmp_path / name) in (None, whole), name
    assert report["rows_invalid"] == 0 and invalid_rows(tmp_path, name).empty, name
    assert table["frame"].tolist() == list(range(1, whole + 1)), name
    notes = report.get("structural_notes", [])
    if inside is not None and inside.packet:
        (note,) = notes
        assert (note["check"], note["record"], note["offset"], note["bytes_present"]) == \
            ("record complete", whole + 1, inside.start, kept - inside.start), name
    elif inside is not None or compressed:
        # A pcapng block without packets cut, or a gzip stream cut where a record ends.
        (note,) = notes
        assert note["check"] == "capture complete", name
        assert note["offset"] == (inside.start if inside else kept), name
        assert note["record"] == whole + 1, name
    else:
        assert report["status"] == "passed" and not notes, name


@pytest.fixture(scope="module", params=["pcap", "pcapng"])
def capture(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("uncut") / f"uncut.{request.param}"
    write_capture(path, 3000, seed=12, fmt=request.param)
    return request.param, path.read_bytes()


def test_plain_captures_cut_at_many_offsets(tmp_path, capture):
    fmt, raw = capture
    _, blocks = blocks_of(raw)
    first = next(block for block in blocks if block.packet)
    rng = random.Random(1)
    offsets = {first.end, first.end + 1, first.end + 15, len(raw) - 1, len(raw)}
    for block in rng.sample(blocks[1:], 10):
        offsets |= {block.start, block.start + 1, block.start + 8, block.end - 1}
    offsets |= {rng.randrange(first.end, len(raw)) for _ in range(15)}
    for k, kept in enumerate(sorted(offsets)):
        name = f"cut{k}.{fmt}"
        (tmp_path / name).write_bytes(raw[:kept])
        check_cut(tmp_path, name, raw, kept, False, batch_bytes=1 << 16 if k % 2 else 8 << 20)


def test_gzip_captures_cut_at_many_offsets(tmp_path, capture):
    """Captures well under one batch (8 MiB) too: they once read as empty."""
    fmt, raw = capture
    packed = gzip.compress(raw)
    _, blocks = blocks_of(raw)
    first = next(block for block in blocks if block.packet)
    for k, fraction in enumerate([0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.97]):
        cut = packed[:int(len(packed) * fraction)]
        kept = gunzipped_length(cut)
        if kept < first.end:
            continue
        name = f"cut{k}.{fmt}.gz"
        (tmp_path / name).write_bytes(cut)
        check_cut(tmp_path, name, raw, kept, True, batch_bytes=1 << 16 if k % 2 else 8 << 20)


def test_a_gzip_capture_cut_at_60_percent_reads_every_whole_record(tmp_path):
    """The case of the issue: 20 MB of records behind a gzip cut at 60 %."""
    path = tmp_path / "big.pcap"
    write_capture(path, 150_000, seed=5)
    raw = path.read_bytes()
    packed = gzip.compress(raw, compresslevel=6)
    cut = packed[:int(len(packed) * 0.6)]
    (tmp_path / "big.pcap.gz").write_bytes(cut)
    check_cut(tmp_path, "big.pcap.gz", raw, gunzipped_length(cut), True, batch_bytes=8 << 20)


def test_a_pcapng_cut_inside_its_interface_description_says_so(tmp_path):
    path = tmp_path / "idb.pcapng"
    write_capture(path, 10, seed=1, fmt="pcapng")
    raw = path.read_bytes()
    header, blocks = blocks_of(raw)
    idb = blocks[0]
    for name, data in (("idb.pcapng", raw[:idb.start + 10]),
                       ("idb.pcapng.gz", gzip.compress(raw[:idb.start + 10]))):
        (tmp_path / name).write_bytes(data)
        _, report, error = stage(tmp_path / name, tmp_path, name)
        assert error is not None and error.check == "capture complete", name
        assert f"10 bytes into the interface description block at byte offset {header}" in \
            str(error)
        assert report["structural_errors"][0]["offset"] == header


@pytest.mark.parametrize("step", [1, 2, 3, 5, 4096])
def test_gzip_members_and_trailing_bytes_read_at_any_step(tmp_path, monkeypatch, step):
    """A multi-member gzip file reads as the concatenation of its members, as gzip -d reads
    it, and bytes after the last member are counted, whatever the step of compressed bytes
    the reader inflates at a time."""
    plain = tmp_path / "plain.pcap"
    write_capture(plain, 40, seed=3)
    raw = plain.read_bytes()
    base, _, _ = stage(plain, tmp_path, "plain")
    monkeypatch.setattr(stream, "GZIP_STEP", step)
    for name, data, trailing in (
            ("members.pcap.gz", gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]), 0),
            ("trailing.pcap.gz", gzip.compress(raw) + bytes(37), 37)):
        (tmp_path / name).write_bytes(data)
        table, report, error = stage(tmp_path / name, tmp_path, name)
        assert error is None and report["status"] == "passed", name
        assert table.equals(base), name
        assert report["capture"].get("gzip_trailing_bytes_ignored", 0) == trailing, name


def test_inspect_reads_the_bundled_capture_cut_in_its_26th_record(tmp_path, capsys):
    """The case of issue 21: the 25 whole records are read (capinfos reads 25), the cut one
    is reported and is no invalid row; `--max-invalid-fraction` relaxes the threshold."""
    raw = (REPO / "data" / "log4j_scan.pcapng").read_bytes()
    header, blocks = blocks_of(raw)
    packets = [block for block in blocks if block.packet]
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(raw[:packets[25].start + 30])
    assert capinfos_packets(cut) in (None, 25)
    assert main(["inspect", str(cut)]) == 0
    assert "passed (25 of 25 rows valid)" in capsys.readouterr().out

    damaged = bytearray(raw[:packets[30].start])        # 30 records, 3 of them invalid
    for block in packets[10:13]:
        struct.pack_into("<I", damaged, block.start + 24, 10**7)    # original length
    bad = tmp_path / "bad.pcapng"
    bad.write_bytes(damaged)
    assert main(["inspect", str(bad)]) == 1
    assert "max_invalid_fraction" in capsys.readouterr().err
    assert main(["inspect", str(bad), "--max-invalid-fraction", "0.2"]) == 0
    assert "27 of 30 rows valid" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["inspect", str(bad), "--max-invalid-fraction", "1.5"])

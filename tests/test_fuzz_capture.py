"""Seeded, reproducible damage of the bundled capture (data/log4j_scan.pcapng, and the pcap
editcap makes of it), plain and gzip-compressed with a damaged CRC32 trailer: tracelab keeps
exactly the records capinfos (else tshark) reads from the damaged file, and reports the damage
with its offset (Wireshark is the reference: every whole record before the damage is kept;
a trace stops only when nothing could be read).

The offsets of blocks and records are found here with struct, independently of the reader;
the gzip variant's content is checked against `gzip -dc` (zcat), which gives every byte before
a trailer that does not match.
"""

from __future__ import annotations

import gzip
import random
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass

import pytest
from conftest import REPO
from trace_files import stage, wireshark_count

CAPTURE = REPO / "data" / "log4j_scan.pcapng"
SEED = 21
PACKET_BLOCKS = (2, 3, 6)


@dataclass
class Damage:
    """A damaged capture, and what the reader must say about it."""

    name: str
    data: bytes
    offset: int | None          # where the damage is reported (None: no damage to report)
    check: str | None


def pcapng_blocks(raw: bytes) -> list[tuple[int, int, int]]:
    """(offset, type, total length) of each block after the section header."""
    pos, blocks = struct.unpack_from("<I", raw, 4)[0], []
    while pos < len(raw):
        kind, length = struct.unpack_from("<II", raw, pos)
        blocks.append((pos, kind, length))
        pos += length
    return blocks


def pcap_records(raw: bytes) -> list[tuple[int, int]]:
    """(offset, captured length) of each record after the 24-byte file header."""
    pos, records = 24, []
    while pos < len(raw):
        captured = struct.unpack_from("<I", raw, pos + 8)[0]
        records.append((pos, captured))
        pos += 16 + captured
    return records


def with_u32(raw: bytes, at: int, value: int) -> bytes:
    out = bytearray(raw)
    struct.pack_into("<I", out, at, value)
    return bytes(out)


def pcapng_damage(raw: bytes, rng: random.Random) -> list[Damage]:
    packets = [b for b in pcapng_blocks(raw) if b[1] in PACKET_BLOCKS]
    pick = lambda: packets[rng.randrange(10, len(packets) - 10)]  # noqa: E731
    (a, _, la), (b, _, lb), (c, _, lc), (d, _, ld), (e, _, le) = (pick() for _ in range(5))
    return [
        Damage("junk", raw + bytes(range(1, 21)), len(raw), "block structure"),
        Damage("trailer", with_u32(raw, a + la - 4, la + 4), a, "block structure"),
        Damage("zero_length", with_u32(raw, b + 4, 0), b, "block structure"),
        # Not a multiple of 4: Wireshark rounds the length up, so -2 reads on and +1 does not.
        Damage("length_minus_2", with_u32(raw, c + 4, lc - 2), None, None),
        Damage("length_plus_1", with_u32(raw, d + 4, ld + 1), d, "block structure"),
        Damage("cut", raw[:e + rng.randrange(1, le)], e, "record complete"),
    ]


def first_absurd_record(raw: bytes, pos: int) -> int | None:
    """Walking pcap records from `pos` as Wireshark does: the offset of the first whose
    captured length is beyond its maximum (262144), None if the walk reaches the end."""
    while pos + 16 <= len(raw):
        captured = struct.unpack_from("<I", raw, pos + 8)[0]
        if captured > 262144:
            return pos
        pos += 16 + captured
    return None


def pcap_damage(raw: bytes, rng: random.Random) -> list[Damage]:
    records = pcap_records(raw)
    pick = lambda: records[rng.randrange(10, len(records) - 10)]  # noqa: E731
    (a, ca), (b, cb), (c, cc) = (pick() for _ in range(3))
    longer = with_u32(raw, b + 8, cb + 100)
    return [
        Damage("caplen_flipped", with_u32(raw, a + 8, ca ^ 0x40000000), a, "record header"),
        # A record that takes 100 bytes of the next: it is read (and rejected, captured >
        # original); the records after it are nonsense up to one Wireshark cannot take.
        Damage("caplen_plus_100", longer, first_absurd_record(longer, b), "record header"),
        Damage("cut", raw[:c + rng.randrange(1, 16 + cc)], c, "record complete"),
        Damage("snap_below_records", with_u32(raw, 16, 60), None, None),
    ]


def crc_damaged_gzip(raw: bytes) -> bytes:
    packed = bytearray(gzip.compress(raw, mtime=0))
    packed[-8] ^= 0x01          # the CRC32 trailer: the data itself is whole
    return bytes(packed)


def capinfos_count(path) -> int | None:
    """The packets capinfos reads: its count, or on damage "An error occurred after reading
    N packets" (None without capinfos)."""
    if not shutil.which("capinfos"):
        return None
    run = subprocess.run(["capinfos", "-c", "-M", str(path)], capture_output=True, text=True,
                         check=False)
    found = re.search(r"Number of packets:\s*(\d+)|after reading (\d+) packets",
                      run.stdout + run.stderr)
    return int(found.group(1) or found.group(2))


@pytest.fixture(scope="module")
def captures(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("fuzz")
    found = {"pcapng": CAPTURE.read_bytes()}
    if shutil.which("editcap"):
        subprocess.run(["editcap", "-F", "pcap", str(CAPTURE), str(folder / "log4j.pcap")],
                       check=True, capture_output=True)
        found["pcap"] = (folder / "log4j.pcap").read_bytes()
    return found


def check_damage(tmp_path, fmt: str, damage: Damage) -> None:
    plain = tmp_path / f"{damage.name}.{fmt}"
    plain.write_bytes(damage.data)
    # capinfos and tshark read captures alike (the same wiretap library): capinfos, which
    # starts in a fraction of tshark's time, for every case.
    expected = capinfos_count(plain)
    if expected is None:
        expected = wireshark_count(plain)
    if expected is None:
        pytest.skip("neither capinfos nor tshark is installed")
    packed = tmp_path / f"{damage.name}.{fmt}.gz"
    packed.write_bytes(crc_damaged_gzip(damage.data))
    if shutil.which("gzip"):   # zcat gives every byte, and says the CRC is wrong
        unpacked = subprocess.run(["gzip", "-dc", str(packed)], capture_output=True,
                                  check=False)
        assert unpacked.stdout == damage.data and b"crc error" in unpacked.stderr
    for path in (plain, packed):
        name = path.name
        table, report, error = stage(path, tmp_path, name.replace(".", "_"))
        assert error is None, (name, str(error))
        assert report["rows_read"] == expected, name
        assert report["rows_read"] == report["rows_valid"] + report["rows_invalid"], name
        assert len(table) == report["rows_valid"], name
        notes = report.get("structural_notes", [])
        framing = [note for note in notes if note["check"] != "gzip trailer"]
        if damage.check is None:
            assert framing == [], name
        else:
            assert [(n["check"], n["offset"]) for n in framing] == \
                [(damage.check, damage.offset)], name
            assert f"byte offset {damage.offset}" in framing[0]["detail"], name
        if path is packed:
            (trailer,) = [note for note in notes if note["check"] == "gzip trailer"]
            assert trailer["compressed_offset"] == len(packed.read_bytes()) - 8, name
            assert trailer["offset"] == len(damage.data), name


@pytest.mark.parametrize("fmt", ["pcapng", "pcap"])
def test_damaged_captures_keep_what_wireshark_reads(tmp_path, captures, fmt):
    if fmt not in captures:
        pytest.skip("editcap is not installed")
    rng = random.Random(f"{SEED}-{fmt}")
    make = pcapng_damage if fmt == "pcapng" else pcap_damage
    for damage in make(captures[fmt], rng):
        assert damage.offset is not None or damage.check is None, damage.name
        check_damage(tmp_path, fmt, damage)


def test_the_bundled_capture_reads_alike_plain_and_with_a_damaged_gzip_trailer(tmp_path):
    """The gzip checksum error of the issue: every record is kept, as from the plain file."""
    plain, report, error = stage(CAPTURE, tmp_path, "plain")
    assert error is None and report["rows_valid"] == 1586
    packed = tmp_path / "log4j_scan.pcapng.gz"
    packed.write_bytes(crc_damaged_gzip(CAPTURE.read_bytes()))
    table, report, error = stage(packed, tmp_path, "packed")
    assert error is None and report["rows_valid"] == 1586
    assert table.equals(plain)
    assert [n["check"] for n in report["structural_notes"]] == ["gzip trailer"]


def test_damage_before_any_record_stops_the_trace(tmp_path, captures):
    """Nothing could be read: the damage is a structural error, as tshark reads nothing."""
    raw = captures["pcapng"]
    first = next(b for b in pcapng_blocks(raw) if b[1] in PACKET_BLOCKS)
    path = tmp_path / "first.pcapng"
    path.write_bytes(with_u32(raw, first[0] + 4, 0))
    assert capinfos_count(path) in (None, 0)
    table, report, error = stage(path, tmp_path, "first")
    assert error is not None and error.check == "block structure" and table is None
    assert report["structural_errors"][0]["offset"] == first[0]

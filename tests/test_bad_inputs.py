"""A corpus of bad inputs, generated here, through the validation stage as the rule calls it.

Every case ends one of two ways:
- a clean result: the good rows staged, every other row in the invalid-rows file with its line
  and reason, and rows read = rows staged + rows in the invalid-rows file (counted in the files);
- one `TraceInputError` whose message is a single line naming the file, the row or field, and
  the check, with the report and the rejected rows kept in the log files Snakemake keeps.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import REPO
from trace_files import (
    COLUMNS,
    GOOD_ROWS,
    SYN,
    as_written,
    assert_clean,
    assert_one_clear_error,
    export,
    gzip_bytes,
    packet,
    packets,
    read_invalid,
    replaced,
    validate,
)

from tracelab.core.packets import read_staged
from tracelab.ingest.sheet import TraceSheetError, load_trace_sheet

# --- File problems --------------------------------------------------------------------------

def test_missing_path(tmp_path):
    assert_one_clear_error(validate(tmp_path, None), "readable")


def test_directory_as_path(tmp_path):
    (tmp_path / "trace.csv").mkdir()
    message = assert_one_clear_error(validate(tmp_path, None), "readable")
    assert "directory" in message.lower()


def test_empty_file(tmp_path):
    assert_one_clear_error(validate(tmp_path, b""), "header", row=1)


def test_header_only(tmp_path):
    message = assert_one_clear_error(validate(tmp_path, export([])), "zero valid rows")
    assert "no rows after the header" in message


def test_truncated_gzip_keeps_every_whole_row_and_rejects_the_cut_one(tmp_path):
    # URIs that do not compress away, so the cut lies well inside the file.
    rows = [packet(n, protocol="HTTP", info=f"GET /{hashlib.sha256(b'%d' % n).hexdigest()}")
            for n in range(1, 5001)]
    data = gzip_bytes(export(rows))
    cut = data[: int(len(data) * 0.9)]
    # What zlib inflates of the cut stream, independently: its whole lines are the rows kept.
    inflated = zlib.decompressobj(wbits=31).decompress(cut)
    whole_rows = inflated.count(b"\n") - 1
    run = validate(tmp_path, cut, name="trace.csv.gz", batch_bytes=65536)
    invalid = assert_clean(run, {"complete": 1})
    assert run.report["rows_valid"] == whole_rows
    assert invalid.column("location").to_pylist() == [f"line {whole_rows + 2}"]
    assert "cut short" in invalid.column("reason")[0].as_py()
    assert invalid.column("Info")[0].as_py() == \
        inflated[inflated.rindex(b"\n") + 1:].decode()


def test_gzip_of_garbage(tmp_path):
    garbage = bytes((i * 131 + 7) % 256 for i in range(4096))
    assert_one_clear_error(validate(tmp_path, b"\x1f\x8b" + garbage, name="trace.csv.gz"),
                           "readable")


@pytest.mark.parametrize("data", [bytes(range(256)) * 8,
                                  (REPO / "data/log4j_scan.pcapng").read_bytes()[:65536]],
                         ids=["binary-garbage", "pcapng-listed-as-csv"])
def test_binary_file_as_export(tmp_path, data):
    assert_one_clear_error(validate(tmp_path, data), "encoding", row=1)


def test_utf16_export_as_powershell_writes_it(tmp_path):
    data = b"\xff\xfe" + export(packets(5)).decode().encode("utf-16-le")
    message = assert_one_clear_error(validate(tmp_path, data), "encoding", row=1)
    assert "UTF-16" in message


def _pcap(records: list[bytes]) -> bytes:
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    body = b""
    for i, frame in enumerate(records):
        body += struct.pack("<IIII", 1_764_316_590 + i, 0, len(frame), len(frame)) + frame
    return header + body


def _ethernet_frame(i: int) -> bytes:
    # Ethernet + IPv4 (UDP, 198.18.0.2 -> 198.18.1.10) with 18 bytes of payload.
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 46, i, 0, 64, 17, 0,
                     bytes([198, 18, 0, 2]), bytes([198, 18, 1, 10]))
    udp = struct.pack("!HHHH", 40000 + i % 100, 53, 26, 0) + b"x" * 18
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp


def test_pcap_with_bad_magic(tmp_path):
    pytest.importorskip("tracelab.ingest.capture.reader")
    data = b"\x00\x01\x02\x03" + _pcap([_ethernet_frame(0)])[4:]
    run = validate(tmp_path, data, name="trace.pcap", source_format="pcap")
    assert run.error is not None
    message = assert_one_clear_error(run, run.error.check)
    assert "magic" in message.lower()


def test_pcap_with_a_truncated_last_record(tmp_path):
    pytest.importorskip("tracelab.ingest.capture.reader")
    data = _pcap([_ethernet_frame(i) for i in range(400)])
    run = validate(tmp_path, data[:-20], name="trace.pcap", source_format="pcap")
    assert run.error is None, str(run.error)
    staged = read_staged(run.paths["staged_path"]).num_rows
    invalid = read_invalid(run.paths["invalid_path"])
    # The cut record is no row (as capinfos counts): reported with its offset, not invalid.
    assert (run.report["rows_read"], staged, invalid.num_rows) == (399, 399, 0)
    (note,) = run.report["structural_notes"]
    assert note["check"] == "record complete" and note["record"] == 400  # says where and why


# --- Shape problems -------------------------------------------------------------------------

def test_missing_column(tmp_path):
    rows = [r[:5] + r[6:] for r in packets(5)]
    run = validate(tmp_path, export(rows, header=COLUMNS[:5] + COLUMNS[6:]))
    message = assert_one_clear_error(run, "columns", row=1, field="Length")
    assert "missing column(s) ['Length']" in message


def test_unknown_header_lists_what_was_expected(tmp_path):
    run = validate(tmp_path, export(packets(5), header=["Frame#", *COLUMNS[1:]]))
    message = assert_one_clear_error(run, "columns", row=1, field="No.")
    assert "'Frame#'" in message and f"expected {COLUMNS}" in message
    assert "_ws.col.No." in message  # says which other spellings are accepted


def test_duplicated_column(tmp_path):
    header = COLUMNS[:6] + ["Time"]
    run = validate(tmp_path, export(packets(5), header=header))
    # `Info` missing is reported first; either way line 1 and the columns check are named.
    assert_one_clear_error(run, "columns", row=1)


def test_duplicated_column_with_all_present(tmp_path):
    rows = [r + [r[1]] for r in packets(5)]
    run = validate(tmp_path, export(rows, header=COLUMNS + ["Zeit"]))
    message = assert_one_clear_error(run, "columns", row=1, field="Time")
    assert "duplicated column(s) ['Time']" in message


@pytest.mark.parametrize("header", [
    ["_ws.col.No.", "_ws.col.Time", "_ws.col.Source", "_ws.col.Destination",
     "_ws.col.Protocol", "_ws.col.Length", "_ws.col.Info"],
    ["frame.number", "_ws.col.def_time", "_ws.col.def_src", "_ws.col.def_dst",
     "_ws.col.protocol", "frame.len", "_ws.col.info"],
    ["Nr.", "Zeit", "Quelle", "Ziel", "Protokoll", "Länge", "Info"],
    ["N°", "Temps", "Source", "Destination", "Protocole", "Longueur", "Info"],
    ["Número", "Tiempo", "Origen", "Destino", "Protocolo", "Longitud", "Información"],
    ["No", "Время", "Источник", "Назначение", "Протокол", "Длина", "Информация"],
], ids=["tshark-ws-col", "tshark-fields", "de", "fr", "es", "ru"])
def test_aliased_headers_are_accepted(tmp_path, header):
    assert_clean(validate(tmp_path, export(packets(), header=header)), {})


def test_extra_and_reordered_columns(tmp_path):
    order = [6, 0, 2, 1, 3, 5, 4]
    header = [COLUMNS[i] for i in order]
    header.insert(3, "Delta time")
    rows = [[r[i] for i in order] for r in packets()]
    for r in rows:
        r.insert(3, "0.000001")
    run = validate(tmp_path, export(rows, header=header))
    assert_clean(run, {})
    assert run.report["extra_columns"] == ["Delta time"]
    staged = read_staged(run.paths["staged_path"])
    assert staged.column("frame").to_pylist()[:2] == [1, 2]
    assert staged.column("info")[0].as_py() == SYN


@pytest.mark.parametrize("delimiter,quoted", [(";", True), ("\t", False), ("\t", True),
                                              (";", False), (",", False)],
                         ids=["semicolon", "tab-unquoted", "tab-quoted", "semicolon-unquoted",
                              "comma-unquoted"])
def test_delimiter_sniffed_from_the_header(tmp_path, delimiter, quoted):
    run = validate(tmp_path, export(packets(), delimiter=delimiter, quoted=quoted))
    assert_clean(run, {})
    assert run.report["delimiter"] == delimiter
    staged = read_staged(run.paths["staged_path"])
    assert staged.column("info").to_pylist() == [SYN] * GOOD_ROWS


@pytest.mark.parametrize("bom,newline", [(True, "\n"), (False, "\r\n"), (True, "\r\n")],
                         ids=["bom", "crlf", "bom-crlf"])
def test_bom_and_crlf(tmp_path, bom, newline):
    run = validate(tmp_path, export(packets(), bom=bom, newline=newline))
    assert_clean(run, {})
    staged = read_staged(run.paths["staged_path"])
    assert staged.column("frame")[0].as_py() == 1
    assert staged.column("info").to_pylist() == [SYN] * GOOD_ROWS  # no stray "\r"


def test_unquoted_export_with_the_delimiter_inside_info(tmp_path):
    rows = replaced(packets(), 9, info="80  >  51292 [SYN, ACK] Seq=0 Ack=1 Win=65160 Len=0")
    run = validate(tmp_path, export(rows, quoted=False))
    invalid = assert_clean(run, {"columns": 1})
    assert invalid.column("location").to_pylist() == ["line 11"]
    reason = invalid.column("reason")[0].as_py()
    assert "8 fields where the header has 7" in reason and "unquoted" in reason
    assert invalid.column("Info")[0].as_py().startswith("10,2026-11-28")  # the whole record


def test_unquoted_export_where_every_row_breaks_stops_with_one_line(tmp_path):
    rows = [packet(n, info="80  >  1 [SYN, ACK] Seq=0") for n in range(1, 50)]
    assert_one_clear_error(validate(tmp_path, export(rows, quoted=False)), "zero valid rows",
                           row=2, field="record")


def test_a_quote_inside_an_unquoted_export_is_text(tmp_path):
    rows = replaced(packets(), 4, info='"GET /a"b HTTP/1.1')
    run = validate(tmp_path, export(rows, quoted=False))
    assert_clean(run, {})
    assert read_staged(run.paths["staged_path"]).column("info")[4].as_py() == \
        '"GET /a"b HTTP/1.1'


def test_malformed_rows_are_located_exactly_and_later_lines_stay_right(tmp_path):
    lines = export(packets()).decode().splitlines(keepends=True)
    # Line 11 loses fields, line 21 gains one; line 31's Length is bad.
    lines[10] = '"10","2026-11-28 07:56:30.000010"\n'
    lines[20] = lines[20].rstrip("\n") + ',"extra"\n'
    lines[30] = lines[30].replace('"74"', '"x"')
    run = validate(tmp_path, "".join(lines).encode(), max_invalid_fraction=0.05)
    invalid = assert_clean(run, {"columns": 2, "Length integer": 1})
    assert invalid.column("location").to_pylist() == ["line 11", "line 21", "line 31"]
    assert run.report["checks"]["columns"]["examples"][0]["line"] == 11


def test_malformed_rows_in_later_batches_are_located_exactly(tmp_path):
    lines = export(packets(3000)).decode().splitlines(keepends=True)
    for at in (1500, 2999):
        lines[at] = '"x"\n'
    run = validate(tmp_path, "".join(lines).encode(), batch_bytes=65536)
    invalid = assert_clean(run, {"columns": 2})
    assert invalid.column("location").to_pylist() == ["line 1501", "line 3000"]


def test_a_quote_never_closed_is_one_rejected_record_spanning_lines(tmp_path):
    lines = export(packets()).decode().splitlines(keepends=True)
    lines[100] = lines[100].replace(f'"{SYN}"', '"GET /x')
    run = validate(tmp_path, "".join(lines).encode())
    invalid = assert_clean(run, {"columns": 1})
    assert invalid.column("location").to_pylist() == ["line 101"]
    assert "over 2 lines" in invalid.column("reason")[0].as_py()
    # The two joined rows are in the file, whole.
    assert "GET /x\n\"101\"" in invalid.column("Info")[0].as_py()


def test_blank_lines_and_no_final_newline(tmp_path):
    data = export(packets()).decode()
    data = data.replace('"\n"51"', '"\n\n"51"').rstrip("\n") + "\n\n"
    run = validate(tmp_path, data.encode()[:-2])
    assert_clean(run, {})
    assert run.report["rows_read"] == GOOD_ROWS


# --- Value problems -------------------------------------------------------------------------

@pytest.mark.parametrize("column", ["Info", "Source"])
def test_non_utf8_bytes_put_the_row_aside(tmp_path, column):
    marker = "@LATIN1@"
    field = {"Info": "info", "Source": "src"}[column]
    rows = replaced(packets(), 41, **{field: f"caf{marker}"})
    run = validate(tmp_path, export(rows).replace(marker.encode(), b"\xe9"))
    invalid = assert_clean(run, {"utf8": 1})
    assert invalid.column("location").to_pylist() == ["line 43"]
    assert invalid.column(column)[0].as_py() == "caf\\xe9"  # shown, not dropped
    example = run.report["checks"]["utf8"]["examples"][0]
    assert (example["line"], example["field"]) == (43, column)


def test_every_row_in_latin1_stops_naming_utf8(tmp_path):
    rows = [packet(n, info="Café@") for n in range(1, 50)]
    data = export(rows).replace("é".encode(), b"\xe9")
    message = assert_one_clear_error(validate(tmp_path, data), "zero valid rows",
                                     row=2, field="Info")
    assert "utf8=49" in message


def test_embedded_quotes_and_newlines_in_info(tmp_path):
    info = 'GET /search?q="a"\nb\r\nc HTTP/1.1'
    rows = replaced(packets(), 9, info=info)
    rows = replaced(rows, 19, length="x")  # a bad row after the multi-line one
    run = validate(tmp_path, export(rows))
    invalid = assert_clean(run, {"Length integer": 1})
    # The record of No. 10 spans lines 11-13, so No. 20 starts on line 23.
    assert invalid.column("location").to_pylist() == ["line 23"]
    staged = read_staged(run.paths["staged_path"])
    assert staged.column("info")[9].as_py() == info


def test_one_megabyte_info(tmp_path):
    info = "GET /" + "A" * (1 << 20) + " HTTP/1.1"
    run = validate(tmp_path, export(replaced(packets(), 99, info=info)))
    assert_clean(run, {})
    assert read_staged(run.paths["staged_path"]).column("info")[99].as_py() == info


def test_a_record_longer_than_the_batch_names_the_setting(tmp_path):
    info = "A" * (1 << 20)
    run = validate(tmp_path, export(replaced(packets(), 99, info=info)), batch_bytes=65536)
    message = assert_one_clear_error(run, "readable", row=101)
    assert "validation.batch_bytes (65536 bytes)" in message


@pytest.mark.parametrize("bad_time", [
    "yesterday", "28/11/2026 07:56:30", "Nov 28, 2026 07:56:30.943779000 UTC", "",
    "2026-11-28 07:56", "2026-02-30 07:56:30", "2026-13-01 07:56:30", "2026-11-28 24:00:00",
    "0001-01-01 00:00:00", "9999-12-31 23:59:59", "99999999999", "9300000000.5", "-5",
])
def test_unparseable_and_impossible_times_put_the_row_aside(tmp_path, bad_time):
    run = validate(tmp_path, export(replaced(packets(), 149, time=bad_time)))
    invalid = assert_clean(run, {"Time parseable": 1})
    assert invalid.column("location").to_pylist() == ["line 151"]
    assert invalid.column("Time")[0].as_py() == as_written(bad_time)


def test_mixed_time_formats(tmp_path):
    rows = packets(4)
    rows[1][1] = "2026-11-28 07:56:30.000002123"        # ns digits
    rows[2][1] = "2026-11-28T07:56:30.000003"           # ISO 'T'
    rows[3][1] = "1764316590.000004"                    # epoch seconds
    run = validate(tmp_path, export(rows), timezone="UTC")
    assert_clean(run, {})
    assert run.report["time_formats"] == {"absolute": 3, "epoch_seconds": 1}
    ts = read_staged(run.paths["staged_path"]).column("ts").cast(pa.int64()).to_pylist()
    assert ts[1] - ts[0] == 1_123 and ts[2] - ts[0] == 2_000
    assert ts[3] == 1_764_316_590_000_004_000


def test_times_going_backwards_are_counted_not_rejected(tmp_path):
    rows = packets()
    rows[200][1] = "2026-11-28 07:56:29.000000"
    rows[201][1] = "2026-11-28 07:56:29.500000"
    run = validate(tmp_path, export(rows))
    assert_clean(run, {})
    assert run.report["time_backwards"]["count"] == 2
    assert run.report["time_backwards"]["examples"][0]["line"] == 202


def test_relative_times_stop_the_trace_saying_they_are_not_absolute(tmp_path):
    rows = [packet(n, time=f"{n / 1000:.6f}") for n in range(1, 100)]
    message = assert_one_clear_error(validate(tmp_path, export(rows)), "zero valid rows",
                                     row=2, field="Time")
    assert "Time in range=99" in message
    kept = json.loads((tmp_path / "results/logs/validate/t.report.json").read_text())
    assert "seconds since beginning of capture" in kept["warning"]


def test_duplicate_frame_numbers(tmp_path):
    rows = packets()
    rows.insert(120, list(rows[119]))
    invalid = assert_clean(validate(tmp_path, export(rows)), {"No. increasing": 1})
    assert invalid.column("location").to_pylist() == ["line 122"]


@pytest.mark.parametrize("number,check", [("0", "No. positive"), ("x", "No. integer"),
                                          ("-3", "No. positive"), ("", "No. integer"),
                                          ("1.5", "No. integer")])
def test_bad_frame_numbers(tmp_path, number, check):
    rows = packets()
    rows[0][0] = number
    invalid = assert_clean(validate(tmp_path, export(rows)), {check: 1})
    assert invalid.column("location").to_pylist() == ["line 2"]


@pytest.mark.parametrize("length,check", [
    ("-5", "Length in range"), ("0", "Length in range"), ("13", "Length in range"),
    ("abc", "Length integer"), ("", "Length integer"), ("300000", "Length in range"),
    ("99999999999999999999", "Length integer"), ("7e2", "Length integer"),
])
def test_bad_lengths(tmp_path, length, check):
    invalid = assert_clean(validate(tmp_path, export(replaced(packets(), 7, length=length))),
                           {check: 1})
    assert invalid.column("Length").to_pylist() == [as_written(length)]


@pytest.mark.parametrize("field,check", [("src", "Source non-empty"),
                                         ("dst", "Destination non-empty"),
                                         ("protocol", "Protocol non-empty")])
def test_empty_text_fields(tmp_path, field, check):
    assert_clean(validate(tmp_path, export(replaced(packets(), 7, **{field: "  "}))),
                 {check: 1})


def test_zero_valid_rows(tmp_path):
    rows = [packet(n, length="0") for n in range(1, 20)]
    message = assert_one_clear_error(validate(tmp_path, export(rows)), "zero valid rows",
                                     row=2, field="Length")
    assert "Length in range=19" in message and "'0'" in message


def test_too_many_invalid_rows(tmp_path):
    rows = packets()
    for at in (10, 20, 30, 40):
        rows[at][1] = "not a time"
    message = assert_one_clear_error(validate(tmp_path, export(rows)), "max_invalid_fraction",
                                     row=12, field="Time")
    assert "4 of 300 rows invalid" in message and "Time parseable=4" in message


def test_formula_cells_in_rejected_rows_are_neutralized(tmp_path):
    rows = replaced(packets(), 5, length="=1+1", info="=HYPERLINK(\"http://x\",\"y\")")
    rows = replaced(rows, 6, length="-5", src="@SUM(A1)", info="+cmd")
    invalid = assert_clean(validate(tmp_path, export(rows)),
                           {"Length integer": 1, "Length in range": 1})
    assert invalid.column("Length").to_pylist() == ["'=1+1", "'-5"]
    assert invalid.column("Info").to_pylist() == ["'=HYPERLINK(\"http://x\",\"y\")", "'+cmd"]
    assert invalid.column("Source").to_pylist() == ["198.18.0.2", "'@SUM(A1)"]


# --- Config problems ------------------------------------------------------------------------

SHEET_HEADER = "trace\tpath\tformat\tlabel\ttimezone\tdescription\n"


def _sheet(tmp_path, *rows) -> Path:
    (tmp_path / "a.csv").write_bytes(export(packets(3)))
    (tmp_path / "a.txt").write_bytes(export(packets(3)))
    path = tmp_path / "traces.tsv"
    path.write_text(SHEET_HEADER + "".join("\t".join(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("rows,expected", [
    ([("a", "a.csv", "", "", "", ""), ("a", "a.csv", "", "", "", "")],
     "line 3 (trace 'a'): duplicate trace name, first used on line 2"),
    ([("../x", "a.csv", "", "", "", "")],
     "line 2 (trace '../x'): field 'trace': '../x' does not match"),
    ([("a/b", "a.csv", "", "", "", "")], "line 2 (trace 'a/b'): field 'trace'"),
    ([(".hidden", "a.csv", "", "", "", "")], "field 'trace'"),
    ([("a", "a.csv", "excel", "", "", "")], "line 2 (trace 'a'): field 'format': 'excel'"),
    ([("a", "a.txt", "", "", "", "")], "field 'format': cannot infer"),
    ([("a", "missing.csv", "", "", "", "")], "field 'path': file not found"),
    ([("a", ".", "", "", "", "")], "field 'path': not a regular file"),
], ids=["duplicate", "dotdot", "slash", "leading-dot", "unknown-format", "unknown-suffix",
        "missing-path", "directory-path"])
def test_trace_sheet_problems_are_one_line(tmp_path, rows, expected):
    with pytest.raises(TraceSheetError) as error:
        load_trace_sheet(_sheet(tmp_path, *rows), tmp_path)
    message = str(error.value)
    assert expected in message and "\n" not in message
    assert message.startswith(f"trace sheet {tmp_path / 'traces.tsv'}")


def test_trace_name_error_says_what_names_may_be(tmp_path):
    with pytest.raises(TraceSheetError, match="used in output paths"):
        load_trace_sheet(_sheet(tmp_path, ("../x", "a.csv", "", "", "", "")), tmp_path)


def test_a_label_with_html_is_refused_naming_the_field(tmp_path):
    # Snakemake's report embeds params unescaped in a <script> block (tests/test_report.py), so
    # the sheet refuses markup in labels; the package still escapes labels wherever it shows
    # them (tests/test_safe_outputs.py).
    label = '<img src=x onerror=alert(1)> & "scan" | $x$'
    with pytest.raises(TraceSheetError, match=r"line 2 \(trace 'a'\): field 'label'"):
        load_trace_sheet(_sheet(tmp_path, ("a", "a.csv", "", label, "", "")), tmp_path)


def test_a_label_with_spaces_and_signs_is_kept(tmp_path):
    traces = load_trace_sheet(_sheet(tmp_path, ("a", "a.csv", "", "nmap sweep+log4j", "", "")),
                              tmp_path)
    assert traces.loc["a", "label"] == "nmap sweep+log4j"

import gzip
import importlib
import subprocess
import sys

import pytest
import yaml
from snakemake.io import PeriodicityDetector

from tracelab.ingest.export.header import Header
from tracelab.ingest.formats import (
    BY_NAME,
    FORMATS,
    content_format,
    format_by_suffix,
    trace_name_for,
)
from tracelab.ingest.sheet import SCHEMA_PATH, TraceSheetError, load_trace_sheet
from tracelab.ingest.validate import READERS

HEADER = "trace\tpath\tformat\tlabel\ttimezone\tdescription\n"


@pytest.fixture
def trace_file(tmp_path):
    (tmp_path / "a.csv.gz").write_bytes(b"")
    return tmp_path


def sheet(tmp_path, *rows):
    path = tmp_path / "traces.tsv"
    path.write_text(HEADER + "".join("\t".join(r) + "\n" for r in rows))
    return path


def test_bundled_sheet_loads_with_absolute_paths():
    from conftest import REPO
    traces = load_trace_sheet(REPO / "config" / "traces.tsv", REPO)
    assert {"log4j_scan", "web_browsing"} <= set(traces.index)
    assert traces.loc["log4j_scan", "format"] == "wireshark_csv"
    assert traces.loc["log4j_scan", "label"] == "scan"
    assert all(p.startswith("/") for p in traces["path"])


def test_format_inferred_and_defaults_filled(trace_file):
    traces = load_trace_sheet(sheet(trace_file, ("a", "a.csv.gz", "", "", "", "")), trace_file)
    row = traces.loc["a"]
    assert (row["format"], row["timezone"], row["label"]) == ("wireshark_csv", "UTC", "a")


@pytest.mark.parametrize("name,expected", [
    ("x.pcap", "pcap"), ("x.cap", "pcap"), ("x.pcapng.gz", "pcapng"), ("x.CSV", "wireshark_csv"),
    ("x.txt", None),
])
def test_format_by_suffix(name, expected):
    assert format_by_suffix(name) == expected


@pytest.mark.parametrize("row,message", [
    (("../x", "a.csv.gz", "", "", "", ""), "line 2 (trace '../x'): field 'trace'"),
    (("a/b", "a.csv.gz", "", "", "", ""), "field 'trace'"),
    (("a", "missing.csv", "", "", "", ""), "field 'path': file not found"),
    (("a", "a.csv.gz", "excel", "", "", ""), "field 'format'"),
    (("a", "a.csv.gz", "", "", "Mars/Olympus", ""), "field 'timezone': unknown IANA time zone"),
])
def test_bad_rows_named_in_one_line(trace_file, row, message):
    with pytest.raises(TraceSheetError) as error:
        load_trace_sheet(sheet(trace_file, row), trace_file)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_duplicate_names_point_to_first_use(trace_file):
    rows = [("a", "a.csv.gz", "", "", "", "")] * 2
    with pytest.raises(TraceSheetError,
                       match=r"line 3 .*duplicate trace name, first used on line 2"):
        load_trace_sheet(sheet(trace_file, *rows), trace_file)


# --- Rows not separated by tabs; declared format against the content --------------------------

def test_a_row_separated_by_spaces_is_named_as_such(trace_file):
    path = trace_file / "traces.tsv"
    path.write_text(HEADER + "a a.csv.gz wireshark_csv scan UTC\n")
    with pytest.raises(TraceSheetError) as error:
        load_trace_sheet(path, trace_file)
    assert str(error.value) == (f"trace sheet {path}: the sheet is tab-separated; line 2 has "
                                f"1 field, the header 6")


def test_a_row_with_more_fields_than_the_header(trace_file):
    path = sheet(trace_file, ("a", "a.csv.gz", "", "", "", "", "extra"))
    with pytest.raises(TraceSheetError, match="tab-separated; line 2 has 7 fields, the header 6"):
        load_trace_sheet(path, trace_file)


def test_trailing_empty_fields_may_be_left_out_and_blank_lines_skipped(trace_file):
    path = trace_file / "traces.tsv"
    path.write_text(HEADER + "\n" + "a\ta.csv.gz\n\n")
    traces = load_trace_sheet(path, trace_file)
    assert traces.loc["a", "line"] == 3 and traces.loc["a", "timezone"] == "UTC"


def test_a_space_separated_header_says_tabs(trace_file):
    path = trace_file / "traces.tsv"
    path.write_text(HEADER.replace("\t", " ") + "a\ta.csv.gz\n")
    with pytest.raises(TraceSheetError, match=r"missing column\(s\) \['trace', 'path'\]; "
                                              r"expected .* separated by tabs"):
        load_trace_sheet(path, trace_file)


PCAPNG_HEAD = bytes.fromhex("0a0d0d0a1c0000004d3c2b1a01000000ffffffffffffffff1c000000")
PCAP_HEAD = bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000")


@pytest.mark.parametrize("content,gz,expected", [
    (PCAPNG_HEAD, False, "pcapng"), (PCAPNG_HEAD, True, "pcapng"),
    (PCAP_HEAD, False, "pcap"), (bytes.fromhex("a1b23c4d") + PCAP_HEAD[4:], True, "pcap"),
    (b'"No.","Time"\n"1","x"\n', False, "wireshark_csv"),
    ("\ufeff\"No.\",\"Zeit\",\"Quelle\"\n".encode(), True, "wireshark_csv"),
    (b"", False, None), ("No.,Time\n".encode("utf-16"), False, None),
    (bytes(range(256)), False, None), (b"\x1f\x8b\x08garbage", False, None),
    (b"No.;Zeit;Quelle\r1;x;y\r", False, "wireshark_csv"),
    (b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon\n", False, None),
    (b"# a comment\nkey: value, other\n", True, None),
], ids=["pcapng", "pcapng.gz", "pcap", "pcap-ns.gz", "csv", "csv-bom.gz", "empty", "utf16",
        "binary", "bad-gzip", "csv-semicolon-cr", "passwd", "text-without-a-header.gz"])
def test_content_format_from_the_first_bytes(tmp_path, content, gz, expected):
    path = tmp_path / "f"
    path.write_bytes(gzip.compress(content) if gz else content)
    assert content_format(path) == expected


def test_the_bundled_traces_show_their_declared_formats():
    from conftest import REPO
    for name, fmt in [("log4j_scan.csv.gz", "wireshark_csv"), ("log4j_scan.pcapng", "pcapng"),
                      ("web_browsing.csv.gz", "wireshark_csv")]:
        assert content_format(REPO / "data" / name) == fmt


@pytest.mark.parametrize("declared,content,shown", [
    ("wireshark_csv", PCAPNG_HEAD, "a pcapng capture"),
    ("pcap", PCAPNG_HEAD, "a pcapng capture"),
    ("pcapng", b'"No.","Time"\n', BY_NAME["wireshark_csv"].shown_as),
])
def test_a_declared_format_the_content_contradicts(tmp_path, declared, content, shown):
    (tmp_path / "t.bin").write_bytes(content)
    path = sheet(tmp_path, ("t", "t.bin", declared, "", "", ""))
    with pytest.raises(TraceSheetError) as error:
        load_trace_sheet(path, tmp_path)
    assert f"line 2 (trace 't'): field 'format': {declared!r}, but the file holds {shown}" in \
        str(error.value)


def test_content_that_shows_no_format_is_left_to_the_reader(tmp_path):
    # A damaged or UTF-16 file stops its own job, with the reader's detailed message, not the
    # whole run.
    (tmp_path / "t.csv").write_bytes("No.,Time\n".encode("utf-16"))
    traces = load_trace_sheet(sheet(tmp_path, ("t", "t.csv", "", "", "", "")), tmp_path)
    assert traces.loc["t", "format"] == "wireshark_csv"


@pytest.mark.parametrize("file,name", [
    ("log4j_scan.csv.gz", "log4j_scan"), ("cap.pcapng", "cap"), ("x.PCAP.GZ", "x"),
    ("my capture (1).pcapng", "my_capture_1"), (".hidden.csv", "hidden"),
    ("notes.txt", "notes.txt"), ("()", "trace"),
])
def test_trace_name_for_a_file(file, name):
    assert trace_name_for(file) == name


# --- One registry of formats ----------------------------------------------------------------

def test_the_sheet_schema_lists_exactly_the_registered_formats():
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    assert schema["properties"]["format"]["enum"] == ["", *BY_NAME]


def test_readers_come_from_the_registry_and_each_has_a_stage():
    assert READERS == {fmt.name: fmt.reader for fmt in FORMATS}
    for module in set(READERS.values()):
        assert callable(importlib.import_module(module).stage)


def test_the_registry_knows_the_capture_readers_magic_numbers():
    from tracelab.ingest.capture.pcap import PCAP_MAGIC
    from tracelab.ingest.capture.pcapng import PCAPNG_SHB
    assert set(BY_NAME["pcap"].magic) == set(PCAP_MAGIC)
    assert BY_NAME["pcapng"].magic == (PCAPNG_SHB.to_bytes(4, "little"),)


@pytest.mark.parametrize("delimiter", BY_NAME["wireshark_csv"].delimiters)
def test_the_registry_knows_the_export_readers_delimiters(delimiter):
    assert Header(delimiter.join(["No.", "Time", "Source"])).delimiter == delimiter


def test_an_unknown_suffix_names_every_format_and_suffix(trace_file):
    (trace_file / "t.txt").write_bytes(b"")
    with pytest.raises(TraceSheetError) as error:
        load_trace_sheet(sheet(trace_file, ("t", "t.txt", "", "", "", "")), trace_file)
    assert str(error.value).endswith(
        "field 'format': cannot infer the format of 't.txt'; name it (wireshark_csv, pcap, "
        "pcapng) or use a known suffix (.cap, .csv, .pcap, .pcapng, optionally .gz)")


# --- Names that would fail later: too long, equal but for case, periodic ----------------------

def test_a_name_of_100_characters_passes_and_one_of_101_is_refused(trace_file):
    ok = "n" + "0123456789" * 9 + "abcdefghi"
    assert len(ok) == 100
    assert list(load_trace_sheet(sheet(trace_file, (ok, "a.csv.gz")), trace_file).index) == [ok]
    with pytest.raises(TraceSheetError) as error:
        load_trace_sheet(sheet(trace_file, (ok + "j", "a.csv.gz")), trace_file)
    assert "line 2" in str(error.value) and "field 'trace'" in str(error.value)
    assert "is too long" in str(error.value) and "\n" not in str(error.value)


def test_names_equal_but_for_case_are_refused_naming_both_lines(trace_file):
    with pytest.raises(TraceSheetError) as error:
        load_trace_sheet(sheet(trace_file, ("Scan", "a.csv.gz"), ("web", "a.csv.gz"),
                               ("scan", "a.csv.gz")), trace_file)
    assert str(error.value) == (
        f"trace sheet {trace_file / 'traces.tsv'}, line 4 (trace 'scan'): trace name differs "
        f"from 'Scan' (line 2) only by case; the two would share output files on a "
        f"case-insensitive file system")


@pytest.mark.parametrize("name", [
    "a" * 20, "a" * 19, "trace_" + "0" * 20, "trace_" + "0" * 19, "ab" * 20, "ab" * 19 + "a",
    "x" + "abc" * 20, "scan_2026_" + "12" * 21, "log4j_scan", "web_browsing",
])
def test_a_name_is_refused_exactly_when_snakemake_takes_it_for_periodic(trace_file, name):
    periodic = PeriodicityDetector().is_periodic(name) is not None
    path = sheet(trace_file, (name, "a.csv.gz"))
    if not periodic:
        assert list(load_trace_sheet(path, trace_file).index) == [name]
        return
    with pytest.raises(TraceSheetError, match=r"line 2 .*field 'trace': ends in .* repeated "
                                              r"20 or more times, which Snakemake refuses"):
        load_trace_sheet(path, trace_file)


def test_a_job_imports_only_the_reader_of_its_format():
    code = ("import sys; from tracelab.ingest import validate, sheet; "
            "print(sorted(m for m in sys.modules if m in "
            f"{sorted(set(READERS.values()))!r}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"

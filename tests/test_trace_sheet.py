import gzip

import pytest

from tracelab.ingest.sheet import (
    TraceSheetError,
    content_format,
    infer_format,
    load_trace_sheet,
    trace_name_for,
)

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
def test_infer_format(name, expected):
    assert infer_format(name) == expected


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
], ids=["pcapng", "pcapng.gz", "pcap", "pcap-ns.gz", "csv", "csv-bom.gz", "empty", "utf16",
        "binary", "bad-gzip"])
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
    ("pcapng", b'"No.","Time"\n', "UTF-8 text (a CSV export)"),
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

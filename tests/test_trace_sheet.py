import pytest

from tracelab.ingest.sheet import TraceSheetError, infer_format, load_trace_sheet

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
    with pytest.raises(TraceSheetError, match=r"line 3 .*duplicate trace name, first used on line 2"):
        load_trace_sheet(sheet(trace_file, *rows), trace_file)

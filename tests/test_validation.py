"""Stage 1 on small hand-made exports: what is kept, what is put aside, and why."""

import json
import subprocess
import sys

import pandas as pd
import pytest
from conftest import run_snakemake
from trace_files import HEADER, write_export

from tracelab.core.errors import TraceInputError
from tracelab.core.packets import read_staged
from tracelab.ingest.validate import validate_trace

GOOD = [
    ("1", "2021-12-15 15:35:00.237882", "198.18.0.2", "198.18.1.10", "TCP", "74",
     "51292  >  80 [SYN] Seq=0 Win=64240 Len=0"),
    ("2", "2021-12-15 15:35:00.237900", "198.18.1.10", "198.18.0.2", "TCP", "74",
     "80  >  51292 [SYN, ACK] Seq=0 Ack=1 Win=65160 Len=0"),
    ("5", "2021-12-15 15:35:00.238000", "198.18.0.2", "198.18.1.10", "HTTP", "212",
     "GET /index.html HTTP/1.1 "),
]


def run(tmp_path, rows, *, header=HEADER, timezone="UTC", **settings):
    source = write_export(tmp_path / "trace.csv", rows, header=header)
    paths = {"staged_path": tmp_path / "staged.arrow", "report_path": tmp_path / "report.json",
             "invalid_path": tmp_path / "invalid.csv"}
    report = validate_trace(trace="t", source=source, source_format="wireshark_csv",
                            timezone=timezone, settings=settings or None, **paths)
    return report, paths


def invalid_rows(paths):
    return pd.read_csv(paths["invalid_path"], dtype=str, keep_default_na=False)


def test_clean_export_passes_and_stages_every_row(tmp_path):
    report, paths = run(tmp_path, GOOD)
    assert report["status"] == "passed"
    assert (report["rows_read"], report["rows_valid"], report["rows_invalid"]) == (3, 3, 0)
    staged = read_staged(paths["staged_path"])
    assert staged.column("frame").to_pylist() == [1, 2, 5]  # gaps after a display filter are fine
    assert str(staged.column("ts")[0].as_py()) == "2021-12-15 15:35:00.237882+00:00"
    assert json.loads(paths["report_path"].read_text())["status"] == "passed"
    assert len(invalid_rows(paths)) == 0


def test_nanosecond_epoch_and_local_times(tmp_path):
    rows = [GOOD[0][:1] + ("2021-12-15 15:35:00.237882123",) + GOOD[0][2:],
            ("2",) + ("1639582500.5",) + GOOD[1][2:]]
    report, paths = run(tmp_path, rows, timezone="Europe/Berlin", max_invalid_fraction=0.0)
    ts = read_staged(paths["staged_path"]).column("ts").cast("int64").to_pylist()
    # 15:35 in Berlin (CET, UTC+1) is 14:35 UTC; the epoch value is absolute already.
    assert ts[0] == int(pd.Timestamp("2021-12-15 14:35:00.237882123", tz="UTC").value)
    assert ts[1] == 1639582500_500000000
    assert report["time_formats"] == {"absolute": 1, "epoch_seconds": 1}


def test_invalid_rows_kept_aside_with_line_and_reason(tmp_path):
    bad = [
        ("3", "yesterday", "198.18.0.2", "198.18.1.10", "TCP", "66", "x"),
        ("4", "2021-12-15 15:35:00.238100", "", "198.18.1.10", "TCP", "-5", "y"),
        ("4", "2021-12-15 15:35:00.238200", "198.18.0.2", "198.18.1.10", "TCP", "66", "dup"),
    ]
    rows = GOOD[:2] + bad + [GOOD[2]]
    report, paths = run(tmp_path, rows, max_invalid_fraction=0.9)
    assert report["status"] == "passed_with_invalid_rows"
    assert report["rows_read"] == report["rows_valid"] + report["rows_invalid"] == 6
    assert report["rows_invalid"] == 2
    checks = report["checks"]
    assert checks["Time parseable"]["failures"] == 1
    assert checks["Time parseable"]["examples"][0]["line"] == 4
    assert checks["Source non-empty"]["failures"] == 1
    assert checks["Length in range"]["failures"] == 1  # -5 is an integer, out of range
    # The third bad row is valid on its own; it is accepted once the row before it fell out.
    assert checks["No. increasing"]["failures"] == 0
    rejected = invalid_rows(paths)
    assert rejected["location"].tolist() == ["line 4", "line 5"]
    assert rejected["Time"].tolist() == ["yesterday", "2021-12-15 15:35:00.238100"]
    assert "Source non-empty" in rejected["reason"][1]
    assert "Length in range" in rejected["reason"][1]
    assert read_staged(paths["staged_path"]).num_rows == 4


def test_frame_numbers_must_increase(tmp_path):
    rows = GOOD + [("5",) + GOOD[2][1:], ("4",) + GOOD[2][1:]]
    report, _ = run(tmp_path, rows, max_invalid_fraction=0.5)
    assert report["checks"]["No. increasing"]["failures"] == 2


def test_times_going_backwards_are_counted_not_resorted(tmp_path):
    rows = [GOOD[0], ("2", "2021-12-15 15:35:00.237000") + GOOD[1][2:], GOOD[2]]
    report, paths = run(tmp_path, rows)
    assert report["time_backwards"]["count"] == 1
    assert report["time_backwards"]["examples"][0]["line"] == 3
    assert read_staged(paths["staged_path"]).column("frame").to_pylist() == [1, 2, 5]


def test_over_the_invalid_fraction_fails_naming_file_checks_and_report(tmp_path):
    rows = GOOD + [("9", "2021-12-15 15:35:01", "a", "b", "TCP", "5", "too short")]
    with pytest.raises(TraceInputError) as error:
        run(tmp_path, rows)
    message = str(error.value)
    assert "trace.csv" in message and "max_invalid_fraction" in message
    assert "Length in range=1" in message and "report.json" in message
    assert json.loads((tmp_path / "report.json").read_text())["status"] == "failed"


def test_missing_column_is_structural(tmp_path):
    header = '"No.","Time","Source","Destination","Protocol","Info"\n'
    rows = [r[:5] + r[6:] for r in GOOD]
    with pytest.raises(TraceInputError, match=r"line 1, field 'Length': check 'columns'"):
        run(tmp_path, rows, header=header)


def test_extra_columns_allowed_and_reported(tmp_path):
    header = HEADER.rstrip("\n") + ',"Delta"\n'
    report, _ = run(tmp_path, [r + ("0.1",) for r in GOOD], header=header)
    assert report["status"] == "passed"
    assert report["extra_columns"] == ["Delta"]


def test_tshark_arrow_and_gzip(tmp_path):
    rows = [r[:6] + (r[6].replace("  >  ", " → "),) for r in GOOD]
    source = write_export(tmp_path / "t.csv.gz", rows, gz=True)
    report = validate_trace(trace="t", source=source, source_format="wireshark_csv",
                            staged_path=tmp_path / "s.arrow", report_path=tmp_path / "r.json",
                            invalid_path=tmp_path / "i.csv")
    assert report["rows_valid"] == 3
    assert "→" in read_staged(tmp_path / "s.arrow").column("info")[0].as_py()


# --- A full disk: nothing half-written, one line naming the file ------------------------------

FULL_DISK_STAGE = '''
import errno, sys, types
import pyarrow as pa
import pyarrow.parquet as pq
from tracelab.core import atomic
from tracelab.core.runner import run_stage

out, log, kind = sys.argv[1:]
job = types.SimpleNamespace(log=[log], config={"progress_interval_s": 5}, rule="stage",
                            wildcards={"trace": "t"})

def pyarrow_full(table, where, **options):  # pyarrow's error: the errno in its text only
    with open(where, "wb") as handle:
        handle.write(b"PAR1 half")
    raise OSError("Error writing bytes to file. Detail: [errno 28] No space left on device")

def stage():
    if kind == "pyarrow":
        pq.write_table = pyarrow_full
        atomic.write_parquet(pa.table({"x": [1]}), out)
    with atomic.atomic_path(out) as part:
        part.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

run_stage(job, stage)
'''


@pytest.mark.parametrize("kind", ["os", "pyarrow"])
def test_a_full_disk_stops_the_job_with_one_line_and_no_half_file(tmp_path, kind):
    out, log = tmp_path / "out" / "t.json", tmp_path / "t.log"
    result = subprocess.run([sys.executable, "-c", FULL_DISK_STAGE, str(out), str(log), kind],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert result.stderr == f"tracelab: error: no space left on device writing {out}\n"
    assert list(out.parent.iterdir()) == []  # neither the output nor its temporary
    assert "no space left on device writing" in log.read_text()
    assert "Traceback" not in log.read_text()


def test_a_full_results_disk_leaves_no_empty_report_and_says_so(workflow_copy):
    """The bundled web trace on a 300 KiB tmpfs: its staged table does not fit."""
    results = workflow_copy / "results"
    results.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(results)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        run = run_snakemake(workflow_copy, "--cores", "1", "results/validation/web_browsing.json",
                            check=False)
        files = {str(p.relative_to(results)): p.stat().st_size
                 for p in results.rglob("*") if p.is_file()}
        log = (results / "logs/validate/web_browsing.log").read_text()
    finally:
        subprocess.run(["umount", str(results)], check=True)
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if line.startswith("tracelab: error:")]
    assert lines == ["tracelab: error: no space left on device writing "
                     "results/staged/web_browsing.arrow"]
    assert "Traceback" not in run.stderr + log and "unexpected failure" not in log
    assert files == {"logs/validate/web_browsing.log": len(log.encode())}

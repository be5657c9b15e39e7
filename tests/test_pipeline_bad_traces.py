"""The real `snakemake --keep-going` on the bundled traces plus several bad ones.

What "every other trace still finishes" means here: validation, normalization and features of
every good trace finish, and every bad trace stops at validation with one `tracelab: error:`
line naming file, row or field, and check, its report and rejected rows kept under
`results/logs/validate/`. The comparison takes every trace of the sheet as input, so it does
not run while one of them fails, and the run exits non-zero. (The targets are each trace's
features and the comparison; the security stages hang off the packet tables like features.)

Config problems stop the run before any job, with one line naming the sheet row and field.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib

import pyarrow.csv as pacsv
import pytest
from conftest import REPO, add_sheet_row, copy_workflow, dry_runs, run_snakemake

pytestmark = pytest.mark.slow

HEADER = ["No.", "Time", "Source", "Destination", "Protocol", "Length", "Info"]
GOOD = [line.split("\t")[0] for line in
        (REPO / "config/traces.tsv").read_text().splitlines()[1:] if line.strip()]
# trace -> (its file, a pattern of its one error line between the file name and the report).
# One of each kind of stop (the file, its header, the rows); test_bad_inputs has every case.
BAD = {
    "garbage_gz": ("garbage.csv.gz",
                   r", line 1: check 'readable' failed: cannot read the file: corrupt gzip .*"),
    "renamed": ("renamed.csv", r", line 1, field 'No\.': check 'columns' failed: .*'Frame#'.*"),
    "many_bad": ("many_bad.csv", (r", line 6, field 'Length': check 'max_invalid_fraction' "
                                  r"failed: 10 of 200 rows invalid .*")),
}

def _export(rows, header=HEADER) -> bytes:
    lines = [",".join(f'"{v}"' for v in row) for row in [header, *rows]]
    return ("\n".join(lines) + "\n").encode()


def _rows(count, *, length=lambda n: "66"):
    return [[n, f"2026-11-28 08:00:00.{n:06d}", "198.18.0.2", "198.18.1.1", "TCP",
             length(n), f"{40000 + n}  >  80 [ACK] Seq=1 Ack=1 Win=502 Len=0"]
            for n in range(1, count + 1)]


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("bad") / "wf")
    data = workdir / "data"
    whole = gzip.compress(_export(_rows(3000)), mtime=0)
    (data / "truncated.csv.gz").write_bytes(whole[: len(whole) // 2])
    (data / "garbage.csv.gz").write_bytes(b"\x1f\x8b" + bytes((i * 131 + 7) % 256
                                                               for i in range(4096)))
    (data / "renamed.csv").write_bytes(_export(_rows(50), header=["Frame#", *HEADER[1:]]))
    (data / "many_bad.csv").write_bytes(
        _export(_rows(200, length=lambda n: "0" if n % 20 == 5 else "66")))
    (data / "one_bad_row.csv").write_bytes(
        _export(_rows(400, length=lambda n: "x" if n == 321 else "66")))
    sheet = workdir / "config/traces.tsv"
    lines = sheet.read_text().splitlines()
    lines += [f"{name}\tdata/{file}\t\tbad\tUTC\t" for name, (file, _) in BAD.items()]
    lines += ["one_bad_row\tdata/one_bad_row.csv\t\tnormal\tUTC\t",
              "truncated\tdata/truncated.csv.gz\t\tnormal\tUTC\t"]
    sheet.write_text("\n".join(lines) + "\n")
    traces = [line.split("\t")[0] for line in lines[1:]]
    targets = [f"results/features/{trace}/summary.json" for trace in traces]
    result = run_snakemake(workdir, "--cores", "2", "--keep-going", *targets,
                           "results/compare/summary.csv", check=False)
    return workdir, result


def test_the_run_fails_overall(bad_run):
    _, result = bad_run
    assert result.returncode != 0


@pytest.mark.parametrize("trace", sorted(BAD))
def test_each_bad_trace_stops_with_one_line(bad_run, trace):
    workdir, result = bad_run
    file, pattern = BAD[trace]
    source = workdir / "data" / file
    lines = [line for line in result.stderr.splitlines()
             if line.startswith(f"tracelab: error: {source}")]
    assert len(lines) == 1, result.stderr[-3000:]
    kept = workdir / f"results/logs/validate/{trace}.report.json"
    assert re.fullmatch(rf"tracelab: error: {re.escape(str(source))}{pattern} "
                        rf"\(full report: {re.escape(str(kept.relative_to(workdir)))}\)",
                        lines[0]), lines[0]
    report = json.loads(kept.read_text())
    assert report["status"] == "failed" and report["trace"] == trace
    assert (workdir / f"results/logs/validate/{trace}.invalid.csv").exists()
    # Snakemake removed the failed job's outputs; nothing of the trace went further.
    assert not (workdir / f"results/validation/{trace}.json").exists()
    assert not (workdir / f"results/staged/{trace}.arrow").exists()
    assert not (workdir / f"results/packets/{trace}.parquet").exists()


def test_bad_input_never_shows_a_python_traceback(bad_run):
    _, result = bad_run
    assert "Traceback (most recent call last)" not in result.stderr
    assert "Traceback (most recent call last)" not in result.stdout


def test_rejected_rows_of_the_failed_trace_are_kept(bad_run):
    workdir, _ = bad_run
    kept = pacsv.read_csv(workdir / "results/logs/validate/many_bad.invalid.csv")
    assert kept.num_rows == 10
    assert kept.column("location").to_pylist()[:2] == ["line 6", "line 26"]
    assert set(kept.column("reason").to_pylist()) == {"Length in range"}


@pytest.mark.parametrize("trace", [*GOOD, "one_bad_row", "truncated"])
def test_good_traces_finish_validation_normalization_and_features(bad_run, trace):
    workdir, _ = bad_run
    summary = json.loads((workdir / f"results/features/{trace}/summary.json").read_text())
    report = json.loads((workdir / f"results/validation/{trace}.json").read_text())
    assert summary["packets"] == report["rows_valid"] > 0
    assert report["rows_read"] == report["rows_valid"] + report["rows_invalid"]
    kept = workdir / f"results/logs/validate/{trace}.report.json"
    assert json.loads(kept.read_text()) == report


def test_a_trace_with_one_bad_row_goes_on_without_it(bad_run):
    workdir, _ = bad_run
    report = json.loads((workdir / "results/validation/one_bad_row.json").read_text())
    assert report["status"] == "passed_with_invalid_rows"
    invalid = pacsv.read_csv(workdir / "results/validation/one_bad_row.invalid.csv")
    assert invalid.column("location").to_pylist() == ["line 322"]
    assert invalid.column("Length").to_pylist() == ["x"]


def test_a_truncated_gzip_export_goes_on_with_its_whole_rows(bad_run):
    workdir, _ = bad_run
    inflated = zlib.decompressobj(wbits=31).decompress(
        (workdir / "data/truncated.csv.gz").read_bytes())
    whole_rows = inflated.count(b"\n") - 1
    report = json.loads((workdir / "results/validation/truncated.json").read_text())
    assert (report["status"], report["rows_valid"]) == ("passed_with_invalid_rows", whole_rows)
    invalid = pacsv.read_csv(workdir / "results/validation/truncated.invalid.csv")
    assert invalid.column("location").to_pylist() == [f"line {whole_rows + 2}"]


def test_the_comparison_waits_for_every_trace(bad_run):
    workdir, result = bad_run
    assert not (workdir / "results/compare/summary.csv").exists()
    assert "compare_traces" not in re.findall(r"Error in rule (\w+)", result.stdout +
                                              result.stderr)


# --- Config problems, through a real dry run --------------------------------------------------

ADDED_LINE = len((REPO / "config/traces.tsv").read_text().splitlines()) + 1
CONFIG_CASES = {
    "duplicate": ("log4j_scan\tdata/log4j_scan.csv.gz\t\tscan\tUTC\t",
                  f"line {ADDED_LINE} (trace 'log4j_scan'): duplicate trace name, first used on "
                  f"line 2"),
    "dotdot": ("../x\tdata/log4j_scan.csv.gz\t\tscan\tUTC\t",
               f"line {ADDED_LINE} (trace '../x'): field 'trace': '../x' does not match"),
    "unknown_format": ("c\tdata/log4j_scan.csv.gz\tpcapx\tscan\tUTC\t",
                       f"line {ADDED_LINE} (trace 'c'): field 'format': 'pcapx' is not one of"),
}


@pytest.fixture(scope="module")
def config_runs(tmp_path_factory):
    return dry_runs(tmp_path_factory,
                    {case: add_sheet_row(row) for case, (row, _) in CONFIG_CASES.items()})


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_config_problem_stops_the_dry_run_with_one_line(config_runs, case):
    workdir, returncode, output = config_runs[case]
    expected = CONFIG_CASES[case][1]
    assert returncode != 0
    lines = [line for line in output.splitlines() if expected in line]
    assert len(lines) == 1, output[-2000:]
    assert lines[0].startswith(f"trace sheet {workdir / 'config/traces.tsv'}")
    assert not (workdir / "results").exists()

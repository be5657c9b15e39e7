"""The command line through its real interface (`python -m tracelab` in a subprocess, as the
installed `tracelab` script runs it), and the one-call Python functions."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import warnings

import pandas as pd
import pyarrow as pa
import pytest
from conftest import REPO, run_snakemake, tracelab
from trace_files import write_export

from tracelab.core.errors import TraceInputError
from tracelab.core.packets import PACKET_SCHEMA

CSV = REPO / "data/log4j_scan.csv.gz"
PCAPNG = REPO / "data/log4j_scan.pcapng"


def fields(output: str) -> dict[str, str]:
    """`Name: value` lines of the summary."""
    return {name: value.strip() for name, value in
            (line.split(":", 1) for line in output.splitlines())}


@pytest.fixture(scope="module")
def raw_export() -> pd.DataFrame:
    """The bundled export as pandas reads it: the independent account of the packets."""
    frame = pd.read_csv(CSV)
    frame["Time"] = pd.to_datetime(frame["Time"])
    return frame


def test_pyproject_declares_the_tracelab_script():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"tracelab": "tracelab.cli:main"}
    assert any(dep.startswith(("pygments=", "pygments>")) for dep in project["dependencies"])


def test_inspect_a_csv_export_matches_pandas_on_the_raw_file(tmp_path, raw_export):
    result = tracelab("inspect", CSV, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    found = fields(result.stdout)
    span = raw_export["Time"].max() - raw_export["Time"].min()
    duration = span.total_seconds()
    data_bytes = int(raw_export["Length"].sum())
    assert found["File type"] == "wireshark_csv"
    assert found["Validation"] == f"passed ({len(raw_export):,} of {len(raw_export):,} rows valid)"
    assert found["Number of packets"] == f"{len(raw_export):,}"
    assert found["First packet time"].startswith(
        raw_export["Time"].min().strftime("%Y-%m-%dT%H:%M:%S.%f"))
    assert found["Last packet time"].startswith(
        raw_export["Time"].max().strftime("%Y-%m-%dT%H:%M:%S.%f"))
    seconds, ns = divmod(span.value, 10**9)
    assert found["Capture duration"] == f"{seconds:,}.{ns:09d} seconds"
    assert found["SHA256"] == hashlib.sha256(CSV.read_bytes()).hexdigest()
    assert found["File size"] == f"{CSV.stat().st_size:,} bytes"
    assert found["Strict time order"] == str(raw_export["Time"].is_monotonic_increasing)
    assert found["Data size"] == f"{data_bytes:,} bytes"
    assert found["Average packet size"] == f"{data_bytes / len(raw_export):,.2f} bytes"
    assert found["Average packet rate"] == f"{len(raw_export) / duration:,.2f} packets/s"
    assert found["Data byte rate"] == f"{data_bytes / duration:,.2f} bytes/s"
    assert found["Data bit rate"] == f"{8 * data_bytes / duration:,.2f} bits/s"
    counts = raw_export["Protocol"].value_counts()
    assert found["Protocols"] == ", ".join(
        f"{name} {count:,} ({count / len(raw_export):.1%})" for name, count in counts.items())
    assert list(tmp_path.iterdir()) == []  # worked in a temporary folder of its own


def test_inspect_the_capture_of_the_same_traffic(tmp_path, raw_export):
    found = fields(tracelab("inspect", PCAPNG, cwd=tmp_path).stdout)
    assert found["File type"] == "pcapng"
    assert found["Number of packets"] == f"{len(raw_export):,}"
    assert found["Data size"] == f"{int(raw_export['Length'].sum()):,} bytes"


def capinfos(path, *options: str) -> str:
    return subprocess.run(["capinfos", *options, str(path)], capture_output=True, text=True,
                          check=True, env={**os.environ, "TZ": "UTC"}).stdout


def capinfos_table(path) -> dict[str, str]:
    """capinfos' machine-readable table report (-M -T), its header row naming the fields."""
    header, row = capinfos(path, "-M", "-T").splitlines()
    return dict(zip(header.split("\t"), row.split("\t")))


@pytest.fixture(scope="module")
def pcap(tmp_path_factory):
    """The bundled pcapng rewritten by editcap as a pcap (µs clock, a file-wide snap length)."""
    path = tmp_path_factory.mktemp("pcap") / "log4j_scan.pcap"
    subprocess.run(["editcap", "-F", "pcap", str(PCAPNG), str(path)], check=True)
    return path


def plain(value: str) -> str:
    """A value of the summary as capinfos -M writes it: no unit, no thousands separators."""
    return value.split(" ")[0].replace(",", "")


@pytest.mark.parametrize("which", ["pcapng", "pcap"])
def test_inspect_a_capture_says_what_capinfos_says(tmp_path, pcap, which):
    path = PCAPNG if which == "pcapng" else pcap
    expected = capinfos_table(path)
    result = tracelab("inspect", path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    found = fields(result.stdout)
    assert found["File type"] == expected["File type"]
    assert found["File encapsulation"] == expected["File encapsulation"]
    if expected["Packet size limit"] == "(not set)":  # pcapng: the interfaces' only
        assert "Packet size limit" not in found
    else:
        assert plain(found["Packet size limit"]) == expected["Packet size limit"]
    for name in ("min", "max"):
        assert plain(found[f"Packet size limit {name} (inferred)"]) == \
            expected[f"Packet size limit {name} (inferred)"]
    for ours, theirs in [("Number of packets", "Number of packets"),
                         ("File size", "File size (bytes)"), ("Data size", "Data size (bytes)"),
                         ("Capture duration", "Capture duration (seconds)"),
                         ("Data byte rate", "Data byte rate (bytes/sec)"),
                         ("Data bit rate", "Data bit rate (bits/sec)"),
                         ("Average packet size", "Average packet size (bytes)"),
                         ("Average packet rate", "Average packet rate (packets/sec)"),
                         ("SHA256", "SHA256"), ("Strict time order", "Strict time order")]:
        assert plain(found[ours]) == expected[theirs], ours
    for ours, theirs in [("First packet time", "Start time"), ("Last packet time", "End time")]:
        assert pd.Timestamp(found[ours]) == pd.Timestamp(expected[theirs], tz="UTC")
    # The interfaces, as capinfos' long report lists them.
    described = re.findall(r"Interface #(\d+) info:\n(.*?)Number of packets = (\d+)",
                           capinfos(path, "-M", "-I"), re.DOTALL)
    assert len(described) == len([name for name in found if name.startswith("Interface #")])
    for number, text, packets in described:
        parts = found[f"Interface #{number}"].split(", ")
        name = re.search(r"Name = (.*)", text)
        assert parts[0] == (name.group(1) if name else parts[0])
        snaplen = int(re.search(r"Capture length = (\d+)", text).group(1))
        assert f"snap length {snaplen:,}" in parts
        assert parts[-1] == f"{int(packets):,} packets"


def test_inspect_json(tmp_path, raw_export):
    result = tracelab("inspect", "--json", CSV, cwd=tmp_path)
    found = json.loads(result.stdout)
    assert found["validation"]["status"] == "passed"
    assert found["summary"]["packets"] == len(raw_export)
    assert found["file"] == {"size_bytes": CSV.stat().st_size,
                             "sha256": hashlib.sha256(CSV.read_bytes()).hexdigest()}


@pytest.mark.parametrize("args,status,check", [
    (["missing.pcap"], 1, "readable"),
    (["bad.csv"], 1, "zero valid rows"),
    (["--max-invalid-fraction", "2", "x.pcap"], 2, "usage"),
    (["--bogus", "x.pcap"], 2, "usage"),
])
def test_inspect_json_reports_an_error_as_json(tmp_path, args, status, check):
    write_export(tmp_path / "bad.csv", [(1, "2026-11-28 08:00:00", "a", "b", "TCP", "0", "x")])
    result = tracelab("inspect", "--json", *args, cwd=tmp_path)
    assert result.returncode == status
    error = json.loads(result.stdout)["error"]
    assert error["check"] == check and error["message"]
    if status == 1:  # the one-line message, and its parts for a script to use
        assert error["file"] == args[0] and error["message"].startswith(args[0])
        assert f"check '{check}' failed" in error["message"]
        assert (error["row"], error["field"]) == ((2, "Length") if check == "zero valid rows"
                                                  else (None, None))


def test_version_is_the_installed_distributions():
    result = tracelab("--version", cwd=REPO)
    assert result.returncode == 0
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert result.stdout == f"tracelab {version}\n"


def test_add_explains_its_file_argument():
    usage = tracelab("add", "--help", cwd=REPO).stdout
    assert re.search(r"^  file +the trace file: a Wireshark CSV export, pcap or pcapng",
                     usage, re.MULTILINE), usage


def test_inspect_a_bad_file_says_what_failed_in_one_line(tmp_path):
    bad = write_export(tmp_path / "bad.csv", [(1, "2026-11-28 08:00:00", "a", "b", "TCP", "0",
                                              "x")])
    result = tracelab("inspect", bad, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"tracelab inspect: error: {bad}")
    assert "check 'zero valid rows' failed" in result.stderr
    assert result.stderr.count("\n") == 1 and "full report" not in result.stderr


def test_inspect_quotes_terminal_control_characters_from_the_trace(tmp_path):
    hostile = "\x1b[31mRED\x1b]0;pwn\x07\u202egnp.exe\x08"
    rows = [(n, f"2026-11-28 08:00:0{n}", "a", "b", hostile if n == 2 else "TCP", "60", "x")
            for n in range(1, 4)]
    export = write_export(tmp_path / "esc\x1b[2J.csv", rows)
    result = tracelab("inspect", export, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = [c for c in result.stdout if not c.isprintable() and c != "\n"]
    assert printed == []
    assert result.stdout.count("\n") == len(fields(result.stdout))
    found = fields(result.stdout)
    assert found["File name"].endswith("esc\\x1b[2J.csv")
    # Quoted as repr quotes them, so the value can be read back exactly.
    assert found["Protocols"].endswith("\\x1b[31mRED\\x1b]0;pwn\\x07\\u202egnp.exe\\x08 1 (33.3%)")
    assert json.loads(tracelab("inspect", "--json", export, cwd=tmp_path).stdout)[
        "summary"]["protocol_counts"][hostile] == 1


def test_inspect_on_a_full_disk_says_so_in_one_line(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        result = subprocess.run([sys.executable, "-m", "tracelab", "inspect", str(CSV)],
                                cwd=tmp_path, env={**os.environ, "TMPDIR": str(full)},
                                capture_output=True, text=True, timeout=600, check=False)
        left = list(full.iterdir())
    finally:
        subprocess.run(["umount", str(full)], check=True)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("tracelab inspect: error: no space left on device writing "
                                    f"{full}/tracelab-")
    assert result.stderr.count("\n") == 1
    assert left == []


def test_python_m_tracelab_without_a_command_shows_usage(tmp_path):
    result = tracelab(cwd=tmp_path)
    assert result.returncode == 2 and "inspect" in result.stderr and "add" in result.stderr


# --- add ------------------------------------------------------------------------------------

def sheet_lines(workdir) -> list[str]:
    return (workdir / "config/traces.tsv").read_text().splitlines()


def test_add_appends_a_checked_row_that_the_workflow_accepts(workflow_copy):
    capture = workflow_copy / "data/lab capture.pcapng.gz"
    capture.write_bytes(gzip.compress(PCAPNG.read_bytes()))
    before = sheet_lines(workflow_copy)
    result = tracelab("add", capture, "--label", "scan", cwd=workflow_copy / "data")
    assert result.returncode == 0, result.stderr
    assert sheet_lines(workflow_copy) == [
        *before, "lab_capture\tdata/lab capture.pcapng.gz\tpcapng\tscan\tUTC\t"]
    assert f"line {len(before) + 1}" in result.stdout
    dry = run_snakemake(workflow_copy, "-n", "results/features/lab_capture/summary.json")
    assert "validate_trace" in dry.stdout


def test_add_an_export_outside_the_checkout_keeps_an_absolute_path(workflow_copy, tmp_path):
    export = write_export(tmp_path / "ext.txt", [(1, "2026-11-28 08:00:00", "a", "b", "TCP", "60",
                                                 "x")], gz=True)
    result = tracelab("add", export, "--name", "outside", "--timezone", "Europe/Berlin",
                      "--description", "an export named .txt", cwd=workflow_copy)
    assert result.returncode == 0, result.stderr
    assert sheet_lines(workflow_copy)[-1] == \
        f"outside\t{export}\twireshark_csv\toutside\tEurope/Berlin\tan export named .txt"


@pytest.mark.parametrize("args,message", [
    (["data/log4j_scan.pcapng", "--name", "log4j_scan"],
     "trace 'log4j_scan' is already in the sheet (line 2); choose another name with --name"),
    (["data/log4j_scan.pcapng", "--name", "again"],
     "data/log4j_scan.pcapng is already in the sheet as trace 'log4j_scan_pcap' (line 4)"),
    (["new.csv", "--name", "x", "--timezone", "Mars/Olympus"],
     "field 'timezone': unknown IANA time zone 'Mars/Olympus'"),
    (["new.csv", "--name", "../x"], "field 'trace': '../x' does not match"),
    (["new.csv", "--name", "n" * 101], f"field 'trace': '{'n' * 101}' is too long"),
    (["new.csv", "--name", "LOG4J_SCAN"],
     "trace name differs from 'log4j_scan' (line 2) only by case"),
    (["missing.csv"], "missing.csv: no such file"),
    (["Snakefile.bin"], "Snakefile.bin: not a trace file: its first bytes show none of UTF-8 "
                        "text with a CSV header (a CSV export), a pcap capture or a pcapng "
                        "capture (gzip-compressed or not)"),
    (["/etc/passwd"], "/etc/passwd: not a trace file"),
    (["config/config.yaml"], "config/config.yaml: not a trace file"),
])
def test_add_refuses_with_one_line_and_leaves_the_sheet_alone(workflow_copy, args, message):
    (workflow_copy / "Snakefile.bin").write_bytes(bytes(range(256)))
    write_export(workflow_copy / "new.csv", [(1, "2026-11-28 08:00:00", "a", "b", "TCP", "60",
                                             "x")])
    before = (workflow_copy / "config/traces.tsv").read_bytes()
    result = tracelab("add", *args, cwd=workflow_copy)
    assert result.returncode == 1
    assert result.stderr.startswith("tracelab add: error: ") and message in result.stderr, \
        result.stderr
    assert result.stderr.count("\n") == 1
    assert (workflow_copy / "config/traces.tsv").read_bytes() == before


def test_commands_outside_a_checkout_say_where_to_run_them(tmp_path):
    result = tracelab("run", "-n", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (f"tracelab run: error: {tmp_path} is not inside a tracelab checkout "
                             f"(no folder with a Snakefile and config/config.yaml); run this "
                             f"command there\n")


# --- run, report ----------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["report", "run"])
def test_an_option_snakemake_does_not_know_gets_one_usage_line(workflow_copy, command):
    result = tracelab(command, "--bogus", "-n", cwd=workflow_copy)
    assert result.returncode == 2 and result.stdout == ""
    usage, error = result.stderr.splitlines()
    assert usage.startswith(f"usage: tracelab {command} [snakemake options")
    assert error == (f"tracelab {command}: error: snakemake option: unrecognized arguments: "
                     f"--bogus (see python -m snakemake --help)")
    assert not (workflow_copy / "results").exists()


def test_run_removes_temporary_outputs_an_interrupted_run_left(workflow_copy):
    """Snakemake removes a temp() output after the last job that reads it; a run killed before
    (or while it defers removals until its checkpoints are done) leaves it behind for good."""
    (workflow_copy / "config/traces.tsv").write_text(
        "trace\tpath\nscan\tdata/log4j_scan.csv.gz\n")
    packets = workflow_copy / "results/packets/scan.parquet"
    first = tracelab("run", "--cores", "1", packets.relative_to(workflow_copy), cwd=workflow_copy)
    assert first.returncode == 0, first.stderr[-3000:]
    staged = workflow_copy / "results/staged/scan.arrow"
    assert not staged.exists()
    # Left as a kill leaves it: written after the source was read, before the packet table.
    staged.parent.mkdir()
    staged.write_bytes(b"a full copy of the trace")
    written = packets.stat().st_mtime
    os.utime(staged, (written - 1, written - 1))
    # A later run of a stage after normalization (one job) removes it.
    flows = workflow_copy / "results/features/scan/flows.parquet"
    dry = tracelab("run", "-n", flows.relative_to(workflow_copy), cwd=workflow_copy)
    assert "validate_trace" not in dry.stdout and "normalize_trace" not in dry.stdout
    assert staged.exists()  # a dry run removes nothing
    rerun = tracelab("run", "--cores", "1", flows.relative_to(workflow_copy), cwd=workflow_copy)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert flows.exists() and not staged.exists()
    assert f"Removing temporary output {staged.relative_to(workflow_copy)} left by an " \
           f"interrupted run." in rerun.stdout + rerun.stderr


def test_run_keeps_a_temporary_output_a_job_of_the_run_reads(workflow_copy):
    (workflow_copy / "config/traces.tsv").write_text(
        "trace\tpath\nscan\tdata/log4j_scan.csv.gz\n")
    validated = tracelab("run", "--cores", "1", "results/validation/scan.json", cwd=workflow_copy)
    assert validated.returncode == 0, validated.stderr[-3000:]
    staged = workflow_copy / "results/staged/scan.arrow"
    assert staged.exists()  # a target job's temp() output stays
    result = tracelab("run", "--cores", "1", "results/packets/scan.parquet", cwd=workflow_copy)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "left by an interrupted run" not in result.stdout + result.stderr
    assert "validate_trace" not in result.stdout + result.stderr  # the kept copy was read
    assert not staged.exists()


def test_run_passes_options_and_targets_to_snakemake(workflow_copy):
    result = tracelab("run", "-n", "--cores", "1", "results/packets/web_browsing.parquet",
                      cwd=workflow_copy)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "This was a dry-run" in output and "normalize_trace" in output
    assert "trace_features" not in output


def test_jobs_run_the_checkouts_package_whatever_copy_is_installed(workflow_copy, tmp_path):
    """The code versions hash the checkout's modules, so the jobs must run those, also when
    another copy comes first on the path (a non-editable `pip install .`, or none at all in a
    `--sdm conda` environment)."""
    other = shutil.copytree(REPO / "workflow/tracelab", tmp_path / "installed/tracelab")
    runner = workflow_copy / "workflow/tracelab/core/runner.py"
    runner.write_text(runner.read_text().replace('"%s: started"', '"%s: started (checkout)"'))
    env = {**os.environ, "PYTHONPATH": str(other.parent)}
    result = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1",
                             "results/validation/log4j_scan.json"], cwd=workflow_copy, env=env,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (workflow_copy / "results/logs/validate/log4j_scan.log").read_text()
    assert "validate_trace trace=log4j_scan: started (checkout)" in log


# --- Python ---------------------------------------------------------------------------------

def test_read_gives_the_packet_table_of_one_file(raw_export):
    import tracelab
    for path in (CSV, PCAPNG):
        table = tracelab.read(path)
        assert isinstance(table, pa.Table)
        assert table.schema.remove_metadata() == PACKET_SCHEMA
        assert table.num_rows == len(raw_export)
    assert tracelab.read(CSV).column("length").to_pylist() == raw_export["Length"].tolist()


def test_read_a_bad_file_raises_the_clear_error(tmp_path):
    import tracelab
    with pytest.raises(TraceInputError) as error:
        tracelab.read(tmp_path / "missing.pcap")
    assert str(error.value).startswith(f"{tmp_path / 'missing.pcap'}: check 'readable' failed")


def test_read_with_an_unknown_time_zone_names_it():
    import tracelab
    with pytest.raises(TraceInputError, match=r"check 'timezone' failed: unknown IANA time zone "
                                              r"'Mars/Olympus'"):
        tracelab.read(CSV, timezone="Mars/Olympus")


def test_read_warns_about_rows_left_out(tmp_path):
    import tracelab
    rows = [(n, f"2026-11-28 08:00:00.{n:06d}", "a", "b", "TCP", "0" if n == 7 else "60", "x")
            for n in range(1, 201)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = tracelab.read(write_export(tmp_path / "t.csv", rows))
    assert table.num_rows == 199
    assert [str(w.message) for w in caught] == [
        (f"{tmp_path / 't.csv'}: 1 of 200 rows failed validation and are left out "
         f"(passed_with_invalid_rows)")]


def test_import_tracelab_stays_light():
    code = ("import sys, tracelab; heavy = {'pyarrow', 'pandas', 'numpy', 'snakemake'}; "
            "print(sorted(heavy & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert result.stdout.strip() == "[]", result.stderr


def test_the_workflows_start_up_imports_no_pandera():
    """Every snakemake invocation runs the rules' imports of the package: pandera (0.2 CPU s)
    belongs in the jobs. The imports are read from the rule files themselves."""
    imports = [line for path in sorted((REPO / "workflow/rules").glob("*.smk"))
               for line in path.read_text().splitlines()
               if re.match(r"from tracelab[.\w]* import ", line)]
    assert len(imports) >= 5
    code = "\n".join([*imports, "import sys", "print('pandera' in sys.modules)"])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert result.stdout.strip() == "False", result.stderr


def test_inspect_needs_no_snakemake():
    code = (f"import sys, tracelab; tracelab.inspect({str(CSV)!r}); "
            f"print('snakemake' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert result.stdout.strip() == "False", result.stderr

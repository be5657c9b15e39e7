"""Progress lines of long jobs: at most one per interval, with rows, rate, elapsed and time left;
every job's log opens with a start line and closes with its wall time; outside Snakemake, a bar
on a terminal and the same lines otherwise."""

from __future__ import annotations

import fcntl
import io
import logging
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest
from conftest import REPO, run_snakemake

import tracelab
from tracelab.core import progress
from tracelab.core.progress import Progress
from tracelab.core.runner import job_cpu_seconds


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.INFO, logger="tracelab.progress")
    return lambda: [record.getMessage() for record in caplog.records]


def test_at_most_one_line_per_interval(lines):
    clock = FakeClock()
    tracker = Progress("t: reading", clock=clock, interval_s=5)
    for second in range(1, 13):
        clock.now = 100.0 + second
        tracker.update(rows=1000 * second)
    # Lines at 5 and 10 s only.
    assert lines() == ["t: reading: 5,000 rows in 5.0 s (1,000 rows/s)",
                       "t: reading: 10,000 rows in 10.0 s (1,000 rows/s)"]


def test_time_left_from_the_bytes_read(lines):
    clock = FakeClock()
    tracker = Progress("t: validating", total_bytes=4_000_000, clock=clock, interval_s=5)
    clock.now += 10
    tracker.update(rows=250, bytes_done=1_000_000)
    # A quarter of the input in 10 s: 30 s to go, whatever the rows say.
    assert lines() == ["t: validating: 250 rows in 10.0 s (25 rows/s), 25% done, about 30 s left"]


def test_time_left_from_the_rows_when_the_total_is_known(lines):
    clock = FakeClock()
    tracker = Progress("t: normalizing", total_rows=1000, clock=clock, interval_s=2)
    clock.now += 8
    tracker.update(rows=800)
    assert lines() == [("t: normalizing: 800 rows in 8.0 s (100 rows/s), 80% done, "
                        "about 2 s left")]


def test_track_passes_the_batches_through_and_counts_their_rows(lines):
    clock = FakeClock()
    tracker = Progress("t: x", clock=clock, interval_s=1)
    batches = [[0] * 10, [0] * 20, [0] * 30]

    def ticking():
        for batch in batches:
            clock.now += 1
            yield batch

    assert list(tracker.track(ticking())) == batches
    assert [re.match(r"t: x: (\d+) rows", line).group(1) for line in lines()] == \
        ["10", "30", "60"]


def test_silent_until_the_job_sets_the_interval(lines, monkeypatch):
    monkeypatch.setattr(progress, "SETTINGS", progress.ProgressSettings())
    clock = FakeClock()
    tracker = Progress("t", clock=clock)
    clock.now += 1e6
    tracker.update(rows=1)
    assert lines() == []
    progress.set_interval(3)
    assert Progress("t").interval_s == 3


def test_job_logs_have_start_progress_and_end_lines(workflow_copy):
    run_snakemake(workflow_copy, "--cores", "1", "results/packets/log4j_scan.parquet",
                  "--config", "progress_interval_s=1e-9")
    logs = workflow_copy / "results/logs"
    validate = (logs / "validate/log4j_scan.log").read_text().splitlines()
    assert validate[0].endswith("tracelab: validate_trace trace=log4j_scan: started")
    assert re.search(r"tracelab: validate_trace trace=log4j_scan: finished in [\d.]+ s; "
                     r"process CPU [\d.]+ s$", validate[-1])
    # the interpreter's start-up and imports (pandas, pyarrow) alone take more than 0.2 s
    assert 0.2 < job_cpu_seconds("\n".join(validate)) < 600
    normalize = (logs / "normalize/log4j_scan.log").read_text()
    assert re.search(r"tracelab.progress: log4j_scan: normalizing: 1,586 rows in [\d.]+ s "
                     r"\([\d,]+ rows/s\), 100% done", normalize), normalize


# --- On the console: the command line and the Python API ------------------------------------

PCAPNG = REPO / "data/log4j_scan.pcapng"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_instead_of_lines(lines):
    terminal = FakeTerminal()
    with progress.on_console(terminal):
        tracker = Progress("t: validating", total_bytes=4096, interval_s=0)
        tracker.update(rows=10, bytes_done=1024)
        tracker.close()
    drawn = terminal.getvalue()
    assert "t: validating:  25%|" in drawn and "1.00k/4.00k" in drawn
    assert lines() == []
    assert progress.SETTINGS.bar_file is None  # the block's setting only


@pytest.mark.parametrize("path", [PCAPNG, REPO / "data/log4j_scan.csv.gz"])
def test_a_pipe_keeps_the_log_lines(path):
    """Not a terminal: the workflow's progress lines, on stderr (logging not configured)."""
    code = ("import tracelab; from tracelab.core import progress; "
            f"progress.set_interval(1e-9); tracelab.read({str(path)!r})")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, check=True)
    assert re.search(r"^tracelab: log4j_scan: validating: 1,586 rows in [\d.]+ s \([\d,]+ "
                     r"rows/s\), 100% done, about 0 s left$", result.stderr, re.MULTILINE), \
        result.stderr
    assert re.search(r"^tracelab: log4j_scan: normalizing: 1,586 rows in ", result.stderr,
                     re.MULTILINE)
    assert "\r" not in result.stderr and "%|" not in result.stderr


def on_terminal(*args: str) -> tuple[int, str, str]:
    """`python -m tracelab ARGS` with stderr on a pseudo-terminal: (status, stdout, terminal)."""
    leader, follower = pty.openpty()
    # 24 rows of 100 columns, as a terminal window has (a new pseudo-terminal has 0 x 0).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen([sys.executable, "-m", "tracelab", *args], stdout=subprocess.PIPE,
                               stderr=follower, text=True)
    os.close(follower)
    drawn = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the process closed its end
            break
        if not chunk:
            break
        drawn += chunk
    os.close(leader)
    stdout = process.stdout.read()
    return process.wait(timeout=300), stdout, drawn.decode()


def test_inspect_on_a_terminal_draws_bars_and_prints_the_summary_unchanged():
    status, stdout, drawn = on_terminal("inspect", str(PCAPNG))
    assert status == 0
    assert re.search(r"log4j_scan: validating: +100%\|", drawn), drawn
    assert re.search(r"log4j_scan: normalizing: +100%\|[^\r]* 1\.59k/1\.59k \[[^\r]* rows/s\]",
                     drawn), drawn
    assert "rows/s)" not in drawn  # no log lines beside the bars
    assert stdout.startswith("File name:") and "\r" not in stdout


# The passes of tracelab.flows/hosts/windows: a bar each on a terminal, lines otherwise. Their
# totals: 1,586 packets (capinfos -c), 1,270 connections (test_zeek_logs) and 20 HTTP requests
# (tshark -Y http.request), the windows pass counting the rows of all three tables.
SECURITY_PASSES = {"connections": "1.59k/1.59k", "hosts": "1.27k/1.27k",
                   "windows": "2.88k/2.88k"}


def test_the_security_calls_draw_a_bar_a_pass(monkeypatch):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    tracelab.hosts(PCAPNG)
    tracelab.windows(PCAPNG)
    drawn = terminal.getvalue()
    for what, count in SECURITY_PASSES.items():
        assert re.search(rf"log4j_scan: {what}: +100%\|[^\r]* {count} \[[^\r]* rows/s\]",
                         drawn), (what, drawn)
    assert "rows/s)" not in drawn


def test_the_security_calls_log_lines_on_a_pipe():
    code = ("import tracelab; from tracelab.core import progress; "
            f"progress.set_interval(1e-9); tracelab.hosts({str(PCAPNG)!r}); "
            f"tracelab.windows({str(PCAPNG)!r})")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, check=True)
    for what, rows in (("connections", "1,586"), ("hosts", "1,270"), ("windows", "2,876")):
        assert re.search(rf"^tracelab: log4j_scan: {what}: {rows} rows in [\d.]+ s \([\d,]+ "
                         r"rows/s\), 100% done", result.stderr, re.MULTILINE), \
            (what, result.stderr)
    assert "\r" not in result.stderr and "%|" not in result.stderr


def test_a_job_leaves_hypothesis_out_of_pandera_and_other_processes_keep_it():
    """pandera imports hypothesis at its first check, for data synthesis only: a job (its
    script's globals hold `snakemake`) does without it, any other process (the tests) keeps it."""
    code = ("import __main__, sys\n{job}"
            "import tracelab.core.runner\n"
            "from tracelab.security.connections import FLOWS\n"
            "FLOWS.check(FLOWS.conform(FLOWS.schema.empty_table()))\n"
            "print(sys.modules.get('hypothesis') is not None)\n")
    seen = [subprocess.run([sys.executable, "-c", code.format(job=job)], capture_output=True,
                           text=True, check=True).stdout.strip()
            for job in ("__main__.snakemake = None\n", "")]
    assert seen == ["False", "True"]


def test_a_job_ends_its_process_without_teardown_once_its_log_is_written(tmp_path):
    """A job's process ends after its step and its log's last line, skipping the interpreter's
    teardown (an exit handler is the last thing teardown runs: it must not run); the log is
    complete. Outside a job, run_steps returns."""
    code = ("import __main__, atexit, types\n{job}"
            "from tracelab.core.runner import run_steps\n"
            "rule = types.SimpleNamespace(log=[{log!r}], rule='r', wildcards={{}},\n"
            "                             config={{'progress_interval_s': 60}})\n"
            "atexit.register(lambda: print('torn down'))\n"
            "run_steps(rule, lambda: print('step'))\n"
            "print('returned')\n")
    seen = []
    for job in ("__main__.snakemake = None\n", ""):
        log = tmp_path / f"{bool(job)}.log"
        result = subprocess.run([sys.executable, "-c", code.format(job=job, log=str(log))],
                                capture_output=True, text=True, check=True)
        seen.append(result.stdout.split())
        assert re.search(r"r: finished in [0-9.]+ s; process CPU [0-9.]+ s\n\Z",
                         log.read_text()), log.read_text()
    assert seen == [["step"], ["step", "returned", "torn", "down"]]

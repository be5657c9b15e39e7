"""Shared fixtures and helpers: the repository, disposable copies of the workflow, the real
snakemake run on them (the bundled traces' run once a session, started in the background as
soon as the tests are collected, the modules that use it ordered last), dry runs without
Snakemake's start-up (tests/dry_runner.py), and two runs' connection tables compared."""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COPY_IGNORE = shutil.ignore_patterns("results", ".snakemake", ".git", ".venv", "__pycache__",
                                     ".pytest_cache", ".hypothesis", "*.egg-info")


# --- Copies of the workflow and snakemake on them ----------------------------------------------

def copy_workflow(destination: Path) -> Path:
    shutil.copytree(REPO, destination, ignore=COPY_IGNORE)
    return destination


@pytest.fixture
def workflow_copy(tmp_path) -> Path:
    """A fresh copy of the workflow (config, data, rules) to run snakemake in."""
    return copy_workflow(tmp_path / "workflow_copy")


def run_snakemake(workdir: Path, *args: str, check: bool = True,
                  timeout: float = 1200) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def tracelab(*args, cwd, timeout: float = 600) -> subprocess.CompletedProcess:
    """The command line through its real interface (`python -m tracelab`, as the installed
    `tracelab` script runs it)."""
    return subprocess.run([sys.executable, "-m", "tracelab", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, check=False)


@functools.cache
def _dry_runner() -> subprocess.Popen:
    runner = subprocess.Popen([sys.executable, str(Path(__file__).with_name("dry_runner.py"))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    atexit.register(_end, runner)
    return runner


def _end(runner: subprocess.Popen) -> None:
    runner.stdin.close()  # the end of its input ends it
    runner.wait(timeout=60)
    runner.stdout.close()


def dry_run_outputs(runs: list[tuple[Path, tuple[str, ...]]]) -> list[tuple[int, str]]:
    """`snakemake -n *args` in each folder, all started at once by tests/dry_runner.py (which
    spares each Snakemake's start-up): (return code, stdout + stderr) of each."""
    runner = _dry_runner()
    outputs = [Path(tempfile.mkstemp(prefix="tracelab-dry-run-")[1]) for _ in runs]
    request = [[str(workdir), ["-n", *args], str(output)]
               for (workdir, args), output in zip(runs, outputs)]
    runner.stdin.write(json.dumps(request) + "\n")
    runner.stdin.flush()
    answer = runner.stdout.readline()
    if not answer:
        raise AssertionError(f"tests/dry_runner.py ended ({runner.poll()})")
    texts = []
    for output in outputs:
        texts.append(output.read_text())
        output.unlink()
    return list(zip(json.loads(answer), texts))


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Job counts per rule from a dry run ({} when there is nothing to do)."""
    [(returncode, output)] = dry_run_outputs([(workdir, args)])
    if returncode != 0:
        raise AssertionError(f"snakemake -n {' '.join(args)} failed ({returncode}):\n"
                             f"{output[-8000:]}")
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines():
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if match and match.group(1) != "total":
            counts[match.group(1)] = int(match.group(2))
    return counts


def add_sheet_row(row: str) -> Callable[[Path], None]:
    """An edit of a workflow copy: `row` appended to its trace sheet."""
    def edit(workdir: Path) -> None:
        sheet = workdir / "config/traces.tsv"
        sheet.write_text(sheet.read_text() + row + "\n")
    return edit


def dry_runs(tmp_path_factory, edits: dict[str, Callable[[Path], None]],
             ) -> dict[str, tuple[Path, int, str]]:
    """`snakemake -n` on one copy of the workflow per case, edited by the case's function, all
    started at once: case -> (copy, return code, stdout + stderr)."""
    copies = {}
    for case, edit in edits.items():
        copies[case] = copy_workflow(tmp_path_factory.mktemp(case) / "wf")
        edit(copies[case])
    outputs = dry_run_outputs([(workdir, ()) for workdir in copies.values()])
    return {case: (workdir, *output) for (case, workdir), output in zip(copies.items(), outputs)}


@functools.cache
def _bundled_process() -> tuple[Path, subprocess.Popen]:
    """The bundled run, started (once) and left running."""
    workdir = copy_workflow(Path(tempfile.mkdtemp(prefix="tracelab-bundled-")) / "wf")
    atexit.register(shutil.rmtree, workdir.parent, ignore_errors=True)
    with open(workdir.parent / "snakemake.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2"],
                                   cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    atexit.register(_stop, process)  # registered last, so run before the folder is removed
    return workdir, process


def _stop(process: subprocess.Popen) -> None:
    """A session ended early: the bundled run's snakemake and its jobs (its process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@functools.cache
def _bundled_run_once() -> Path | Exception:
    workdir, process = _bundled_process()
    try:
        returncode = process.wait(timeout=1800)
    except subprocess.TimeoutExpired as failure:
        _stop(process)
        return failure  # kept, so that the tests after fail at once instead of running it again
    if returncode != 0:
        log = (workdir.parent / "snakemake.log").read_text(errors="replace")
        return AssertionError(f"snakemake --cores 2 failed ({returncode}):\n{log[-8000:]}")
    return workdir


def _uses_bundled_run(item: pytest.Item) -> bool:
    return "bundled" in getattr(item, "fixturenames", ()) or _calls_bundled_run(item.path)


@functools.cache
def _calls_bundled_run(path: Path) -> bool:
    text = path.read_text(encoding="utf-8")
    return "bundled_run()" in text or "bundled_results()" in text


@pytest.hookimpl(trylast=True)  # after -m has deselected
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules that use the bundled run go last, and the run starts now, in the background:
    the tests before them run meanwhile (the run's jobs and this process share the cores)."""
    using = {item.path for item in items if _uses_bundled_run(item)}
    if using:
        items.sort(key=lambda item: item.path in using)  # stable: each module stays in order
        _bundled_process()


def bundled_run() -> Path:
    """A copy of the workflow after one complete run on the bundled traces, once a session.
    Tests that edit it put it back as they found it."""
    outcome = _bundled_run_once()
    if isinstance(outcome, Exception):
        raise AssertionError(f"the bundled run failed: {outcome}")
    return outcome


def bundled_results() -> Path:
    """The results/ folder of the bundled run."""
    return bundled_run() / "results"


@pytest.fixture
def bundled() -> Path:
    """The bundled run's copy of the workflow (see bundled_run)."""
    return bundled_run()


@contextlib.contextmanager
def edited(path: Path, edit: Callable[[bytes], bytes]) -> Iterator[Path]:
    """`path` rewritten by `edit` inside the block, then its bytes and times put back: a file
    left newer than the outputs would make the bundled run unfinished for the tests after."""
    original, times = path.read_bytes(), path.stat()
    try:
        path.write_bytes(edit(original))
        yield path
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))


# --- Connection tables of two runs -------------------------------------------------------------

def connection_outputs(directory: Path) -> dict:
    return {"flows_path": directory / "flows.parquet", "http_path": directory / "http.parquet",
            "conn_log_path": directory / "conn.log"}


def sorted_table(path, table):
    data = table.read(path)
    key = next(name for name in ("uid", "frame") if name in data.column_names)
    return data.sort_by(key).replace_schema_metadata(None).unify_dictionaries().to_pandas()


def assert_same_connections(whole: dict, sharded: dict) -> None:
    """Equal tables after sorting by their keys, equal conn.log headers and sorted records, the
    same counts of rows left out."""
    # Imported here: every test session loads this file.
    from tracelab.security.connections import FLOWS
    from tracelab.security.http import HTTP

    for key, table in (("flows_path", FLOWS), ("http_path", HTTP)):
        assert sorted_table(whole[key], table).equals(sorted_table(sharded[key], table)), key
    left_out = [json.loads(pq.ParquetFile(paths["flows_path"]).metadata.metadata[
        b"tracelab.rows_in_no_connection"]) for paths in (whole, sharded)]
    assert left_out[0] == left_out[1]
    logs = [Path(paths["conn_log_path"]).read_text().splitlines() for paths in (whole, sharded)]
    headers = [[line for line in lines if line.startswith("#")] for lines in logs]
    assert headers[0] == headers[1]
    assert sorted(logs[0]) == sorted(logs[1])


# --- Shards ------------------------------------------------------------------------------------

def packets_per_shard(packets: int) -> Callable[[bytes], bytes]:
    """An edit of config/config.yaml: `packets` a shard."""
    def edit(text: bytes) -> bytes:
        config = yaml.safe_load(text)
        config["sharding"] = {"packets_per_shard": packets}
        return yaml.safe_dump(config, sort_keys=False).encode()
    return edit


def security_jobs(workdir: Path) -> dict[str, int]:
    """The planned jobs but the robustness experiment's, which read the windows files (and
    flows) the connection jobs' rerun rewrites: theirs is checked in the robustness tests."""
    return {rule: count for rule, count in planned_jobs(workdir).items()
            if not rule.startswith("robustness_")}

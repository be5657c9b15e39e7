"""Shared fixtures and helpers: the repository, disposable copies of the workflow, the real
snakemake run on them (the bundled traces' run once a session), and two runs' connection
tables compared."""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import re
import shutil
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


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Job counts per rule from a dry run ({} when there is nothing to do)."""
    result = run_snakemake(workdir, "-n", *args)
    output = result.stdout + result.stderr
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
    started at once (each is mostly start-up): case -> (copy, return code, stdout + stderr)."""
    running = {}
    for case, edit in edits.items():
        workdir = copy_workflow(tmp_path_factory.mktemp(case) / "wf")
        edit(workdir)
        running[case] = (workdir, subprocess.Popen(
            [sys.executable, "-m", "snakemake", "-n"], cwd=workdir, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = {}
    for case, (workdir, process) in running.items():
        stdout, stderr = process.communicate(timeout=300)
        results[case] = (workdir, process.returncode, stdout + stderr)
    return results


@functools.cache
def _bundled_run_once() -> Path | Exception:
    workdir = copy_workflow(Path(tempfile.mkdtemp(prefix="tracelab-bundled-")) / "wf")
    atexit.register(shutil.rmtree, workdir.parent, ignore_errors=True)
    try:
        run_snakemake(workdir, "--cores", "2", timeout=1800)
    except (AssertionError, subprocess.TimeoutExpired) as failure:
        return failure  # kept, so that the tests after fail at once instead of running it again
    return workdir


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


def set_packets_per_shard(workdir: Path, packets: int) -> None:
    path = workdir / "config/config.yaml"
    config = yaml.safe_load(path.read_text())
    config["sharding"] = {"packets_per_shard": packets}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
